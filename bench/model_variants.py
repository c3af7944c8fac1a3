"""`python -m bench.model_variants --offset 200 [--seeds 0 1 2] [--work-dir D] [--set key=value ...]`: one model
variant on unseen scenes, fast enough to compare many (how docs/design-notes.md chose stream dropout).

Per data seed, the default pipeline runs once (ingestion, statistics, Transform; kept in the work folder); the
variant is then `models.trainer.run_fn` on that Transform output with the overrides, scored through its exported
serving signature on every labelled pixel with a valid window of scenes of generator seed + `--offset`, next to
boosted trees on the centre pixels of the same training examples. Choose on one offset and report on another: the
benchmark's quality section uses bench.settings.UNSEEN_SEED_OFFSET, which this must not be.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.settings import UNSEEN_SEED_OFFSET
from foundation.config import SPLITS, TEST, TRAIN, VALIDATION, Config, load_config
from foundation.environment import prepare_tensorflow
from foundation.published import read_training_record
from synth.scenes import generate_sample


def prepared(work: Path, seed: int, offset: int) -> tuple[Path, Path]:
    """The pipeline root of data seed `seed` (the default config, run once) and its unseen scenes."""
    from pipeline.local import run_local

    data, root, unseen = work / f"data-{seed}", work / f"root-{seed}", work / f"unseen-{seed + offset}"
    config = Config().replace({"model.seed": seed, "run.data_root": str(data), "run.pipeline_root": str(root),
                               "run.serving_dir": str(root / "serving")})
    if not data.exists():
        generate_sample(data, config, seed=seed)
    if not (root / "Transform").exists():
        run_local(config)
    if not unseen.exists():
        generate_sample(unseen, config, seed=seed + offset)
    return root, unseen


def score_variant(root: Path, unseen: Path, config: Config, model_dir: Path) -> dict:
    """Trains the variant on the root's Transform output and scores it and boosted trees on the unseen scenes."""
    from bench.pixel_baselines import centre_pixels, fit, pixel_features, predict, recalls
    from bench.scoring import model_recalls, split_examples, unseen_examples
    from models.fused_cnn import STREAMS_BY_MODE
    from models.trainer import run_fn

    (examples,) = sorted(root.glob("Transform/transformed_examples/*"))
    (graph,) = sorted(root.glob("Transform/transform_graph/*"))
    counts = {}
    for split in SPLITS:
        ids, n = np.unique(split_examples(root, split)[1], return_counts=True)
        counts[split] = {str(int(i)): int(c) for i, c in zip(ids, n)}
    run_fn(SimpleNamespace(custom_config={"config": config.to_dict()}, hyperparameters=counts,
                           train_files=[str(examples / f"Split-{TRAIN}" / "*.gz")],
                           eval_files=[str(examples / f"Split-{VALIDATION}" / "*.gz")],
                           transform_graph_path=str(graph), serving_model_dir=str(model_dir),
                           model_run_dir=str(model_dir) + "-logs"))
    serialized, labels = unseen_examples(unseen, config)
    cnn = model_recalls(str(model_dir), serialized, labels, config)
    streams = STREAMS_BY_MODE[config.model.streams]
    train_values, train_labels = centre_pixels(split_examples(root, TRAIN)[0], config)
    trees = fit("boosted_trees", pixel_features(train_values, config, streams), train_labels, config.model.seed)
    values, _ = centre_pixels(serialized, config)
    baseline = recalls(labels, predict(trees, pixel_features(values, config, streams)), config)
    test = model_recalls(str(model_dir), *split_examples(root, TEST), config)
    return {"unseen": np.round(cnn, 3).tolist(), "unseen_macro": round(float(np.mean(cnn)), 4),
            "boosted_trees_unseen_macro": round(float(np.mean(baseline)), 4),
            "test_macro": round(float(np.mean(test)), 4),
            "epochs_run": read_training_record(str(model_dir))["epochs_run"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offset", type=int, required=True, help="unseen scenes: generator seed = data seed + this")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work-dir", type=Path, help="kept between calls: the pipeline runs are reused")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="the variant's model.* overrides (the Transform output is the default config's)")
    args = parser.parse_args(argv)
    if not all(override.startswith("model.") for override in args.set):
        parser.error("only model.* settings vary here: the data and the Transform output are the default config's")
    if args.offset == UNSEEN_SEED_OFFSET:
        parser.error(f"--offset {UNSEEN_SEED_OFFSET} is the benchmark's reporting offset: choose on other scenes")
    prepare_tensorflow()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="terrafuse-variants-"))
    variant = load_config(None, args.set)
    rows = []
    for seed in args.seeds:
        root, unseen = prepared(work, seed, args.offset)
        config = variant.replace({"model.seed": seed})
        (work / "models").mkdir(exist_ok=True)
        model_dir = Path(tempfile.mkdtemp(prefix=f"seed{seed}-", dir=work / "models"))
        rows.append({"seed": seed, **score_variant(root, unseen, config, model_dir)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"overrides": args.set, "mean_unseen_macro": round(float(np.mean(
        [r["unseen_macro"] for r in rows])), 4), "lowest_seed": min(r["unseen_macro"] for r in rows),
        "class_means": np.round(np.mean([r["unseen"] for r in rows], axis=0), 3).tolist()}))


if __name__ == "__main__":
    main()
