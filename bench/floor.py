"""The floor: the pipeline's work done by a plain script, to show what the TFX orchestration costs.

It reads the same scenes (the newest span, resolved by TFX's own span logic on the same split pattern), samples
the same valid pixels and deals the same blocks to train, validation and test with the same buffer (ingestion's
own `scene_patches`, `split_fractions` and `plan_splits`), z-scores every band and LiDAR channel on its training
statistics in numpy (after the same per-channel clip/log step as the Transform), trains the same CNN on the same
augmented batches (the Trainer's own rotations, reflections and stream dropout, models/augmentation.py) with the
same epochs, batch size, class weights, seed, shuffling and early stopping on the validation split, and measures
argmax recall on the test split. Left out on purpose: tf.Example encoding, statistics, schema, skew and drift
validation, the SavedModel export and TFMA.

`--epochs-exactly N` trains exactly N epochs, without early stopping. The bench passes the epochs the compared
pipeline run's Trainer ran: early stopping ends the two fits at different epochs (at 16x once 13 against 25), and
then pipeline / floor compares amounts of training instead of what the orchestration costs.

    python -m bench.floor --data-root data/sample --set model.epochs=3 --json floor.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # `python -m bench.floor` is an entry point: the switch goes before TensorFlow loads

import numpy as np
import tensorflow as tf
import tf_keras
from tfx.components.example_gen import utils as example_gen_utils
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from components.scene_example_gen import BUFFER_DROPPED, SceneExampleGen, plan_splits, scene_patches, split_fractions
from components.scenes import SceneError, scene_dirs
from foundation.config import SPLITS, TEST, TRAIN, VALIDATION, Config, load_config
from models.augmentation import training_augmentation
from models.class_weights import class_weights
from models.fused_cnn import STREAMS_BY_MODE, build_model
from models.metrics import argmax_recalls
from models.trainer import MAX_SHUFFLE_BUFFER, VAL_MACRO_RECALL, MacroRecallCallback
from transforms.features import LIDAR_PREFIX, MULTISPECTRAL, layout
from transforms.preprocessing import lidar_pretransform


@dataclass
class Patches:
    """Every patch the pipeline keeps: (N, channels, P*P) values in feature-layout order."""

    values: np.ndarray
    label_index: np.ndarray  # position of the class id in the class table
    split: np.ndarray  # split name per patch (one of SPLITS)
    buffer_dropped: int  # patches left out because their window reached into another split's block


def scene_folders(config: Config) -> list[str]:
    """The scene folders SceneExampleGen reads: the newest span matched by the same input config."""
    component = SceneExampleGen(config)
    input_config = proto_utils.json_to_proto(component.exec_properties["input_config"], example_gen_pb2.Input())
    input_base = component.exec_properties["input_base"]
    example_gen_utils.calculate_splits_fingerprint_span_and_version(input_base, input_config.splits)
    (split,) = input_config.splits
    return scene_dirs(fileio.glob(str(Path(input_base) / split.pattern)))


def read_patches(config: Config) -> Patches:
    """Same scenes, same valid sampled pixels (same seed per scene), same split plan and buffer as ingestion."""
    index_of = {class_id: i for i, class_id in enumerate(config.class_ids)}
    errors, summaries, unit_counts, scenes = [], [], [], []
    for folder in scene_folders(config):
        try:
            scene = scene_patches(folder, config)
        except SceneError as err:  # plan_splits fails on it (or leaves it out), as ingestion does
            errors.append(err)
            continue
        summaries.append(scene.summary)
        unit_counts.append(scene.unit_counts)
        scenes.append((scene.summary.scene_id, scene.labels, scene.units,
                       scene.patch_values(config.ingest.patch_size)))
    # Each split's share from SceneExampleGen's own output config, as its executor reads it.
    output_config = proto_utils.json_to_proto(SceneExampleGen(config).exec_properties["output_config"],
                                              example_gen_pb2.Output())
    plan = plan_splits(errors, summaries, unit_counts, split_fractions(output_config), config)
    values, label_index, split = [], [], []
    dropped = 0
    for scene_id, labels, units, patches in scenes:
        index = np.array([plan.split_index((scene_id, label, touched))
                          for label, touched in zip(labels.tolist(), units)], np.int64)
        dropped += int(np.count_nonzero(index == BUFFER_DROPPED))
        kept = index < len(SPLITS)
        values.append(patches[kept])
        label_index.append([index_of[label] for label in labels[kept].tolist()])
        split.append(np.array(SPLITS)[index[kept]])
    return Patches(np.concatenate(values), np.concatenate(label_index).astype(np.int64), np.concatenate(split),
                   dropped)


def normalise(patches: Patches, config: Config) -> np.ndarray:
    """Per-channel z-score on the training split's statistics, as tft.scale_to_z_score does in the Transform."""
    if config.transform.normalization != "per_stream":  # the "none" ablation: raw values, as the Transform
        return patches.values
    lay = layout(config)
    train = patches.split == TRAIN
    out = np.empty_like(patches.values)
    for channel, name in enumerate(lay.stream_features):
        values = patches.values[:, channel]
        if name in lay.lidar:
            values = lidar_pretransform(name[len(LIDAR_PREFIX):], config)(tf.constant(values)).numpy()
        mean = values[train].mean(dtype=np.float64)
        std = values[train].std(dtype=np.float64)
        out[:, channel] = (values - mean) / std if std > 0 else values - mean
    return out


