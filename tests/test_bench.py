"""Smoke test of the benchmark harness: `python -m bench.run --quick` writes every result file with every
table cell filled. The numbers of a quick run mean nothing and are not checked."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PLOTS = ("scaling.png", "components.png", "ablations.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The only nulls results.json may hold: the macro recall change of a run without a blessed baseline.
NULLABLE = {"macro_recall_change"}


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    finished = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out-dir", str(out)],
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
    from bench.sections import ablation_cells  # TFX: imported only when the slow test runs
    from bench.settings import SECTIONS

    results = json.loads((out_dir / "results.json").read_text())
    for section in SECTIONS:
        assert "error" not in results[section], results[section]
    assert nulls(results) == []
    assert len(results["ablations"]["cells"]) == len(ablation_cells())
    for cell in results["ablations"]["cells"]:
        assert cell["seeds_measured"] == results["ablations"]["seeds"]
    assert {row["issue"] for row in results["targets"]} == {2, 3}
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
    for heading in ("Targets", "Ingestion", "Pipeline", "Ablations", "Scaling", "Floor", "Where the time goes"):
        assert re.search(rf"^## (\d\. )?{heading}", text, re.MULTILINE), heading


def test_plots_are_png_files(out_dir):
    for name in PLOTS:
        assert (out_dir / name).read_bytes().startswith(PNG_SIGNATURE), name
