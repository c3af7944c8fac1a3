"""Pixel baselines (issue 11): what an engineer gets in an afternoon without a CNN, on the pipeline's own examples.

Each classifier sees only the centre pixel of an example's patch (one value per band and LiDAR channel of the
streams it is given) plus NDVI where red and NIR are bands, so the CNN's margin over them is what its window and
fusion add. Stream sets are `models.fused_cnn.STREAMS_BY_MODE`, the CNN's own, so both are compared stream for stream.
"""
from __future__ import annotations

import numpy as np

from foundation.config import Config
from transforms.features import LABEL, MS_PREFIX, MULTISPECTRAL, layout, raw_feature_spec

# k-NN (k = 15) on standardized values; scikit-learn's HistGradientBoostingClassifier.
BASELINES = ("knn", "boosted_trees")
KNN_NEIGHBOURS = 15
# Band names (config.streams.multispectral_bands) NDVI is computed from, wherever they sit in the band order.
NDVI_RED, NDVI_NIR = "red", "nir"
# Examples parsed at a time: only the centre values are kept, so memory stays a few MB per batch.
_PARSE_BATCH = 8192


def centre_pixels(serialized: list[bytes], config: Config) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The centre-pixel value [N] of every stream feature (ms_<band>, lidar_<channel>) and the class ids [N] of
    serialized raw tf.Examples as ingestion writes them (each stream feature P*P floats, row-major)."""
    import tensorflow as tf

    lay = layout(config)
    spec = raw_feature_spec(config, with_metadata=False)
    centre = lay.patch_values // 2
    values: dict[str, list[np.ndarray]] = {name: [] for name in lay.stream_features}
    labels = []
    for start in range(0, len(serialized), _PARSE_BATCH):
        parsed = tf.io.parse_example(serialized[start:start + _PARSE_BATCH], spec)
        for name in lay.stream_features:
            values[name].append(parsed[name][:, centre].numpy())
        labels.append(parsed[LABEL].numpy())
    return ({name: np.concatenate(chunks) if chunks else np.empty(0, np.float32) for name, chunks in values.items()},
            np.concatenate(labels) if labels else np.empty(0, np.int64))


def pixel_features(values: dict[str, np.ndarray], config: Config, streams: tuple[str, ...]) -> np.ndarray:
    """[N, F]: the centre values of the features of `streams` (MULTISPECTRAL, LIDAR) in layout order, then NDVI,
    (nir - red) / (nir + red) and 0 where both are 0, when the multispectral stream is used and has both bands."""
    lay = layout(config)
    names = [name for stream in streams for name in (lay.multispectral if stream == MULTISPECTRAL else lay.lidar)]
    columns = [np.asarray(values[name], np.float64) for name in names]
    red, nir = MS_PREFIX + NDVI_RED, MS_PREFIX + NDVI_NIR
    if MULTISPECTRAL in streams and red in lay.multispectral and nir in lay.multispectral:
        red_values, nir_values = np.asarray(values[red], np.float64), np.asarray(values[nir], np.float64)
        total = nir_values + red_values
        columns.append(np.divide(nir_values - red_values, total, out=np.zeros_like(total), where=total != 0))
    return np.stack(columns, axis=1)


def fit(baseline: str, features: np.ndarray, labels: np.ndarray, seed: int):
    """A fitted scikit-learn classifier of class ids.

    Boosted trees weight classes inversely to their frequency ("balanced"), as the CNN does by default
    (model.class_weights "inverse"): the score is macro recall, and an unweighted model would trade rare classes
    for common ones that the CNN is not allowed to. k-NN has no class weights; k = 15 on standardized values is
    the baseline the issue measured.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if baseline == "knn":
        model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=KNN_NEIGHBOURS))
    elif baseline == "boosted_trees":
        model = HistGradientBoostingClassifier(class_weight="balanced", random_state=seed)
    else:
        raise ValueError(f"unknown pixel baseline {baseline!r}: one of {list(BASELINES)}")
    return model.fit(features, labels)


def predict(model, features: np.ndarray) -> np.ndarray:
    """The class id predicted for each row of `features`."""
    return np.asarray(model.predict(features))


def recalls(labels: np.ndarray, predicted: np.ndarray, config: Config) -> list[float]:
    """Per-class recall in class-table order, NaN for a class without true examples; the same recall the gate
    judges (models.metrics.argmax_recalls). Labels outside the table count for no class."""
    from models.metrics import argmax_recalls

    predicted_index = np.asarray(config.class_indices(np.asarray(predicted).reshape(-1)), dtype=np.int64)
    if (predicted_index < 0).any():
        unknown = sorted(set(np.asarray(predicted).reshape(-1)[predicted_index < 0].tolist()))
        raise ValueError(f"predicted class ids {unknown} are not in the class table {list(config.class_ids)}")
    one_hot = np.eye(len(config.class_ids))[predicted_index]
    return argmax_recalls(config.class_indices(np.asarray(labels).reshape(-1)), one_hot, len(config.class_ids)).tolist()
