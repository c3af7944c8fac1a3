"""How optimistic is the gate's split? `python -m bench.split_optimism [--old-commit REV] [--work DIR]`

Before issue 9 the Evaluator judged an `eval` split that also chose the best epoch, and whose 9 x 9 windows
reached into training blocks. This trains the old code (a git worktree of REV) and the current code on the same
default sample, and the current code with `ingest.split_by: scene` on a span of `--scene-split-scenes` scenes,
then scores each pushed model on scenes none of them saw (another generator seed, every labelled pixel with a
valid window) and prints, per class, the recall the gate judged against the recall on those unseen scenes.
Writes `split_optimism.json` into the work folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # `python -m bench.split_optimism` is an entry point: the switch goes before TensorFlow loads

import numpy as np

from bench.scoring import model_recalls, split_examples, unseen_examples
from foundation.config import PROJECT_DIR, TEST, VALIDATION, Config
from pipeline.component_ids import EVALUATOR

UNSEEN_SEED = 100
OLD_COMMIT = "92daea8"  # the last commit before issue 9: two splits, no masks, no buffer


def _pushed(pipeline_root: Path) -> str:
    serving = pipeline_root / "serving"
    (version,) = sorted(os.listdir(serving))
    return str(serving / version)


def _gate_recalls(pipeline_root: Path, config: Config) -> list[float]:
    """The argmax recall per class index that the run's Evaluator judged."""
    import tensorflow_model_analysis as tfma

    (evaluation,) = sorted(pipeline_root.glob(f"{EVALUATOR}/evaluation/*"))
    (overall,) = [m for m in tfma.load_metrics(str(evaluation)) if not m.slice_key.single_slice_keys]
    recalls = {item.key.sub_key.class_id.value: item.value.double_value.value
               for item in overall.metric_keys_and_values
               if item.key.name == "argmax_recall" and not item.key.model_name.endswith("baseline")
               and not item.key.is_diff}
    return [recalls[k] for k in range(len(config.class_ids))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.split_optimism", description=__doc__.splitlines()[0])
    parser.add_argument("--old-commit", default=OLD_COMMIT)
    parser.add_argument("--work", type=Path, default=Path("/tmp/terrafuse-split-optimism"))
    parser.add_argument("--scene-split-scenes", type=int, default=12)
    args = parser.parse_args(argv)
    from synth.scenes import generate_sample

    work = args.work.absolute()
    config = Config()
    data, unseen = work / "data", work / "unseen"
    many = work / "many-scenes"
    if not data.exists():
        generate_sample(data, config)
        generate_sample(unseen, config, seed=UNSEEN_SEED)
    if not many.exists():
        generate_sample(many, config, scenes_per_span=args.scene_split_scenes)
    old_tree = work / "old-code"
    if not old_tree.exists():
        subprocess.run(["git", "-C", str(PROJECT_DIR), "worktree", "add", "--detach", str(old_tree), args.old_commit],
                       check=True)
    runs = {"old": (old_tree, work / "old", data, []), "new": (PROJECT_DIR, work / "new", data, []),
            "new, split by scene": (PROJECT_DIR, work / "new-scene-split", many, ["--set", "ingest.split_by=scene"])}
    for name, (code, root, data_root, options) in runs.items():
        if not (root / "serving").exists():
            subprocess.run([sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())",
                            "run", "--data-root", str(data_root), "--pipeline-root", str(root), *options],
                           cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True)
    serialized, labels = unseen_examples(unseen, config)
    result = {"unseen_patches": len(labels), "classes": list(config.class_names)}
    for name, (_, root, _, _) in runs.items():
        result[name] = {"gate_split": _gate_recalls(root, config),
                        "unseen": model_recalls(_pushed(root), serialized, labels, config)}
    for split in (VALIDATION, TEST):
        result["new"][split] = model_recalls(_pushed(work / "new"), *split_examples(work / "new", split), config)
    (work / "split_optimism.json").write_text(json.dumps(result, indent=1))
    print(f"| model | split | {' | '.join(config.class_names)} | macro |")
    print("|---" * (len(config.class_names) + 3) + "|")
    for name in runs:
        for split, recalls in result[name].items():
            print(f"| {name} | {split} | {' | '.join(f'{r:.3f}' for r in recalls)} | {np.mean(recalls):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
