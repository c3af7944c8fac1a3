"""The one home of feature names, shapes and stream layout.

Ingestion writes one float feature per multispectral band and per LiDAR channel (patch_size**2 values each,
row-major), so statistics, schema domains and drift checks are per band; Transform normalises each by name
and stacks each stream back into one [P, P, channels] tensor for the model.
"""
from __future__ import annotations

from dataclasses import dataclass

from foundation.config import Config

LABEL = "label"  # raw class id from the class table
SCENE_ID = "scene_id"
BLOCK_ID = "block_id"  # "<scene_id>/<block_row>_<block_col>": the spatial unit dealt to train, validation or test
ROW = "row"  # centre pixel on the multispectral grid
COL = "col"
METADATA_FEATURES = (SCENE_ID, BLOCK_ID, ROW, COL)

# Transform outputs, the model's inputs.
MULTISPECTRAL = "multispectral"
LIDAR = "lidar"
LABEL_INDEX = "label_index"  # position of the class id in the class table, 0..K-1

MS_PREFIX = "ms_"
LIDAR_PREFIX = "lidar_"


@dataclass(frozen=True)
class FeatureLayout:
    """Feature names and shapes derived from one Config."""

    patch_size: int
    multispectral: tuple[str, ...]
    lidar: tuple[str, ...]
    class_ids: tuple[int, ...]

    @property
    def patch_values(self) -> int:
        return self.patch_size * self.patch_size

    @property
    def stream_features(self) -> tuple[str, ...]:
        return self.multispectral + self.lidar

    def stream_shape(self, stream: str) -> tuple[int, int, int]:
        channels = self.multispectral if stream == MULTISPECTRAL else self.lidar
        return (self.patch_size, self.patch_size, len(channels))


def layout(config: Config) -> FeatureLayout:
    return FeatureLayout(
        patch_size=config.ingest.patch_size,
        multispectral=tuple(MS_PREFIX + band for band in config.streams.multispectral_bands),
        lidar=tuple(LIDAR_PREFIX + channel for channel in config.streams.lidar_channels),
        class_ids=config.class_ids,
    )


def raw_feature_spec(config: Config, with_label: bool = True, with_metadata: bool = True) -> dict:
    """tf.io parsing spec of the examples ingestion writes (serving examples carry no label or metadata)."""
    import tensorflow as tf

    lay = layout(config)
    spec = {name: tf.io.FixedLenFeature([lay.patch_values], tf.float32) for name in lay.stream_features}
    if with_label:
        spec[LABEL] = tf.io.FixedLenFeature([], tf.int64)
    if with_metadata:
        spec[SCENE_ID] = tf.io.FixedLenFeature([], tf.string)
        spec[BLOCK_ID] = tf.io.FixedLenFeature([], tf.string)
        spec[ROW] = tf.io.FixedLenFeature([], tf.int64)
        spec[COL] = tf.io.FixedLenFeature([], tf.int64)
    return spec
