"""Scoring a trained model outside the pipeline: the examples of a pipeline split, every labelled pixel of scenes the
pipeline never saw, and a model's per-class argmax recall on either, through its own serving signature."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from components.scene_example_gen import scene_examples
from foundation.config import Config
from foundation.published import PROBABILITIES, SERVING_SIGNATURE
from foundation.scene_folder import SPAN_PREFIX
from models.metrics import argmax_recalls
from pipeline.component_ids import SCENE_EXAMPLE_GEN
from transforms.features import LABEL

BATCH = 4096


def split_examples(pipeline_root: Path, split: str) -> tuple[list[bytes], np.ndarray]:
    """The serialized examples and class ids of one split of the (one) Examples artifact under a pipeline root."""
    import tensorflow as tf

    (examples,) = sorted(Path(pipeline_root).glob(f"{SCENE_EXAMPLE_GEN}/examples/*"))
    files = sorted(str(f) for f in (examples / f"Split-{split}").glob("*.gz"))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    labels = tf.io.parse_example(serialized, {LABEL: tf.io.FixedLenFeature([], tf.int64)})[LABEL].numpy()
    return serialized, labels


def unseen_examples(data_root: Path, config: Config) -> tuple[list[bytes], np.ndarray]:
    """Every labelled pixel with a valid window in every stream, of every scene, as serving would get them."""
    everything = config.replace({"ingest.max_per_class": 0})
    serialized, labels = [], []
    for scene in sorted(p for p in Path(data_root).glob(f"{SPAN_PREFIX}*/*") if p.is_dir()):
        examples = scene_examples(str(scene), everything)
        serialized += examples.serialized
        labels += [label for _, label, _ in examples.keys]
    return serialized, np.array(labels)


def model_recalls(model_dir: str, serialized: list[bytes], labels: np.ndarray, config: Config) -> list[float]:
    """Per-class argmax recall (class-table order) of a SavedModel the Trainer exported."""
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    probabilities = np.concatenate([serve(examples=tf.constant(serialized[i:i + BATCH]))[PROBABILITIES].numpy()
                                    for i in range(0, len(serialized), BATCH)])
    return argmax_recalls(config.class_indices(labels), probabilities, len(config.class_ids)).tolist()
