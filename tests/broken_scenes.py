"""The broken-scene corpus: every way a delivered scene folder can be wrong, each with what ingestion must do.

Each kind starts from a good 48 px sample scene (synth.scenes.generate_sample) and breaks or changes one file;
nothing binary is committed. A Reject names the file its SceneError must name and words its problem must hold;
an Accept checks what the scene read as (its masks, its values) against the good scene it came from.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import laspy
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.shutil import copy as copy_raster
from rasterio.warp import Resampling, calculate_default_transform, reproject

from components.scenes import SceneRasters
from foundation.config import Config
from foundation.scene_folder import LABELS_FILE, LAS_FILE, LAZ_FILE, MULTISPECTRAL_FILE, lidar_raster_file, span_folder
from synth.scenes import GRIDS, PRERASTERIZED_CHANNELS, PRERASTERIZED_NODATA, generate_sample

SIZE = 48
SEED = 5
CONFIG = Config()
# The CRS pre-rasterised LiDAR is moved to: rotated against the sample's UTM grid, so it is really resampled.
OTHER_CRS = "EPSG:3035"
UNKNOWN_LABELS = (1, 42)  # below and above every id of the class table
NAN_BLOCK = (slice(20, 24), slice(20, 24))


@dataclass(frozen=True)
class Reject:
    file: str  # the file the SceneError names
    defect: str  # words its problem holds


@dataclass(frozen=True)
class Accept:
    # (what the scene read as, what the good scene it was made from read as): raises AssertionError if wrong
    check: Callable[[SceneRasters, SceneRasters], None]


@dataclass(frozen=True)
class Kind:
    name: str  # also the scene folder's name
    corrupt: Callable[[Path], None]  # changes the copied good scene folder in place
    outcome: Reject | Accept
    grids: str = "reference"  # the sample scene it starts from (synth.scenes.GRIDS)


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), src.profile


def _rewrite(path: Path, data: np.ndarray, **changes) -> None:
    """The raster again, with `changes` to its profile (crs, dtype, count, transform, nodata)."""
    _, profile = _read(path)
    profile.update(count=data.shape[0], dtype=data.dtype, **changes)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _truncate_header(scene_dir: Path) -> None:
    path = scene_dir / MULTISPECTRAL_FILE
    path.write_bytes(path.read_bytes()[:200])  # GDAL writes the IFD behind the pixels: 200 bytes hold none of it


def _truncate_pixels(scene_dir: Path) -> None:
    """A GeoTIFF whose header (IFD) comes first, as GDAL's CreateCopy writes it, cut half way through its pixels."""
    path = scene_dir / MULTISPECTRAL_FILE
    header_first = scene_dir / "header-first.tif"
    copy_raster(path, header_first, driver="GTiff")
    data = header_first.read_bytes()
    assert int.from_bytes(data[4:8], "little") == 8, "the IFD must come first for this kind"
    path.write_bytes(data[:len(data) // 2])
    header_first.unlink()


def _text_named_tif(scene_dir: Path) -> None:
    (scene_dir / MULTISPECTRAL_FILE).write_text("multispectral delivery pending, see the e-mail\n" * 20)


def _band_count(scene_dir: Path) -> None:
    data, _ = _read(scene_dir / MULTISPECTRAL_FILE)
    _rewrite(scene_dir / MULTISPECTRAL_FILE, data[:4])


def _multispectral_crs(crs: str | None) -> Callable[[Path], None]:
    def corrupt(scene_dir: Path) -> None:
        data, _ = _read(scene_dir / MULTISPECTRAL_FILE)
        transform = rasterio.Affine(1e-5, 0, 14.0, 0, -1e-5, 48.0) if crs else rasterio.Affine.identity()
        _rewrite(scene_dir / MULTISPECTRAL_FILE, data, crs=crs, transform=transform)
    return corrupt


def _unknown_labels(scene_dir: Path) -> None:
    labels, _ = _read(scene_dir / LABELS_FILE)
    labels[0, :2, :5] = UNKNOWN_LABELS[1]
    labels[0, 40, :3] = UNKNOWN_LABELS[0]
    _rewrite(scene_dir / LABELS_FILE, labels)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda scene_dir: (scene_dir / name).unlink()


def _rewrite_cloud(change: Callable[[laspy.LasData], laspy.LasData], name: str = LAZ_FILE) -> Callable[[Path], None]:
    """The sample's LAZ changed by `change`, written as `name` (a .las suffix writes it uncompressed)."""
    def corrupt(scene_dir: Path) -> None:
        las = change(laspy.read(scene_dir / LAZ_FILE))
        (scene_dir / LAZ_FILE).unlink()
        las.write(scene_dir / name)
    return corrupt


def _no_points(las: laspy.LasData) -> laspy.LasData:
    las.points = las.points[:0]
    return las


def _no_ground(las: laspy.LasData) -> laspy.LasData:
    las.classification = np.where(las.classification == 2, 1, las.classification).astype(np.uint8)
    return las


def _elsewhere(las: laspy.LasData) -> laspy.LasData:
    las.header.offsets = las.header.offsets + [10_000.0, 0.0, 0.0]
    las.x = np.asarray(las.x) + 10_000.0
    return las


def _short_las(scene_dir: Path) -> None:
    """An uncompressed LAS cut 1,000 point records short of what its header promises."""
    _rewrite_cloud(lambda las: las, LAS_FILE)(scene_dir)
    path = scene_dir / LAS_FILE
    record = laspy.open(path).header.point_format.size
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 1000 * record])


