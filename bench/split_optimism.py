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

import numpy as np

from foundation.config import PROJECT_DIR, TEST, VALIDATION, Config
from foundation.environment import prepare_tensorflow
from foundation.scene_folder import SPAN_PREFIX

UNSEEN_SEED = 100
OLD_COMMIT = "92daea8"  # the last commit before issue 9: two splits, no masks, no buffer


def _pushed(pipeline_root: Path) -> str:
    serving = pipeline_root / "serving"
    (version,) = sorted(os.listdir(serving))
    return str(serving / version)


def _gate_recalls(pipeline_root: Path, config: Config) -> list[float]:
    """The argmax recall per class index that the run's Evaluator judged."""
    import tensorflow_model_analysis as tfma

    (evaluation,) = sorted(pipeline_root.glob("Evaluator/evaluation/*"))
    (overall,) = [m for m in tfma.load_metrics(str(evaluation)) if not m.slice_key.single_slice_keys]
    recalls = {item.key.sub_key.class_id.value: item.value.double_value.value
               for item in overall.metric_keys_and_values
               if item.key.name == "argmax_recall" and not item.key.model_name.endswith("baseline")
               and not item.key.is_diff}
    return [recalls[k] for k in range(len(config.class_ids))]


def _recalls(model_dir: str, serialized: list[bytes], labels: np.ndarray, config: Config) -> list[float]:
    import tensorflow as tf

    from foundation.published import PROBABILITIES, SERVING_SIGNATURE
    from models.metrics import argmax_recalls

    serve = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    probabilities = np.concatenate([serve(examples=tf.constant(serialized[i:i + 4096]))[PROBABILITIES].numpy()
                                    for i in range(0, len(serialized), 4096)])
    return argmax_recalls(np.searchsorted(config.class_ids, labels), probabilities, len(config.class_ids)).tolist()


def _unseen_examples(data_root: Path, config: Config) -> tuple[list[bytes], np.ndarray]:
    """Every labelled pixel with a valid window in every stream, of every scene, as serving would get them."""
    from components.patches import encode_examples
    from components.scene_example_gen import sample_scene

    everything = config.replace({"ingest.max_per_class": 0})
    serialized, labels = [], []
    for scene in sorted(p for p in data_root.glob(f"{SPAN_PREFIX}*/*") if p.is_dir()):
        rasters, rows, cols, _ = sample_scene(str(scene), everything)
        serialized += encode_examples(rasters, rows, cols, everything)
        labels.append(rasters.labels[rows, cols])
    return serialized, np.concatenate(labels)


def _split_examples(pipeline_root: Path, split: str) -> tuple[list[bytes], np.ndarray]:
    import tensorflow as tf

    from transforms.features import LABEL

    (examples,) = sorted(pipeline_root.glob("SceneExampleGen/examples/*"))
    files = sorted(str(f) for f in (examples / f"Split-{split}").glob("*.gz"))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = tf.io.parse_example(serialized, {LABEL: tf.io.FixedLenFeature([], tf.int64)})[LABEL].numpy()
    return serialized, labels


def main(argv: list[str] | None = None) -> int:
    prepare_tensorflow()
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
    serialized, labels = _unseen_examples(unseen, config)
    result = {"unseen_patches": len(labels), "classes": list(config.class_names)}
    for name, (_, root, _, _) in runs.items():
        result[name] = {"gate_split": _gate_recalls(root, config),
                        "unseen": _recalls(_pushed(root), serialized, labels, config)}
    for split in (VALIDATION, TEST):
        result["new"][split] = _recalls(_pushed(work / "new"), *_split_examples(work / "new", split), config)
    (work / "split_optimism.json").write_text(json.dumps(result, indent=1))
    print(f"| model | split | {' | '.join(config.class_names)} | macro |")
    print("|---" * (len(config.class_names) + 3) + "|")
    for name in runs:
        for split, recalls in result[name].items():
            print(f"| {name} | {split} | {' | '.join(f'{r:.3f}' for r in recalls)} | {np.mean(recalls):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
