"""The pixel baselines on a tiny known-answer set: examples written as ingestion writes them, where the centre pixel
decides the class and the rest of each window holds other pixels' values."""
import dataclasses

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

import bench.pixel_baselines as pixel_baselines
from bench.pixel_baselines import BASELINES, centre_pixels, fit, pixel_features, predict, recalls
from components.patches import encode_examples
from components.scenes import SceneRasters
from foundation.config import Config, IngestConfig, ModelConfig, StreamsConfig, TerrainClass
from models.fused_cnn import STREAMS_BY_MODE
from transforms.features import LIDAR, LIDAR_PREFIX, MS_PREFIX, MULTISPECTRAL, layout

# Ids out of order and not 0..K-1; NIR before red, so NDVI must find the bands by name.
BANDS, CHANNELS = ("nir", "blue", "red"), ("height", "intensity")
CONFIG = Config(classes=(TerrainClass(7, "trees"), TerrainClass(2, "road"), TerrainClass(5, "water")),
                streams=StreamsConfig(multispectral_bands=BANDS, lidar_channels=CHANNELS),
                ingest=IngestConfig(patch_size=3, block_size=8),
                model=ModelConfig(branch_filters=()))  # a 3 x 3 patch leaves room for the fused convolution only
SIDE = 24


def scene(seed: int, separable: bool = False) -> SceneRasters:
    """Every pixel labelled with a random class. Values are noise, or with `separable` drawn from a range of the
    pixel's own class in every band and channel (so a window's other pixels say nothing about its centre)."""
    rng = np.random.default_rng(seed)
    lay = layout(CONFIG)
    labels = rng.choice(np.array(CONFIG.class_ids), (SIDE, SIDE)).astype(np.int32)
    channels = len(lay.stream_features)
    if separable:
        index = np.searchsorted(sorted(CONFIG.class_ids), labels)  # 2 -> 0, 5 -> 1, 7 -> 2
        values = 1000.0 * (3 * index + rng.uniform(0, 1, (channels, SIDE, SIDE)))
    else:
        values = rng.uniform(0, 10_000, (channels, SIDE, SIDE))
    values = values.astype(np.float32)
    valid = np.ones((SIDE, SIDE), bool)
    return SceneRasters(scene_id=f"scene-{seed}", multispectral=values[:len(lay.multispectral)],
                        lidar=values[len(lay.multispectral):], labels=labels, crs=CRS.from_epsg(32633),
                        transform=Affine.identity(), multispectral_valid=valid, lidar_valid=valid, labels_valid=valid,
                        filled_cells={}, files={})


def interior() -> tuple[np.ndarray, np.ndarray]:
    half = CONFIG.ingest.patch_size // 2
    rows, cols = np.mgrid[half:SIDE - half, half:SIDE - half]
    return rows.ravel(), cols.ravel()


def written(rasters: SceneRasters) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    rows, cols = interior()
    return encode_examples(rasters, rows, cols, CONFIG), rows, cols


@pytest.mark.parametrize("batch", [7, 8192])  # many parse batches, and one
def test_centre_pixels_are_the_centre_values_and_class_ids_of_the_written_examples(batch, monkeypatch):
    monkeypatch.setattr(pixel_baselines, "_PARSE_BATCH", batch)
    rasters = scene(seed=1)
    serialized, rows, cols = written(rasters)

    values, labels = centre_pixels(serialized, CONFIG)

    lay = layout(CONFIG)
    assert list(values) == list(lay.stream_features)
    stack = np.concatenate([rasters.multispectral, rasters.lidar])
    for channel, name in enumerate(lay.stream_features):
        np.testing.assert_array_equal(values[name], stack[channel, rows, cols])
    np.testing.assert_array_equal(labels, rasters.labels[rows, cols])


def test_no_examples_give_empty_columns():
    values, labels = centre_pixels([], CONFIG)
    assert {name: v.shape for name, v in values.items()} == {name: (0,) for name in layout(CONFIG).stream_features}
    assert labels.shape == (0,)


def distinct_values(config: Config) -> dict[str, np.ndarray]:
    """Per feature, values no other feature has: 100 * (feature number) + example number."""
    return {name: 100.0 * (i + 1) + np.arange(4) for i, name in enumerate(layout(config).stream_features)}


@pytest.mark.parametrize("mode", list(STREAMS_BY_MODE))
def test_each_stream_set_gives_exactly_its_streams_features_then_ndvi(mode):
    streams = STREAMS_BY_MODE[mode]
    values = distinct_values(CONFIG)
    features = pixel_features(values, CONFIG, streams)

    with_ndvi = MULTISPECTRAL in streams
    expected = [MS_PREFIX + band for band in BANDS] if with_ndvi else []
    expected += [LIDAR_PREFIX + channel for channel in CHANNELS] if LIDAR in streams else []
    assert features.shape == (4, len(expected) + with_ndvi)
    np.testing.assert_array_equal(features[:, :len(expected)], np.stack([values[name] for name in expected], axis=1))


