"""Tiny real scenes (GeoTIFF and LAS/LAZ files) with a known answer at every pixel.

The scene is 40 x 40 one-metre pixels in UTM 33N. Rectangular regions carry a class, a height above a
sloped ground (absolute z 150..156 m), an intensity and single or multiple returns; the truth is a function
of position, so labels, point clouds and LiDAR rasters on any other grid or CRS are written from the same
truth and tests can compare what load_scene aligns with `truth(...)` on the reference grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np
import pyproj
import rasterio
from affine import Affine
from rasterio.warp import transform_bounds
from scipy.ndimage import maximum_filter, minimum_filter

from foundation.config import DEFAULT_CLASSES, Config
from foundation.scene_folder import LABELS_FILE, LAS_FILE, LAZ_FILE, MULTISPECTRAL_FILE, lidar_raster_file, span_folder

REFERENCE_CRS = "EPSG:32633"
WEST, NORTH = 500_000.0, 5_000_040.0
SIZE = 40
PIXEL = 1.0
LIDAR_NODATA = -9999.0
# The point-cloud file of each format write_scene writes: {"las": ..., "laz": ...}.
POINT_CLOUD_FILE = {"las": LAS_FILE, "laz": LAZ_FILE}


def class_id(name: str) -> int:
    return next(c.id for c in DEFAULT_CLASSES if c.name == name)


@dataclass(frozen=True)
class Region:
    label: int
    rows: tuple[int, int]  # half-open, reference pixels
    cols: tuple[int, int]
    height: float  # top of the above-ground point over the ground, 0 = ground points only
    intensity: int
    multiple_returns: bool
    point_class: int  # ASPRS class of the above-ground point


REGIONS = (
    Region(class_id("trees"), (0, 20), (0, 20), 15.0, 40, True, 5),
    Region(class_id("building"), (0, 20), (20, 40), 8.0, 200, False, 6),
    Region(class_id("grass"), (20, 40), (0, 20), 0.0, 120, False, 2),
    Region(class_id("road"), (20, 40), (20, 30), 0.0, 60, False, 2),
    Region(0, (20, 40), (30, 40), 3.0, 90, False, 1),  # unlabelled
)


@dataclass(frozen=True)
class Grid:
    """A grid covering the scene on another CRS, pixel size or origin."""

    crs: str = REFERENCE_CRS
    pixel: float = PIXEL
    shift: tuple[float, float] = (0.0, 0.0)  # moves the origin, in units of `crs`


def reference_transform() -> Affine:
    return Affine.translation(WEST, NORTH) @ Affine.scale(PIXEL, -PIXEL)


def ground_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 150.0 + 0.10 * (x - WEST) + 0.05 * (NORTH - y)


def multispectral_value(band: int, label: np.ndarray) -> np.ndarray:
    """uint16 reflectance x 10000, distinct for every band and class."""
    return (1000 + 100 * band + label).astype(np.uint16)


def _region_index(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Index into REGIONS at fractional reference pixel positions, -1 outside the scene."""
    index = np.full(np.shape(rows), -1)
    for i, region in enumerate(REGIONS):
        inside = ((rows >= region.rows[0]) & (rows < region.rows[1])
                  & (cols >= region.cols[0]) & (cols < region.cols[1]))
        index[inside] = i
    return index


def _attribute(index: np.ndarray, name: str, outside: float) -> np.ndarray:
    values = np.array([float(getattr(region, name)) for region in REGIONS] + [outside])
    return values[index]


def _truth_at(index: np.ndarray, name: str, outside: float) -> np.ndarray:
    if name == "return_ratio":
        return _attribute(index, "multiple_returns", outside)
    if name == "density":  # points per cell of one square metre
        return np.where(index < 0, outside, 4.0 + (_attribute(index, "height", 0.0) > 0))
    return _attribute(index, name, outside)


def truth(name: str) -> np.ndarray:
    """(SIZE, SIZE) truth on the reference grid: label, height, intensity, return_ratio or density."""
    return _truth_at(_region_index(*(np.mgrid[0:SIZE, 0:SIZE] + 0.5)), name, 0.0)


