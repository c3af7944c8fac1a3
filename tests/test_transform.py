"""preprocessing_fn on real Beam: per-channel statistics from the training split only, serving without label.

One Beam run per normalisation mode analyses a training set and transforms it and a differently
distributed eval set; expected values are recomputed in numpy from the training data alone.
"""
import functools
import os
import pickle

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata

from foundation.config import Config
from transforms.features import (BLOCK_ID, COL, LABEL, LABEL_INDEX, LIDAR, LIDAR_PREFIX, MS_PREFIX, MULTISPECTRAL, ROW,
                                 SCENE_ID, layout, raw_feature_spec)
from transforms.preprocessing import preprocessing_fn

N_TRAIN, N_EVAL = 240, 80
# Per band (mean, std) in reflectance x 10000: different means, so a mix-up of bands shows.
MS_STATS = {"blue": (600.0, 150.0), "green": (1100.0, 250.0), "red": (1800.0, 400.0),
            "nir": (4200.0, 900.0), "swir": (2900.0, 600.0)}
TOWER_M = 95.0
CONSTANT = 1234.5  # the raw run's red band, to find it in the right channel
UNKNOWN_ID = 99  # not in the class table


def _config(**overrides) -> Config:
    # A 3 x 3 patch leaves room for the model's fused convolution only: no branch convolutions.
    return Config().replace({"ingest.patch_size": 3, "model.branch_filters": [], **overrides})


PER_STREAM = _config(**{"streams.lidar_channels": ["height", "intensity", "return_ratio", "density"]})
# Reordered bands and channels: outputs must follow the config order, not a fixed one.
RAW = _config(**{"transform.normalization": "none",
                 "streams.multispectral_bands": ["swir", "red", "blue", "nir"],
                 "streams.lidar_channels": ["density", "height"]})


def _raw_streams(config: Config, n: int, rng: np.random.Generator, shift: float) -> dict[str, np.ndarray]:
    """Raw band/channel values [n, P*P] on their ingestion scales; `shift` moves the eval distribution."""
    values = config.ingest.patch_size ** 2
    bands = {band: rng.normal(mean + shift * std, std, (n, values)).clip(1, None)
             for band, (mean, std) in MS_STATS.items()}
    height = np.where(rng.random((n, values)) < 0.6, 0.0, rng.uniform(0, 30, (n, values)) * (1 + shift))
    height[:4, 0] = TOWER_M  # a few towers, above the clip
    channels = {"height": height,
                "intensity": rng.lognormal(6.5 + shift, 1.2, (n, values)),
                "return_ratio": rng.beta(2 + 3 * shift, 2, (n, values)),
                "density": rng.exponential(4 * (1 + shift), (n, values))}
    streams = {MS_PREFIX + band: bands[band] for band in config.streams.multispectral_bands}
    streams.update({LIDAR_PREFIX + ch: channels[ch] for ch in config.streams.lidar_channels})
    return {name: v.astype(np.float32) for name, v in streams.items()}


def _instances(streams: dict[str, np.ndarray], labels: np.ndarray) -> list[dict]:
    return [{**{name: v[i] for name, v in streams.items()}, LABEL: int(labels[i]), SCENE_ID: b"s",
             BLOCK_ID: b"s/0_0", ROW: i, COL: 0} for i in range(len(labels))]


def _run(config: Config, tmp_path, train: list[dict], evaluation: list[dict]):
    """AnalyzeAndTransform on train, Transform on eval; returns (train rows, eval rows, transform_fn dir)."""
    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(raw_feature_spec(config))
    fn = functools.partial(preprocessing_fn, custom_config={"config": config.to_dict()})
    out = str(tmp_path)
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(out, "tmp")):
        (transformed_train, _), transform_fn = (
            (p | "Train" >> beam.Create(train), metadata) | tft_beam.AnalyzeAndTransformDataset(fn))
        transformed_eval, _ = ((p | "Eval" >> beam.Create(evaluation), metadata), transform_fn) | (
            tft_beam.TransformDataset())
        _ = transform_fn | tft_beam.WriteTransformFn(os.path.join(out, "transform_fn"))
        for name, rows in (("train", transformed_train), ("eval", transformed_eval)):
            _ = rows | f"Write{name}" >> beam.io.WriteToTFRecord(
                os.path.join(out, name), coder=beam.coders.PickleCoder(), shard_name_template="")

    def read(name):
        rows = [pickle.loads(r.numpy()) for r in tf.data.TFRecordDataset(os.path.join(out, name))]
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    return read("train"), read("eval"), os.path.join(out, "transform_fn")