def _corrupt_laz_chunk(scene_dir: Path) -> None:
    """Sixteen bytes of the compressed points overwritten, a few hundred bytes into the first chunk."""
    path = scene_dir / LAZ_FILE
    start = laspy.open(path).header.offset_to_point_data + 2000
    data = bytearray(path.read_bytes())
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    path.write_bytes(bytes(data))


def _reprojected_lidar_rasters(scene_dir: Path) -> None:
    """The pre-rasterised channels warped onto OTHER_CRS, as a vendor working in another CRS delivers them."""
    for channel in PRERASTERIZED_CHANNELS:
        path = scene_dir / lidar_raster_file(channel)
        data, profile = _read(path)
        west, south, east, north = rasterio.transform.array_bounds(profile["height"], profile["width"],
                                                                   profile["transform"])
        transform, width, height = calculate_default_transform(profile["crs"], OTHER_CRS, profile["width"],
                                                               profile["height"], west, south, east, north)
        warped = np.full((1, height, width), PRERASTERIZED_NODATA, np.float32)
        reproject(data, warped, src_transform=profile["transform"], src_crs=profile["crs"],
                  src_nodata=PRERASTERIZED_NODATA, dst_transform=transform, dst_crs=OTHER_CRS,
                  dst_nodata=PRERASTERIZED_NODATA, resampling=Resampling.nearest)
        _rewrite(path, warped, crs=OTHER_CRS, transform=transform, width=width, height=height)


def _float_multispectral(nan_block: bool) -> Callable[[Path], None]:
    """Reflectance 0..1 as float32, optionally with a block of NaN in one band."""
    def corrupt(scene_dir: Path) -> None:
        data, _ = _read(scene_dir / MULTISPECTRAL_FILE)
        reflectance = (data / CONFIG.streams.float_reflectance_scale).astype(np.float32)
        if nan_block:
            reflectance[2][NAN_BLOCK] = np.nan
        _rewrite(scene_dir / MULTISPECTRAL_FILE, reflectance)
    return corrupt


def _unchanged(scene_dir: Path) -> None:
    """The sample already delivers uint16 imagery: the kind that shows it is read as such."""


def _symlink_out_of_root(scene_dir: Path) -> None:
    """The scene folder moved outside the data root, a symlink left in its place."""
    outside = scene_dir.parents[2] / "outside-the-data-root" / scene_dir.name
    outside.parent.mkdir(exist_ok=True)
    shutil.move(scene_dir, outside)
    scene_dir.symlink_to(outside, target_is_directory=True)


# Checks of the accepted kinds.

def _same_as_good(rasters: SceneRasters, good: SceneRasters) -> None:
    for name in ("multispectral", "lidar", "labels", "multispectral_valid", "lidar_valid", "labels_valid"):
        np.testing.assert_array_equal(getattr(rasters, name), getattr(good, name), err_msg=name)


def _float_equals_uint16(rasters: SceneRasters, good: SceneRasters) -> None:
    np.testing.assert_allclose(rasters.multispectral, good.multispectral, atol=0.01)
    assert rasters.multispectral_valid.all()


def _nan_block_masked(rasters: SceneRasters, good: SceneRasters) -> None:
    expected = np.ones(good.multispectral_valid.shape, bool)
    expected[NAN_BLOCK] = False
    np.testing.assert_array_equal(rasters.multispectral_valid, expected)
    assert np.isnan(rasters.multispectral[:, ~expected]).all()
    np.testing.assert_allclose(rasters.multispectral[:, expected], good.multispectral[:, expected], atol=0.01)


def _uint16_as_is(rasters: SceneRasters, good: SceneRasters) -> None:
    with rasterio.open(rasters.files["multispectral"]) as src:
        assert src.dtypes[0] == "uint16"
        np.testing.assert_array_equal(rasters.multispectral, src.read().astype(np.float32))
    assert rasters.multispectral_valid.all()


def _labels_resampled(rasters: SceneRasters, good: SceneRasters) -> None:
    """2 m labels on the neighbouring UTM zone, nearest-neighbour back: most labelled pixels keep their class."""
    with rasterio.open(rasters.files["labels"]) as src:
        assert CRS.from_user_input(src.crs) != good.crs
    both = (rasters.labels != 0) & (good.labels != 0)
    assert both.sum() > 0.5 * (good.labels != 0).sum()
    assert np.mean(rasters.labels[both] == good.labels[both]) > 0.8
    assert set(np.unique(rasters.labels).tolist()) <= {0, *CONFIG.class_ids}


