"""Read one scene folder and put every stream on the multispectral grid.

The multispectral raster defines the reference grid. Labels are resampled with nearest neighbour (ids must
never be averaged), pre-rasterised LiDAR bilinearly (measurements), and point clouds are rasterised cell by
cell on the reference grid itself, so no stream is resampled twice. Every problem becomes a SceneError that
names the scene, the file and what is wrong, so the executor can list all bad scenes of a run at once.
"""
from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import laspy
import numpy as np
import pyproj
import rasterio
from affine import Affine
from pyproj import Transformer
from pyproj.exceptions import CRSError
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.transform import array_bounds
from rasterio.warp import Resampling, reproject, transform_bounds
from scipy.interpolate import griddata
from scipy.ndimage import binary_dilation, distance_transform_edt
from scipy.spatial import QhullError

from pipeline.config import Config

log = logging.getLogger(__name__)

MULTISPECTRAL_FILE = "multispectral.tif"
LABELS_FILE = "labels.tif"
POINT_CLOUD_FILES = ("lidar.las", "lidar.laz")
GROUND_CLASS = 2
# ASPRS low and high noise: a bird or a multipath echo must not become the top of a cell.
NOISE_CLASSES = (7, 18)
# An empty cell this close to a cell with points is a gap in the scan pattern and takes its neighbour's
# height; farther away it is open water or dark ground that returned nothing, so nothing stands there.
HEIGHT_FILL_RADIUS_M = 2.0
# Ground cells this close to a cell without ground points span the triangles that interpolate it.
_GAP_RIM_CELLS = 2
# Rounds of closing ground gaps between opposite neighbours; what is left goes to the triangulation.
_NEIGHBOUR_FILL_ROUNDS = 4
# A damaged point cloud fails in laspy, in lazrs (a RuntimeError subclass) or in pyproj (its CRS VLR).
_POINT_CLOUD_READ_ERRORS = (laspy.errors.LaspyException, OSError, ValueError, RuntimeError, CRSError)


def lidar_raster_file(channel: str) -> str:
    """Pre-rasterised LiDAR file of a channel; height is a normalised DSM, hence its conventional name."""
    return "lidar_ndsm.tif" if channel == "height" else f"lidar_{channel}.tif"


class SceneError(Exception):
    """A scene that cannot be used; args stay plain strings so Beam can pickle it across workers."""

    def __init__(self, scene: str, path: str | os.PathLike, problem: str):
        super().__init__(scene, str(path), problem)
        self.scene = scene
        self.path = str(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"scene {self.scene}: {self.path}: {self.problem}"


@dataclass
class SceneRasters:
    """Every stream of one scene on the multispectral grid."""

    scene_id: str
    multispectral: np.ndarray  # float32 (bands, H, W), uint16 reflectance units (x 10000)
    lidar: np.ndarray  # float32 (channels, H, W) in config.streams.lidar_channels order
    labels: np.ndarray  # int32 (H, W), 0 = unlabelled
    crs: CRS
    transform: Affine
    filled_cells: dict[str, int]  # per LiDAR channel, cells without data that were filled


@dataclass(frozen=True)
class _Grid:
    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return array_bounds(self.height, self.width, self.transform)

    @property
    def pixel_size_m(self) -> tuple[float, float]:
        """(row, column) spacing in metres: fill radii and densities are metric even on a CRS in feet."""
        t = self.transform
        metres = self.crs.linear_units_factor[1]
        return float(np.hypot(t.b, t.e)) * metres, float(np.hypot(t.a, t.d)) * metres


def _is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def scene_dirs(file_paths: Iterable[str | os.PathLike]) -> list[str]:
    """Scene folders of the files the split pattern matched (`span-XXXX/<scene>/*`): local paths or URIs."""
    return sorted({posixpath.dirname(str(path)) if _is_uri(path) else str(Path(path).parent) for path in file_paths})


def load_scene(scene_dir: str | os.PathLike, config: Config) -> SceneRasters:
    """Every stream of one scene on the multispectral grid; the first problem found (multispectral, then
    labels, then LiDAR) raises SceneError. A URI (gs://...) is copied to a local folder first: GDAL and laspy
    read local files, and a scene is small."""
    if _is_uri(scene_dir):
        return _load_remote_scene(str(scene_dir).rstrip("/"), config)
    scene_dir = Path(scene_dir).absolute()
    scene = scene_dir.name
    multispectral, grid = _read_multispectral(scene, scene_dir / MULTISPECTRAL_FILE, config)
    labels = _read_labels(scene, scene_dir / LABELS_FILE, grid, config)
    lidar, filled = _read_lidar(scene, scene_dir, grid, config)
    return SceneRasters(scene, multispectral, lidar, labels, grid.crs, grid.transform, filled)


def _load_remote_scene(uri: str, config: Config) -> SceneRasters:
    import tensorflow as tf  # its filesystems read gs:// (and ram:// in tests); local scenes do not need it

    with tempfile.TemporaryDirectory(prefix="terrafuse-scene-") as local:
        local_dir = Path(local) / posixpath.basename(uri)
        local_dir.mkdir()
        for name in tf.io.gfile.listdir(uri):
            if not tf.io.gfile.isdir(posixpath.join(uri, name)):
                tf.io.gfile.copy(posixpath.join(uri, name), str(local_dir / name))
        try:
            return load_scene(local_dir, config)
        except SceneError as err:  # name the file where it lives, not the temporary copy
            raise SceneError(err.scene, err.path.replace(str(local_dir), uri), err.problem) from err


@contextmanager
def _open_raster(scene: str, path: Path) -> Iterator[rasterio.DatasetReader]:
    """Opens a raster; GDAL errors while opening or reading it become the scene's error."""
    if not path.is_file():
        raise SceneError(scene, path, "missing file")
    try:
        with rasterio.open(path) as src:
            yield src
    except RasterioError as err:
        message = str(err).replace(f"'{path}' ", "")  # GDAL repeats the path the error names already
        raise SceneError(scene, path, f"cannot read raster: {message}") from err


def _require_projected(scene: str, path: Path, crs: CRS | pyproj.CRS | None) -> None:
    """Cells and patches are metric; degrees would make every size and density wrong."""
    if crs is None:
        raise SceneError(scene, path, "no CRS; a projected CRS is required")
    if not crs.is_projected:
        kind = "geographic (unprojected)" if crs.is_geographic else "unprojected"
        raise SceneError(scene, path, f"{kind} CRS {crs.to_string()}; a projected CRS is required")


def _require_overlap(scene: str, path: Path, crs: CRS, bounds: tuple[float, ...], grid: _Grid) -> None:
    west, south, east, north = transform_bounds(crs, grid.crs, *bounds, densify_pts=21)
    ref_west, ref_south, ref_east, ref_north = grid.bounds
    if min(east, ref_east) <= max(west, ref_west) or min(north, ref_north) <= max(south, ref_south):
        raise SceneError(
            scene, path,
            f"does not overlap {MULTISPECTRAL_FILE}: bounds {_format_bounds((west, south, east, north))} vs "
            f"{_format_bounds(grid.bounds)} in {grid.crs.to_string()}",
        )


def _format_bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:.1f}" for value in bounds) + ")"


