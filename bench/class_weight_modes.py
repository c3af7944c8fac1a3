"""Which class-weight mode to default to: each mode on the default sample, per seed, through the real Evaluator.

    .venv/bin/python -m bench.class_weight_modes [--seeds 2] [--work-dir DIR]

Each seed gets its own data and pipeline root, so only Trainer and Evaluator re-run between modes; the per-class
and macro recall drop limits are lifted so no mode's verdict depends on the mode run before it.
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # `python -m bench.class_weight_modes` is an entry point: the switch goes before TensorFlow loads

from foundation.config import CLASS_WEIGHT_MODES, Config
from models.evaluation import read_evaluation
from pipeline.component_ids import EVALUATOR
from pipeline.summary import last_run
from synth.scenes import generate_sample


def measure(work_dir: Path, seeds: int) -> dict[str, list]:
    results = {mode: [] for mode in CLASS_WEIGHT_MODES}
    for seed in range(seeds):
        data = work_dir / f"data-seed{seed}"
        generate_sample(data, Config(), seed=seed)
        for mode in CLASS_WEIGHT_MODES:
            overrides = {"run.data_root": str(data), "run.pipeline_root": str(work_dir / f"root-seed{seed}"),
                         "model.class_weights": mode, "model.seed": seed, "gate.max_macro_recall_drop": 1.0,
                         "gate.max_class_recall_drop": 1.0}
            args = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
            subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *args], check=True, capture_output=True)
            config = Config().replace(overrides)
            (uri,) = [r.outputs["evaluation"][0].uri for r in last_run(config) if r.node == EVALUATOR]
            results[mode].append(read_evaluation(uri, config))
    return results


def table(results: dict[str, list]) -> str:
    lines = ["| mode | macro recall per seed | mean macro | lowest class recall per seed | blessed |",
             "|---|---|---|---|---|"]
    for mode, runs in results.items():
        lines.append(f"| {mode} | {', '.join(f'{r.macro_recall:.3f}' for r in runs)} | "
                     f"{statistics.mean(r.macro_recall for r in runs):.3f} | "
                     f"{', '.join(f'{min(r.per_class_recall.values()):.3f}' for r in runs)} | "
                     f"{sum(r.blessed for r in runs)}/{len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="terrafuse-class-weights-"))
    print(table(measure(work_dir, args.seeds)))


if __name__ == "__main__":
    main()