def _lidar_resampled(rasters: SceneRasters, good: SceneRasters) -> None:
    """On the grid and close to the same rasters read on the sample's own CRS."""
    both = rasters.lidar_valid & good.lidar_valid
    assert both.mean() > 0.9
    height = CONFIG.streams.lidar_channels.index("height")
    difference = np.abs(rasters.lidar[height][both] - good.lidar[height][both])
    assert np.median(difference) < 0.5, np.median(difference)


NOT_OVERLAPPING = f"does not overlap {MULTISPECTRAL_FILE}"
KINDS = (
    Kind("truncated-geotiff-header", _truncate_header, Reject(MULTISPECTRAL_FILE, "cannot read raster")),
    Kind("truncated-pixel-data", _truncate_pixels,
         Reject(MULTISPECTRAL_FILE, "cannot read its pixels (truncated or corrupt)")),
    Kind("text-file-named-tif", _text_named_tif,
         Reject(MULTISPECTRAL_FILE, "not recognized as being in a supported file format")),
    Kind("wrong-band-count", _band_count, Reject(
        MULTISPECTRAL_FILE, f"4 bands, but config.streams.multispectral_bands has "
        f"{len(CONFIG.streams.multispectral_bands)}")),
    Kind("geographic-crs", _multispectral_crs("EPSG:4326"),
         Reject(MULTISPECTRAL_FILE, "geographic (unprojected) CRS EPSG:4326")),
    Kind("no-crs", _multispectral_crs(None), Reject(MULTISPECTRAL_FILE, "no CRS; a projected CRS is required")),
    Kind("unknown-label-ids", _unknown_labels,
         Reject(LABELS_FILE, f"label ids not in the class table {list(CONFIG.class_ids)}: "
                             f"{UNKNOWN_LABELS[0]} (3 px), {UNKNOWN_LABELS[1]} (10 px)")),
    Kind("missing-labels", _remove(LABELS_FILE), Reject(LABELS_FILE, "missing file")),
    Kind("empty-laz", _rewrite_cloud(_no_points), Reject(LAZ_FILE, "no points (an empty point cloud)")),
    Kind("zero-byte-laz", lambda scene_dir: (scene_dir / LAZ_FILE).write_bytes(b""),
         Reject(LAZ_FILE, "cannot read point cloud")),
    Kind("no-ground-points", _rewrite_cloud(_no_ground), Reject(LAZ_FILE, "no ground points (classification 2)")),
    Kind("las-shorter-than-its-header", _short_las, Reject(LAS_FILE, "the header promises ")),
    Kind("corrupt-laz-chunk", _corrupt_laz_chunk, Reject(LAZ_FILE, "cannot read point records (truncated or corrupt)")),
    Kind("lidar-not-overlapping", _rewrite_cloud(_elsewhere), Reject(LAZ_FILE, NOT_OVERLAPPING)),
    Kind("symlink-out-of-data-root", _symlink_out_of_root, Reject("", "outside the data root")),
    Kind("labels-on-another-crs", _unchanged, Accept(_labels_resampled), grids="mixed"),
    Kind("nan-regions", _float_multispectral(nan_block=True), Accept(_nan_block_masked)),
    Kind("uint16-imagery", _unchanged, Accept(_uint16_as_is)),
    Kind("float-reflectance", _float_multispectral(nan_block=False), Accept(_float_equals_uint16)),
    Kind("uncompressed-las", _rewrite_cloud(lambda las: las, LAS_FILE), Accept(_same_as_good)),
    Kind("prerasterised-lidar-on-another-crs", _reprojected_lidar_rasters, Accept(_lidar_resampled),
         grids="prerasterized"),
)
REJECTS = tuple(kind for kind in KINDS if isinstance(kind.outcome, Reject))
ACCEPTS = tuple(kind for kind in KINDS if isinstance(kind.outcome, Accept))


def good_scenes(work_dir: Path) -> dict[str, Path]:
    """Per sample grid (synth.scenes.GRIDS), one good scene folder under work_dir/good-<grids>."""
    return {grids: generate_sample(work_dir / f"good-{grids}", CONFIG, spans=1, scenes_per_span=1, size=SIZE,
                                   seed=SEED, grids=grids)[0] for grids in GRIDS}


def write_corpus(work_dir: Path, kinds=KINDS, good_copies: int = 0) -> Path:
    """A data root under work_dir whose one span holds a scene folder per kind (named after it) and
    `good_copies` unchanged scenes (good-0, ...); returns the data root. The good scenes the kinds start
    from lie beside it, under work_dir/good-<grids>."""
    good = good_scenes(work_dir)
    span = work_dir / "data" / span_folder(1)
    span.mkdir(parents=True)
    for kind in kinds:
        shutil.copytree(good[kind.grids], span / kind.name)
        kind.corrupt(span / kind.name)
    for i in range(good_copies):
        shutil.copytree(good["reference"], span / f"good-{i}")
    return work_dir / "data"
