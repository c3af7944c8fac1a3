"""`python -m bench.kubeflow_spec`: compile time, spec size, and the compiled spec run against LocalDagRunner.

On the Kubeflow slow test's data (2 spans x 3 scenes of 96 px, `ingest.block_size: 16`, `model.epochs: 3`):
imports and compile of `terrafuse kubeflow compile`, the spec's size and tasks, then the spec executed task by
task with tests/kfp_launcher.py (a first run, then a rerun without a new span), and `run_local` on the same data
and config in a fresh process. Prints JSON (and writes it to --json); docs/benchmarks.md records the numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # `python -m bench.kubeflow_spec` is an entry point: the switch goes before TensorFlow loads

from foundation.config import Config
from synth.scenes import generate_sample
from tests.kfp_launcher import Launcher


def measure(work: Path) -> dict[str, Any]:
    generate_sample(work / "data", Config(), spans=2, scenes_per_span=3, size=96, seed=1)
    config = Config().replace({"ingest.block_size": 16, "model.epochs": 3, "run.data_root": str(work / "data"),
                               "run.pipeline_root": str(work / "kubeflow"),
                               "kubeflow.spec_file": str(work / "terrafuse.yaml")})
    started = time.perf_counter()
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner  # noqa: F401  (imports timed apart)

    from pipeline.dag import create_pipeline  # noqa: F401
    from pipeline.kfp_client import load_spec
    from pipeline.kfp_compile import compile_pipeline

    imported = time.perf_counter()
    spec_file = compile_pipeline(config)
    compiled = time.perf_counter()
    spec = load_spec(config)
    executors = spec["deploymentSpec"]["executors"].values()

    launcher = Launcher(spec_file, config.run.pipeline_root)
    runs = {"first": launcher.run(), "no_new_span": launcher.run()}

    from bench.measure import run_pipelines

    local_config = config.replace({"run.pipeline_root": str(work / "local")})
    local_process, (local,) = run_pipelines([local_config], work, "local", record=False)
    first = runs["first"].seconds
    return {
        "import_seconds": imported - started,
        "compile_seconds": compiled - imported,
        "spec_bytes": spec_file.stat().st_size,
        "spec_lines": len(spec_file.read_text().splitlines()),
        "tasks": len(spec["root"]["dag"]["tasks"]),
        "container_executors": sum("container" in executor for executor in executors),
        "launcher": {name: {"ok": run.ok, "seconds": run.seconds, "states": run.states(),
                            "task_seconds": {task: t.seconds for task, t in run.tasks.items()}}
                     for name, run in runs.items()},
        "local": {"ok": local["ok"], "process_seconds": local_process.seconds,
                  "pipeline_seconds": local["pipeline_seconds"]},
        "launcher_over_local_process": first / local_process.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kubeflow_spec", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, help="data, pipeline roots and logs (default: a new temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the numbers here (TFX's wheel builds print to stdout)")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="terrafuse-kubeflow-bench-"))
    text = json.dumps(measure(work), indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
