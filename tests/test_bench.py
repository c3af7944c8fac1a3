"""The benchmark harness. Smoke test (slow): a quick run of every section (tiny data, one epoch; sizes 1x and 2x,
no multi_processing run; the two essential ablation cells and the retrained full model for one seed; the three
stream modes' CNNs and the pixel baselines for one seed) writes results.md and results.json with every table cell
filled; the numbers of a quick run mean nothing and are not checked. Unit tests: a partial run keeps the other
sections' record, how a failed gate check is named, and the limits a cell is checked against.
"""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import model_variants
from bench.report import MEASURED_KEY
from bench.run import json_ready, keep_unrun_sections
from bench.sections import limits_exceeded
from bench.settings import UNSEEN_SEED_OFFSET
from bench.worker import CHECK_KINDS, check_kind
from foundation.config import Config
from models.evaluation import gate_checks

REPO = Path(__file__).resolve().parents[1]
SMOKE_SECTIONS = ("ingest", "pipeline", "scaling", "floor", "ablations", "quality", "predict")
# The only nulls results.json may hold: the macro recall change of an evaluation without a baseline, and the class
# of a failed gate check on the whole test set (macro drop, majority excess).
NULLABLE = {"macro_recall_change", "class"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    only = [arg for section in SMOKE_SECTIONS for arg in ("--only", section)]
    finished = subprocess.run([sys.executable, "-m", "bench.run", "--quick", *only, "--sizes", "1,2",
                               "--ablation-cells", "essential", "--out-dir", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    return out


def nulls(value, path=""):
    """Paths of the nulls in a JSON value, except under NULLABLE keys."""
    if value is None:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() if k not in NULLABLE for p in nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in nulls(v, f"{path}[{i}]")]
    return []


@pytest.mark.slow
def test_results_json_has_every_section_and_number(out_dir):
    results = json.loads((out_dir / "results.json").read_text())
    for section in SMOKE_SECTIONS:
        assert "error" not in results[section], results[section]
        assert results[section][MEASURED_KEY]["git_commit"]
    for plot in ("results.scaling.png", "results.components.png", "results.ablations.png"):
        assert (out_dir / plot).stat().st_size, plot
    assert nulls(results) == []
    assert results["machine"]["logical_cores"] >= 1 and "-m bench.run" in results["command"]
    assert results["ingest"]["sets"] and len(results["floor"]["rows"]) == 2 and len(results["scaling"]["runs"]) == 2
    assert results["pipeline"]["fresh"]["ingest_report"]["patches_per_split"]
    ablations = results["ablations"]
    assert [cell["seeds_measured"] for cell in ablations["cells"]] == [1, 1]
    (seed,) = ablations["per_seed"]
    # The quick gate blesses the one-epoch full model, so the other runs are judged against a copy of it.
    assert seed["full_published"] and not seed["runs"][0]["baseline"]["comparable"]
    for run in seed["runs"][1:] + [seed["retrained"]]:
        assert run["baseline_is_full_model"], run
    quality = results["quality"]
    assert set(quality["models"]) == {f"{kind} {mode}" for kind in ("cnn", *quality["baselines"])
                                      for mode in ("fused", "multispectral", "lidar")}
    for splits in quality["models"].values():
        assert set(splits) == {"test", "unseen"}
        for scores in splits.values():
            assert set(scores["per_class_recall"]) == set(quality["classes"])
    assert {row["issue"] for row in results["targets"]} == {2, 3, 5, 9, 11, 12, 13}
    assert all(isinstance(row["passed"], bool) for row in results["targets"])


@pytest.mark.slow
def test_results_md_fills_every_table_cell(out_dir):
    text = (out_dir / "results.md").read_text()
    assert "Not measured" not in text
    assert not re.search(r"\b(nan|NaN|None|n/a|null)\b", text)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        assert all(cells), row
    for heading in ("Targets", "Ingestion", "Pipeline", "Ablations", "Scaling", "Floor"):
        assert re.search(rf"^## (\d\. )?{heading}", text, re.MULTILINE), heading


def test_a_partial_run_keeps_the_other_sections_with_when_they_were_measured():
    previous = {"command": "old command", "quick": False,
                "machine": {"date": "2026-11-28T04:36:26+00:00", "git_commit": "abc", "git_modified_tracked_files": 0},
                "ingest": {"sets": [1]},
                "floor": {"rows": [2], MEASURED_KEY: {"date": "2026-11-29", "git_commit": "def",
                                                      "git_modified_tracked_files": 3, "command": "floor command"}},
                "ablations": {"cells": ["old"]}}
    results = {"command": "new command"}
    kept = keep_unrun_sections(results, previous, ["ablations"])
    assert kept == ["ingest", "floor"]
    assert "ablations" not in results  # the section run now is measured, not copied
    assert results["ingest"] == {"sets": [1], MEASURED_KEY: {"date": "2026-11-28T04:36:26+00:00",
                                                             "git_commit": "abc", "git_modified_tracked_files": 0,
                                                             "command": "old command"}}
    assert results["floor"][MEASURED_KEY]["git_commit"] == "def"  # its own stamp, not the record's


def test_every_gate_check_has_a_kind_and_every_kind_a_check():
    config = Config()
    kinds = [check_kind(check) for check in gate_checks(config)]
    assert set(kinds) == set(CHECK_KINDS)
    per_class = len(config.class_ids)
    assert [kinds.count(kind) for kind in CHECK_KINDS] == [per_class, per_class, per_class, 1, 1]


def evaluation(recalls, examples=100, excess=0.0):
    return {"per_class_recall": recalls, "macro_recall": sum(recalls.values()) / len(recalls),
            "per_class_test_examples": dict.fromkeys(recalls, examples), "majority_excess": excess}


def test_limits_exceeded_names_each_limit_a_cell_crosses():
    gate = Config().gate
    floors = {"a": gate.min_class_recall, "b": gate.min_class_recall}
    full = evaluation({"a": 0.95, "b": 0.95})
    assert limits_exceeded(evaluation({"a": 0.94, "b": 0.95}), full, gate, floors) == []
    # One class 0.15 lower: a class drop, and macro falls 0.075
    assert limits_exceeded(evaluation({"a": 0.80, "b": 0.95}), full, gate, floors) == ["class drop", "macro drop"]
    # Two classes 0.03 lower each: macro only
    assert limits_exceeded(evaluation({"a": 0.92, "b": 0.92}), full, gate, floors) == ["macro drop"]
    # Without a baseline only the absolute limits apply; a class without test examples (NaN) is under its floor.
    assert limits_exceeded(evaluation({"a": 0.5, "b": math.nan}, examples=5, excess=0.3), None, gate, floors) == [
        "floor", "examples", "majority excess"]


@pytest.mark.parametrize("argv, message", [
    (["--offset", str(UNSEEN_SEED_OFFSET)], "the benchmark's reporting offset"),
    (["--offset", "200", "--set", "ingest.patch_size=7"], "only model.* settings vary here"),
])
def test_model_variants_refuse_the_reporting_scenes_and_settings_the_transform_output_fixes(argv, message, capsys):
    """Choosing on the scenes that report, or varying what the shared Transform output already fixed, would make
    the comparison meaningless; both are refused before anything runs."""
    with pytest.raises(SystemExit):
        model_variants.main(argv)
    assert message in capsys.readouterr().err


def test_results_json_takes_numpy_scalars_and_drops_non_finite_numbers():
    """A target row's verdict can be numpy's bool (a comparison of numpy means): results.json must still be written."""
    import numpy as np

    ready = json_ready({"passed": np.bool_(True), "value": np.float64(0.5), "count": np.int64(3),
                        "missing": float("nan"), "rows": (np.float32(np.inf),)})
    assert json.loads(json.dumps(ready, allow_nan=False)) == {"passed": True, "value": 0.5, "count": 3,
                                                              "missing": None, "rows": [None]}
