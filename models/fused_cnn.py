"""The two-stream CNN: one convolutional branch per sensor, fused by concatenating feature maps.

Built with `tf_keras` (TF 2.16's `tf.keras` is Keras 3, which the Transform layer and TFMA do not
load). The model holds no BatchNormalization and no input scaling on purpose: per-stream
normalisation is the Transform's job, and the `transform.normalization=none` ablation must be able to
reproduce the failure where the stream with the largest values dominates and the model collapses.

Fully convolutional, with a receptive field of exactly one patch (valid convolutions, then an average over
what they leave, then dense layers over the channel axis only): `tile_model` runs the same weights over a whole
tile and gives each pixel the class its own patch would get, which is how `pipeline/predict.py` maps scenes.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import tf_keras
from tensorflow.python.autograph.core import config as autograph_config
from tensorflow.python.autograph.core import config_lib as autograph_rules

from foundation.config import Config, convolved_patch_side, require_model_fits_patch
from transforms.features import LIDAR, MULTISPECTRAL, layout

# AutoGraph leaves `keras` alone but not `tf_keras`: it re-converts hundreds of tf_keras functions when
# the train step is first traced, 16-23 s of a first epoch (measured; 2.5 s with this rule). There is no
# public switch for a whole package, hence the private rule list.
if not any(getattr(rule, "_prefix", None) == "tf_keras" for rule in autograph_config.CONVERSION_RULES):
    autograph_config.CONVERSION_RULES = (autograph_rules.DoNotConvert("tf_keras"),
                                         *autograph_config.CONVERSION_RULES)

STREAMS_BY_MODE = {"fused": (MULTISPECTRAL, LIDAR), "multispectral": (MULTISPECTRAL,), "lidar": (LIDAR,)}


# A layer by name: `make(seeds)` builds it for a new model; a tile model takes the trained model's instead.
LayerSource = Callable[[str, Callable[[Iterator[int]], tf_keras.layers.Layer]], tf_keras.layers.Layer]


def _seeds(seed: int) -> Iterator[int]:
    """A distinct, reproducible seed per layer: the same config always builds the same weights."""
    return itertools.count(seed * 1000 + 1)


def _kernel(seeds: Iterator[int]) -> tf_keras.initializers.Initializer:
    return tf_keras.initializers.GlorotUniform(seed=next(seeds))


def _branch(inputs, stream: str, config: Config, layer: LayerSource):
    x = inputs
    for depth, filters in enumerate(config.model.branch_filters):
        x = layer(f"{stream}_conv{depth}", lambda seeds: tf_keras.layers.Conv2D(
            filters, 3, activation="relu", kernel_initializer=_kernel(seeds), name=f"{stream}_conv{depth}"))(x)
    return x


def _network(inputs: dict, config: Config, layer: LayerSource):
    """Class probabilities [N, rows, cols, K] of every window of the inputs whose side is the patch's.

    Valid convolutions only, and the window's average taken by a pooling layer whose size is what the
    convolutions leave of a patch: on a patch the output is 1x1 (the global average), on a tile it is one value
    per window, and the receptive field is exactly the patch. Dense layers act on the last axis of any map.
    """
    streams = list(inputs)
    side = convolved_patch_side(config)
    branches = [_branch(inputs[s], s, config, layer) for s in streams]
    x = branches[0] if len(branches) == 1 else layer("fusion", lambda seeds: tf_keras.layers.Concatenate(
        name="fusion"))(branches)
    x = layer("fused_conv", lambda seeds: tf_keras.layers.Conv2D(
        config.model.fused_filters, 3, activation="relu", kernel_initializer=_kernel(seeds), name="fused_conv"))(x)
    x = layer("pool", lambda seeds: tf_keras.layers.AveragePooling2D(side, strides=1, name="pool"))(x)
    if config.model.centre_pixel_path:
        margin = layout(config).patch_size // 2
        centres = [layer(f"{s}_centre", lambda seeds, s=s: tf_keras.layers.Cropping2D(
            margin, name=f"{s}_centre"))(inputs[s]) for s in streams]
        x = layer("pooled_and_centre", lambda seeds: tf_keras.layers.Concatenate(
            name="pooled_and_centre"))([x, *centres])
    x = layer("dense", lambda seeds: tf_keras.layers.Dense(
        config.model.dense_units, activation="relu", kernel_initializer=_kernel(seeds), name="dense"))(x)
    x = layer("dropout", lambda seeds: tf_keras.layers.Dropout(config.model.dropout, seed=next(seeds),
                                                               name="dropout"))(x)
    return layer("probabilities", lambda seeds: tf_keras.layers.Dense(
        len(config.class_ids), activation="softmax", kernel_initializer=_kernel(seeds), name="probabilities"))(x)


def build_model(config: Config) -> tf_keras.Model:
    """Compiled softmax classifier over the K classes of the class table, one input per stream used."""
    require_model_fits_patch(config)
    lay = layout(config)
    seeds = _seeds(config.model.seed)
    inputs = {s: tf_keras.Input(shape=lay.stream_shape(s), name=s, dtype="float32")
              for s in STREAMS_BY_MODE[config.model.streams]}
    window = _network(inputs, config, lambda name, make: make(seeds))
    probabilities = tf_keras.layers.Reshape((len(config.class_ids),), name="per_patch")(window)
    model = tf_keras.Model(inputs=inputs, outputs=probabilities, name=f"terrafuse_{config.model.streams}")
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=config.model.learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(),
        metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def tile_model(model: tf_keras.Model, config: Config) -> tf_keras.Model:
    """The same layers and weights over tiles of any size: [1, H, W, C] per stream -> [1, H-P+1, W-P+1, K].

    Output [0, i, j] is the patch centred on tile pixel (i + P//2, j + P//2), as `model` would classify it.
    """
    lay = layout(config)
    inputs = {s: tf_keras.Input(shape=(None, None, lay.stream_shape(s)[-1]), name=s, dtype="float32")
              for s in STREAMS_BY_MODE[config.model.streams]}
    return tf_keras.Model(inputs=inputs, outputs=_network(inputs, config, lambda name, make: model.get_layer(name)),
                          name=f"{model.name}_tiles")
