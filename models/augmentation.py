"""Rotations and reflections of training patches: terrain has no "up", so each of the square's 8 symmetries of a
patch is as real as the patch itself. Every stream of an example gets the same one (the streams are co-registered),
and the label is never touched: the centre pixel, the one being classified, stays where it is."""
from __future__ import annotations

import tensorflow as tf

from foundation.config import Config

SYMMETRIES = 8  # 4 rotations by 90 degrees, each with or without a left-right flip


def symmetry(patches: tf.Tensor, index: int) -> tf.Tensor:
    """Symmetry `index` (0: identity) of a batch of patches [N, P, P, C]."""
    rotated = tf.image.rot90(patches, k=index % 4)
    return tf.image.flip_left_right(rotated) if index >= 4 else rotated


def random_symmetries(inputs: dict[str, tf.Tensor], seed: int) -> dict[str, tf.Tensor]:
    """Each example of a batch {stream: [N, P, P, C]} under one symmetry drawn for it, the same for every stream."""
    batch = tf.shape(next(iter(inputs.values())))[0]
    drawn = tf.random.uniform([batch], 0, SYMMETRIES, dtype=tf.int32, seed=seed)
    return {name: tf.gather(tf.stack([symmetry(patches, i) for i in range(SYMMETRIES)], axis=1), drawn,
                            axis=1, batch_dims=1)
            for name, patches in inputs.items()}


def stream_dropout(inputs: dict[str, tf.Tensor], rate: float, seed: int) -> dict[str, tf.Tensor]:
    """With probability `rate`, an example loses one of its streams, drawn at random: zeros, the mean of the
    normalised stream, so no information. A fused model then has to classify from either stream alone too, and
    cannot lean on one stream's scene-specific detail where the other already tells the classes apart."""
    streams = list(inputs)
    batch = tf.shape(inputs[streams[0]])[0]
    dropped = tf.random.uniform([batch], seed=seed) < rate
    which = tf.random.uniform([batch], 0, len(streams), dtype=tf.int32, seed=seed + 1)
    kept = {}
    for index, name in enumerate(streams):
        keep = tf.logical_not(tf.logical_and(dropped, tf.equal(which, index)))
        kept[name] = inputs[name] * tf.reshape(tf.cast(keep, inputs[name].dtype), [-1, 1, 1, 1])
    return kept


def training_augmentation(inputs: dict[str, tf.Tensor], config: Config) -> dict[str, tf.Tensor]:
    """The Trainer's augmentation of a training batch {stream: [N, P, P, C]}: a random symmetry per example, then,
    for a model of more than one stream, stream dropout at `model.stream_dropout`. One function, so that the
    benchmark's floor (bench/floor.py) trains on what the Trainer trains on."""
    inputs = random_symmetries(inputs, config.model.seed)
    if len(inputs) > 1 and config.model.stream_dropout:
        inputs = stream_dropout(inputs, config.model.stream_dropout, config.model.seed)
    return inputs
