"""What a published model is: the contract between the Trainer, the Pusher, the gates and whoever serves it.

    SERVING_DIR/<version>/              a SavedModel; versions are integers, the newest serves
                  assets.extra/terrafuse_training.json   the training record (TRAINING_RECORD_PATH)
                  assets.extra/terrafuse_source.txt      the model folder it was published from (SOURCE_MARKER)

Signatures: on serialized raw tf.Examples, `serving_default` (no label needed) gives probabilities [N, K],
class_index and class_id [N], and `transform_features` (with label) gives the Transform outputs the Evaluator reads;
`map_tile` (MAP_SIGNATURE) classifies every window of a raw tile at once, for mapping whole scenes.
The record holds the class table, label counts per split, the data's provenance, the training split's feature
statistics, class weights, the config and the training key that decides reuse (see models/trainer.py).

TensorFlow loads inside the functions that read files (tf.io.gfile reads gs:// too): importing this module
stays as cheap as the config it sits beside.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

SERVING_SIGNATURE = "serving_default"
TRANSFORM_SIGNATURE = "transform_features"
SERVING_INPUT = "examples"
PROBABILITIES = "probabilities"
CLASS_INDEX = "class_index"
CLASS_ID = "class_id"
# Whole tiles of raw per-pixel values (float32 [H, W, F], F the stream features in layout order, no NaN) ->
# PROBABILITIES [H - P + 1, W - P + 1, K], entry [i, j] for the patch centred on tile pixel (i + P//2, j + P//2).
MAP_SIGNATURE = "map_tile"
MAP_INPUT = "tile"

TRAINING_RECORD_PATH = os.path.join("assets.extra", "terrafuse_training.json")
TRAINING_DATA_KEY = "data"  # the data's provenance: {"span", "input_fingerprint"}
TRAIN_STATISTICS_KEY = "train_statistics"  # base64 DatasetFeatureStatistics of the training split's features
TRAINING_KEY = "training_key"
# Inside each published version: the model it was copied from, so a rerun never publishes a model again.
SOURCE_MARKER = os.path.join("assets.extra", "terrafuse_source.txt")


def model_versions(serving_dir: str) -> list[str]:
    """Published versions, oldest first (the Pusher's staging folders are not versions)."""
    if not os.path.isdir(serving_dir):
        return []
    return sorted((d for d in os.listdir(serving_dir) if d.isdigit()), key=int)


def latest_published(serving_dir: str) -> str | None:
    """The newest published version's folder: the model serving now, and the baseline the next one must match."""
    versions = model_versions(serving_dir)
    return os.path.join(serving_dir, versions[-1]) if versions else None


def model_source(model_dir: str) -> str:
    """What identifies a model for publishing: its folder, or, for a copy of a published version (the Trainer
    reusing the serving model when no new data came), the folder that version was published from."""
    import tensorflow as tf

    from foundation.config import resolve_path

    marker = os.path.join(model_dir, SOURCE_MARKER)
    if tf.io.gfile.exists(marker):
        with tf.io.gfile.GFile(marker) as f:
            return f.read()
    return resolve_path(model_dir)


def write_source_marker(version_dir: str, source: str) -> None:
    os.makedirs(os.path.dirname(os.path.join(version_dir, SOURCE_MARKER)), exist_ok=True)
    with open(os.path.join(version_dir, SOURCE_MARKER), "w") as f:
        f.write(source)


def published_source(version_dir: str) -> str | None:
    """The model folder a published version was copied from (its SOURCE_MARKER); None for one pushed by hand."""
    marker = os.path.join(version_dir, SOURCE_MARKER)
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        return f.read()


def write_training_record(model_dir: str, record: dict[str, Any]) -> None:
    import tensorflow as tf

    path = os.path.join(model_dir, TRAINING_RECORD_PATH)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)


def read_training_record(model_dir: str) -> dict[str, Any]:
    """The record a trained (or pushed) model carries. JSON as written: class ids are string keys."""
    import tensorflow as tf

    path = os.path.join(model_dir, TRAINING_RECORD_PATH)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no training record (was this model exported by models/trainer.py?)")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def training_record_or_none(model_dir: str) -> dict[str, Any] | None:
    """The record, or None for a model folder without one (e.g. a version pushed by hand)."""
    try:
        return read_training_record(model_dir)
    except FileNotFoundError:
        return None


def training_key(data: dict[str, Any] | None, config: dict[str, Any], code: str | None) -> str | None:
    """Same span, same input files, same training config and same code (pipeline/dag.py fingerprints it): the
    same model. None when the data's provenance or the code is unknown: then nothing is ever reused."""
    if not data or data.get("span") is None or not data.get("input_fingerprint") or not code:
        return None
    return hashlib.sha256(json.dumps({"data": data, "config": config, "code": code},
                                     sort_keys=True).encode()).hexdigest()


def reusable_model(serving_dir: str | None, key: str | None) -> str | None:
    """The model serving now, if it was trained under `key` (a version without a training record, e.g. pushed by
    hand, never is)."""
    published = latest_published(serving_dir) if serving_dir and key else None
    if not published:
        return None
    record = training_record_or_none(published)
    return published if record and record.get(TRAINING_KEY) == key else None
