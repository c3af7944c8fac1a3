"""The run report: the run's own recorded config, and the page of real end-to-end runs opened in headless Chromium.

The browser tests share the end-to-end runs of tests/conftest.py (`first_run` blesses and pushes, `refused_run`'s
model collapses). Each page and its screenshot is kept in ARTIFACTS (outputs/test-artifacts unless
TERRAFUSE_TEST_ARTIFACTS names another folder) for a person, or CI, to look at.
"""
import contextlib
import dataclasses
import io
import json
import math
import os
import re
from pathlib import Path

import pytest
import yaml
from tfx.utils import proto_utils

from browser import chromium_path, visit
from components.scene_example_gen import custom_config_proto
from foundation.config import PROJECT_DIR, Config, TerrainClass
from pipeline.cli import main
from pipeline.component_ids import BASELINE, DATA_GATE, SCENE_EXAMPLE_GEN, TRAINER
from pipeline.report import BLESSED, NOT_BLESSED, PAGE_FILE, STOPPED, read_run, write_report
from pipeline.summary import ComponentRun, recorded_config, run_ids

ARTIFACTS = Path(os.environ.get("TERRAFUSE_TEST_ARTIFACTS", PROJECT_DIR / "outputs" / "test-artifacts"))
# Another order and other ids than the defaults: read with the defaults, index 0 would be "trees" and id 1 unknown.
OWN_CLASSES = tuple(TerrainClass(i + 1, name, min_recall=0.5 if name == "water" else None)
                    for i, name in enumerate(("water", "road", "trees", "grass", "building", "bare_soil")))


def own_config(root: Path) -> Config:
    return Config(classes=OWN_CLASSES).replace({
        "run.data_root": str(root / "data"), "run.pipeline_root": str(root / "pipeline"),
        "run.serving_dir": str(root / "models"), "gate.max_majority_excess": 0.3, "model.epochs": 3})


def test_recorded_config_is_the_runs_own_not_the_defaults(tmp_path):
    """Each component records its restricted copy of the config; together they give back the run's."""
    config = own_config(tmp_path)
    recorded = {
        SCENE_EXAMPLE_GEN: {"custom_config": proto_utils.proto_to_json(custom_config_proto(
            config.restricted("streams", "ingest"))), "input_base": config.run.data_root},
        DATA_GATE: {"config_json": config.restricted("validation", "streams").to_json()},
        TRAINER: {"custom_config": json.dumps({"config": config.restricted("streams", "model").to_dict(),
                                               "code": "abc", "serving_dir": config.serving_dir})},
        BASELINE: {"config_json": config.restricted("streams", "ingest", "gate").to_json(),
                   "serving_dir": config.serving_dir},
    }
    runs = [ComponentRun(node, "COMPLETE", 1.0, properties=properties) for node, properties in recorded.items()]
    found = recorded_config(runs, config.run.pipeline_root)
    assert found.classes == OWN_CLASSES
    assert found.class_recall_floors == config.class_recall_floors != Config().class_recall_floors
    assert found.gate == config.gate and found.model == config.model
    assert (found.run.data_root, found.serving_dir) == (config.run.data_root, config.serving_dir)
    assert found.kubeflow == Config().kubeflow  # recorded by no component: the default


def test_report_without_a_run_says_where_it_looked(tmp_path, capsys):
    assert main(["report", "--pipeline-root", str(tmp_path)]) == 2
    assert f"{tmp_path / 'metadata.sqlite'}: no run recorded" in capsys.readouterr().err


