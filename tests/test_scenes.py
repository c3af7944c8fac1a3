"""load_scene on tiny real GeoTIFF and LAS/LAZ files: alignment, LiDAR rasterisation, fills, masks and bad input."""
import logging
import pickle

import laspy
import numpy as np
import pytest
import rasterio
import tensorflow as tf
from affine import Affine
from rasterio.crs import CRS
from threadpoolctl import threadpool_info, threadpool_limits
from tiny_scenes import (POINT_CLOUD_FILE, REFERENCE_CRS, SIZE, Grid, ground_z, multispectral_value,
                         reference_transform, region_interior, truth, write_point_cloud, write_raster, write_scene)

import components.lidar_rasters
import components.scenes
from components.lidar_rasters import CellSums, Points, bin_points
from components.lidar_rasters import Grid as LidarGrid
from components.scenes import SceneError, load_scene, plan_scene, read_point_range, scene_dirs, tiles_of
from foundation.config import LIDAR_CHANNEL_CHOICES, Config
from foundation.scene_folder import (LABELS_FILE, LAZ_FILE, MULTISPECTRAL_FILE, POINT_CLOUD_FILES, lidar_raster_file,
                                     span_folder)
from synth.scenes import generate_sample

CONFIG = Config()
ALL_CHANNELS = Config().replace({"streams.lidar_channels": list(LIDAR_CHANNEL_CHOICES)})
# Bare cells read the relief of the slope inside one cell: top ground point minus the cell's mean ground z
# is 0.25 m x (0.10 + 0.05) = 0.0375 m. Everything else the synthetic cloud holds is exact to LAS's 1 mm.
HEIGHT_TOLERANCE_M = 0.05
LAS, LAZ = POINT_CLOUD_FILE["las"], POINT_CLOUD_FILE["laz"]
NDSM, INTENSITY = lidar_raster_file("height"), lidar_raster_file("intensity")


def channel(rasters, config, name):
    return rasters.lidar[config.streams.lidar_channels.index(name)]


def test_scene_dirs_are_the_sorted_unique_folders_of_matched_files(tmp_path):
    span = tmp_path / span_folder(1)
    matched = [span / "b" / MULTISPECTRAL_FILE, span / "a" / LAZ, span / "a" / LABELS_FILE,
               str(span / "b" / LABELS_FILE)]
    assert scene_dirs(matched) == [str(span / "a"), str(span / "b")]
    bucket = f"gs://bucket/data/{span_folder(2)}"
    assert scene_dirs([f"{bucket}/b/{LABELS_FILE}", f"{bucket}/a/{LAZ}"]) == [f"{bucket}/a", f"{bucket}/b"]


def _upload(scene_dir, uri):
    """The scene's files under a URI of TensorFlow's in-memory filesystem, which reads like gs://."""
    tf.io.gfile.makedirs(uri)
    for path in scene_dir.iterdir():
        tf.io.gfile.copy(str(path), f"{uri}/{path.name}", overwrite=True)
    return uri


def test_a_scene_on_a_bucket_reads_like_a_local_one(tmp_path):
    local = write_scene(tmp_path, config=ALL_CHANNELS)
    uri = _upload(local, f"ram://bucket/{span_folder(1)}/scene-001")
    remote = load_scene(uri, ALL_CHANNELS)
    expected = load_scene(local, ALL_CHANNELS)
    assert remote.scene_id == expected.scene_id == "scene-001"
    np.testing.assert_array_equal(remote.multispectral, expected.multispectral)
    np.testing.assert_array_equal(remote.lidar, expected.lidar)
    np.testing.assert_array_equal(remote.labels, expected.labels)
    assert remote.files == {"multispectral": f"{uri}/{MULTISPECTRAL_FILE}", "lidar": f"{uri}/{LAS}",
                            "labels": f"{uri}/{LABELS_FILE}"}


def test_a_bad_scene_on_a_bucket_names_the_remote_file(tmp_path):
    local = write_scene(tmp_path, "scene-bad")
    (local / LABELS_FILE).write_bytes(b"not a raster\n" * 64)
    uri = _upload(local, f"ram://bucket/{span_folder(1)}/scene-bad")
    with pytest.raises(SceneError) as raised:
        load_scene(uri, CONFIG)
    assert raised.value.path == f"{uri}/{LABELS_FILE}" and "cannot read raster" in raised.value.problem


