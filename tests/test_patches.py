"""Pixel sampling, patch extraction and the tf.Examples a scene's patches become."""
import numpy as np
import pytest
import tensorflow as tf
from affine import Affine
from rasterio.crs import CRS
from tiny_scenes import Grid, region_interior, truth, write_scene

from components.patches import (block_ids, encode_examples, extract_patches, neighbour_block_ids, sample_pixels,
                                window_block_ids, window_valid)
from components.scenes import SceneRasters, load_scene
from foundation.config import Config
from transforms.features import BLOCK_ID, COL, LABEL, ROW, SCENE_ID, layout, raw_feature_spec

CONFIG = Config()
P = CONFIG.ingest.patch_size
HALF = P // 2


ALL_VALID = np.ones((30, 40), bool)


def labels_with_edges():
    """Class A fills the raster; class B is a 3x3 square in the middle and a stripe along the left edge."""
    class_a, class_b = CONFIG.class_ids[:2]
    labels = np.full((30, 40), class_a, np.int32)
    labels[:, :HALF] = class_b
    labels[14:17, 19:22] = class_b
    labels[0, :] = 0
    return labels, class_a, class_b


def test_sampling_skips_edge_pixels_and_unlabelled_ones():
    labels, class_a, class_b = labels_with_edges()
    rows, cols = sample_pixels(labels, ALL_VALID, CONFIG.replace({"ingest.max_per_class": 0}),
                               np.random.default_rng(0))

    assert rows.min() >= HALF and rows.max() < 30 - HALF and cols.min() >= HALF and cols.max() < 40 - HALF
    sampled = labels[rows, cols]
    assert (sampled != 0).all()
    assert np.count_nonzero(sampled == class_b) == 9  # the edge stripe is never sampled
    assert np.count_nonzero(sampled == class_a) == np.count_nonzero(labels[HALF:-HALF, HALF:-HALF] == class_a)
    flat = rows * 40 + cols
    assert (np.diff(flat) > 0).all()


def test_sampling_caps_each_class_without_replacement_and_repeats_for_a_seed():
    config = CONFIG.replace({"ingest.max_per_class": 5})
    labels, class_a, class_b = labels_with_edges()
    rows, cols = sample_pixels(labels, ALL_VALID, config, np.random.default_rng(7))

    sampled = labels[rows, cols]
    assert np.count_nonzero(sampled == class_a) == 5 and np.count_nonzero(sampled == class_b) == 5
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 10
    again = sample_pixels(labels, ALL_VALID, config, np.random.default_rng(7))
    np.testing.assert_array_equal(np.stack([rows, cols]), np.stack(again))
    other = sample_pixels(labels, ALL_VALID, config, np.random.default_rng(8))
    assert not np.array_equal(np.stack([rows, cols]), np.stack(other))


def naive_window_valid(valid, size, outside_valid):
    half = size // 2
    padded = np.pad(valid, half, constant_values=outside_valid)
    return np.array([[padded[r:r + size, c:c + size].all() for c in range(valid.shape[1])]
                     for r in range(valid.shape[0])])


@pytest.mark.parametrize("outside_valid", [False, True])
def test_window_valid_matches_a_naive_loop(outside_valid):
    valid = np.random.default_rng(0).random((23, 31)) > 0.02
    np.testing.assert_array_equal(window_valid(valid, 5, outside_valid), naive_window_valid(valid, 5, outside_valid))


def test_sampling_keeps_only_centres_whose_whole_window_is_valid():
    labels, _, _ = labels_with_edges()
    valid = ALL_VALID.copy()
    valid[10, 25] = False  # one invalid pixel removes every centre within P // 2 of it in both directions
    valid[25:, 30:] = False
    rows, cols = sample_pixels(labels, valid, CONFIG.replace({"ingest.max_per_class": 0}), np.random.default_rng(0))

    expected = naive_window_valid(valid, P, False) & (labels != 0)
    sampled = np.zeros(labels.shape, bool)
    sampled[rows, cols] = True
    np.testing.assert_array_equal(sampled, expected)
    assert not sampled[10 - HALF:10 + HALF + 1, 25 - HALF:25 + HALF + 1].any()