def _read_multispectral(scene: str, path: Path, config: Config) -> tuple[np.ndarray, _Grid]:
    bands = config.streams.multispectral_bands
    with _open_raster(scene, path) as src:
        _require_projected(scene, path, src.crs)
        if src.count != len(bands):
            raise SceneError(
                scene, path, f"{src.count} bands, but config.streams.multispectral_bands has {len(bands)}: "
                f"{', '.join(bands)}"
            )
        data = src.read(out_dtype=np.float32)
        if np.dtype(src.dtypes[0]).kind == "f":
            data *= np.float32(config.streams.float_reflectance_scale)
        return data, _Grid(src.crs, src.transform, src.height, src.width)


def _read_labels(scene: str, path: Path, grid: _Grid, config: Config) -> np.ndarray:
    with _open_raster(scene, path) as src:
        _require_projected(scene, path, src.crs)
        _require_overlap(scene, path, src.crs, src.bounds, grid)
        if src.count != 1:
            raise SceneError(scene, path, f"{src.count} bands; expected one band of class ids")
        source = src.read(1)
        nodata = src.nodata
        src_crs, src_transform = src.crs, src.transform
    valid = ~_nodata_mask(source, nodata)
    _require_known_labels(scene, path, source[valid], config)
    class_ids = np.where(valid, source, 0).astype(np.int32)
    labels = np.zeros(grid.shape, np.int32)
    reproject(
        class_ids, labels, src_transform=src_transform, src_crs=src_crs, src_nodata=0,
        dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=0, resampling=Resampling.nearest,
    )
    return labels


