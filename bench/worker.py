"""Runs pipeline configurations one after another in this process, as `terrafuse run` would.

The bench starts it as a subprocess, so process wall time and peak memory are those of a `terrafuse run`
(TFX imports included). With --record it also reads each run's record from ML Metadata right after the run,
before the next run in the same pipeline root makes it no longer the newest (the bench's own reading then
costs this process time, so timed single runs leave it to the caller).

    python -m bench.worker JOB.json RESULT.json [--record]    # JOB.json: a list of Config.to_dict()
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from typing import Any

import pipeline  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tfx.utils import path_utils

from components.data_gate import GATE_REPORT_PROPERTY
from models.evaluation import read_evaluation
from models.trainer import read_training_record
from pipeline.config import Config
from pipeline.local import run_local
from pipeline.summary import ComponentRun, last_run


def _artifact(runs: list[ComponentRun], node: str, key: str):
    found = [run.outputs[key][0] for run in runs if run.node == node and run.outputs.get(key)]
    return found[0] if found else None


def _maxrss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # KiB on Linux


def record(config: Config) -> dict[str, Any]:
    """The newest run under the config's pipeline root: components with state and seconds, the gate's label
    counts, the training record and the evaluation."""
    runs = last_run(config)
    result: dict[str, Any] = {
        "components": [{"node": r.node, "state": r.state, "seconds": r.seconds} for r in runs],
        "label_counts": None,
        "training": None,
        "evaluation": None,
    }
    gate = _artifact(runs, "DataGate", "training_labels")
    if gate is not None and GATE_REPORT_PROPERTY in gate.custom_properties:
        report = json.loads(gate.custom_properties[GATE_REPORT_PROPERTY].string_value)
        result["label_counts"] = report["label_counts"]
    model = _artifact(runs, "Trainer", "model")
    if model is not None:
        training = read_training_record(path_utils.serving_model_path(model.uri))
        result["training"] = {key: training.get(key) for key in ("epochs_run", "best_epoch", "label_counts", "seconds")}
    evaluation = _artifact(runs, "Evaluator", "evaluation")
    if evaluation is not None:
        result["evaluation"] = dataclasses.asdict(read_evaluation(evaluation.uri, config))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("job", help="JSON list of Config.to_dict()")
    parser.add_argument("out", help="JSON list of results, one per config, rewritten after every run")
    parser.add_argument("--record", action="store_true", help="add each run's record (see `record`)")
    args = parser.parse_args(argv)
    with open(args.job) as f:
        configs = [Config.from_dict(data) for data in json.load(f)]
    results = []
    for config in configs:
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
