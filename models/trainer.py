"""TFX Trainer module: train the fused CNN on Transform outputs and export a model that serves raw examples.

TFX finds `run_fn` by import path in the installed terrafuse package (local runs, and Kubeflow with
`kubeflow.module_source: image`) or, with `wheel`, imports this file as the top-level module `trainer` from a
wheel of its folder; so project code is imported by absolute package name.

Inputs from the DAG: `fn_args.hyperparameters` is the data gate's label counts
{"train": {"<class id>": n}, "validation": {...}, "test": {...}}, the data's provenance
{"data": {"span", "input_fingerprint"}} and the training split's feature statistics ("train_statistics", kept in
the training record for the next span's drift check); `fn_args.custom_config` holds `config` (`Config.to_dict()`)
and `serving_dir`. `fn_args.eval_files` is the validation split: training runs `model.epochs` full passes
(TrainArgs.num_steps is not used) and keeps the epoch with the best validation macro argmax recall, the quantity
the Evaluator gates on. The test split is never seen here: it is the Evaluator's alone.

No new data, no training: when the model serving now was trained on the same span and input fingerprint with
the same training config, the Trainer copies it instead of fitting (the compiled Kubeflow spec re-runs ingestion
every time, `_ingest_every_run` in pipeline/kfp_compile.py, so KFP's cache cannot skip the Trainer;
LocalDagRunner's cache usually does first).

The exported SavedModel has three signatures, the first two on serialized raw tf.Examples:
- `serving_default` (examples without label or metadata) -> probabilities [N, K], class_index and
  class_id [N]; it runs the Transform graph itself, so TF Serving needs nothing else.
- `transform_features` (examples with label) -> Transform outputs; the Evaluator uses it to get the
  label index (see models/evaluation.py).
- `map_tile` (raw tile of per-pixel values) -> probabilities of every window in it: the same Transform graph and
  weights run over the tile by `tile_model`, for `pipeline/predict.py` (contract in foundation/published.py).
The training record (foundation/published.py: where it lives, what it holds, the reuse key) goes into
`assets.extra/` beside the model.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # TFX loads this module file in its own processes: it is an entry point too

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras
from tfx.utils import io_utils

from foundation.config import SPLITS, TRAIN, Config
from foundation.published import (CLASS_ID, CLASS_INDEX, MAP_INPUT, MAP_SIGNATURE, PROBABILITIES, SERVING_INPUT,
                                  SERVING_SIGNATURE, TRAIN_STATISTICS_KEY, TRAINING_DATA_KEY, TRAINING_KEY,
                                  TRANSFORM_SIGNATURE, reusable_model, training_key, write_training_record)
from models.augmentation import training_augmentation
from models.class_weights import class_weights
from models.fused_cnn import STREAMS_BY_MODE, build_model, tile_model
from models.metrics import argmax_recalls
from transforms.features import LABEL_INDEX, layout, raw_feature_spec

VAL_MACRO_RECALL = "val_macro_argmax_recall"
# Serialized 9x9 patches of 7 channels are ~2.5 kB: 100k of them stay well under the Trainer's memory.
MAX_SHUFFLE_BUFFER = 100_000


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    started = time.perf_counter()
    if not fn_args.custom_config or "config" not in fn_args.custom_config:
        raise ValueError('Trainer needs custom_config={"config": Config.to_dict()}')
    if not fn_args.hyperparameters or not set(SPLITS) <= set(fn_args.hyperparameters):
        raise ValueError(f"Trainer needs the data gate's label counts per split as hyperparameters: {list(SPLITS)}")
    config = Config.from_dict(fn_args.custom_config["config"])
    data = fn_args.hyperparameters.get(TRAINING_DATA_KEY)
    key = training_key(data, fn_args.custom_config["config"], fn_args.custom_config.get("code"))
    reusable = reusable_model(fn_args.custom_config.get("serving_dir"), key)
    if reusable:
        logging.warning("No new data: the serving model %s was trained on span %s (input fingerprint %s) with this "
                        "training config; reusing it, nothing is trained", reusable, data["span"],
                        data["input_fingerprint"])
        io_utils.copy_dir(reusable, fn_args.serving_model_dir)
        return
    counts = {split: _counts_by_id(fn_args.hyperparameters[split], config) for split in SPLITS}
    weights = class_weights(counts[TRAIN], config.class_ids, config.model.class_weights,
                            config.model.effective_number_beta)
    for index, (class_id, name) in enumerate(zip(config.class_ids, config.class_names)):
        logging.info("class %s (id %d): %d training examples, weight %.4f (%s)",
                     name, class_id, counts[TRAIN][class_id], weights[index], config.model.class_weights)

    tf_keras.utils.set_random_seed(config.model.seed)
    transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    streams = STREAMS_BY_MODE[config.model.streams]
    train = _dataset(fn_args.train_files, transform_output, config, streams,
                     shuffle_buffer=min(sum(counts[TRAIN].values()), MAX_SHUFFLE_BUFFER), augment=config.model.augment)
    validation = _dataset(fn_args.eval_files, transform_output, config, streams, shuffle_buffer=0)

    with training_strategy().scope():
        model = build_model(config)
    fit_started = time.perf_counter()
    history = model.fit(
        train,
        validation_data=validation,
        epochs=config.model.epochs,
        verbose=2,  # one line per epoch: progress bars flood the pipeline's log
        class_weight=weights,
        callbacks=[
            MacroRecallCallback(validation, len(config.class_ids)),
            tf_keras.callbacks.EarlyStopping(monitor=VAL_MACRO_RECALL, mode="max",
                                             patience=config.model.early_stopping_patience,
                                             restore_best_weights=True),
            tf_keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        ],
    )
    fit_seconds = time.perf_counter() - fit_started
    best_epoch = int(np.argmax(history.history[VAL_MACRO_RECALL]))
    record = {
        "class_table": [{"index": i, "id": c.id, "name": c.name} for i, c in enumerate(config.classes)],
        "label_counts": {split: {str(k): v for k, v in c.items()} for split, c in counts.items()},
        TRAINING_DATA_KEY: data,
        TRAIN_STATISTICS_KEY: fn_args.hyperparameters.get(TRAIN_STATISTICS_KEY),
        TRAINING_KEY: key,
        "class_weights": {"mode": config.model.class_weights, "beta": config.model.effective_number_beta,
                          "by_class_id": {str(config.class_ids[i]): w for i, w in weights.items()}},
        "epochs_run": len(history.history[VAL_MACRO_RECALL]),
        "best_epoch": best_epoch + 1,
        "best_val_macro_argmax_recall": history.history[VAL_MACRO_RECALL][best_epoch],
        "config": config.to_dict(),
        # where run_fn's time goes (the export follows, and is the rest of it)
        "seconds": {"before_fit": fit_started - started, "fit": fit_seconds},
    }
    export_serving_model(model, transform_output, config, fn_args.serving_model_dir, record)


def training_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over the visible GPUs, TensorFlow's default strategy without one (on one CPU there is
    nothing to mirror). TFX runs the Trainer as a single worker, so multi-worker strategies are out of reach."""
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    return tf.distribute.MirroredStrategy(gpus) if gpus else tf.distribute.get_strategy()