def region_interior(margin: int) -> np.ndarray:
    """Reference pixels at least `margin` pixels from any region boundary and from the scene's edge, where
    resampling from another grid cannot blur."""
    index = _region_index(*(np.mgrid[0:SIZE, 0:SIZE] + 0.5))
    size = 2 * margin + 1
    return (minimum_filter(index, size, mode="constant", cval=-1)
            == maximum_filter(index, size, mode="constant", cval=-1))


def write_raster(path: Path, data: np.ndarray, crs: str, transform: Affine, nodata: float | None = None) -> None:
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)


def write_point_cloud(path: Path, x, y, z, classification, intensity, number_of_returns, crs: str | None) -> None:
    """LAS 1.4 point format 6 (WKT CRS); a .laz suffix compresses with lazrs."""
    header = laspy.LasHeader(point_format=6, version="1.4")
    geographic = crs is not None and pyproj.CRS(crs).is_geographic
    header.scales = [1e-7, 1e-7, 1e-3] if geographic else [1e-3, 1e-3, 1e-3]
    header.offsets = [math.floor(np.min(x)), math.floor(np.min(y)), 0.0]
    if crs is not None:
        header.add_crs(pyproj.CRS(crs))
    las = laspy.LasData(header)
    las.x, las.y, las.z = np.asarray(x), np.asarray(y), np.asarray(z)
    las.classification = np.asarray(classification, np.uint8)
    las.intensity = np.asarray(intensity, np.uint16)
    las.number_of_returns = np.asarray(number_of_returns, np.uint8)
    las.return_number = np.asarray(number_of_returns, np.uint8)  # every point is its pulse's last return
    las.write(path)


def _in_rectangles(rows: np.ndarray, cols: np.ndarray, rectangles) -> np.ndarray:
    inside = np.zeros(rows.shape, bool)
    for row0, row1, col0, col1 in rectangles:
        inside |= (rows >= row0) & (rows < row1) & (cols >= col0) & (cols < col1)
    return inside


def scene_points(holes=(), no_ground=(), ground: bool = True) -> dict[str, np.ndarray]:
    """Points on the reference CRS: four ground points per cell around its centre, plus one at the centre
    at the region's height. Cells inside `holes` ((row0, row1, col0, col1), half-open) get no points, cells
    inside `no_ground` only the one above the ground (a roof or dense canopy the laser did not pass)."""
    rows, cols = (a.ravel() for a in np.mgrid[0:SIZE, 0:SIZE])
    keep = ~_in_rectangles(rows, cols, holes)
    rows, cols = rows[keep], cols[keep]
    region = _region_index(rows + 0.5, cols + 0.5)
    above = _attribute(region, "height", 0.0) > 0
    with_ground = ~_in_rectangles(rows, cols, no_ground)
    ground_offsets = ((-0.25, -0.25), (-0.25, 0.25), (0.25, -0.25), (0.25, 0.25))
    point_rows = np.concatenate([rows[with_ground] + 0.5 + dr for dr, _ in ground_offsets] + [rows[above] + 0.5])
    point_cols = np.concatenate([cols[with_ground] + 0.5 + dc for _, dc in ground_offsets] + [cols[above] + 0.5])
    point_region = np.concatenate([region[with_ground]] * 4 + [region[above]])
    is_ground = np.arange(point_rows.size) < 4 * np.count_nonzero(with_ground)
    x = WEST + point_cols * PIXEL
    y = NORTH - point_rows * PIXEL
    z = ground_z(x, y) + np.where(is_ground, 0.0, _attribute(point_region, "height", 0.0))
    above_class = _attribute(point_region, "point_class", 1)
    return {
        "x": x, "y": y, "z": z,
        "classification": np.where(is_ground, 2 if ground else 1, above_class),
        "intensity": _attribute(point_region, "intensity", 0),
        "number_of_returns": 1 + _attribute(point_region, "multiple_returns", 0),
    }


