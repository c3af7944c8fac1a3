"""A LiDAR point cloud as rasters on a grid: a cell per pixel, every channel the config may ask for.

Height is the top of a cell's points above a ground surface interpolated from ground points (so a sloped
terrain reads 0 on bare ground), intensity the mean of its points, return_ratio the share of its points from
pulses with several returns, density its points per square metre. Reading the file and bringing its points
onto the grid's CRS is components.scenes' part; problems raise PointCloudError, which it names the file for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from scipy.interpolate import griddata
from scipy.ndimage import binary_dilation, distance_transform_edt, find_objects, label
from scipy.spatial import QhullError

from foundation.scene_folder import MULTISPECTRAL_FILE

GROUND_CLASS = 2
# ASPRS low and high noise: a bird or a multipath echo must not become the top of a cell.
NOISE_CLASSES = (7, 18)
# Ground cells this close to a cell without ground points span the triangles that interpolate it.
_GAP_RIM_CELLS = 2
# Rounds of closing ground gaps between opposite neighbours; what is left goes to the triangulation.
_NEIGHBOUR_FILL_ROUNDS = 4


class PointCloudError(ValueError):
    """A point cloud that gives no rasters on the grid; the message says why, without the file's name."""


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


class CellSums:
    """What the channels need of a point cloud, summed per cell as its points arrive in chunks: counts, the top,
    intensity and multiple-return sums, ground counts and ground z sums. Memory follows the grid, not the points.
    """

    def __init__(self, grid: Grid):
        cells = grid.height * grid.width
        self.grid = grid
        self.count = np.zeros(cells, np.int64)
        self.top = np.full(cells, -np.inf)
        self.intensity = np.zeros(cells)
        self.multiple = np.zeros(cells)
        self.ground_count = np.zeros(cells, np.int64)
        self.ground_z = np.zeros(cells)
        self.points = 0  # every point seen, on the grid or not
        self.ground_points = 0
        self.bounds = (np.inf, np.inf, -np.inf, -np.inf)  # of every point seen: for the error of a cloud off the grid

    def add(self, points: Points) -> None:
        """Adds a chunk of points (x and y on the grid's CRS); points off the grid and noise are left out."""
        x, y, classification = points.x, points.y, points.classification
        if not x.size:
            return
        self.points += x.size
        self.ground_points += int(np.count_nonzero(classification == GROUND_CLASS))
        west, south, east, north = self.bounds
        self.bounds = (min(west, x.min()), min(south, y.min()), max(east, x.max()), max(north, y.max()))
        grid, inverse = self.grid, ~self.grid.transform
        cols = np.floor(inverse.a * x + inverse.b * y + inverse.c).astype(np.int64)
        rows = np.floor(inverse.d * x + inverse.e * y + inverse.f).astype(np.int64)
        keep = ((rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
                & ~np.isin(classification, NOISE_CLASSES))
        cell = rows[keep] * grid.width + cols[keep]
        z = points.z[keep]
        cells = self.count.size
        self.count += np.bincount(cell, minlength=cells)
        np.maximum.at(self.top, cell, z)
        self.intensity += np.bincount(cell, weights=points.intensity[keep], minlength=cells)
        self.multiple += np.bincount(cell, weights=points.number_of_returns[keep] > 1, minlength=cells)
        ground = classification[keep] == GROUND_CLASS
        self.ground_count += np.bincount(cell[ground], minlength=cells)
        self.ground_z += np.bincount(cell[ground], weights=z[ground], minlength=cells)

    def rasters(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per channel, (values, cell has points) on the grid; cells without points are left to the caller to
        fill or mask. Raises PointCloudError if there were no points, no point is ground, or none (or no ground
        point) fell on the grid."""
        grid = self.grid
        if not self.points:
            raise PointCloudError("no points (an empty point cloud)")
        if not self.ground_points:
            raise PointCloudError(f"no ground points (classification {GROUND_CLASS})")
        if not self.count.any():
            raise PointCloudError(grid.not_covered("points", self.bounds))
        if not self.ground_count.any():
            raise PointCloudError(f"no ground points (classification {GROUND_CLASS}) on the {MULTISPECTRAL_FILE} grid")
        has_points = (self.count > 0).reshape(grid.shape)
        count_or_one = np.maximum(self.count, 1)  # empty cells divide 0 by 1, then get filled or masked
        height = np.maximum(self.top.reshape(grid.shape) - _ground_surface(self.ground_count, self.ground_z, grid), 0.0)
        row_spacing, col_spacing = grid.pixel_size_m
        no_gaps = np.ones(grid.shape, bool)  # an empty cell's density of 0 is a measurement, not a gap
        return {
            "height": (height, has_points),
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
    surface[known] = ground_z[known] / ground_count[known]
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
            window[gap] = griddata(np.nonzero(rim), window[rim], np.nonzero(gap), method="linear")
        except QhullError:  # rim cells on one line: no triangles, the nearest-cell fill covers this gap
            continue
    return surface