class MacroRecallCallback(tf_keras.callbacks.Callback):
    """Adds the validation split's macro argmax recall to the epoch logs, for early stopping and TensorBoard.

    Must come before the callbacks that read it. A class absent from the validation split is left out of the
    mean here (training goes on); the Evaluator's gate, on the test split, judges every class.
    """

    def __init__(self, validation: tf.data.Dataset, num_classes: int):
        super().__init__()
        self._validation = validation
        self._num_classes = num_classes

    def on_epoch_end(self, epoch, logs=None):
        labels, probabilities = [], []
        for features, label in self._validation:
            probabilities.append(self.model(features, training=False).numpy())
            labels.append(label.numpy())
        recalls = argmax_recalls(np.concatenate(labels), np.concatenate(probabilities), self._num_classes)
        logging.info("epoch %d validation argmax recall per class: %s", epoch + 1, np.round(recalls, 3).tolist())
        logs[VAL_MACRO_RECALL] = float(np.nanmean(recalls))


def _counts_by_id(split_counts: dict[str, Any], config: Config) -> dict[int, int]:
    by_id = {int(class_id): int(n) for class_id, n in split_counts.items()}
    return {class_id: by_id.get(class_id, 0) for class_id in config.class_ids}


def _model_inputs(features: dict[str, tf.Tensor], config: Config, streams) -> dict[str, tf.Tensor]:
    lay = layout(config)
    return {s: tf.reshape(tf.cast(features[s], tf.float32), [-1, *lay.stream_shape(s)]) for s in streams}


