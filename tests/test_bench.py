"""Smoke test of the benchmark harness: a quick run of every section (tiny data, one epoch; sizes 1x and 2x;
the two essential ablation cells for one seed) writes results.md and results.json with every table cell filled.
The numbers of a quick run mean nothing and are not checked."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SMOKE_SECTIONS = ("ingest", "pipeline", "scaling", "floor", "ablations")
# The only nulls results.json may hold: the macro recall change of an evaluation without a baseline.
NULLABLE = {"macro_recall_change"}


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


def test_results_json_has_every_section_and_number(out_dir):
    results = json.loads((out_dir / "results.json").read_text())
    for section in SMOKE_SECTIONS:
        assert "error" not in results[section], results[section]
    for plot in ("results.scaling.png", "results.components.png", "results.ablations.png"):
        assert (out_dir / plot).stat().st_size, plot
    assert nulls(results) == []
    assert results["machine"]["logical_cores"] >= 1 and "-m bench.run" in results["command"]
    assert results["ingest"]["sets"] and len(results["floor"]["rows"]) == 2 and len(results["scaling"]["runs"]) == 2
    assert [cell["seeds_measured"] for cell in results["ablations"]["cells"]] == [1, 1]
    assert {row["issue"] for row in results["targets"]} == {2, 3, 5}
    assert all(isinstance(row["passed"], bool) for row in results["targets"])


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