def _grid_regions(grid: Grid | None) -> tuple[str, Affine, np.ndarray]:
    """CRS and transform of `grid` (None = the reference grid) covering the scene, and each of its pixels'
    index into REGIONS."""
    if grid is None:
        return REFERENCE_CRS, reference_transform(), _region_index(*(np.mgrid[0:SIZE, 0:SIZE] + 0.5))
    west, south, east, north = transform_bounds(REFERENCE_CRS, grid.crs, WEST, NORTH - SIZE * PIXEL,
                                                WEST + SIZE * PIXEL, NORTH, densify_pts=21)
    margin = 2 * grid.pixel
    origin = Affine.translation(west - margin + grid.shift[0], north + margin + grid.shift[1])
    transform = origin @ Affine.scale(grid.pixel, -grid.pixel)
    width = math.ceil((east - west + 2 * margin) / grid.pixel)
    height = math.ceil((north - south + 2 * margin) / grid.pixel)
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    x, y = transform @ (cols, rows)
    ref_x, ref_y = pyproj.Transformer.from_crs(grid.crs, REFERENCE_CRS, always_xy=True).transform(x, y)
    return grid.crs, transform, _region_index((NORTH - ref_y) / PIXEL, (ref_x - WEST) / PIXEL)


def write_scene(root: Path, scene_id: str = "scene-001", *, config: Config | None = None,
                band_count: int | None = None, multispectral_crs: str = REFERENCE_CRS,
                float_reflectance: bool = False, labels_grid: Grid | None = None, lidar: str = "las",
                lidar_crs: str | None = REFERENCE_CRS, lidar_shift: tuple[float, float] = (0.0, 0.0),
                lidar_grid: Grid | None = None, holes=(), no_ground=(), ground: bool = True) -> Path:
    """Writes <scene_id>/ in root's first span folder and returns that folder.

    lidar: "las" or "laz" (a point cloud on `lidar_crs`, None = no CRS in the file, moved by `lidar_shift`
    metres), "rasters" (lidar_<channel>.tif on `lidar_grid` for every configured channel) or "none".
    holes: rectangles without LiDAR data, in cells of the point cloud's reference grid or the LiDAR rasters;
    no_ground: rectangles of the point cloud without ground points; ground=False classifies no point as ground.
    """
    config = config or Config()
    scene_dir = Path(root) / span_folder(1) / scene_id
    scene_dir.mkdir(parents=True)
    band_count = band_count or len(config.streams.multispectral_bands)
    bands = np.stack([multispectral_value(b, truth("label")) for b in range(band_count)])
    if float_reflectance:
        bands = (bands / config.streams.float_reflectance_scale).astype(np.float32)
    write_raster(scene_dir / MULTISPECTRAL_FILE, bands, multispectral_crs, reference_transform())

    crs, transform, index = _grid_regions(labels_grid)
    write_raster(scene_dir / LABELS_FILE, _truth_at(index, "label", 0).astype(np.uint8), crs, transform)

    if lidar in ("las", "laz"):
        points = scene_points(holes, no_ground, ground)
        x, y = points.pop("x") + lidar_shift[0], points.pop("y") + lidar_shift[1]
        if lidar_crs not in (None, REFERENCE_CRS):
            x, y = pyproj.Transformer.from_crs(REFERENCE_CRS, lidar_crs, always_xy=True).transform(x, y)
        write_point_cloud(scene_dir / POINT_CLOUD_FILE[lidar], x, y, crs=lidar_crs, **points)
    elif lidar == "rasters":
        crs, transform, index = _grid_regions(lidar_grid)
        for channel in config.streams.lidar_channels:
            values = _truth_at(index, channel, LIDAR_NODATA).astype(np.float32)
            for row0, row1, col0, col1 in holes:
                values[row0:row1, col0:col1] = LIDAR_NODATA
            write_raster(scene_dir / lidar_raster_file(channel), values, crs, transform, nodata=LIDAR_NODATA)
    return scene_dir
