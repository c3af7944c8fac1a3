"""The two-stream CNN: one convolutional branch per sensor, fused by concatenating feature maps.

Built with `tf_keras` (TF 2.16's `tf.keras` is Keras 3, which the Transform layer and TFMA do not
load). The model holds no BatchNormalization and no input scaling on purpose: per-stream
normalisation is the Transform's job, and the `transform.normalization=none` ablation must be able to
reproduce the failure where the stream with the largest values dominates and the model collapses.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import tf_keras
from tensorflow.python.autograph.core import config as autograph_config
from tensorflow.python.autograph.core import config_lib as autograph_rules

from foundation.config import Config
from transforms.features import LIDAR, MULTISPECTRAL, layout

# AutoGraph leaves `keras` alone but not `tf_keras`: it re-converts hundreds of tf_keras functions when
# the train step is first traced, 16-23 s of a first epoch (measured; 2.5 s with this rule). There is no
# public switch for a whole package, hence the private rule list.
if not any(getattr(rule, "_prefix", None) == "tf_keras" for rule in autograph_config.CONVERSION_RULES):
    autograph_config.CONVERSION_RULES = (autograph_rules.DoNotConvert("tf_keras"),
                                         *autograph_config.CONVERSION_RULES)

STREAMS_BY_MODE = {"fused": (MULTISPECTRAL, LIDAR), "multispectral": (MULTISPECTRAL,), "lidar": (LIDAR,)}


def _seeds(seed: int) -> Iterator[int]:
    """A distinct, reproducible seed per layer: the same config always builds the same weights."""
    return itertools.count(seed * 1000 + 1)


def _kernel(seeds: Iterator[int]) -> tf_keras.initializers.Initializer:
    return tf_keras.initializers.GlorotUniform(seed=next(seeds))


def _branch(inputs, stream: str, config: Config, seeds: Iterator[int]):
    x = inputs
    for depth, filters in enumerate(config.model.branch_filters):
        x = tf_keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                   kernel_initializer=_kernel(seeds), name=f"{stream}_conv{depth}")(x)
    # One pooling step: the 9x9 patches are small and 'same' keeps any odd size (even 1x1) valid.
    return tf_keras.layers.MaxPooling2D(2, padding="same", name=f"{stream}_pool")(x)


def build_model(config: Config) -> tf_keras.Model:
    """Compiled softmax classifier over the K classes of the class table, one input per stream used."""
    streams = STREAMS_BY_MODE[config.model.streams]
    lay = layout(config)
    seeds = _seeds(config.model.seed)
    inputs = {s: tf_keras.Input(shape=lay.stream_shape(s), name=s, dtype="float32") for s in streams}
    branches = [_branch(inputs[s], s, config, seeds) for s in streams]
    x = branches[0] if len(branches) == 1 else tf_keras.layers.Concatenate(name="fusion")(branches)
    x = tf_keras.layers.Conv2D(config.model.fused_filters, 3, padding="same", activation="relu",
                               kernel_initializer=_kernel(seeds), name="fused_conv")(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if config.model.centre_pixel_path:
        margin = lay.patch_size // 2
        centres = [tf_keras.layers.Flatten(name=f"{s}_centre")(
            tf_keras.layers.Cropping2D(margin, name=f"{s}_centre_crop")(inputs[s])) for s in streams]
        x = tf_keras.layers.Concatenate(name="pooled_and_centre")([x, *centres])
    x = tf_keras.layers.Dense(config.model.dense_units, activation="relu",
                              kernel_initializer=_kernel(seeds), name="dense")(x)
    x = tf_keras.layers.Dropout(config.model.dropout, seed=next(seeds), name="dropout")(x)
    probabilities = tf_keras.layers.Dense(len(config.class_ids), activation="softmax",
                                          kernel_initializer=_kernel(seeds), name="probabilities")(x)
    model = tf_keras.Model(inputs=inputs, outputs=probabilities, name=f"terrafuse_{config.model.streams}")
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=config.model.learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model
