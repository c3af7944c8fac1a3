"""The sample generator writes files the input contract accepts, with the physics and imbalance the model must face."""
import hashlib
import json
import time

import laspy
import numpy as np
import pyproj
import pytest
import rasterio
from rasterio.warp import transform_bounds
from scipy import ndimage

from components.scenes import load_scene
from foundation.config import Config, StreamsConfig, TerrainClass
from foundation.scene_folder import LABELS_FILE, LAZ_FILE, MULTISPECTRAL_FILE, lidar_raster_file, span_folder
from synth import generate_sample
from synth.scenes import MIXED_LABELS_CRS, MIXED_LIDAR_CRS, REFERENCE_CRS, SIGNATURES, SPECTRUM_BANDS, STREAM_FILES

CONFIG = Config()
IDS = {c.name: c.id for c in CONFIG.classes}
SPAN = span_folder(1)


@pytest.fixture(scope="module")
def default_sample(tmp_path_factory):
    """The sample `make run` uses: 1 span, 4 scenes of 160 x 160 m."""
    root = tmp_path_factory.mktemp("default")
    started = time.perf_counter()
    scene_dirs = generate_sample(root)
    return root, scene_dirs, time.perf_counter() - started


def _read_scene(scene_dir):
    with rasterio.open(scene_dir / MULTISPECTRAL_FILE) as ds:
        multispectral, transform = ds.read(), ds.transform
    with rasterio.open(scene_dir / LABELS_FILE) as ds:
        labels = ds.read(1)
    return multispectral, labels, transform


def _points_on_grid(las, transform, size):
    """Row and column on the multispectral grid of every point inside it, and the inside mask."""
    col = np.floor((np.asarray(las.x) - transform.c) / transform.a).astype(int)
    row = np.floor((np.asarray(las.y) - transform.f) / transform.e).astype(int)
    inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
    return row, col, inside


def _normalised_height(las, transform, size):
    """Top of points minus a ground surface from class-2 points (nearest-filled), NaN where no points fell."""
    row, col, inside = _points_on_grid(las, transform, size)
    cell = (row * size + col)[inside]
    z = np.asarray(las.z)[inside]
    top = np.full(size * size, -np.inf)
    np.maximum.at(top, cell, z)
    ground = np.asarray(las.classification)[inside] == 2
    ground_sum = np.bincount(cell[ground], weights=z[ground], minlength=size * size)
    ground_count = np.bincount(cell[ground], minlength=size * size)
    dtm = (ground_sum / np.maximum(ground_count, 1)).reshape(size, size)
    nearest = ndimage.distance_transform_edt(ground_count.reshape(size, size) == 0, return_distances=False,
                                             return_indices=True)
    dtm = dtm[nearest[0], nearest[1]]
    return np.where(np.isfinite(top), top, np.nan).reshape(size, size) - dtm


def _label_proportions(manifest, span):
    counts = np.array([manifest["spans"][span]["class_counts"][name] for name in CONFIG.class_names], float)
    return counts / counts.sum()


def _hashes(scene_dirs):
    digests = []
    for scene_dir in scene_dirs:
        multispectral, labels, _ = _read_scene(scene_dir)
        las = laspy.read(scene_dir / LAZ_FILE)
        arrays = [multispectral, labels, las.X, las.Y, las.Z, las.intensity, las.classification,
                  las.return_number, las.number_of_returns]
        digests.append(hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest())
    return digests


def test_signature_table_covers_the_default_classes_and_bands():
    assert set(SIGNATURES) == set(CONFIG.class_names)
    assert SPECTRUM_BANDS == CONFIG.streams.multispectral_bands
    assert all(len(s.reflectance) == len(SPECTRUM_BANDS) for s in SIGNATURES.values())


def test_default_sample_is_fast_and_follows_the_input_contract(default_sample):
    root, scene_dirs, seconds = default_sample
    assert seconds < 10
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", SPAN]
    assert [p.name for p in sorted((root / SPAN).iterdir())] == [f"scene-{i:03d}" for i in range(4)]
    assert scene_dirs == sorted((root / SPAN).iterdir())
    for scene_dir in scene_dirs:
        assert sorted(p.name for p in scene_dir.iterdir()) == sorted([MULTISPECTRAL_FILE, LABELS_FILE,
                                                                      LAZ_FILE])

    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["size"] == 160
    for scene_dir in scene_dirs:
        _, labels, _ = _read_scene(scene_dir)
        recorded = manifest["spans"][SPAN]["scenes"][scene_dir.name]["class_counts"]
        assert recorded == {name: int((labels == IDS[name]).sum()) for name in CONFIG.class_names}


