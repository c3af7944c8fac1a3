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

import numpy as np
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


def _floor_patches(config, per_split, values=None):
    """`per_split` patches of every split for bench.floor, labels cycling through the class table; values random
    unless given."""
    from bench.floor import Patches
    from foundation.config import SPLITS
    from transforms.features import layout

    lay = layout(config)
    n = per_split * len(SPLITS)
    if values is None:
        values = np.random.default_rng(0).normal(size=(n, len(lay.stream_features), lay.patch_values))
    return Patches(values.astype(np.float32), np.arange(n, dtype=np.int64) % len(config.class_ids),
                   np.repeat(np.array(SPLITS), per_split), buffer_dropped=0)


def _symmetries(patch):
    """The square's 8 symmetries of one patch [P, P, C], in numpy."""
    rotations = [np.rot90(patch, k, axes=(0, 1)) for k in range(4)]
    return rotations + [np.flip(r, axis=1) for r in rotations]


def test_the_floor_trains_on_the_trainers_rotations_reflections_and_stream_dropout():
    """Every training example the floor feeds is its own patch under one of the 8 symmetries (the same in both
    streams) with its own label, some under a non-trivial one, and some of them lose one stream, as the Trainer's."""
    from bench.floor import model_inputs, training_data
    from foundation.config import TRAIN
    from transforms.features import layout

    config = Config()
    centre = layout(config).patch_size // 2
    patches = _floor_patches(config, per_split=200)
    # The centre pixel, which no symmetry moves, names the example in every channel.
    patches.values[:, :, centre * layout(config).patch_size + centre] = np.arange(1, len(patches.values) + 1)[:, None]
    originals = model_inputs(patches.values, config)
    streams = list(originals)
    symmetries_used, dropped, seen = set(), 0, []
    for inputs, labels in training_data(patches.values, patches, config):
        for i, label in enumerate(labels.numpy()):
            fed = {s: inputs[s][i].numpy() for s in streams}
            example = int(max(fed[s][centre, centre].max() for s in streams)) - 1
            seen.append(example)
            assert label == patches.label_index[example]
            kept = [s for s in streams if np.any(fed[s])]
            assert kept, "an example keeps at least one stream"
            dropped += len(kept) < len(streams)
            (index,) = {k for k, variant in enumerate(_symmetries(originals[kept[0]][example]))
                        if np.array_equal(variant, fed[kept[0]])}
            for s in kept:
                np.testing.assert_array_equal(fed[s], _symmetries(originals[s][example])[index])
            symmetries_used.add(index)
    assert sorted(seen) == np.flatnonzero(patches.split == TRAIN).tolist()
    assert len(symmetries_used) > 4
    assert 0.15 < dropped / len(seen) < 0.45, "about model.stream_dropout (0.3) of the examples lose a stream"


def test_the_floor_fits_exactly_the_epochs_asked_for_and_otherwise_stops_early():
    """All-zero patches give every example the same prediction, so validation macro recall never improves after
    the first epoch: with patience 0 early stopping ends the fit at epoch 2; `epochs_exactly` fits all of them."""
    from bench.floor import main, train_and_evaluate

    config = Config().replace({"model.epochs": 5, "model.early_stopping_patience": 0})
    patches = _floor_patches(config, per_split=24)
    patches.values[:] = 0
    stopped = train_and_evaluate(patches.values, patches, config)
    assert stopped["epochs_run"] == 2 and stopped["early_stopping"]
    exact = train_and_evaluate(patches.values, patches, config, epochs_exactly=6)
    assert exact["epochs_run"] == 6 and not exact["early_stopping"]
    with pytest.raises(SystemExit):
        main(["--epochs-exactly", "0"])