def test_streams_on_the_reference_grid(tmp_path):
    rasters = load_scene(write_scene(tmp_path, config=ALL_CHANNELS), ALL_CHANNELS)

    assert rasters.scene_id == "scene-001"
    assert rasters.crs.to_string() == REFERENCE_CRS and rasters.transform == reference_transform()
    assert rasters.multispectral.dtype == np.float32 and rasters.lidar.dtype == np.float32
    assert rasters.labels.dtype == np.int32
    assert rasters.lidar.shape == (len(LIDAR_CHANNEL_CHOICES), SIZE, SIZE)
    expected_bands = [multispectral_value(b, truth("label")) for b in range(len(CONFIG.streams.multispectral_bands))]
    np.testing.assert_array_equal(rasters.multispectral, np.stack(expected_bands))
    np.testing.assert_array_equal(rasters.labels, truth("label"))
    np.testing.assert_allclose(channel(rasters, ALL_CHANNELS, "height"), truth("height"), atol=HEIGHT_TOLERANCE_M)
    np.testing.assert_array_equal(channel(rasters, ALL_CHANNELS, "intensity"), truth("intensity"))
    np.testing.assert_array_equal(channel(rasters, ALL_CHANNELS, "return_ratio"), truth("return_ratio"))
    np.testing.assert_array_equal(channel(rasters, ALL_CHANNELS, "density"), truth("density"))
    assert rasters.filled_cells == {name: 0 for name in LIDAR_CHANNEL_CHOICES}
    assert rasters.multispectral_valid.all() and rasters.lidar_valid.all() and rasters.labels_valid.all()


def test_height_is_above_the_sloped_ground_not_absolute_z(tmp_path):
    rasters = load_scene(write_scene(tmp_path), CONFIG)
    height = channel(rasters, CONFIG, "height")
    ground = ground_z(np.array([500_000.5, 500_039.5]), np.array([5_000_039.5, 5_000_000.5]))
    assert ground[1] - ground[0] > 5.0  # the scene's ground rises by metres across it...
    bare = truth("height") == 0
    assert np.abs(height[bare]).max() < HEIGHT_TOLERANCE_M  # ...yet bare ground reads 0 everywhere
    trees = truth("label") == truth("label")[0, 0]
    np.testing.assert_allclose(height[trees], 15.0, atol=HEIGHT_TOLERANCE_M)


def test_ground_under_roofs_and_canopy_is_interpolated_from_the_ground_around(tmp_path):
    rng = np.random.default_rng(0)
    in_trees = rng.choice(20 * 20, 60, replace=False)
    scattered = [(r, r + 1, c, c + 1) for r, c in zip(*np.divmod(in_trees, 20))]
    roof = (3, 13, 24, 36)
    rasters = load_scene(write_scene(tmp_path, no_ground=scattered + [roof]), CONFIG)
    np.testing.assert_allclose(channel(rasters, CONFIG, "height"), truth("height"), atol=HEIGHT_TOLERANCE_M)
    assert rasters.filled_cells["height"] == 0