def _nodata_mask(values: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:
        return np.zeros(values.shape, bool)
    if np.isnan(nodata):
        return np.isnan(values)
    return values == nodata


def _require_known_labels(scene: str, path: Path, values: np.ndarray, config: Config) -> None:
    ids, counts = np.unique(values, return_counts=True)
    unknown = ~np.isin(ids, (0, *config.class_ids))
    if unknown.any():
        listing = ", ".join(f"{_format_id(i)} ({n} px)" for i, n in zip(ids[unknown], counts[unknown]))
        raise SceneError(
            scene, path, f"label ids not in the class table {list(config.class_ids)}: {listing}"
        )


def _format_id(value: np.generic) -> str:
    value = value.item()
    return str(int(value)) if float(value).is_integer() else str(value)


def _read_lidar(scene: str, scene_dir: Path, grid: _Grid, config: Config) -> tuple[np.ndarray, dict[str, int]]:
    channels = config.streams.lidar_channels
    for name in POINT_CLOUD_FILES:
        if (scene_dir / name).is_file():
            rasters = _rasterise_point_cloud(scene, scene_dir / name, grid)
            break
    else:
        if not any((scene_dir / lidar_raster_file(channel)).is_file() for channel in channels):
            raise SceneError(
                scene, scene_dir / POINT_CLOUD_FILES[0],
                f"missing file: no point cloud ({' or '.join(POINT_CLOUD_FILES)}) and no pre-rasterised "
                f"{', '.join(lidar_raster_file(channel) for channel in channels)}",
            )
        rasters = {channel: _resample_lidar_raster(scene, scene_dir, channel, grid) for channel in channels}
    stack, filled = [], {}
    for channel in channels:
        values, has_data = rasters[channel]
        stack.append(_fill_empty_cells(channel, values, has_data, grid))
        filled[channel] = int((~has_data).sum())
    return np.stack(stack).astype(np.float32), filled


def _fill_empty_cells(channel: str, values: np.ndarray, has_data: np.ndarray, grid: _Grid) -> np.ndarray:
    """Empty cells take their nearest cell's value; see HEIGHT_FILL_RADIUS_M for height."""
    if has_data.all():
        return values
    distance, (rows, cols) = distance_transform_edt(~has_data, sampling=grid.pixel_size_m, return_indices=True)
    nearest = values[rows, cols]
    if channel == "height":
        nearest = np.where(distance <= HEIGHT_FILL_RADIUS_M, nearest, 0.0)
    return np.where(has_data, values, nearest)


def _resample_lidar_raster(scene: str, scene_dir: Path, channel: str, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    path = scene_dir / lidar_raster_file(channel)
    with _open_raster(scene, path) as src:
        _require_projected(scene, path, src.crs)
        _require_overlap(scene, path, src.crs, src.bounds, grid)
        values = np.full(grid.shape, np.nan, np.float32)
        reproject(
            src.read(1, out_dtype=np.float32), values, src_transform=src.transform, src_crs=src.crs,
            src_nodata=src.nodata, dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan,
            resampling=Resampling.bilinear,
        )
    has_data = np.isfinite(values)
    if not has_data.any():
        raise SceneError(scene, path, f"no valid cells on the {MULTISPECTRAL_FILE} grid (all nodata)")
    if channel == "height":
        values = np.maximum(values, 0.0)
    return values, has_data


def _rasterise_point_cloud(scene: str, path: Path, grid: _Grid) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every channel the config may ask for, as (values, cell has points) on the reference grid."""
    try:
        las = laspy.read(path)
        cloud_crs = las.header.parse_crs()
    except _POINT_CLOUD_READ_ERRORS as err:
        raise SceneError(scene, path, f"cannot read point cloud: {err}") from err
    x, y = _points_on_reference_crs(scene, path, las, cloud_crs, grid)
    z = np.asarray(las.z, np.float64)
    classification = np.asarray(las.classification)
    if not (classification == GROUND_CLASS).any():
        raise SceneError(scene, path, f"no ground points (classification {GROUND_CLASS})")

    inverse = ~grid.transform
    cols = np.floor(inverse.a * x + inverse.b * y + inverse.c).astype(np.int64)
    rows = np.floor(inverse.d * x + inverse.e * y + inverse.f).astype(np.int64)
    on_grid = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
    keep = on_grid & ~np.isin(classification, NOISE_CLASSES)
    if not keep.any():
        point_bounds = (x.min(), y.min(), x.max(), y.max()) if x.size else (np.nan,) * 4
        raise SceneError(
            scene, path,
            f"does not overlap {MULTISPECTRAL_FILE}: points {_format_bounds(point_bounds)} vs "
            f"{_format_bounds(grid.bounds)} in {grid.crs.to_string()}",
        )
    cell = rows[keep] * grid.width + cols[keep]
    z = z[keep]
    ground = classification[keep] == GROUND_CLASS
    if not ground.any():
        raise SceneError(scene, path, f"no ground points (classification {GROUND_CLASS}) on the "
                                      f"{MULTISPECTRAL_FILE} grid")

    n_cells = grid.height * grid.width
    count = np.bincount(cell, minlength=n_cells)
    has_points = (count > 0).reshape(grid.shape)
    count_or_one = np.maximum(count, 1)  # empty cells divide 0 by 1, then get filled
    top = np.full(n_cells, -np.inf)
    np.maximum.at(top, cell, z)
    ground_surface = _ground_surface(cell[ground], z[ground], grid)
    height = np.maximum(top.reshape(grid.shape) - ground_surface, 0.0)
    intensity = np.bincount(cell, weights=np.asarray(las.intensity)[keep], minlength=n_cells) / count_or_one
    multiple = np.bincount(cell, weights=np.asarray(las.number_of_returns)[keep] > 1, minlength=n_cells)
    row_spacing, col_spacing = grid.pixel_size_m
    no_gaps = np.ones(grid.shape, bool)  # an empty cell's density of 0 is a measurement, not a gap
    return {
        "height": (height, has_points),
        "intensity": (intensity.reshape(grid.shape), has_points),
        "return_ratio": ((multiple / count_or_one).reshape(grid.shape), has_points),
        "density": ((count / (row_spacing * col_spacing)).reshape(grid.shape), no_gaps),
    }


def _points_on_reference_crs(scene: str, path: Path, las: laspy.LasData, cloud_crs: pyproj.CRS | None,
                             grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(las.x, np.float64), np.asarray(las.y, np.float64)
    if cloud_crs is None:
        log.warning("scene %s: %s has no CRS; assuming the CRS of %s (%s)", scene, path, MULTISPECTRAL_FILE,
                    grid.crs.to_string())
        return x, y
    _require_projected(scene, path, cloud_crs)
    horizontal = cloud_crs.sub_crs_list[0] if cloud_crs.is_compound else cloud_crs
    reference = pyproj.CRS.from_wkt(grid.crs.to_wkt())
    if horizontal.equals(reference, ignore_axis_order=True):
        return x, y
    return Transformer.from_crs(horizontal, reference, always_xy=True).transform(x, y)


def _ground_surface(cell: np.ndarray, z: np.ndarray, grid: _Grid) -> np.ndarray:
    """Terrain height at every cell centre from ground points.

    Cells with ground points take their mean ground z (class 2 is already the classifier's ground, and on a
    slope the minimum would sit up to half a cell's rise too low). Cells without are interpolated linearly,
    those outside the ground cells' hull take the nearest cell's value.
    """
    n_cells = grid.height * grid.width
    ground_count = np.bincount(cell, minlength=n_cells)
    known = ground_count > 0
    surface = np.full(n_cells, np.nan)
    surface[known] = np.bincount(cell, weights=z, minlength=n_cells)[known] / ground_count[known]
    surface = _triangulate_gaps(_fill_between_neighbours(surface.reshape(grid.shape)))
    gaps = np.isnan(surface)
    if gaps.any():
        rows, cols = distance_transform_edt(gaps, return_distances=False, return_indices=True)
        surface = surface[rows, cols]
    return surface


def _fill_between_neighbours(surface: np.ndarray) -> np.ndarray:
    """Fills gaps that lie between two known cells (vertically, horizontally or diagonally) with the mean
    of such pairs, a few rounds so small clusters close from the outside in.

    This is linear interpolation along the grid's lines and exact on a plane. Ground points leave many
    scattered empty cells (under canopy, on dark surfaces); closing those here keeps them out of the
    Delaunay triangulation, which costs about 10 s per million cells.
    """
    height, width = surface.shape
    padded = np.full((height + 2, width + 2), np.nan)
    for _ in range(_NEIGHBOUR_FILL_ROUNDS):
        gaps = np.isnan(surface)
        if not gaps.any():
            break
        padded[1:-1, 1:-1] = surface
        total = np.zeros(surface.shape)
        pairs = np.zeros(surface.shape, np.int8)
        for dr, dc in ((1, 0), (0, 1), (1, 1), (1, -1)):
            pair = (padded[1 + dr:height + 1 + dr, 1 + dc:width + 1 + dc]
                    + padded[1 - dr:height + 1 - dr, 1 - dc:width + 1 - dc])
            found = np.isfinite(pair)
            total[found] += pair[found] / 2
            pairs += found
        fill = gaps & (pairs > 0)
        if not fill.any():
            break
        surface = np.where(fill, total / np.maximum(pairs, 1), surface)
    return surface


def _triangulate_gaps(surface: np.ndarray) -> np.ndarray:
    """Linear (Delaunay) interpolation of the remaining gaps from the known cells around them: cells far
    from any gap never shape the triangles that cover one, so they stay out of the triangulation."""
    gaps = np.isnan(surface)
    rim = binary_dilation(gaps, iterations=_GAP_RIM_CELLS) & ~gaps
    if not gaps.any() or np.count_nonzero(rim) < 3:
        return surface
    try:
        interpolated = griddata(np.nonzero(rim), surface[rim], np.nonzero(gaps), method="linear")
    except QhullError:  # rim cells on one line: no triangles, the nearest-cell fill covers these gaps
        return surface
    surface = surface.copy()
    surface[gaps] = interpolated
    return surface