def test_multispectral_is_projected_uint16_reflectance_in_config_band_order(default_sample):
    _, scene_dirs, _ = default_sample
    origins = set()
    for scene_dir in scene_dirs:
        with rasterio.open(scene_dir / MULTISPECTRAL_FILE) as ds:
            assert ds.count == len(CONFIG.streams.multispectral_bands)
            assert ds.descriptions == CONFIG.streams.multispectral_bands
            assert ds.dtypes == ("uint16",) * ds.count
            assert ds.crs.is_projected and ds.crs.to_epsg() == 32633
            assert ds.res == (1.0, 1.0)
            origins.add((ds.transform.c, ds.transform.f))
            data = ds.read()
        with rasterio.open(scene_dir / LABELS_FILE) as ds:
            labels = ds.read(1)
        nir = data[CONFIG.streams.multispectral_bands.index("nir")]
        assert np.median(nir[labels == IDS["grass"]]) > 2500  # healthy vegetation: NIR plateau ~0.35
        assert np.median(nir[labels == IDS["water"]]) < 600  # water absorbs NIR
        assert 300 < np.median(data) < 5000 and data.max() <= 10000
    assert len(origins) == len(scene_dirs)


def test_lidar_is_las14_with_ground_multiple_returns_and_absolute_heights(default_sample):
    _, scene_dirs, _ = default_sample
    for scene_dir in scene_dirs:
        multispectral, labels, transform = _read_scene(scene_dir)
        size = labels.shape[0]
        las = laspy.read(scene_dir / LAZ_FILE)
        assert str(las.header.version) == "1.4" and las.header.point_format.id == 6
        assert np.allclose(las.header.scales, 0.01)
        assert las.header.parse_crs().equals(pyproj.CRS.from_user_input(REFERENCE_CRS))
        assert 100 < las.z.min() and las.z.max() < 220  # metres above sea level, not above ground

        classification = np.asarray(las.classification)
        number, count = np.asarray(las.return_number), np.asarray(las.number_of_returns)
        assert np.all((1 <= number) & (number <= count))
        assert 3.0 < (classification == 2).sum() / size**2 < 8.0  # ground points per m2

        row, col, inside = _points_on_grid(las, transform, size)
        under = np.zeros(len(las.points), int)
        under[inside] = labels[row[inside], col[inside]]
        in_trees = under == IDS["trees"]
        assert (count[in_trees] > 1).mean() > 0.5
        last_of_many = in_trees & (count > 1) & (number == count)
        assert (classification[last_of_many] == 2).all()
        assert np.isin(classification[in_trees & (number == 1)], (4, 5)).mean() > 0.65  # crowns, some gaps
        assert (classification[under == IDS["building"]] == 6).mean() > 0.9

        water_pixels = labels == IDS["water"]
        hits = np.zeros(labels.shape, int)
        np.add.at(hits, (row[inside], col[inside]), 1)
        # Specular water: many cells without a return, and far fewer returns than on land.
        assert (hits[water_pixels] == 0).mean() > 0.2
        assert hits[water_pixels].mean() < 0.3 * hits[labels == IDS["grass"]].mean()

        intensity = np.asarray(las.intensity, float)
        single = count == 1
        mean_intensity = {name: intensity[single & (under == IDS[name])].mean() for name in ("water", "road", "grass")}
        assert mean_intensity["water"] < mean_intensity["road"] < mean_intensity["grass"]


def test_default_sample_is_valid_wherever_ingestion_looks(default_sample):
    """Water's sparse returns leave gaps, all within ingest.max_lidar_gap_m: no measurement is masked (labels
    declare 0, unlabelled, their nodata)."""
    _, scene_dirs, _ = default_sample
    filled = 0
    for scene_dir in scene_dirs:
        rasters = load_scene(scene_dir, CONFIG)
        assert rasters.multispectral_valid.all() and rasters.lidar_valid.all()
        filled += rasters.filled_cells["height"]
    assert filled > 1000