def test_ground_gaps_are_triangulated_with_blas_on_one_thread(tmp_path, monkeypatch):
    """Qhull's point location wakes OpenBLAS's threads, which then spin on cores a worker does not own; the
    limit holds during each gap's interpolation only."""
    seen = []
    interpolate = components.lidar_rasters.griddata

    def recording(*args, **kwargs):
        seen.append({info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"})
        return interpolate(*args, **kwargs)

    monkeypatch.setattr(components.lidar_rasters, "griddata", recording)
    scene_dir = write_scene(tmp_path, no_ground=[(3, 13, 24, 36)])
    with threadpool_limits(2, user_api="blas"):
        load_scene(scene_dir, CONFIG)
        after = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    assert seen and all(threads == {1} for threads in seen)
    assert after == {2}


@pytest.mark.parametrize("lidar", ["las", "laz"])
def test_a_point_cloud_read_in_small_chunks_gives_the_rasters_of_one_read(tmp_path, monkeypatch, lidar):
    """Points are summed per cell chunk by chunk, never held whole: 97 points at a time (the tiny cloud holds
    thousands, in chunks of any remainder) must give what one chunk of all of them gives."""
    scene_dir = write_scene(tmp_path, lidar=lidar, no_ground=[(3, 13, 24, 36)], holes=[(30, 34, 2, 6)])
    whole = load_scene(scene_dir, ALL_CHANNELS)
    monkeypatch.setattr(components.scenes, "POINTS_PER_CHUNK", 97)
    chunked = load_scene(scene_dir, ALL_CHANNELS)
    np.testing.assert_allclose(chunked.lidar, whole.lidar, rtol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(chunked.lidar_valid, whole.lidar_valid)
    assert chunked.filled_cells == whole.filled_cells


def test_a_layered_laz_decodes_every_field_the_rasters_need(tmp_path):
    """Point format 6 LAZ is read layer by layer, skipping the layers ingestion does not use: the sums must be
    those of the points decoded whole, every field (a layer left out would read as zeros)."""
    scene_dir = write_scene(tmp_path, lidar="laz", no_ground=[(3, 13, 24, 36)])
    plan = plan_scene(scene_dir, CONFIG)
    cells, stats = read_point_range(plan, 0, plan.promised_points)
    las = laspy.read(scene_dir / LAZ)
    assert las.header.point_format.id == 6 and len(np.unique(las.intensity)) > 1 and las.number_of_returns.max() > 1
    expected, expected_stats = bin_points(Points(np.asarray(las.x), np.asarray(las.y), np.asarray(las.z),
                                                 np.asarray(las.classification), np.asarray(las.intensity),
                                                 np.asarray(las.number_of_returns)), plan.grid)
    assert stats == expected_stats
    for field in ("cells", "count", "top", "intensity", "multiple", "ground_count", "ground_z"):
        np.testing.assert_array_equal(getattr(cells, field), getattr(expected, field), err_msg=field)


def cell_sums(grid, points, row0=0, col0=0, height=None, width=None):
    """CellSums of `points` on the window of `grid` at (row0, col0), the whole grid by default."""
    window = LidarGrid(grid.crs, grid.transform @ Affine.translation(col0, row0), height or grid.height,
                       width or grid.width)
    sums = CellSums(window)
    sums.add(bin_points(points, window)[0])
    return sums.rasters()


def test_a_tile_with_a_halo_rasterises_the_lidar_of_the_whole_scene(tmp_path):
    """Per-cell channels need no halo; the ground surface under a gap in the ground points is interpolated from
    the ring of cells around that gap alone, so a tile whose window holds every gap reaching into it, with its
    ring, gets the whole scene's heights. The sample scenes' gaps (roofs, water, dense canopy) span up to 61
    cells: tiles of 32 with a halo of 24 hold them; without a halo, heights under gaps cut by the tile differ."""
    generate_sample(tmp_path, CONFIG, scenes_per_span=2, size=96, seed=3)
    tile, halo = 32, 24
    for scene_dir in sorted((tmp_path / span_folder(1)).iterdir()):
        with rasterio.open(scene_dir / MULTISPECTRAL_FILE) as src:
            grid = LidarGrid(src.crs, src.transform, src.height, src.width)
        las = laspy.read(scene_dir / LAZ_FILE)
        points = Points(np.asarray(las.x), np.asarray(las.y), np.asarray(las.z), np.asarray(las.classification),
                        np.asarray(las.intensity), np.asarray(las.number_of_returns))
        whole = cell_sums(grid, points)
        differs_without_halo = False
        for row in range(0, grid.height, tile):
            for col in range(0, grid.width, tile):
                row0, col0 = max(row - halo, 0), max(col - halo, 0)
                row1, col1 = min(row + tile + halo, grid.height), min(col + tile + halo, grid.width)
                tiled = cell_sums(grid, points, row0, col0, row1 - row0, col1 - col0)
                bare = cell_sums(grid, points, row, col, tile, tile)
                for name, (values, has_points) in whole.items():
                    core = (slice(row, row + tile), slice(col, col + tile))
                    inner = (slice(row - row0, row - row0 + tile), slice(col - col0, col - col0 + tile))
                    np.testing.assert_array_equal(tiled[name][0][inner], values[core], err_msg=name)
                    np.testing.assert_array_equal(tiled[name][1][inner], has_points[core], err_msg=name)
                    differs_without_halo |= not np.array_equal(bare[name][0], values[core])
        assert differs_without_halo


def test_float_reflectance_is_brought_to_uint16_units(tmp_path):
    rasters = load_scene(write_scene(tmp_path, float_reflectance=True), CONFIG)
    np.testing.assert_allclose(rasters.multispectral[0], multispectral_value(0, truth("label")), atol=0.01)


def test_intensity_is_the_mean_of_a_cells_points_and_empty_cells_are_filled(tmp_path):
    """Hand-built cloud: one ground point of intensity 100 per cell, three more points in cell (10, 12),
    none in cell (3, 4)."""
    scene_dir = write_scene(tmp_path)
    rows, cols = (a.ravel() + 0.5 for a in np.mgrid[0:SIZE, 0:SIZE])
    keep = ~((rows == 3.5) & (cols == 4.5))
    x = np.concatenate([500_000 + cols[keep], [500_012.2, 500_012.5, 500_012.8]])
    y = np.concatenate([5_000_040 - rows[keep], [5_000_029.9, 5_000_029.5, 5_000_029.1]])
    z = ground_z(x, y) + np.concatenate([np.zeros(keep.sum()), [1.0, 3.0, 2.0]])  # the top point at the centre
    write_point_cloud(
        scene_dir / LAS, x, y, z,
        classification=np.concatenate([np.full(keep.sum(), 2), [1, 1, 1]]),
        intensity=np.concatenate([np.full(keep.sum(), 100), [10, 20, 60]]),
        number_of_returns=np.concatenate([np.ones(keep.sum()), [2, 2, 1]]),
        crs=REFERENCE_CRS,
    )
    rasters = load_scene(scene_dir, ALL_CHANNELS)

    intensity = channel(rasters, ALL_CHANNELS, "intensity")
    assert intensity[10, 12] == pytest.approx((100 + 10 + 20 + 60) / 4)
    assert intensity[3, 4] == 100  # filled from its neighbours
    assert np.count_nonzero(intensity != 100) == 1
    assert channel(rasters, ALL_CHANNELS, "return_ratio")[10, 12] == pytest.approx(2 / 4)
    assert channel(rasters, ALL_CHANNELS, "density")[10, 12] == 4
    assert channel(rasters, ALL_CHANNELS, "density")[3, 4] == 0
    assert channel(rasters, ALL_CHANNELS, "height")[10, 12] == pytest.approx(3.0, abs=0.01)
    assert rasters.filled_cells == {"height": 1, "intensity": 1, "return_ratio": 1, "density": 0}


@pytest.mark.parametrize("max_gap_m, invalid", [(1.5, (6, 11, 27, 32)), (2.0, (7, 10, 28, 31))])
def test_cells_without_points_are_filled_only_within_the_gap_and_counted(tmp_path, max_gap_m, invalid):
    """A 2 x 2 hole in the trees lies within 1 m of points; in a 7 x 7 hole in the building the ring of cells
    2 m from any point is invalid at a gap of 1.5 m and filled at 2 m, its middle 3 x 3 (3 m) never."""
    config = CONFIG.replace({"ingest.max_lidar_gap_m": max_gap_m})
    rasters = load_scene(write_scene(tmp_path, holes=[(5, 7, 5, 7), (5, 12, 26, 33)]), config)

    row0, row1, col0, col1 = invalid
    expected_valid = np.ones((SIZE, SIZE), bool)
    expected_valid[row0:row1, col0:col1] = False
    np.testing.assert_array_equal(rasters.lidar_valid, expected_valid)
    filled = 4 + 49 - (row1 - row0) * (col1 - col0)
    assert rasters.filled_cells == {"height": filled, "intensity": filled}
    assert np.isnan(rasters.lidar[:, ~expected_valid]).all()
    np.testing.assert_allclose(channel(rasters, config, "height")[expected_valid], truth("height")[expected_valid],
                               atol=HEIGHT_TOLERANCE_M)
    np.testing.assert_array_equal(channel(rasters, config, "intensity")[expected_valid],
                                  truth("intensity")[expected_valid])
    assert rasters.multispectral_valid.all()


@pytest.mark.parametrize("lidar", ["las", "rasters"])
def test_lidar_covering_half_the_scene_is_invalid_beyond_the_gap(tmp_path, lidar):
    """No returns (or nodata) east of column 20: column 20 is 1 m from data and filled, the rest invalid."""
    rasters = load_scene(write_scene(tmp_path, lidar=lidar, holes=[(0, SIZE, 20, SIZE)]), CONFIG)

    cols = np.broadcast_to(np.arange(SIZE), (SIZE, SIZE))
    np.testing.assert_array_equal(rasters.lidar_valid, cols <= 20)
    assert rasters.filled_cells == {"height": SIZE, "intensity": SIZE}
    assert np.isnan(rasters.lidar[:, :, 21:]).all() and np.isfinite(rasters.lidar[:, :, :21]).all()
    np.testing.assert_array_equal(channel(rasters, CONFIG, "intensity")[:, 20], truth("intensity")[:, 19])


def test_prerasterised_lidar_on_another_grid_is_resampled(tmp_path):
    config = Config().replace({"streams.lidar_channels": ["height", "intensity", "return_ratio"]})
    scene_dir = write_scene(tmp_path, config=config, lidar="rasters", lidar_grid=Grid("EPSG:3035", pixel=2.0))
    rasters = load_scene(scene_dir, config)

    interior = region_interior(3)
    for name in config.streams.lidar_channels:
        np.testing.assert_allclose(channel(rasters, config, name)[interior], truth(name)[interior], atol=1e-3)
    assert rasters.lidar_valid.all() and np.isfinite(rasters.lidar).all()


def test_nodata_in_prerasterised_lidar_is_filled_within_the_gap_and_counted(tmp_path):
    rasters = load_scene(write_scene(tmp_path, lidar="rasters", holes=[(10, 13, 10, 13)]), CONFIG)
    assert rasters.filled_cells == {"height": 8, "intensity": 8}
    assert np.flatnonzero(~rasters.lidar_valid).tolist() == [11 * SIZE + 11]  # 2 m from data: beyond 1.5 m
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    np.testing.assert_allclose(channel(rasters, CONFIG, "height")[10:13, 10:13][ring], 15.0)
    np.testing.assert_allclose(channel(rasters, CONFIG, "intensity")[10:13, 10:13][ring], truth("intensity")[10, 10])


def test_non_finite_values_in_prerasterised_lidar_are_invalid(tmp_path):
    scene_dir = write_scene(tmp_path, lidar="rasters")
    with rasterio.open(scene_dir / INTENSITY) as src:
        intensity = src.read(1)
    intensity[30:36, 2:8] = np.nan  # not the declared nodata: NaN all the same
    write_raster(scene_dir / INTENSITY, intensity, REFERENCE_CRS, reference_transform(), nodata=-9999.0)
    rasters = load_scene(scene_dir, CONFIG)
    expected_valid = np.ones((SIZE, SIZE), bool)
    expected_valid[31:35, 3:7] = False  # the cells more than 1.5 m inside the NaN block
    np.testing.assert_array_equal(rasters.lidar_valid, expected_valid)
    assert rasters.filled_cells == {"height": 0, "intensity": 36 - 16}


def _multispectral(scene_dir):
    with rasterio.open(scene_dir / MULTISPECTRAL_FILE) as src:
        return src.read()


def test_nan_in_float_multispectral_is_invalid(tmp_path):
    scene_dir = write_scene(tmp_path, float_reflectance=True)
    bands = _multispectral(scene_dir)
    bands[2, 5:9, 10:20] = np.nan  # one band is enough
    bands[0, 30, 30] = np.inf
    write_raster(scene_dir / MULTISPECTRAL_FILE, bands, REFERENCE_CRS, reference_transform())
    rasters = load_scene(scene_dir, CONFIG)

    expected_valid = np.ones((SIZE, SIZE), bool)
    expected_valid[5:9, 10:20] = False
    expected_valid[30, 30] = False
    np.testing.assert_array_equal(rasters.multispectral_valid, expected_valid)
    assert np.isnan(rasters.multispectral[:, ~expected_valid]).all()
    assert np.isfinite(rasters.multispectral[:, expected_valid]).all()


def test_declared_nodata_and_internal_mask_of_uint16_multispectral_are_invalid(tmp_path):
    scene_dir = write_scene(tmp_path)
    bands = _multispectral(scene_dir)
    bands[:, :, :3] = 0  # a fill border on the west edge
    bands[1, 20, 20] = 0  # one band's nodata invalidates the pixel
    write_raster(scene_dir / MULTISPECTRAL_FILE, bands, REFERENCE_CRS, reference_transform(), nodata=0)
    expected_valid = np.ones((SIZE, SIZE), bool)
    expected_valid[:, :3] = False
    expected_valid[20, 20] = False
    np.testing.assert_array_equal(load_scene(scene_dir, CONFIG).multispectral_valid, expected_valid)

    masked = write_scene(tmp_path / "masked")
    mask = np.full((SIZE, SIZE), 255, np.uint8)
    mask[35:, 35:] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked / MULTISPECTRAL_FILE, "r+") as dst:
        dst.write_mask(mask)
    np.testing.assert_array_equal(load_scene(masked, CONFIG).multispectral_valid, mask > 0)


def test_labels_nodata_and_pixels_outside_the_labels_raster_are_unlabelled(tmp_path):
    scene_dir = write_scene(tmp_path)
    labels = truth("label").astype(np.uint8)[:30]  # the labels raster stops 10 rows short of the scene
    labels[:5, :5] = 255
    write_raster(scene_dir / LABELS_FILE, labels, REFERENCE_CRS, reference_transform(), nodata=255)
    rasters = load_scene(scene_dir, CONFIG)

    expected_valid = np.ones((SIZE, SIZE), bool)
    expected_valid[:5, :5] = False
    expected_valid[30:] = False
    np.testing.assert_array_equal(rasters.labels_valid, expected_valid)
    np.testing.assert_array_equal(rasters.labels, np.where(expected_valid, truth("label"), 0))
    assert (truth("label")[expected_valid] == 0).any()  # explicitly unlabelled pixels are not masked


def test_point_cloud_without_crs_is_taken_on_the_reference_crs(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="components.scenes"):
        rasters = load_scene(write_scene(tmp_path, lidar_crs=None), CONFIG)
    assert f"{LAS} has no CRS" in caplog.text
    np.testing.assert_allclose(channel(rasters, CONFIG, "height"), truth("height"), atol=HEIGHT_TOLERANCE_M)


def _remove(name, **kwargs):
    def make(tmp_path):
        scene_dir = write_scene(tmp_path, "scene-bad", **kwargs)
        (scene_dir / name).unlink()
        return scene_dir
    return make


def _garbage(name, **kwargs):
    def make(tmp_path):
        scene_dir = write_scene(tmp_path, "scene-bad", **kwargs)
        (scene_dir / name).write_bytes(b"not a raster, not a point cloud\n" * 64)
        return scene_dir
    return make


def _scene(**kwargs):
    return lambda tmp_path: write_scene(tmp_path, "scene-bad", **kwargs)


NOT_OVERLAPPING = f"does not overlap {MULTISPECTRAL_FILE}"
# What the broken-scene corpus (tests/broken_scenes.py) does not hold already.
BAD_SCENES = {
    "missing multispectral": (_remove(MULTISPECTRAL_FILE), MULTISPECTRAL_FILE, "missing file"),
    "missing lidar": (_scene(lidar="none"), POINT_CLOUD_FILES[0], f"no point cloud ({' or '.join(POINT_CLOUD_FILES)})"),
    "missing lidar channel raster": (_remove(INTENSITY, lidar="rasters"), INTENSITY, "missing file"),
    "garbage labels": (_garbage(LABELS_FILE), LABELS_FILE, "cannot read raster"),
    "garbage point cloud": (_garbage(LAZ, lidar="laz"), LAZ, "cannot read point cloud"),
    "labels elsewhere": (_scene(labels_grid=Grid(shift=(10_000.0, 0.0))), LABELS_FILE, NOT_OVERLAPPING),
    "lidar rasters elsewhere": (_scene(lidar="rasters", lidar_grid=Grid("EPSG:3035", 2.0, (5_000.0, 0.0))), NDSM,
                                NOT_OVERLAPPING),
    "geographic labels": (_scene(labels_grid=Grid("EPSG:4326", 1e-5)), LABELS_FILE,
                          "geographic (unprojected) CRS EPSG:4326"),
    "geographic point cloud": (_scene(lidar_crs="EPSG:4326"), LAS, "geographic (unprojected) CRS EPSG:4326"),
}


@pytest.mark.parametrize("make, file_name, problem", BAD_SCENES.values(), ids=BAD_SCENES.keys())
def test_bad_scene_names_scene_file_and_problem(tmp_path, make, file_name, problem):
    scene_dir = make(tmp_path)
    with pytest.raises(SceneError) as raised:
        load_scene(scene_dir, CONFIG)
    err = raised.value
    assert err.scene == "scene-bad"
    assert err.path == str(scene_dir / file_name) and scene_dir.is_absolute()
    assert problem in err.problem
    assert str(err) == f"scene scene-bad: {err.path}: {err.problem}"


def test_scene_error_survives_pickling():
    path = f"/data/{span_folder(1)}/scene-003/{LAZ}"
    err = SceneError("scene-003", path, "no ground points (classification 2)")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.scene, copy.path, copy.problem) == (err.scene, err.path, err.problem)
    assert str(copy) == f"scene scene-003: {path}: no ground points (classification 2)"


def test_a_scene_without_labels_loads_when_labels_are_not_required(tmp_path):
    """Predict maps unlabelled scenes; ingestion still refuses them (the corpus's "missing-labels")."""
    scene_dir = write_scene(tmp_path, holes=[(0, SIZE, 30, SIZE)])
    labelled = load_scene(scene_dir, CONFIG, require_labels=False)
    (scene_dir / LABELS_FILE).unlink()
    unlabelled = load_scene(scene_dir, CONFIG, require_labels=False)

    assert unlabelled.labels is None and unlabelled.labels_valid is None
    np.testing.assert_array_equal(labelled.labels, truth("label"))
    assert set(unlabelled.files) == {"multispectral", "lidar"} and labelled.files["labels"] == str(
        scene_dir / LABELS_FILE)
    np.testing.assert_array_equal(unlabelled.multispectral, labelled.multispectral)
    np.testing.assert_array_equal(unlabelled.lidar, labelled.lidar)
    np.testing.assert_array_equal(unlabelled.valid, labelled.valid)
    with pytest.raises(SceneError, match="missing file"):
        load_scene(scene_dir, CONFIG)


def test_a_bad_labels_file_fails_even_when_labels_are_not_required(tmp_path):
    scene_dir = write_scene(tmp_path)
    (scene_dir / LABELS_FILE).write_bytes(b"not a raster\n" * 64)
    with pytest.raises(SceneError) as raised:
        load_scene(scene_dir, CONFIG, require_labels=False)
    assert raised.value.path == str(scene_dir / LABELS_FILE) and "cannot read raster" in raised.value.problem


def test_valid_is_where_every_stream_is_observed(tmp_path):
    rasters = load_scene(write_scene(tmp_path, holes=[(0, SIZE, 30, SIZE)]), CONFIG)
    assert not rasters.valid.all() and rasters.valid.any()
    np.testing.assert_array_equal(rasters.valid, rasters.multispectral_valid & rasters.lidar_valid)


@pytest.mark.parametrize("lidar", ["las", "laz"])
def test_points_counted_in_place_or_sorted_give_the_same_rasters(tmp_path, monkeypatch, lidar):
    """Points whose cells lie close together are counted in an array over their span, others sorted by cell; the
    sums are exact either way, so both give the same rasters to the last bit."""
    scene_dir = write_scene(tmp_path, lidar=lidar, no_ground=[(3, 13, 24, 36)], holes=[(30, 34, 2, 6)])
    counted = load_scene(scene_dir, ALL_CHANNELS)
    monkeypatch.setattr(components.lidar_rasters, "_DENSE_CELLS_PER_POINT", 0)
    sorted_ = load_scene(scene_dir, ALL_CHANNELS)
    np.testing.assert_array_equal(sorted_.lidar, counted.lidar)
    np.testing.assert_array_equal(sorted_.lidar_valid, counted.lidar_valid)


def test_a_scene_is_cut_into_the_fewest_even_tiles_of_whole_blocks_each_reading_its_halo():
    grid = LidarGrid(CRS.from_string(REFERENCE_CRS), reference_transform(), 640, 1000)
    tiles = tiles_of(grid, 16, 32, 32)
    assert [(t.row, t.col, t.height, t.width) for t in tiles] == [
        (0, 0, 320, 512), (0, 512, 320, 488), (320, 0, 320, 512), (320, 512, 320, 488)]
    assert [(t.read.row_off, t.read.col_off, t.read.height, t.read.width) for t in tiles] == [
        (0, 0, 352, 544), (0, 480, 352, 520), (288, 0, 352, 544), (288, 480, 352, 520)]
    assert [tile.core for tile in tiles][3] == (slice(32, 352), slice(32, 520))
