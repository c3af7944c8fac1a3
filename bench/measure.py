"""Measuring a fresh process (wall time, peak memory of its whole process tree) and describing the machine.

Pipeline runs and the floor run in subprocesses: a user's `terrafuse run` pays the TFX imports, and Beam's
multi_processing workers are child processes whose memory counts too. Predict runs in a subprocess of its own too,
this module's (`python -m bench.measure predict ...`, see predict_child): it imports what mapping imports and no
more (bench.worker's pipeline imports alone add about 240 MiB), so its peak memory is that of mapping.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from foundation.config import Config
from foundation.environment import prepare_tensorflow

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.1
VERSIONED_PACKAGES = ("tfx", "tensorflow", "apache-beam", "tensorflow-transform", "tensorflow-model-analysis",
                      "numpy")


class BenchError(RuntimeError):
    """A measurement that could not be taken; the message says where its log is."""


@dataclass
class ProcessMeasure:
    seconds: float
    peak_rss_mib: float  # largest sum of RSS over the process and its descendants, sampled every SAMPLE_SECONDS
    returncode: int


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_measured(args: list[str], log_path: Path, code: Path = REPO) -> ProcessMeasure:
    """`python ARGS` from the repository root, output to log_path; wall time and sampled peak tree memory. `code`:
    another tree of the project (an older commit's) whose packages the process imports first."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if code != REPO:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    peak = 0
    stop = threading.Event()
    with open(log_path, "w") as log:
        started = time.perf_counter()
        process = psutil.Popen([sys.executable, *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

        def sample() -> None:
            nonlocal peak
            while True:
                try:
                    peak = max(peak, _tree_rss(process))
                except psutil.NoSuchProcess:
                    return
                if stop.wait(SAMPLE_SECONDS):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = process.wait()
        seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
    return ProcessMeasure(seconds, peak / 2**20, returncode)


def run_pipelines(configs: list[Config], work: Path, name: str, record: bool,
                  judge_against_first: bool = False) -> tuple[ProcessMeasure, list[dict[str, Any]]]:
    """The configs run one after another in one fresh worker process (bench/worker.py); per run its result,
    with its record from ML Metadata if `record`. With `judge_against_first`, every later run's serving dir holds
    only a copy of the version the first run published (`bench.worker.serve_only`)."""
    job, out = work / "jobs" / f"{name}.json", work / "jobs" / f"{name}.result.json"
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(json.dumps([config.to_dict() for config in configs]))
    out.unlink(missing_ok=True)
    log = work / "logs" / f"{name}.log"
    flags = (["--record"] if record else []) + (["--judge-against-first"] if judge_against_first else [])
    measure = run_measured(["-m", "bench.worker", str(job), str(out), *flags], log)
    records = json.loads(out.read_text()) if out.exists() else []
    if measure.returncode != 0 or len(records) != len(configs):
        raise BenchError(f"{name}: worker exited {measure.returncode} after {len(records)} of {len(configs)} runs; "
                         f"see {log}")
    return measure, records


def run_floor(config: Config, work: Path, name: str, epochs: int) -> tuple[ProcessMeasure, dict[str, Any]]:
    """bench/floor.py on the config, in a fresh process, training exactly `epochs` epochs."""
    config_file, out = work / "jobs" / f"{name}.config.json", work / "jobs" / f"{name}.result.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config.to_json())
    out.unlink(missing_ok=True)
    log = work / "logs" / f"{name}.log"
    measure = run_measured(["-m", "bench.floor", "--config", str(config_file), "--epochs-exactly", str(epochs),
                            "--json", str(out)], log)
    if measure.returncode != 0 or not out.exists():
        raise BenchError(f"{name}: floor exited {measure.returncode}; see {log}")
    return measure, json.loads(out.read_text())


def run_predict(model_dir: str, scenes: list[str], work: Path, name: str, tile_size: int,
                warm_up: str | None = None) -> tuple[ProcessMeasure, dict[str, Any]]:
    """predict_child on the scenes in a fresh process: its own result, and the sampled peak of its process tree."""
    out = work / "jobs" / f"{name}.result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    log = work / "logs" / f"{name}.log"
    warm = ["--warm-up", warm_up] if warm_up else []
    measure = run_measured(["-m", "bench.measure", "predict", str(out), model_dir, str(work / "maps" / name),
                            "--tile-size", str(tile_size), *warm, *scenes], log)
    if measure.returncode != 0 or not out.exists():
        raise BenchError(f"{name}: predict exited {measure.returncode}; see {log}")
    return measure, json.loads(out.read_text())


def predict_child(argv: list[str]) -> int:
    """Loads the model, maps a warm-up scene (if given, into a folder of its own) and then the scenes, and writes
    what each took and this process's peak memory (exact, not sampled) after the model and at the end."""
    parser = argparse.ArgumentParser(prog="python -m bench.measure predict")
    parser.add_argument("result", type=Path)
    parser.add_argument("model_dir")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("scenes", nargs="+")
    parser.add_argument("--tile-size", type=int, required=True)
    parser.add_argument("--warm-up")
    args = parser.parse_args(argv)
    prepare_tensorflow()
    from pipeline.predict import load_map_model, predict_scenes

    started = time.perf_counter()
    model = load_map_model(args.model_dir)
    result: dict[str, Any] = {"model_dir": model.model_dir, "tile_size": args.tile_size,
                              "model_load_seconds": time.perf_counter() - started,
                              "peak_rss_mib_with_model": peak_rss_mib(), "warm_up": None}
    if args.warm_up:
        (warm,) = predict_scenes(model, [args.warm_up], args.out_dir / "warm-up", tile_size=args.tile_size,
                                 progress="off")
        result["warm_up"] = dataclasses.asdict(warm)
    mapped = predict_scenes(model, args.scenes, args.out_dir, tile_size=args.tile_size, progress="off")
    result.update(scenes=[{**dataclasses.asdict(scene), "macro_recall": scene.macro_recall} for scene in mapped],
                  peak_rss_mib=peak_rss_mib())
    args.result.write_text(json.dumps(result, indent=2))
    return 0


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM, of its own address space. Not ru_maxrss, which Linux carries over
    from the parent through fork and exec: a child of the bench (over 1 GiB with TensorFlow) reported the bench's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    raise BenchError("no VmHWM in /proc/self/status")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    """Read-only git (no optional index refresh, so a concurrent git command never meets our lock)."""
    try:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def code_and_date() -> dict[str, Any]:
    """The code being measured (commit, and how many tracked files differ from it) and the date, now."""
    modified = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_modified_tracked_files": len(modified.splitlines()) if modified != "unknown" else "unknown",
    }


def machine() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: importlib.metadata.version(name) for name in VERSIONED_PACKAGES},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        **code_and_date(),
    }


def command(argv: list[str]) -> str:
    """The command line that reproduces this run, from the repository root."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(REPO))
    except ValueError:
        shown = str(python)
    return shlex.join([shown, "-m", "bench.run", *argv])


if __name__ == "__main__":
    if sys.argv[1:2] != ["predict"]:
        sys.exit("usage: python -m bench.measure predict RESULT MODEL_DIR OUT_DIR SCENE... --tile-size N")
    sys.exit(predict_child(sys.argv[2:]))