def test_ndvi_is_nir_minus_red_over_their_sum_found_by_band_name():
    values = {name: np.zeros(3) for name in layout(CONFIG).stream_features}
    values[MS_PREFIX + "red"] = np.array([1000.0, 3000.0, 0.0])
    values[MS_PREFIX + "nir"] = np.array([5000.0, 1000.0, 0.0])
    values[MS_PREFIX + "blue"] = np.array([9.0, 9.0, 9.0])

    features = pixel_features(values, CONFIG, (MULTISPECTRAL,))

    np.testing.assert_allclose(features[:, -1], [4000 / 6000, -2000 / 4000, 0.0])  # no red or NIR light: 0


def test_no_ndvi_without_the_multispectral_stream_or_without_red_and_nir():
    lidar_only = pixel_features(distinct_values(CONFIG), CONFIG, (LIDAR,))
    assert lidar_only.shape == (4, 2)

    no_red = dataclasses.replace(CONFIG, streams=StreamsConfig(multispectral_bands=("blue", "green", "nir")))
    features = pixel_features(distinct_values(no_red), no_red, (MULTISPECTRAL, LIDAR))
    assert features.shape == (4, 5)
    np.testing.assert_array_equal(features, np.stack(list(distinct_values(no_red).values()), axis=1))


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("mode", list(STREAMS_BY_MODE))
def test_each_baseline_recalls_every_class_of_unseen_separable_pixels(baseline, mode):
    streams = STREAMS_BY_MODE[mode]
    train_values, train_labels = centre_pixels(written(scene(seed=2, separable=True))[0], CONFIG)
    test_values, test_labels = centre_pixels(written(scene(seed=3, separable=True))[0], CONFIG)

    model = fit(baseline, pixel_features(train_values, CONFIG, streams), train_labels, seed=0)
    predicted = predict(model, pixel_features(test_values, CONFIG, streams))

    assert set(np.unique(predicted)) == set(CONFIG.class_ids)  # class ids, not indices
    assert recalls(test_labels, predicted, CONFIG) == [1.0, 1.0, 1.0]


def test_knn_outvotes_a_single_mislabelled_neighbour():
    """k = 15: one road pixel among trees does not turn the trees next to it into road (1-NN would)."""
    features = np.concatenate([np.arange(100.0), 1000.0 + np.arange(100.0)])[:, None]
    labels = np.array([7] * 100 + [2] * 100)
    labels[50] = 2
    model = fit("knn", features, labels, seed=0)
    np.testing.assert_array_equal(predict(model, np.array([[50.1], [49.9], [1050.0]])), [7, 7, 2])


def test_a_baseline_fit_on_noise_windows_does_not_recall_every_class():
    """The known-answer set is not separable by accident: with values unrelated to the class, recall falls."""
    train_values, train_labels = centre_pixels(written(scene(seed=2))[0], CONFIG)
    test_values, test_labels = centre_pixels(written(scene(seed=3))[0], CONFIG)
    streams = STREAMS_BY_MODE["fused"]
    model = fit("knn", pixel_features(train_values, CONFIG, streams), train_labels, seed=0)
    assert np.mean(recalls(test_labels, predict(model, pixel_features(test_values, CONFIG, streams)),
                           CONFIG)) < 0.6


def test_boosted_trees_weigh_a_rare_class_up_as_the_cnn_does():
    """A rare class overlapping half of a common one: unweighted, the overlap goes to the common class (rare recall
    about 0.5); weighted by inverse frequency, to the rare one."""
    rng = np.random.default_rng(0)

    def pixels(n_common, n_rare):
        features = np.concatenate([rng.uniform(0.0, 1.0, n_common), rng.uniform(0.8, 1.2, n_rare)])[:, None]
        return features, np.array([7] * n_common + [2] * n_rare)

    model = fit("boosted_trees", *pixels(4000, 200), seed=0)
    features, labels = pixels(2000, 2000)
    assert recalls(labels, predict(model, features), CONFIG)[1] > 0.9  # unweighted: 0.49


def test_recalls_per_class_in_class_table_order_with_nan_for_an_absent_class():
    labels = np.array([7, 7, 7, 7, 2, 2, 99])  # 99: not in the table, counts for no class
    predicted = np.array([7, 7, 7, 2, 2, 5, 7])

    result = recalls(labels, predicted, CONFIG)

    assert result[:2] == [0.75, 0.5]
    assert np.isnan(result[2])  # no true water pixel


def test_a_predicted_id_outside_the_class_table_is_an_error():
    with pytest.raises(ValueError, match=r"\[3\].*class table"):
        recalls(np.array([7, 2]), np.array([7, 3]), CONFIG)


def test_an_unknown_baseline_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="knn"):
        fit("svm", np.zeros((2, 1)), np.array([7, 2]), seed=0)