def test_labels_are_sparse_coherent_and_imbalanced(default_sample):
    _, scene_dirs, _ = default_sample
    totals = dict.fromkeys(CONFIG.class_names, 0)
    for scene_dir in scene_dirs:
        _, labels, _ = _read_scene(scene_dir)
        assert set(np.unique(labels)) == {0, *CONFIG.class_ids}
        for name in CONFIG.class_names:
            totals[name] += int((labels == IDS[name]).sum())
        # Coherent regions, not salt-and-pepper: most labelled pixels have the same label on all four sides.
        padded = np.pad(labels, 1)
        same = np.ones(labels.shape, bool)
        for dr, dc in ((0, 1), (2, 1), (1, 0), (1, 2)):
            same &= padded[dr:dr + labels.shape[0], dc:dc + labels.shape[1]] == labels
        assert same[labels > 0].mean() > 0.5  # labels drawn pixel by pixel at random: ~0
    labelled = sum(totals.values())
    assert 12_000 <= labelled <= 20_000
    shares = {name: count / labelled for name, count in totals.items()}
    assert max(shares.values()) >= 0.35 and max(shares, key=shares.get) in ("grass", "trees")
    assert 0.02 <= min(shares.values()) <= 0.05


def test_height_separates_what_spectra_cannot(default_sample):
    _, scene_dirs, _ = default_sample
    spectra = {name: [] for name in CONFIG.class_names}
    heights = {name: [] for name in CONFIG.class_names}
    all_ms, all_heights = [], []
    for scene_dir in scene_dirs:
        multispectral, labels, transform = _read_scene(scene_dir)
        ndsm = _normalised_height(laspy.read(scene_dir / LAZ_FILE), transform, labels.shape[0])
        for name in CONFIG.class_names:
            spectra[name].append(multispectral[:, labels == IDS[name]].T.astype(float))
            heights[name].append(ndsm[labels == IDS[name]])
        all_ms.append(multispectral.ravel())
        all_heights.append(ndsm[labels > 0])
    spectra = {name: np.concatenate(v) for name, v in spectra.items()}
    heights = {name: np.concatenate(v) for name, v in heights.items()}

    def nearest_mean_accuracy(a, b):
        pixels = np.concatenate([spectra[a], spectra[b]])
        truth = np.r_[np.zeros(len(spectra[a])), np.ones(len(spectra[b]))]
        closer_to_b = (np.linalg.norm(pixels - spectra[b].mean(0), axis=1)
                       < np.linalg.norm(pixels - spectra[a].mean(0), axis=1))
        return (closer_to_b == truth).mean()

    assert nearest_mean_accuracy("grass", "trees") < 0.75
    assert nearest_mean_accuracy("road", "bare_soil") > 0.95
    mean = {name: v.mean(0) for name, v in spectra.items()}
    assert np.linalg.norm(mean["grass"] - mean["trees"]) < np.linalg.norm(mean["road"] - mean["bare_soil"]) / 3
    assert np.allclose(mean["building"], mean["road"], rtol=0.05)  # one material from above

    assert np.nanmedian(heights["trees"]) > 8 and np.nanmedian(heights["grass"]) < 1
    assert 4 < np.nanmedian(heights["building"]) < 15 and np.nanmedian(heights["road"]) < 0.5
    assert np.nanmedian(heights["bare_soil"]) < 0.5
    # The raw scale gap an unnormalised model cannot survive: reflectance x 10000 against metres.
    assert np.median(np.concatenate(all_ms)) / np.nanmedian(np.concatenate(all_heights)) > 100


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    first = generate_sample(tmp_path / "a", scenes_per_span=2, size=48, seed=7)
    again = generate_sample(tmp_path / "b", scenes_per_span=2, size=48, seed=7)
    other = generate_sample(tmp_path / "c", scenes_per_span=2, size=48, seed=8)
    assert _hashes(first) == _hashes(again)
    assert (first[0] / LAZ_FILE).read_bytes() == (again[0] / LAZ_FILE).read_bytes()
    assert not set(_hashes(first)) & set(_hashes(other))


