"""A LiDAR point cloud as rasters on a grid: a cell per pixel, every channel the config may ask for.

Height is the top of a cell's points above a ground surface interpolated from ground points (so a sloped
terrain reads 0 on bare ground), intensity the mean of its points, return_ratio the share of its points from
pulses with several returns, density its points per square metre. Reading the file and bringing its points
onto the grid's CRS is components.scenes' part. A cloud is read in parts (chunks of points, which a pipeline reads
on different workers): each part is binned into sparse per-cell sums (SparseCells) and counts (PointStats), the
sums of the cells of a tile's window are added up there (CellSums), the counts per scene.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from scipy.interpolate import griddata
from scipy.ndimage import binary_dilation, distance_transform_edt, find_objects, label
from scipy.spatial import QhullError
from threadpoolctl import ThreadpoolController

from foundation.scene_folder import MULTISPECTRAL_FILE

GROUND_CLASS = 2
# ASPRS low and high noise: a bird or a multipath echo must not become the top of a cell.
NOISE_CLASSES = (7, 18)
# Ground cells this close to a cell without ground points span the triangles that interpolate it.
_GAP_RIM_CELLS = 2
# Ground z is summed in integers of this unit (0.1 mm, finer than any LAS scale in use): integer sums are exact,
# so a cell's ground does not depend on the order its points arrive in (ranges, tiles, sorting).
GROUND_Z_UNIT_M = 1e-4
# A part's points are counted in an array over the span of their cells when it is at most this many cells per
# point (bincount, the fastest); cells spread wider (a range over many tiles of a large scene) are sorted instead.
_DENSE_CELLS_PER_POINT = 8
# Rounds of closing ground gaps between opposite neighbours; what is left goes to the triangulation.
_NEIGHBOUR_FILL_ROUNDS = 4


@dataclass(frozen=True)
class Grid:
    """The reference grid (the multispectral raster's) that every stream of a scene is put on."""

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

    def not_covered(self, what: str, bounds: tuple[float, ...]) -> str:
        """The problem of a stream (`what` and its bounds on this grid's CRS) that misses the grid."""
        return (f"does not overlap {MULTISPECTRAL_FILE}: {what} {_format_bounds(bounds)} vs "
                f"{_format_bounds(self.bounds)} in {self.crs.to_string()}")


def _format_bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{value:.1f}" for value in bounds) + ")"


@dataclass(frozen=True)
class Points:
    """A point cloud's returns, x and y on the grid's CRS."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    classification: np.ndarray  # ASPRS classes
    intensity: np.ndarray
    number_of_returns: np.ndarray  # of each point's pulse


@dataclass
class PointStats:
    """What says whether a scene's point cloud is usable at all, summed over the parts it is read in."""

    points: int = 0  # every point read, on the grid or not
    ground_points: int = 0
    on_grid: int = 0  # points on the grid that are not noise
    ground_on_grid: int = 0
    bounds: tuple[float, float, float, float] = (np.inf, np.inf, -np.inf, -np.inf)  # of every point read

    def merge(self, other: PointStats) -> PointStats:
        west, south, east, north = self.bounds
        o_west, o_south, o_east, o_north = other.bounds
        return PointStats(self.points + other.points, self.ground_points + other.ground_points,
                          self.on_grid + other.on_grid, self.ground_on_grid + other.ground_on_grid,
                          (min(west, o_west), min(south, o_south), max(east, o_east), max(north, o_north)))

    def problem(self, grid: Grid) -> str | None:
        """Why the cloud gives no rasters on `grid` (the scene's), or None."""
        if not self.points:
            return "no points (an empty point cloud)"
        if not self.ground_points:
            return f"no ground points (classification {GROUND_CLASS})"
        if not self.on_grid:
            return grid.not_covered("points", self.bounds)
        if not self.ground_on_grid:
            return f"no ground points (classification {GROUND_CLASS}) on the {MULTISPECTRAL_FILE} grid"
        return None