def _dataset(file_patterns, transform_output: tft.TFTransformOutput, config: Config, streams,
             shuffle_buffer: int, augment: bool = False) -> tf.data.Dataset:
    """(features, label index) batches from gzipped transformed TFRecords; with `augment`, each patch under a
    random rotation or reflection.

    Serialized records are cached and (for training) shuffled across the split (up to MAX_SHUFFLE_BUFFER)
    before batching: examples arrive grouped by scene, and a short buffer would feed batches of one scene.
    Parsing runs on batches, after `batch`.
    """
    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    files = sorted(f for pattern in patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no transformed examples match {patterns}")
    spec = transform_output.transformed_feature_spec()

    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        inputs = _model_inputs(parsed, config, streams)
        if augment:
            inputs = training_augmentation(inputs, config)
        return inputs, parsed[LABEL_INDEX]

    records = tf.data.TFRecordDataset(files, compression_type="GZIP").cache()
    if shuffle_buffer:
        records = records.shuffle(shuffle_buffer, seed=config.model.seed, reshuffle_each_iteration=True)
    return (records.batch(config.model.batch_size)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def export_serving_model(model: tf_keras.Model, transform_output: tft.TFTransformOutput, config: Config,
                         serving_model_dir: str, training_record: dict[str, Any]) -> None:
    """SavedModel with the `serving_default` and `transform_features` signatures, plus the training record."""
    model.tft_layer = transform_output.transform_features_layer()  # tracked, so its graph is saved
    streams = STREAMS_BY_MODE[config.model.streams]
    serving_spec = raw_feature_spec(config, with_label=False, with_metadata=False)
    evaluation_spec = transform_output.raw_feature_spec()
    class_ids = tf.constant(config.class_ids, dtype=tf.int64)
    examples = tf.TensorSpec([None], tf.string, name=SERVING_INPUT)

    @tf.function(input_signature=[examples])
    def serve(examples):
        transformed = model.tft_layer(tf.io.parse_example(examples, serving_spec))
        probabilities = model(_model_inputs(transformed, config, streams), training=False)
        class_index = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {PROBABILITIES: probabilities, CLASS_INDEX: class_index,
                CLASS_ID: tf.gather(class_ids, class_index)}

    @tf.function(input_signature=[examples])
    def transform_features(examples):
        return model.tft_layer(tf.io.parse_example(examples, evaluation_spec))

    lay = layout(config)
    tiles = tile_model(model, config)

    @tf.function(input_signature=[tf.TensorSpec([None, None, len(lay.stream_features)], tf.float32, name=MAP_INPUT)])
    def map_tile(tile):
        """The Transform graph takes [n, P*P] per feature and normalises value by value, so the tile's pixels go
        through it in rows of P*P and come back in the same order."""
        height, width = tf.shape(tile)[0], tf.shape(tile)[1]
        pixels = height * width
        rows = (pixels + lay.patch_values - 1) // lay.patch_values
        values = tf.pad(tf.reshape(tile, [pixels, len(lay.stream_features)]),
                        [[0, rows * lay.patch_values - pixels], [0, 0]])
        transformed = model.tft_layer({name: tf.reshape(values[:, i], [rows, lay.patch_values])
                                       for i, name in enumerate(lay.stream_features)})
        on_tile = {s: tf.reshape(tf.reshape(transformed[s], [-1, lay.stream_shape(s)[-1]])[:pixels],
                                 [1, height, width, lay.stream_shape(s)[-1]]) for s in streams}
        return {PROBABILITIES: tiles(on_tile, training=False)[0]}

    model.save(serving_model_dir, save_format="tf", include_optimizer=False,
               signatures={SERVING_SIGNATURE: serve, TRANSFORM_SIGNATURE: transform_features, MAP_SIGNATURE: map_tile})
    write_training_record(serving_model_dir, training_record)