def _run_mode(config: Config, tmp_path_factory, seed: int):
    rng = np.random.default_rng(seed)
    ids = np.array(config.class_ids)
    raw_train = _raw_streams(config, N_TRAIN, rng, shift=0.0)
    raw_eval = _raw_streams(config, N_EVAL, rng, shift=0.5)
    if config.transform.normalization == "none":
        raw_train[MS_PREFIX + "red"][:] = raw_eval[MS_PREFIX + "red"][:] = CONSTANT
    train_labels = ids[rng.integers(0, len(ids), N_TRAIN)]
    eval_labels = ids[rng.integers(0, len(ids), N_EVAL)]
    eval_labels[0] = UNKNOWN_ID
    out_train, out_eval, transform_dir = _run(
        config, tmp_path_factory.mktemp(config.transform.normalization),
        _instances(raw_train, train_labels), _instances(raw_eval, eval_labels))
    return dict(raw_train=raw_train, raw_eval=raw_eval, train_labels=train_labels, eval_labels=eval_labels,
                train=out_train, eval=out_eval, transform_dir=transform_dir)


@pytest.fixture(scope="module")
def per_stream(tmp_path_factory):
    return _run_mode(PER_STREAM, tmp_path_factory, seed=0)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return _run_mode(RAW, tmp_path_factory, seed=1)