@dataclass
class SparseCells:
    """Per-cell sums of some points, for the cells they hit only (flat indices, ascending): what a part of the
    cloud contributes to the cells of a tile, small enough to send between workers."""

    cells: np.ndarray  # int64 flat index on the grid (or window) the sums belong to
    count: np.ndarray  # int64 points per cell
    top: np.ndarray  # highest z per cell
    intensity: np.ndarray  # sum of intensities
    multiple: np.ndarray  # points from pulses with several returns
    ground_count: np.ndarray  # int64 ground points
    ground_z: np.ndarray  # int64 sum of ground points' z, in GROUND_Z_UNIT_M

    def window(self, grid_width: int, row0: int, col0: int, height: int, width: int) -> SparseCells:
        """The cells inside a window of the grid, indexed on the window."""
        rows, cols = np.divmod(self.cells, grid_width)
        inside = (rows >= row0) & (rows < row0 + height) & (cols >= col0) & (cols < col0 + width)
        return SparseCells((rows[inside] - row0) * width + cols[inside] - col0, *(
            values[inside] for values in (self.count, self.top, self.intensity, self.multiple, self.ground_count,
                                          self.ground_z)))


def bin_points(points: Points, grid: Grid) -> tuple[SparseCells, PointStats]:
    """The sums per cell of `grid` of the points on it (noise left out), and the counts of every point."""
    x, y, classification = points.x, points.y, points.classification
    if not x.size:
        return SparseCells(*(np.zeros(0, dtype) for dtype in (np.int64, np.int64, float, float, float, np.int64,
                                                               np.int64))), PointStats()
    ground_points = int(np.count_nonzero(classification == GROUND_CLASS))
    bounds = (float(x.min()), float(y.min()), float(x.max()), float(y.max()))
    inverse = ~grid.transform
    cols = np.floor(inverse.a * x + inverse.b * y + inverse.c).astype(np.int64)
    rows = np.floor(inverse.d * x + inverse.e * y + inverse.f).astype(np.int64)
    keep = ((rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
            & ~np.isin(classification, NOISE_CLASSES))
    cell = rows[keep] * grid.width + cols[keep]
    z, intensity = points.z[keep], points.intensity[keep].astype(float)
    multiple = (points.number_of_returns[keep] > 1).astype(float)
    ground = classification[keep] == GROUND_CLASS
    ground_z = np.where(ground, np.rint(z / GROUND_Z_UNIT_M), 0.0)  # whole units: float sums below 2**53 are exact
    stats = PointStats(int(x.size), ground_points, int(cell.size), int(np.count_nonzero(ground)), bounds)
    if not cell.size:
        return SparseCells(cell, *(np.zeros(0, dtype) for dtype in (np.int64, float, float, float, np.int64,
                                                                     np.int64))), stats
    first = int(cell.min())
    span = int(cell.max()) - first + 1
    if span <= _DENSE_CELLS_PER_POINT * cell.size:  # the points' cells lie close together: count them in place
        local = cell - first
        count = np.bincount(local, minlength=span)
        hit = np.flatnonzero(count)
        top = np.full(span, -np.inf)
        np.maximum.at(top, local, z)
        sums = [np.bincount(local, weights=w, minlength=span)[hit] for w in (intensity, multiple, ground, ground_z)]
        return SparseCells(hit + first, count[hit], top[hit], sums[0], sums[1], sums[2].astype(np.int64),
                           sums[3].astype(np.int64)), stats
    order = np.argsort(cell)  # sums are exact, so their order within a cell does not matter
    cell = cell[order]
    starts = np.flatnonzero(np.diff(cell, prepend=-1))
    return SparseCells(
        cell[starts],
        np.diff(np.append(starts, cell.size)),
        np.maximum.reduceat(z[order], starts),
        *(np.add.reduceat(w[order], starts) for w in (intensity, multiple)),
        np.add.reduceat(ground[order].astype(np.int64), starts),
        np.add.reduceat(ground_z[order], starts).astype(np.int64),
    ), stats


class CellSums:
    """What the channels need of a point cloud, summed per cell of a grid (a scene's or a tile's window) as
    parts of the cloud arrive: counts, the top, intensity and multiple-return sums, ground counts and ground z
    sums. Memory follows the grid, not the points."""

    def __init__(self, grid: Grid):
        cells = grid.height * grid.width
        self.grid = grid
        self.count = np.zeros(cells, np.int64)
        self.top = np.full(cells, -np.inf)
        self.intensity = np.zeros(cells)
        self.multiple = np.zeros(cells)
        self.ground_count = np.zeros(cells, np.int64)
        self.ground_z = np.zeros(cells, np.int64)

    def add(self, part: SparseCells) -> None:
        """Adds sums indexed on this grid (each cell at most once per part)."""
        cells = part.cells
        self.count[cells] += part.count
        self.top[cells] = np.maximum(self.top[cells], part.top)
        self.intensity[cells] += part.intensity
        self.multiple[cells] += part.multiple
        self.ground_count[cells] += part.ground_count
        self.ground_z[cells] += part.ground_z

    def rasters(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per channel, (values, cell has data) on the grid; cells without data are left to the caller to fill or
        mask. Height has no data anywhere on a grid without ground points (a tile under a lake); whether the
        scene's cloud is usable at all is PointStats.problem's to say."""
        grid = self.grid
        has_points = (self.count > 0).reshape(grid.shape)
        count_or_one = np.maximum(self.count, 1)  # empty cells divide 0 by 1, then get filled or masked
        height = np.maximum(self.top.reshape(grid.shape) - _ground_surface(self.ground_count, self.ground_z, grid), 0.0)
        row_spacing, col_spacing = grid.pixel_size_m
        no_gaps = np.ones(grid.shape, bool)  # an empty cell's density of 0 is a measurement, not a gap
        has_height = np.isfinite(height)
        return {
            "height": (height, has_points if has_height.all() else has_points & has_height),  # one mask, one fill
            "intensity": ((self.intensity / count_or_one).reshape(grid.shape), has_points),
            "return_ratio": ((self.multiple / count_or_one).reshape(grid.shape), has_points),
            "density": ((self.count / (row_spacing * col_spacing)).reshape(grid.shape), no_gaps),
        }


def _ground_surface(ground_count: np.ndarray, ground_z: np.ndarray, grid: Grid) -> np.ndarray:
    """Terrain height at every cell centre from ground points (their count and z sum per cell).

    Cells with ground points take their mean ground z (class 2 is already the classifier's ground, and on a
    slope the minimum would sit up to half a cell's rise too low). Cells without are interpolated linearly,
    those outside the ground cells' hull take the nearest cell's value.
    """
    known = ground_count > 0
    surface = np.full(ground_count.size, np.nan)
    if not known.any():
        return surface.reshape(grid.shape)
    surface[known] = ground_z[known] / ground_count[known] * GROUND_Z_UNIT_M
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
    """Linear (Delaunay) interpolation of each remaining gap from the ring of known cells around it, one gap
    at a time in coordinates of its own: a gap's values depend on that gap and its ring only, so a tile that
    holds both computes what the whole scene does (a triangulation of many gaps at once breaks the ties of
    co-circular grid cells differently with every set of cells)."""
    gaps = np.isnan(surface)
    if not gaps.any():
        return surface
    surface = surface.copy()
    components, _ = label(gaps, structure=np.ones((3, 3), bool))
    height, width = gaps.shape
    for index, found in enumerate(find_objects(components), start=1):
        rows = slice(max(found[0].start - _GAP_RIM_CELLS, 0), min(found[0].stop + _GAP_RIM_CELLS, height))
        cols = slice(max(found[1].start - _GAP_RIM_CELLS, 0), min(found[1].stop + _GAP_RIM_CELLS, width))
        gap = components[rows, cols] == index
        rim = binary_dilation(gap, iterations=_GAP_RIM_CELLS) & ~gaps[rows, cols]
        if np.count_nonzero(rim) < 3:
            continue
        window = surface[rows, cols]
        try:
            with _blas_controller().limit(limits=1, user_api="blas"):
                window[gap] = griddata(np.nonzero(rim), window[rim], np.nonzero(gap), method="linear")
        except QhullError:  # rim cells on one line: no triangles, the nearest-cell fill covers this gap
            continue
    return surface


@cache
def _blas_controller() -> ThreadpoolController:
    """The process's BLAS libraries. Qhull's point location wakes OpenBLAS's threads for tiny problems, which
    then spin about 0.1 s after every gap: a third more CPU for an ingestion step, for nothing (bench.ingest_memory
    at 16x, docs/design-notes.md "Large scenes")."""
    return ThreadpoolController()