def model_inputs(values: np.ndarray, config: Config) -> dict[str, np.ndarray]:
    """(N, C, P*P) -> one (N, P, P, channels) array per stream the model uses, as the Transform stacks them."""
    lay = layout(config)
    n_ms = len(lay.multispectral)
    by_stream = {}
    for stream in STREAMS_BY_MODE[config.model.streams]:
        channels = slice(0, n_ms) if stream == MULTISPECTRAL else slice(n_ms, None)
        by_stream[stream] = np.ascontiguousarray(
            values[:, channels].transpose(0, 2, 1).reshape(-1, *lay.stream_shape(stream)))
    return by_stream


def training_data(values: np.ndarray, patches: Patches, config: Config) -> tf.data.Dataset:
    """The training split as the Trainer feeds it: shuffled across the split, batched, and (with `model.augment`)
    under the Trainer's own augmentation, rotations, reflections and stream dropout."""
    train = patches.split == TRAIN
    data = (tf.data.Dataset.from_tensor_slices((model_inputs(values[train], config), patches.label_index[train]))
            .shuffle(min(int(train.sum()), MAX_SHUFFLE_BUFFER), seed=config.model.seed, reshuffle_each_iteration=True)
            .batch(config.model.batch_size))
    if config.model.augment:
        data = data.map(lambda inputs, label: (training_augmentation(inputs, config), label),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def train_and_evaluate(values: np.ndarray, patches: Patches, config: Config, epochs_exactly: int | None = None) -> dict:
    """The Trainer's fit (same model, augmentation, weights, epochs, batch, seed, shuffle, early stopping on the
    validation split, best validation epoch restored), then argmax recall on the test split, the Evaluator's data.

    With `epochs_exactly`, that many epochs and no early stopping: the patience is the epoch count, so the callback
    never stops the fit and only restores the best epoch, as the Trainer's does."""
    timings = {}
    started = time.perf_counter()
    num_classes = len(config.class_ids)
    train, validation, test = (patches.split == name for name in (TRAIN, VALIDATION, TEST))
    train_counts = np.bincount(patches.label_index[train], minlength=num_classes)
    weights = class_weights(dict(zip(config.class_ids, train_counts.tolist())), config.class_ids,
                            config.model.class_weights, config.model.effective_number_beta)
    tf_keras.utils.set_random_seed(config.model.seed)
    batch = config.model.batch_size
    train_data = training_data(values, patches, config)
    validation_data = tf.data.Dataset.from_tensor_slices(
        (model_inputs(values[validation], config), patches.label_index[validation])).batch(batch)
    epochs = epochs_exactly or config.model.epochs
    patience = epochs_exactly or config.model.early_stopping_patience
    model = build_model(config)
    history = model.fit(
        train_data, validation_data=validation_data, epochs=epochs, verbose=0, class_weight=weights,
        callbacks=[MacroRecallCallback(validation_data, num_classes),
                   tf_keras.callbacks.EarlyStopping(monitor=VAL_MACRO_RECALL, mode="max", patience=patience,
                                                    restore_best_weights=True)])
    timings["train"] = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = model.predict(model_inputs(values[test], config), batch_size=batch, verbose=0)
    recalls = argmax_recalls(patches.label_index[test], probabilities, num_classes)
    predicted = np.bincount(np.argmax(probabilities, axis=-1), minlength=num_classes)
    timings["evaluate"] = time.perf_counter() - started
    return {
        "seconds": timings,
        "epochs_run": len(history.history[VAL_MACRO_RECALL]),
        "early_stopping": epochs_exactly is None,
        "per_class_recall": dict(zip(config.class_names, recalls.tolist())),
        "macro_recall": float(np.mean(recalls)),
        "majority_prediction_share": float(predicted.max() / predicted.sum()),
    }


def run_floor(config: Config, epochs_exactly: int | None = None) -> dict:
    """Everything the floor does, with the seconds each stage took."""
    started = time.perf_counter()
    patches = read_patches(config)
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    values = normalise(patches, config)
    normalise_seconds = time.perf_counter() - started
    result = train_and_evaluate(values, patches, config, epochs_exactly)
    result["seconds"] = {"read": read_seconds, "normalise": normalise_seconds, **result["seconds"]}
    result["seconds"]["total"] = sum(result["seconds"].values())
    result["examples"] = {name: int(np.count_nonzero(patches.split == name)) for name in SPLITS}
    result["buffer_dropped"] = patches.buffer_dropped
    return result


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of epochs")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML or JSON config file, as for `terrafuse run`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--data-root", help="folder of span-NNNN/SCENE/ folders (run.data_root)")
    parser.add_argument("--epochs-exactly", type=positive_int, metavar="N",
                        help="train exactly N epochs, without early stopping (the bench: the compared run's epochs)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    overrides = args.overrides + ([f"run.data_root={args.data_root}"] if args.data_root else [])
    result = run_floor(load_config(args.config, overrides), args.epochs_exactly)
    seconds = ", ".join(f"{stage} {value:.1f} s" for stage, value in result["seconds"].items())
    print(f"floor: {result['examples']} examples, {result['epochs_run']} epochs; {seconds}")
    recalls = ", ".join(f"{name} {value:.3f}" for name, value in result["per_class_recall"].items())
    print(f"{TEST} argmax recall: {recalls}; macro {result['macro_recall']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