def _open_in_browser(page: Path, name: str):
    assert chromium_path(), "chromium is not installed: `make browser` installs Debian's package"
    seen = visit(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.html").write_bytes(page.read_bytes())
    (ARTIFACTS / f"{name}.png").write_bytes(seen.screenshot)
    assert seen.screenshot.startswith(b"\x89PNG")
    assert seen.errors == [], seen.errors
    fetched = [url for url in seen.requests if url != seen.url and not url.startswith("data:")]
    assert fetched == [], f"the page fetched {fetched}"
    return seen


def _class_rows(text: str, names) -> dict[str, str]:
    """Per class, its row of the page's per-class recall table (the rows that start with the class and a count)."""
    table = text[text.index("test examples (min"):]
    return {name: re.search(rf"^{re.escape(name)}\t\d+\t.*$", table, re.MULTILINE).group(0) for name in names}


@pytest.mark.slow
def test_blessed_runs_page_in_a_browser(e2e_config, first_run, tmp_path):
    ok, evaluation = first_run
    assert ok and evaluation.blessed
    first = run_ids(e2e_config)[0]
    page = write_report(e2e_config.run.pipeline_root, tmp_path / "blessed.html", run_id=first)
    seen = _open_in_browser(page, "report-blessed")
    assert f"terrafuse run {first}: {BLESSED}" in seen.text
    assert "Pushed: " + e2e_config.serving_dir in seen.text
    rows = _class_rows(seen.text, e2e_config.class_names)
    for name, recall in evaluation.per_class_recall.items():
        assert f"\t{recall:.3f}\t" in rows[name], rows[name]
    html = page.read_text()
    for figure in ("value distributions per band and channel", "Jensen-Shannon divergence per feature",
                   "per-class recall with floors", "row-normalised confusion matrix", "class map of",
                   "seconds per component"):
        assert f'alt="{figure}' in html, f"no figure {figure!r}"
    assert "No preview" not in seen.text


@pytest.mark.slow
def test_refused_runs_page_names_the_failing_classes_and_checks(e2e_config, refused_run, tmp_path):
    page = write_report(e2e_config.run.pipeline_root, tmp_path / "refused.html", run_id=refused_run.run_id)
    seen = _open_in_browser(page, "report-refused")
    record = read_run(e2e_config.run.pipeline_root, refused_run.run_id)
    assert record.verdict == NOT_BLESSED and f": {NOT_BLESSED}" in seen.text
    assert record.evaluation.failures and all(failure in seen.text for failure in record.evaluation.failures)
    below = [name for name, recall in record.evaluation.per_class_recall.items()
             if math.isnan(recall) or recall < record.config.gate.min_class_recall]
    assert below and all(f"recall of {name} = " in seen.text for name in below)
    assert "Nothing pushed (the model was not blessed)" in seen.text
    # against the version the first run pushed: the serving model's recall is shown beside each class's
    assert "serving model" in seen.text and "change (max drop" in seen.text


@pytest.fixture(scope="module")
def own_class_table_run(tmp_path_factory):
    """`terrafuse run --config FILE` with the run's own class table, which the DataGate stops (the curated schema's
    label domain holds the default ids only): the config, and what the command printed. About 20 s of pipeline."""
    from synth.scenes import generate_sample

    root = tmp_path_factory.mktemp("own-classes")
    config = own_config(root)
    generate_sample(config.run.data_root, config, spans=1, scenes_per_span=4, size=64, seed=2)
    config_file = root / "own.yaml"
    config_file.write_text(yaml.safe_dump({"classes": [dataclasses.asdict(c) for c in OWN_CLASSES],
                                           "run": {"serving_dir": config.run.serving_dir}}))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["run", "--config", str(config_file), "--data-root", config.run.data_root,
                     "--pipeline-root", config.run.pipeline_root])
    assert code == 1, printed.getvalue()
    return config, printed.getvalue()


@pytest.mark.slow
def test_report_of_a_run_with_its_own_class_table(own_class_table_run, tmp_path, capsys):
    """`terrafuse report` without the run's --config shows the run's class table (it crashed, or put the default
    names on the classes); `terrafuse run` printed the page's path and the page says why the run stopped."""
    config, printed = own_class_table_run
    page = Path(config.run.pipeline_root) / PAGE_FILE
    assert f"Report: {page.resolve()}" in printed and page.is_file()
    record = read_run(config.run.pipeline_root)
    assert record.config.classes == OWN_CLASSES and record.verdict == STOPPED
    assert record.stopped.node == DATA_GATE and record.stopped.stop_message.startswith("DataGateError: ")
    capsys.readouterr()
    assert main(["report", "--pipeline-root", config.run.pipeline_root]) == 0
    assert f"Stopped by {DATA_GATE}: DataGateError: " in capsys.readouterr().out
    assert main(["report", "--pipeline-root", config.run.pipeline_root, "--html", str(tmp_path / "own.html")]) == 0
    seen = _open_in_browser(tmp_path / "own.html", "report-own-class-table")
    assert record.stopped.stop_message in seen.text
    table = seen.text[seen.text.index("class\ttrain\tvalidation\ttest"):]
    assert [table.index(f"\n{name}\t") for name in config.class_names] == sorted(
        table.index(f"\n{name}\t") for name in config.class_names), "the patches table is not in the run's order"
    # The gate stopped the run without a report: its figures are measured again, under the run's own class table.
    moved = re.findall(r"^train vs test\t.*\t(\w+): [\d.]+ % vs", seen.text, re.MULTILINE)
    assert moved and moved[0] in config.class_names