def test_extract_patches_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(3, 20, 17)).astype(np.float32)
    size = 5
    rows = rng.integers(2, 18, 50)
    cols = rng.integers(2, 15, 50)
    patches = extract_patches(stack, rows, cols, size)

    assert patches.shape == (50, 3, 25) and patches.dtype == np.float32
    for i, (r, c) in enumerate(zip(rows, cols)):
        for ch in range(3):
            expected = [stack[ch, r + dr, c + dc] for dr in range(-2, 3) for dc in range(-2, 3)]
            np.testing.assert_array_equal(patches[i, ch], expected)
    np.testing.assert_array_equal(patches[:, :, 25 // 2], stack[:, rows, cols].T)


def test_extract_patches_refuses_centres_too_close_to_the_edge():
    with pytest.raises(ValueError, match="at least 2 pixels inside"):
        extract_patches(np.zeros((1, 10, 10), np.float32), np.array([1]), np.array([5]), 5)


def test_block_ids_tile_the_grid():
    ids = block_ids("scene-7", np.array([0, 31, 32, 65]), np.array([5, 64, 0, 33]), 32)
    assert ids == [b"scene-7/0_0", b"scene-7/0_2", b"scene-7/1_0", b"scene-7/2_1"]


def test_window_block_ids_name_every_block_a_window_touches_centre_first():
    rows, cols = np.array([10, 10, 30, 28, 33, 33]), np.array([10, 30, 10, 35, 33, 70])
    touched = window_block_ids("s", rows, cols, 32, 9)
    assert [(t[0], set(t), len(t)) for t in touched] == [
        (b"s/0_0", {b"s/0_0"}, 1),  # inside one block
        (b"s/0_0", {b"s/0_0", b"s/0_1"}, 2),  # reaches the block to the east (cols 26..34)
        (b"s/0_0", {b"s/0_0", b"s/1_0"}, 2),  # reaches the block to the south
        (b"s/0_1", {b"s/0_0", b"s/0_1", b"s/1_0", b"s/1_1"}, 4),  # a corner: four blocks, its own first
        (b"s/1_1", {b"s/0_0", b"s/0_1", b"s/1_0", b"s/1_1"}, 4),
        (b"s/1_2", {b"s/0_2", b"s/1_2"}, 2),
    ]
    assert [t[0] for t in touched] == block_ids("s", rows, cols, 32)


def test_the_blocks_around_a_block_hold_every_block_its_windows_touch():
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(4, 200, 500), rng.integers(4, 200, 500)
    for touched in window_block_ids("scene-7", rows, cols, 9, 9):  # blocks as small as a window
        assert set(touched) <= set(neighbour_block_ids(touched[0]))
    assert len(set(neighbour_block_ids(b"scene-7/0_3"))) == 9 and b"scene-7/-1_4" in neighbour_block_ids(b"scene-7/0_3")


def random_scene(config, height=150, width=300, seed=0):
    """Random rasters large enough that rows, cols and labels need multi-byte varints."""
    rng = np.random.default_rng(seed)
    lay = layout(config)
    return SceneRasters(
        scene_id="scene-042",
        multispectral=rng.uniform(0, 10_000, (len(lay.multispectral), height, width)).astype(np.float32),
        lidar=rng.normal(0, 100, (len(lay.lidar), height, width)).astype(np.float32),
        labels=rng.choice(np.array((0,) + config.class_ids), (height, width)).astype(np.int32),
        crs=CRS.from_epsg(32633),
        transform=Affine.identity(),
        multispectral_valid=np.ones((height, width), bool),
        lidar_valid=np.ones((height, width), bool),
        labels_valid=np.ones((height, width), bool),
        filled_cells={},
        files={},
    )


def valid_in_every_stream(rasters):
    return rasters.multispectral_valid & rasters.lidar_valid


def proto_api_example(rasters, config, r, c):
    lay = layout(config)
    stack = np.concatenate([rasters.multispectral, rasters.lidar])
    half = lay.patch_size // 2
    window = stack[:, r - half:r + half + 1, c - half:c + half + 1]
    feature = {name: tf.train.Feature(float_list=tf.train.FloatList(value=window[i].ravel().tolist()))
               for i, name in enumerate(lay.stream_features)}
    feature[LABEL] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rasters.labels[r, c])]))
    feature[SCENE_ID] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[rasters.scene_id.encode()]))
    block = f"{rasters.scene_id}/{r // config.ingest.block_size}_{c // config.ingest.block_size}".encode()
    feature[BLOCK_ID] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[block]))
    feature[ROW] = tf.train.Feature(int64_list=tf.train.Int64List(value=[r]))
    feature[COL] = tf.train.Feature(int64_list=tf.train.Int64List(value=[c]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


@pytest.mark.parametrize("channels", [("height", "intensity"), ("height", "intensity", "return_ratio", "density")])
def test_encoded_examples_equal_proto_api_examples(channels):
    config = CONFIG.replace({"streams.lidar_channels": list(channels)})
    rasters = random_scene(config)
    rows, cols = sample_pixels(rasters.labels, valid_in_every_stream(rasters), config, np.random.default_rng(0))
    picks = [0, 1, len(rows) // 2, len(rows) - 1]
    serialized = encode_examples(rasters, rows[picks], cols[picks], config)

    for record, r, c in zip(serialized, rows[picks].tolist(), cols[picks].tolist()):
        assert tf.train.Example.FromString(record) == proto_api_example(rasters, config, r, c)


def test_encoded_examples_parse_back_exactly_with_the_raw_feature_spec():
    rasters = random_scene(CONFIG)
    rows, cols = sample_pixels(rasters.labels, valid_in_every_stream(rasters), CONFIG, np.random.default_rng(0))
    serialized = encode_examples(rasters, rows, cols, CONFIG)
    parsed = tf.io.parse_example(serialized, raw_feature_spec(CONFIG))

    lay = layout(CONFIG)
    patches = extract_patches(np.concatenate([rasters.multispectral, rasters.lidar]), rows, cols, P)
    for i, name in enumerate(lay.stream_features):
        np.testing.assert_array_equal(parsed[name].numpy(), patches[:, i])
    np.testing.assert_array_equal(parsed[LABEL].numpy(), rasters.labels[rows, cols])
    np.testing.assert_array_equal(parsed[ROW].numpy(), rows)
    np.testing.assert_array_equal(parsed[COL].numpy(), cols)
    assert parsed[BLOCK_ID].numpy().tolist() == block_ids("scene-042", rows, cols, CONFIG.ingest.block_size)
    assert set(parsed[SCENE_ID].numpy().tolist()) == {b"scene-042"}


def test_no_pixels_give_no_examples():
    rasters = random_scene(CONFIG, height=P - 1, width=P - 1)
    rows, cols = sample_pixels(rasters.labels, valid_in_every_stream(rasters), CONFIG, np.random.default_rng(0))
    assert rows.size == 0
    assert encode_examples(rasters, rows, cols, CONFIG) == []


def lidar_feature(config, channel):
    return layout(config).lidar[config.streams.lidar_channels.index(channel)]


# Nearest-neighbour labels and bilinear LiDAR rasters are exact where the source is constant, so centres at
# least 3 reference pixels from a region boundary (more than a 2 m source pixel's diagonal) must match.
ALIGNMENT_MARGIN_PX = 3
CENTRE_HEIGHT_TOLERANCE_M = 0.05  # a bare cell reads up to 0.0375 m of in-cell slope relief


@pytest.mark.parametrize("streams", [
    dict(lidar="laz", lidar_crs="EPSG:3035", labels_grid=Grid("EPSG:32632", pixel=2.0, shift=(0.7, -0.3))),
    dict(lidar="rasters", lidar_grid=Grid("EPSG:3035", pixel=2.0), labels_grid=Grid(pixel=2.0, shift=(0.5, 0.5))),
], ids=["laz-3035_labels-32632-2m", "rasters-3035-2m_labels-shifted-2m"])
def test_patch_centres_match_the_source_when_streams_are_on_other_grids(tmp_path, streams):
    config = CONFIG.replace({"ingest.max_per_class": 0})
    rasters = load_scene(write_scene(tmp_path, config=config, **streams), config)
    rows, cols = sample_pixels(rasters.labels, valid_in_every_stream(rasters), config, np.random.default_rng(0))
    parsed = tf.io.parse_example(encode_examples(rasters, rows, cols, config), raw_feature_spec(config))

    inside = region_interior(ALIGNMENT_MARGIN_PX)[rows, cols]
    assert inside.sum() > 300
    centre = P * P // 2
    np.testing.assert_array_equal(parsed[LABEL].numpy()[inside], truth("label")[rows, cols][inside])
    np.testing.assert_allclose(parsed[lidar_feature(config, "height")].numpy()[inside, centre],
                               truth("height")[rows, cols][inside], atol=CENTRE_HEIGHT_TOLERANCE_M)
    np.testing.assert_allclose(parsed[lidar_feature(config, "intensity")].numpy()[inside, centre],
                               truth("intensity")[rows, cols][inside], atol=1e-3)
