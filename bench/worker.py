"""Runs pipeline configurations one after another in this process, as `terrafuse run` would.

The bench starts it as a subprocess, so process wall time and peak memory are those of a `terrafuse run`
(TFX imports included). With --record it also reads each run's record from ML Metadata right after the run,
before the next run in the same pipeline root makes it no longer the newest (the bench's own reading then
costs this process time, so timed single runs leave it to the caller).

    python -m bench.worker JOB.json RESULT.json [--record] [--judge-against-first]
    # JOB.json: a list of Config.to_dict()
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # `python -m bench.worker` is an entry point: the switch goes before TensorFlow loads

from tfx.utils import path_utils

from components.baseline import BASELINE_COMPARABLE_PROPERTY, BASELINE_SOURCE_PROPERTY
from components.data_gate import GATE_REPORT_PROPERTY
from components.scene_example_gen import INGEST_REPORT_PROPERTY
from foundation.config import Config
from foundation.published import latest_published, read_training_record
from models import metrics
from models.evaluation import CHANGE, Check, failed_checks, read_evaluation, read_metric_values
from pipeline.component_ids import BASELINE, DATA_GATE, EVALUATOR, PUSHER, SCENE_EXAMPLE_GEN, TRAINER
from pipeline.local import run_local
from pipeline.summary import ComponentRun, last_run


def _artifact(runs: list[ComponentRun], node: str, key: str):
    found = [run.outputs[key][0] for run in runs if run.node == node and run.outputs.get(key)]
    return found[0] if found else None


# The kind of each gate check, as the ablation table names what refused a cell.
FLOOR, EXAMPLES, CLASS_DROP, MACRO_DROP, MAJORITY_EXCESS = "floor", "examples", "class drop", "macro drop", \
    "majority excess"
CHECK_KINDS = (FLOOR, EXAMPLES, CLASS_DROP, MACRO_DROP, MAJORITY_EXCESS)
_VALUE_CHECK_KIND = {metrics.ARGMAX_RECALL_NAME: FLOOR, metrics.CLASS_EXAMPLE_COUNT_NAME: EXAMPLES,
                     metrics.MAJORITY_EXCESS_NAME: MAJORITY_EXCESS}


def check_kind(check: Check) -> str:
    if check.bound == CHANGE:
        return MACRO_DROP if check.class_index is None else CLASS_DROP
    return _VALUE_CHECK_KIND.get(check.metric, check.metric)


def _failed_checks(evaluation_uri: str, config: Config) -> list[dict[str, Any]]:
    """Each check the gate's metric values fail: its kind, class (None: the whole test set), value and limit."""
    return [{"kind": check_kind(check),
             "class": None if check.class_index is None else config.class_names[check.class_index],
             "value": value, "limit": check.limit}
            for check, value in failed_checks(read_metric_values(evaluation_uri), config)]


def _property(artifact, name: str) -> Any:
    """A custom property's value (string or int), None when the artifact does not have it."""
    if artifact is None or name not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[name]
    return value.string_value if value.HasField("string_value") else value.int_value


def _maxrss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # KiB on Linux


def record(config: Config) -> dict[str, Any]:
    """The newest run under the config's pipeline root: components with state and seconds, ingestion's report,
    the gate's label counts, the training record and the trained model's folder, the baseline the Evaluator
    compared with, the evaluation with the kind of each failed check, and whether the model was pushed."""
    runs = last_run(config)
    result: dict[str, Any] = {
        "components": [{"node": r.node, "state": r.state, "seconds": r.seconds} for r in runs],
        "ingest_report": None,
        "label_counts": None,
        "training": None,
        "model_dir": None,
        "baseline": None,
        "evaluation": None,
        "failed_checks": None,
        "pushed": None,
    }
    ingested = _property(_artifact(runs, SCENE_EXAMPLE_GEN, "examples"), INGEST_REPORT_PROPERTY)
    if ingested:
        result["ingest_report"] = json.loads(ingested)
    gate = _property(_artifact(runs, DATA_GATE, "training_labels"), GATE_REPORT_PROPERTY)
    if gate:
        result["label_counts"] = json.loads(gate)["label_counts"]
    model = _artifact(runs, TRAINER, "model")
    if model is not None:
        result["model_dir"] = path_utils.serving_model_path(model.uri)
        training = read_training_record(result["model_dir"])
        result["training"] = {key: training.get(key) for key in ("epochs_run", "best_epoch", "label_counts", "seconds")}
    baseline = _artifact(runs, BASELINE, "baseline")
    if baseline is not None:
        result["baseline"] = {"source": _property(baseline, BASELINE_SOURCE_PROPERTY),
                              "comparable": bool(_property(baseline, BASELINE_COMPARABLE_PROPERTY))}
    evaluation = _artifact(runs, EVALUATOR, "evaluation")
    if evaluation is not None:
        result["evaluation"] = dataclasses.asdict(read_evaluation(evaluation.uri, config))
        result["failed_checks"] = _failed_checks(evaluation.uri, config)
    pushed = _artifact(runs, PUSHER, "pushed_model")
    if pushed is not None:
        result["pushed"] = bool(_property(pushed, "pushed"))
    return result


def serve_only(version: str | None, serving_dir: str) -> None:
    """Empties `serving_dir` and, given a published version folder, makes a copy of it its only version."""
    shutil.rmtree(serving_dir, ignore_errors=True)
    if version:
        shutil.copytree(version, Path(serving_dir) / Path(version).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("job", help="JSON list of Config.to_dict()")
    parser.add_argument("out", help="JSON list of results, one per config, rewritten after every run")
    parser.add_argument("--record", action="store_true", help="add each run's record (see `record`)")
    parser.add_argument("--judge-against-first", action="store_true",
                        help="before each later run, its serving dir is emptied and given a copy of the version the "
                             "first run published (if any): every later run is judged against exactly that model")
    args = parser.parse_args(argv)
    with open(args.job) as f:
        configs = [Config.from_dict(data) for data in json.load(f)]
    results = []
    for position, config in enumerate(configs):
        if args.judge_against_first and position:
            serve_only(latest_published(configs[0].serving_dir), config.serving_dir)
        started = time.perf_counter()
        ok = run_local(config)
        result = {"ok": ok, "pipeline_seconds": time.perf_counter() - started,
                  "maxrss_mib": _maxrss_mib(resource.RUSAGE_SELF),
                  "children_maxrss_mib": _maxrss_mib(resource.RUSAGE_CHILDREN)}
        results.append({**result, **record(config)} if args.record else result)
        with open(args.out, "w") as f:  # after every run: a crash later still leaves the runs before it
            json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
