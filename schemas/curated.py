"""The curated schema: value domains per stream (no NaN), the label domain and the TRAINING/SERVING environments.

`schemas/schema.pbtxt` is what ImportSchemaGen loads for the default configuration; it is generated from this
module (`terrafuse schema --out schemas/schema.pbtxt`) and a test keeps the two in step. A configuration with
other bands or channels writes its own schema file with the same command and points `run.schema_file` at it.
"""
from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from foundation.config import Config
from transforms.features import BLOCK_ID, COL, LABEL, LIDAR_PREFIX, METADATA_FEATURES, ROW, SCENE_ID, layout

DEFAULT_SCHEMA_FILE = Path(__file__).with_name("schema.pbtxt")

TRAINING = "TRAINING"
SERVING = "SERVING"

# Plausible physical ranges, per stream. Values outside are sensor or ingestion faults, not terrain.
MULTISPECTRAL_DOMAIN = (0.0, 20000.0)  # reflectance x 10000; bright roofs and glint reach past 10000
LIDAR_DOMAINS = {
    "height": (0.0, 150.0),  # metres above the ground surface
    "intensity": (0.0, 65535.0),  # LAS intensity is uint16
    "return_ratio": (0.0, 1.0),
    "density": (0.0, 1000.0),  # points per square metre
}


def build_schema(config: Config) -> schema_pb2.Schema:
    lay = layout(config)
    schema = schema_pb2.Schema()
    schema.default_environment.extend([TRAINING, SERVING])

    def fixed_length(name: str, domain: tuple[float, float], description: str) -> None:
        feature = schema.feature.add(name=name, type=schema_pb2.FLOAT)
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        # A fixed shape makes Transform and serving parse dense [P*P] tensors, and TFDV check the length.
        feature.shape.dim.add(size=lay.patch_values)
        feature.float_domain.min, feature.float_domain.max = domain
        # Ingestion masks non-finite pixels: a NaN that still reaches an example is an anomaly that stops the run
        # (an infinity already falls outside the domain).
        feature.float_domain.disallow_nan = True
        feature.annotation.comment.append(description)

    for band, name in zip(config.streams.multispectral_bands, lay.multispectral):
        fixed_length(name, MULTISPECTRAL_DOMAIN, f"multispectral band {band}, {config.ingest.patch_size}^2 patch")
    for name in lay.lidar:
        channel = name[len(LIDAR_PREFIX):]
        fixed_length(name, LIDAR_DOMAINS[channel], f"LiDAR {channel}, {config.ingest.patch_size}^2 patch")

    label = schema.feature.add(name=LABEL, type=schema_pb2.INT)
    label.int_domain.min = min(config.class_ids)
    label.int_domain.max = max(config.class_ids)
    # Categorical, so statistics count each class and L-infinity skew checks see the label distribution.
    label.int_domain.is_categorical = True
    label.annotation.comment.append("class id: " + ", ".join(f"{c.id}={c.name}" for c in config.classes))

    metadata_types = {SCENE_ID: schema_pb2.BYTES, BLOCK_ID: schema_pb2.BYTES, ROW: schema_pb2.INT, COL: schema_pb2.INT}
    for name in (LABEL,) + METADATA_FEATURES:
        feature = label if name == LABEL else schema.feature.add(name=name, type=metadata_types[name])
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.shape.SetInParent()  # a scalar
        feature.not_in_environment.append(SERVING)
    return schema


def schema_text(config: Config) -> str:
    return text_format.MessageToString(build_schema(config))


def write_schema(config: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema_text(config))
    return path


def schema_feature_names(path: str | Path) -> set[str]:
    schema = text_format.Parse(Path(path).read_text(), schema_pb2.Schema())
    return {feature.name for feature in schema.feature}