def test_shifted_span_trips_drift_and_the_others_do_not(tmp_path):
    generate_sample(tmp_path, spans=3, scenes_per_span=2, size=96, shifted_span=3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    first, second, shifted = (_label_proportions(manifest, span_folder(i)) for i in (1, 2, 3))
    assert np.abs(first - second).max() < CONFIG.validation.span_drift_linf_max
    assert np.abs(first - shifted).max() > 0.15
    water, soil, grass = (CONFIG.class_names.index(n) for n in ("water", "bare_soil", "grass"))
    assert shifted[water] > first[water] and shifted[soil] > first[soil] and shifted[grass] < first[grass]


def test_mixed_grids_put_labels_and_lidar_in_other_crs(tmp_path):
    (scene_dir,) = generate_sample(tmp_path, scenes_per_span=1, size=48, grids="mixed")
    with rasterio.open(scene_dir / MULTISPECTRAL_FILE) as ms, rasterio.open(scene_dir / LABELS_FILE) as lab:
        assert lab.crs.is_projected and lab.crs != ms.crs and lab.crs.to_epsg() == 32634
        assert lab.res == (2.0, 2.0)
        west, south, east, north = transform_bounds(lab.crs, ms.crs, *lab.bounds)
        assert west <= ms.bounds.left and south <= ms.bounds.bottom
        assert east >= ms.bounds.right and north >= ms.bounds.top
        assert set(np.unique(lab.read(1))) == {0, *CONFIG.class_ids}
        ms_bounds, ms_crs = ms.bounds, ms.crs
    las = laspy.read(scene_dir / LAZ_FILE)
    lidar_crs = las.header.parse_crs()
    assert lidar_crs.is_projected and lidar_crs.equals(pyproj.CRS.from_user_input(MIXED_LIDAR_CRS))
    assert not lidar_crs.equals(pyproj.CRS.from_user_input(MIXED_LABELS_CRS))
    x, y = pyproj.Transformer.from_crs(lidar_crs, ms_crs.to_wkt(), always_xy=True).transform(
        np.asarray(las.x), np.asarray(las.y))
    assert ms_bounds.left - 0.05 <= x.min() and x.max() <= ms_bounds.right + 0.05
    assert ms_bounds.bottom - 0.05 <= y.min() and y.max() <= ms_bounds.top + 0.05
    assert not (ms_bounds.left <= las.x.min() <= ms_bounds.right)  # really reprojected, not relabelled


def test_prerasterized_lidar_replaces_the_point_cloud(tmp_path):
    generate_sample(tmp_path, scenes_per_span=1, size=48)
    (scene_dir,) = generate_sample(tmp_path, scenes_per_span=1, size=48, grids="prerasterized")
    rasters = [lidar_raster_file("height"), lidar_raster_file("intensity")]
    assert sorted(p.name for p in scene_dir.iterdir()) == sorted([MULTISPECTRAL_FILE, LABELS_FILE, *rasters])
    assert set(p.name for p in scene_dir.iterdir()) <= set(STREAM_FILES)
    with rasterio.open(scene_dir / MULTISPECTRAL_FILE) as ms:
        ms_transform = ms.transform
    for name in rasters:
        with rasterio.open(scene_dir / name) as ds:
            assert ds.dtypes == ("float32",) and ds.crs.is_projected and ds.nodata is not None
            assert ds.res == (2.0, 2.0) and ds.transform != ms_transform
            values = ds.read(1, masked=True)
            assert values.count() > 0.7 * values.size and values.min() >= 0
    with rasterio.open(scene_dir / lidar_raster_file("height")) as ds:
        assert 8 < ds.read(1, masked=True).max() < 30  # canopy tops in metres


def test_band_order_and_unknown_classes_follow_config(tmp_path):
    reversed_bands = tuple(reversed(CONFIG.streams.multispectral_bands))
    config = Config(streams=StreamsConfig(multispectral_bands=reversed_bands))
    (scene_dir,) = generate_sample(tmp_path / "reversed", config=config, scenes_per_span=1, size=48)
    with rasterio.open(scene_dir / MULTISPECTRAL_FILE) as ds:
        assert ds.descriptions == reversed_bands
    data, labels, _ = _read_scene(scene_dir)
    grass = labels == IDS["grass"]
    assert np.median(data[reversed_bands.index("nir")][grass]) > np.median(data[reversed_bands.index("red")][grass]) * 4

    renamed = Config(classes=(*CONFIG.classes[:-1], TerrainClass(80, "lake")))
    with pytest.raises(ValueError, match="lake"):
        generate_sample(tmp_path / "renamed", config=renamed, size=48)
    with pytest.raises(ValueError, match="grids"):
        generate_sample(tmp_path / "grids", size=48, grids="wrong")
