"""tf.Transform preprocessing_fn: per-band and per-channel normalisation, stacked streams, class index.

The multispectral bands are reflectance x 10000 (thousands) and LiDAR heights are metres (mostly ~0): fed
raw, the large-valued bands dominate every first-layer activation and gradient. So every multispectral
band and every LiDAR channel is z-scored on its OWN mean and standard deviation over all pixels of the
training split (TFX Transform analyses only that split; eval and serving reuse its statistics).

Per stream (outputs float32, [batch, P, P, channels] in config order):
- multispectral band: z-score (reflectances are roughly symmetric within a band).
- LiDAR height: clip to `transform.height_clip_m`, then z-score. Most pixels are ~0 m; a few towers or
  spurious returns must not set the scale that the ground/vegetation heights are measured on.
- LiDAR intensity: log1p, then z-score. The raw values have a heavy right tail (hundreds to tens of
  thousands); log1p turns that into a near-symmetric spread.
- LiDAR return_ratio: z-score. It is already bounded in [0, 1].
- LiDAR density: log1p, then z-score. Points per m2 are right-skewed like intensity.

`transform.normalization: "none"` passes the raw values through (cast to float32, stacked the same
way). It is the ablation that reproduces the failure this project exists to prevent, not a usable mode.

LABEL_INDEX is the position of the raw class id in the class table (ids are not contiguous); an id
outside the table maps to -1. It depends on the raw label only, so serving examples without a label
still get both stream outputs: tf.Transform prunes the outputs whose inputs are not fed.

TFX finds `preprocessing_fn` by import path in the installed terrafuse package (local runs, and Kubeflow with
`kubeflow.module_source: image`) or, with `wheel`, imports this file as the top-level module `preprocessing` from
a wheel of its folder; so project code is imported by absolute package name.
"""
from __future__ import annotations

from typing import Any, Callable

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # TFX loads this module file in its own processes: it is an entry point too

import tensorflow as tf
import tensorflow_transform as tft

from foundation.config import Config
from transforms.features import LABEL, LABEL_INDEX, LIDAR, LIDAR_PREFIX, MULTISPECTRAL, FeatureLayout, layout


def preprocessing_fn(inputs: dict[str, tf.Tensor], custom_config: dict[str, Any]) -> dict[str, tf.Tensor]:
    """TFX entry point; `custom_config["config"]` is `Config.to_dict()`."""
    config = Config.from_dict(custom_config["config"])
    lay = layout(config)
    normalise = config.transform.normalization == "per_stream"

    multispectral = [_patch(inputs[name], lay) for name in lay.multispectral]
    lidar = [_patch(inputs[name], lay) for name in lay.lidar]
    if normalise:
        multispectral = [tft.scale_to_z_score(band) for band in multispectral]
        lidar = [
            tft.scale_to_z_score(lidar_pretransform(name[len(LIDAR_PREFIX):], config)(channel))
            for name, channel in zip(lay.lidar, lidar)
        ]

    outputs = {
        MULTISPECTRAL: _stack(multispectral, lay),
        LIDAR: _stack(lidar, lay),
    }
    if LABEL in inputs:
        outputs[LABEL_INDEX] = _label_index(inputs[LABEL], lay.class_ids)
    return outputs


def _patch(x: tf.Tensor | tf.SparseTensor, lay: FeatureLayout) -> tf.Tensor:
    """One band as float32 [batch, P*P]; a schema without inferred shapes hands over a SparseTensor."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(x)
    return tf.reshape(tf.cast(x, tf.float32), [-1, lay.patch_values])


def lidar_pretransform(channel: str, config: Config) -> Callable[[tf.Tensor], tf.Tensor]:
    """The per-channel step before z-scoring (see the module docstring for why)."""
    low, high = config.transform.height_clip_m
    return {
        "height": lambda x: tf.clip_by_value(x, low, high),
        "intensity": tf.math.log1p,
        "return_ratio": tf.identity,
        "density": tf.math.log1p,
    }[channel]


def _stack(channels: list[tf.Tensor], lay: FeatureLayout) -> tf.Tensor:
    """[batch, P*P] per channel -> [batch, P, P, C], channels in config order."""
    stacked = tf.stack(channels, axis=-1)
    return tf.reshape(stacked, [-1, lay.patch_size, lay.patch_size, len(channels)])


def _label_index(label: tf.Tensor | tf.SparseTensor, class_ids: tuple[int, ...]) -> tf.Tensor:
    """Raw class id -> its position in `class_ids` (int64 [batch]); -1 for an id not in the table.

    An equality/argmax lookup instead of a hash table: no table resource to initialise in the traced graph.
    """
    if isinstance(label, tf.SparseTensor):
        label = tf.sparse.to_dense(label)
    label = tf.reshape(tf.cast(label, tf.int64), [-1, 1])
    matches = tf.equal(label, tf.constant(class_ids, dtype=tf.int64)[tf.newaxis, :])
    index = tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int64)
    return tf.where(tf.reduce_any(matches, axis=1), index, tf.constant(-1, tf.int64))