def _expected(name: str, train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The documented per-channel treatment in float64, statistics from `train` only."""
    pre = {LIDAR_PREFIX + "height": lambda v: np.clip(v, *PER_STREAM.transform.height_clip_m),
           LIDAR_PREFIX + "intensity": np.log1p,
           LIDAR_PREFIX + "density": np.log1p}.get(name, lambda v: v)
    t = pre(train.astype(np.float64))
    return (pre(x.astype(np.float64)) - t.mean()) / t.std()


def _channels(config: Config):
    """(output key, channel position, raw feature name) in config order."""
    lay = layout(config)
    yield from ((MULTISPECTRAL, i, name) for i, name in enumerate(lay.multispectral))
    yield from ((LIDAR, i, name) for i, name in enumerate(lay.lidar))


def test_output_shapes_follow_config(per_stream, raw):
    for config, run in ((PER_STREAM, per_stream), (RAW, raw)):
        lay = layout(config)
        for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
            out = run[split]
            assert set(out) == {MULTISPECTRAL, LIDAR, LABEL_INDEX}
            assert out[MULTISPECTRAL].shape == (n, *lay.stream_shape(MULTISPECTRAL))
            assert out[LIDAR].shape == (n, *lay.stream_shape(LIDAR))
            assert out[MULTISPECTRAL].dtype == out[LIDAR].dtype == np.float32
            assert out[LABEL_INDEX].shape == (n,) and out[LABEL_INDEX].dtype == np.int64


def test_every_channel_standardised_on_training_data(per_stream):
    raw_ms = per_stream["raw_train"][MS_PREFIX + "nir"]
    raw_height = per_stream["raw_train"][LIDAR_PREFIX + "height"]
    assert raw_ms.mean() / raw_height.mean() > 100  # three orders of magnitude apart before Transform
    for key, i, name in _channels(PER_STREAM):
        values = per_stream["train"][key][..., i]
        assert abs(values.mean()) < 1e-3, name
        assert abs(values.std() - 1.0) < 1e-2, name


def test_values_follow_formula_with_train_statistics_only(per_stream):
    for key, i, name in _channels(PER_STREAM):
        train_raw = per_stream["raw_train"][name]
        for split in ("train", "eval"):
            got = per_stream[split][key][..., i].reshape(len(per_stream[split][key]), -1)
            np.testing.assert_allclose(got, _expected(name, train_raw, per_stream[f"raw_{split}"][name]),
                                       atol=1e-3, err_msg=f"{split} {name}")
        # The eval split is shifted: standardised on train statistics its mean is not 0, and what it is
        # would be predicted from the training statistics alone.
        eval_mean = per_stream["eval"][key][..., i].mean()
        assert abs(eval_mean) > 0.2, name
        assert eval_mean == pytest.approx(
            _expected(name, train_raw, per_stream["raw_eval"][name]).mean(), abs=1e-3)


def test_height_clipped_and_intensity_log_scaled(per_stream):
    lay = layout(PER_STREAM)
    height = per_stream["train"][LIDAR][..., lay.lidar.index(LIDAR_PREFIX + "height")].reshape(N_TRAIN, -1)
    raw_height = per_stream["raw_train"][LIDAR_PREFIX + "height"]
    top = PER_STREAM.transform.height_clip_m[1]
    assert raw_height.max() == TOWER_M > top
    clipped_top = _expected(LIDAR_PREFIX + "height", raw_height, np.float64(top))
    np.testing.assert_allclose(height[raw_height == TOWER_M], clipped_top, atol=1e-4)
    unclipped = (TOWER_M - raw_height.mean()) / raw_height.std()
    assert abs(clipped_top - unclipped) > 1.0

    name = LIDAR_PREFIX + "intensity"
    intensity = per_stream["train"][LIDAR][..., lay.lidar.index(name)].reshape(N_TRAIN, -1)
    raw_intensity = per_stream["raw_train"][name].astype(np.float64)
    linear = (raw_intensity - raw_intensity.mean()) / raw_intensity.std()
    assert np.abs(intensity - linear).max() > 1.0  # not a plain z-score
    np.testing.assert_allclose(intensity, _expected(name, raw_intensity, raw_intensity), atol=1e-3)


def test_label_index_maps_non_contiguous_ids(per_stream):
    ids = list(PER_STREAM.class_ids)
    assert ids != list(range(len(ids)))
    for split in ("train", "eval"):
        expected = [ids.index(label) if label in ids else -1 for label in per_stream[f"{split}_labels"]]
        np.testing.assert_array_equal(per_stream[split][LABEL_INDEX], expected)
    assert ids.index(55) == 3 and 3 in per_stream["train"][LABEL_INDEX]
    assert UNKNOWN_ID not in ids and per_stream["eval"][LABEL_INDEX][0] == -1


def test_normalization_none_passes_raw_values_in_config_order(raw):
    for key, i, name in _channels(RAW):
        for split in ("train", "eval"):
            got = raw[split][key][..., i].reshape(len(raw[split][key]), -1)
            np.testing.assert_array_equal(got, raw[f"raw_{split}"][name], err_msg=f"{split} {name}")


def test_distinct_constant_band_lands_in_its_channel(raw):
    red = layout(RAW).multispectral.index(MS_PREFIX + "red")
    assert red == 1  # config order swir, red, blue, nir
    for split in ("train", "eval"):
        ms = raw[split][MULTISPECTRAL]
        assert np.all(ms[..., red] == CONSTANT)
        assert not np.any(np.delete(ms, red, axis=-1) == CONSTANT)


def _serialized(streams: dict[str, np.ndarray]) -> tf.Tensor:
    examples = [tf.train.Example(features=tf.train.Features(feature={
        name: tf.train.Feature(float_list=tf.train.FloatList(value=v[i])) for name, v in streams.items()}))
        for i in range(len(next(iter(streams.values()))))]
    return tf.constant([e.SerializeToString() for e in examples])


def test_serving_without_label_through_saved_transform_graph(per_stream):
    """Serving examples carry only the stream features: the label-free outputs must still compute."""
    layer = tft.TFTransformOutput(per_stream["transform_dir"]).transform_features_layer()
    serving_spec = raw_feature_spec(PER_STREAM, with_label=False, with_metadata=False)
    features = tf.io.parse_example(_serialized(per_stream["raw_eval"]), serving_spec)
    assert LABEL not in features
    out = layer(features)
    assert set(out) == {MULTISPECTRAL, LIDAR}
    for key in (MULTISPECTRAL, LIDAR):
        np.testing.assert_allclose(out[key].numpy(), per_stream["eval"][key], atol=1e-5)

    with_label = dict(features, **{LABEL: tf.constant(per_stream["eval_labels"], tf.int64)})
    np.testing.assert_array_equal(layer(with_label)[LABEL_INDEX].numpy(), per_stream["eval"][LABEL_INDEX])
