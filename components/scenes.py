"""Read one scene folder and put every stream on the multispectral grid.

The multispectral raster defines the reference grid. Labels are resampled with nearest neighbour (ids must
never be averaged), pre-rasterised LiDAR bilinearly (measurements), and point clouds are rasterised cell by
cell on the reference grid itself (components.lidar_rasters), so no stream is resampled twice. Every problem
becomes a SceneError that names the scene, the file and what is wrong, so the executor can list all bad scenes
of a run at once: the defects we know get their own message, and any other exception while reading a file
(a GDAL or PROJ error, a MemoryError, a bug) becomes one too (`scene_errors`), keeping its type and message.

Each stream also gets a validity mask on the reference grid, and invalid pixels hold NaN: nothing a scene does
not observe may reach an example. Multispectral: the raster's nodata, internal or alpha mask, and non-finite
values. LiDAR: a cell without returns (or nodata in a pre-rasterised channel) takes its nearest measured cell's
value only within `ingest.max_lidar_gap_m`; farther away it is invalid, never invented. Labels: their nodata
and pixels outside the labels raster are unlabelled. Ingestion needs labels; mapping a scene (pipeline/predict.py)
does not, so `load_scene(..., require_labels=False)` reads a scene without labels.tif.

A scene is read in tiles so that no step holds a large scene whole (docs/design-notes.md, "Large scenes"):
`plan_scene` reads the headers and cuts the grid into tiles; the point cloud is read in ranges of points
(`read_point_range`), each binned into sparse per-cell sums that go to the tiles whose windows they touch; a tile's
rasters (`tile_rasters`) are read through windows of the rasters, on the tile plus a halo, so that fills, masks and
windows of pixels near the tile's edge see what the whole scene would. `load_scene` is the one-tile case.
"""
from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import laspy
import numpy as np
import pyproj
import rasterio
from affine import Affine
from pyproj import Transformer
from pyproj.exceptions import CRSError
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window, WindowError
from scipy.ndimage import distance_transform_edt

from components.lidar_rasters import CellSums, Grid, Points, PointStats, SparseCells, bin_points
from foundation.config import Config
from foundation.scene_folder import LABELS_FILE, MULTISPECTRAL_FILE, POINT_CLOUD_FILES, lidar_raster_file

log = logging.getLogger(__name__)

# Labels that are nodata or outside the labels raster while reprojecting; 0 once on the reference grid.
_NO_LABEL = -1
# Points read at a time: about 25 MB of records and arrays, whatever the cloud's size. A multiple of LAZ's default
# chunk of 50,000 points, so a range starts where the decoder can seek to.
POINTS_PER_CHUNK = 250_000
# The layers of a LAZ 1.4 point (formats 6 to 10) holding the fields ingestion reads (x, y, z, number of returns,
# classification, intensity); GPS time, scan angle, flags, user data and point source stay undecoded, a fifth of
# the decoding. Older formats are not layered and decode whole.
_POINT_LAYERS = (laspy.DecompressionSelection.XY_RETURNS_CHANNEL | laspy.DecompressionSelection.Z
                 | laspy.DecompressionSelection.CLASSIFICATION | laspy.DecompressionSelection.INTENSITY)
# Source pixels read beyond the footprint of a window being resampled: bilinear needs one, one more for rounding.
_SOURCE_PAD = 2
# A damaged point cloud fails in laspy, in lazrs (a RuntimeError subclass) or in pyproj (its CRS VLR).
_POINT_CLOUD_READ_ERRORS = (laspy.errors.LaspyException, OSError, ValueError, RuntimeError, CRSError)


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
    """Every stream of one scene on the multispectral grid, with where each holds observed values."""

    scene_id: str
    multispectral: np.ndarray  # float32 (bands, H, W), uint16 reflectance units (x 10000); NaN where invalid
    lidar: np.ndarray  # float32 (channels, H, W) in config.streams.lidar_channels order; NaN where invalid
    labels: np.ndarray | None  # int32 (H, W), 0 = unlabelled (also the labels' nodata and outside the raster); None:
    # the scene has no labels.tif (only with require_labels=False)
    crs: CRS
    transform: Affine
    multispectral_valid: np.ndarray  # bool (H, W): every band observed (not nodata, not masked, finite)
    lidar_valid: np.ndarray  # bool (H, W): every channel measured, or filled from within max_lidar_gap_m
    labels_valid: np.ndarray | None  # bool (H, W): the labels raster has a value here (not nodata, not outside it)
    filled_cells: dict[str, int]  # per LiDAR channel, cells without data filled from within max_lidar_gap_m (core)
    files: dict[str, str]  # per stream (multispectral, lidar, labels if read): the file(s) it was read from
    origin: tuple[int, int] = (0, 0)  # (row, col) of these arrays' first pixel on the scene's grid
    measured_cells: dict[str, int] = field(default_factory=dict)  # per LiDAR channel, cells with data (core)

    @property
    def valid(self) -> np.ndarray:
        """Pixels observed in every stream: where a patch's whole window must lie (see components.patches)."""
        return self.multispectral_valid & self.lidar_valid


def _is_uri(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def scene_name(scene_dir: str | os.PathLike) -> str:
    """The scene id: its folder's name, for a local path or a URI."""
    return posixpath.basename(str(scene_dir).rstrip("/")) if _is_uri(scene_dir) else Path(scene_dir).name


@contextmanager
def scene_errors(scene: str, path: str | os.PathLike) -> Iterator[None]:
    """Any exception but a SceneError while working on `path` becomes the scene's SceneError, keeping the
    exception's type and message (its traceback goes to the log): one scene must never stop the others.
    KeyboardInterrupt and SystemExit are not Exceptions and pass."""
    try:
        yield
    except SceneError:
        raise
    except Exception as err:  # whatever fails in one scene is that scene's error
        log.exception("scene %s: %s: unexpected error", scene, path)
        raise SceneError(scene, path, f"unexpected {_type_name(err)}: {err}") from err


def _type_name(err: Exception) -> str:
    """`MemoryError`, `rasterio.errors.CRSError`: enough to find where it came from."""
    kind = type(err)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def require_inside(scene_dir: str | os.PathLike, data_root: str | os.PathLike) -> None:
    """Refuses a local scene folder (or a file in it) that resolves outside the data root, e.g. through a
    symlink: what a run ingests must be what its data root and input fingerprint describe."""
    if _is_uri(scene_dir):
        return
    root = Path(data_root).resolve()
    scene_dir = Path(scene_dir).absolute()
    for path in (scene_dir, *sorted(scene_dir.iterdir())):
        target = path.resolve()
        if not target.is_relative_to(root):
            raise SceneError(scene_dir.name, path, f"resolves to {target}, outside the data root {root} "
                             f"(a symlink?); scenes must lie inside the data root")


def scene_dirs(file_paths: Iterable[str | os.PathLike]) -> list[str]:
    """Scene folders of the files the split pattern matched (`span-XXXX/<scene>/*`): local paths or URIs."""
    return sorted({posixpath.dirname(str(path)) if _is_uri(path) else str(Path(path).parent) for path in file_paths})


@dataclass(frozen=True)
class Tile:
    """A square of the scene's grid whose labelled pixels one step samples (its core), and the window it reads:
    the core plus a halo, cut at the scene's edge."""

    row: int  # of the core on the scene's grid
    col: int
    height: int
    width: int
    read: Window  # core plus halo, inside the grid

    @property
    def core(self) -> tuple[slice, slice]:
        """The core within the read window's arrays."""
        row, col = self.row - int(self.read.row_off), self.col - int(self.read.col_off)
        return slice(row, row + self.height), slice(col, col + self.width)


@dataclass(frozen=True)
class ScenePlan:
    """What the headers of a scene's files say, and its tiles: everything a step needs to read its part."""

    scene_id: str
    scene_dir: str  # local path or URI, as matched
    grid: Grid
    float_multispectral: bool
    has_labels: bool
    point_cloud: str | None  # file name, or None for pre-rasterised LiDAR
    promised_points: int
    cloud_crs_wkt: str | None  # the point cloud's CRS, None when it has none (taken on the grid's)
    tiles: tuple[Tile, ...]
    files: dict[str, str]  # as SceneRasters.files

    def point_ranges(self) -> list[tuple[int, int]]:
        """(first point, count) of each part the point cloud is read in."""
        return [(start, min(POINTS_PER_CHUNK, self.promised_points - start))
                for start in range(0, self.promised_points, POINTS_PER_CHUNK)]

    def tile_grid(self, tile: Tile) -> Grid:
        """The grid of a tile's read window."""
        window = tile.read
        return Grid(self.grid.crs, self.grid.transform @ Affine.translation(window.col_off, window.row_off),
                    int(window.height), int(window.width))


def tiles_of(grid: Grid, most_blocks: int, block_size: int, halo: int) -> tuple[Tile, ...]:
    """Row-major tiles of whole blocks, as even as the grid allows and at most `most_blocks` blocks on a side (a
    640 px scene in tiles of up to 512 is cut 320 + 320, not 512 + 128: steps of similar work, and a per-tile cap
    that samples every part of the scene alike), each reading `halo` pixels around it."""
    rows, cols = (_cuts(side, most_blocks, block_size) for side in grid.shape)
    tiles = []
    for row, height in rows:
        for col, width in cols:
            row0, col0 = max(row - halo, 0), max(col - halo, 0)
            row1, col1 = min(row + height + halo, grid.height), min(col + width + halo, grid.width)
            tiles.append(Tile(row, col, height, width, Window(col0, row0, col1 - col0, row1 - row0)))
    return tuple(tiles)


def _cuts(side: int, most_blocks: int, block_size: int) -> list[tuple[int, int]]:
    """(start, length) of the fewest even runs of whole blocks, of at most `most_blocks`, covering `side` pixels."""
    blocks = -(-side // block_size)
    step = -(-blocks // -(-blocks // most_blocks)) * block_size
    return [(start, min(step, side - start)) for start in range(0, side, step)]


def tile_halo(scene: str, path: Path, grid: Grid, config: Config) -> int:
    """Pixels a tile reads around its core: `ingest.tile_halo`, which must cover a patch's half and the LiDAR gap
    fill's reach on this grid (the ground surface's gaps are exact up to what remains; design-notes)."""
    reach = config.ingest.patch_size // 2 + int(np.ceil(config.ingest.max_lidar_gap_m / min(grid.pixel_size_m))) + 1
    if config.ingest.tile_halo < reach:
        raise SceneError(scene, path, f"ingest.tile_halo {config.ingest.tile_halo} px is less than a patch's half "
                         f"plus ingest.max_lidar_gap_m on this grid's {min(grid.pixel_size_m):g} m pixels ({reach} px)")
    return config.ingest.tile_halo


@contextmanager
def local_scene(scene_dir: str | os.PathLike) -> Iterator[Path]:
    """The scene folder on local disk: itself, or a URI (gs://...) copied to a temporary folder, since GDAL and laspy
    read local files; a SceneError then names the file where it lives, not the copy."""
    if not _is_uri(scene_dir):
        yield Path(scene_dir).absolute()
        return
    import tensorflow as tf  # its filesystems read gs:// (and ram:// in tests); local scenes do not need it

    uri = str(scene_dir).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="terrafuse-scene-") as local:
        local_dir = Path(local) / posixpath.basename(uri)
        local_dir.mkdir()
        for name in tf.io.gfile.listdir(uri):
            if not tf.io.gfile.isdir(posixpath.join(uri, name)):
                tf.io.gfile.copy(posixpath.join(uri, name), str(local_dir / name))
        try:
            yield local_dir
        except SceneError as err:
            raise SceneError(err.scene, err.path.replace(str(local_dir), uri), err.problem) from err


def scene_file(scene_dir: str, name: str) -> str:
    """A file of a scene folder as its folder names it (a URI stays a URI)."""
    return posixpath.join(scene_dir.rstrip("/"), name) if _is_uri(scene_dir) else os.path.join(scene_dir, name)


def plan_scene(scene_dir: str | os.PathLike, config: Config, *, require_labels: bool = True,
               whole: bool = False) -> ScenePlan:
    """Reads every file's header (multispectral, then labels, then LiDAR; the first problem raises SceneError)
    and cuts the grid into tiles of `ingest.tile_blocks` blocks with their halo, or into one tile if `whole`."""
    scene = scene_name(scene_dir)
    scene_dir = str(scene_dir) if _is_uri(scene_dir) else str(Path(scene_dir).absolute())
    with local_scene(scene_dir) as local_dir:
        path = local_dir / MULTISPECTRAL_FILE
        with scene_errors(scene, path):
            grid, float_multispectral = _multispectral_header(scene, path, config)
        has_labels = require_labels or (local_dir / LABELS_FILE).exists()
        if has_labels:
            with scene_errors(scene, local_dir / LABELS_FILE):
                _labels_header(scene, local_dir / LABELS_FILE, grid)
        point_cloud, promised, cloud_crs, lidar_files = _lidar_header(scene, local_dir, grid, config)
        if whole:
            tiles = tiles_of(grid, -(-max(grid.shape) // config.ingest.block_size), config.ingest.block_size, 0)
        else:
            tiles = tiles_of(grid, config.ingest.tile_blocks, config.ingest.block_size,
                             tile_halo(scene, path, grid, config))
    files = {"multispectral": scene_file(scene_dir, MULTISPECTRAL_FILE),
             "lidar": ", ".join(scene_file(scene_dir, name) for name in lidar_files)}
    if has_labels:
        files["labels"] = scene_file(scene_dir, LABELS_FILE)
    return ScenePlan(scene, scene_dir, grid, float_multispectral, has_labels, point_cloud, promised,
                     cloud_crs.to_wkt() if cloud_crs is not None else None, tiles, files)


def read_point_range(plan: ScenePlan, start: int, count: int) -> tuple[SparseCells, PointStats]:
    """Points [start, start + count) of the scene's point cloud, binned on its grid; their counts say how many the
    file really held (a truncated file holds fewer than its header promises)."""
    with local_scene(plan.scene_dir) as local_dir:
        path = local_dir / plan.point_cloud
        with scene_errors(plan.scene_id, path):
            to_grid = _to_reference_crs(plan.scene_id, path, plan.cloud_crs_wkt, plan.grid)
            try:
                with laspy.open(path, decompression_selection=_POINT_LAYERS) as reader:
                    if start:
                        reader.seek(start)
                    points = reader.read_points(count)
            except _POINT_CLOUD_READ_ERRORS as err:
                raise SceneError(plan.scene_id, path, f"cannot read point records (truncated or corrupt) after an "
                                 f"intact header of {plan.promised_points:,} points: {err}") from err
            x, y = to_grid(np.asarray(points.x, np.float64), np.asarray(points.y, np.float64))
            return bin_points(Points(x, y, np.asarray(points.z, np.float64), np.asarray(points.classification),
                                     np.asarray(points.intensity), np.asarray(points.number_of_returns)), plan.grid)


def tile_parts(plan: ScenePlan, cells: SparseCells) -> list[tuple[int, SparseCells]]:
    """(tile index, the sums on its read window) of every tile whose window the binned points touch."""
    parts = []
    for index, tile in enumerate(plan.tiles):
        window = tile.read
        part = cells.window(plan.grid.width, int(window.row_off), int(window.col_off), int(window.height),
                            int(window.width))
        if part.cells.size:
            parts.append((index, part))
    return parts


def point_cloud_error(plan: ScenePlan, stats: PointStats) -> SceneError | None:
    """The scene's error if its point cloud, read whole (`stats` summed over every range), is unusable."""
    path = plan.files["lidar"]
    if stats.points < plan.promised_points:  # laspy only logs this and returns the points it found
        return SceneError(plan.scene_id, path, f"the header promises {plan.promised_points:,} points but the file "
                          f"holds {stats.points:,} (truncated)")
    problem = stats.problem(plan.grid)
    return SceneError(plan.scene_id, path, problem) if problem else None


def tile_rasters(plan: ScenePlan, tile: Tile, sums: CellSums | None, config: Config) -> SceneRasters:
    """Every stream on the tile's read window (`sums`: its point cloud sums, None for pre-rasterised LiDAR); the
    counts (filled and measured LiDAR cells) are the core's."""
    grid = plan.tile_grid(tile)
    scene = plan.scene_id
    with local_scene(plan.scene_dir) as local_dir:
        path = local_dir / MULTISPECTRAL_FILE
        with scene_errors(scene, path):
            multispectral, multispectral_valid = _read_multispectral(scene, path, tile.read, plan, config)
        labels = labels_valid = None
        if plan.has_labels:
            with scene_errors(scene, local_dir / LABELS_FILE):
                labels, labels_valid = _read_labels(scene, local_dir / LABELS_FILE, grid, config)
        if sums is None:
            rasters = {}
            for channel in config.streams.lidar_channels:
                with scene_errors(scene, local_dir / lidar_raster_file(channel)):
                    rasters[channel] = _resample_lidar_raster(scene, local_dir / lidar_raster_file(channel), channel,
                                                              grid)
        else:
            with scene_errors(scene, local_dir / plan.point_cloud):
                rasters = sums.rasters()
        with scene_errors(scene, local_dir):
            lidar, lidar_valid, filled, measured = _fill_lidar(rasters, grid, tile.core, config)
    return SceneRasters(scene, multispectral, lidar, labels, grid.crs, grid.transform, multispectral_valid,
                        lidar_valid, labels_valid, filled, dict(plan.files), (int(tile.read.row_off),
                                                                               int(tile.read.col_off)), measured)


def lidar_raster_error(plan: ScenePlan, measured_cells: dict[str, int]) -> SceneError | None:
    """A pre-rasterised channel without one valid cell on the grid (`measured_cells` summed over the tiles)."""
    if plan.point_cloud is not None:
        return None
    for channel, cells in measured_cells.items():
        if not cells:
            return SceneError(plan.scene_id, scene_file(plan.scene_dir, lidar_raster_file(channel)),
                              f"no valid cells on the {MULTISPECTRAL_FILE} grid (all nodata)")
    return None


def load_scene(scene_dir: str | os.PathLike, config: Config, *, require_labels: bool = True) -> SceneRasters:
    """Every stream of one scene on the multispectral grid, as one tile; the first problem found (multispectral,
    then labels, then LiDAR) raises SceneError. Without `require_labels`, a scene without labels.tif has labels
    None (a labels.tif that is there must still be good). A URI (gs://...) is copied to a local folder first."""
    plan = plan_scene(scene_dir, config, require_labels=require_labels, whole=True)
    (tile,) = plan.tiles
    sums = None
    if plan.point_cloud is not None:
        sums, stats = CellSums(plan.grid), PointStats()
        for start, count in plan.point_ranges():
            cells, part = read_point_range(plan, start, count)
            sums.add(cells)
            stats = stats.merge(part)
        error = point_cloud_error(plan, stats)
        if error:
            raise error
    rasters = tile_rasters(plan, tile, sums, config)
    error = lidar_raster_error(plan, rasters.measured_cells)
    if error:
        raise error
    return rasters


@contextmanager
def _open_raster(scene: str, path: Path) -> Iterator[rasterio.DatasetReader]:
    """Opens a raster; GDAL errors while opening or reading it become the scene's error."""
    if not path.is_file():
        raise SceneError(scene, path, "missing file")
    try:
        src = rasterio.open(path)
    except RasterioError as err:
        raise SceneError(scene, path, f"cannot read raster: {_gdal_message(err, path)}") from err
    with src:
        try:
            yield src
        except RasterioError as err:  # an intact header with pixel data cut short or damaged behind it
            raise SceneError(scene, path, f"cannot read its pixels (truncated or corrupt): "
                             f"{_gdal_message(err, path)}") from err


def _gdal_message(err: RasterioError, path: Path) -> str:
    """GDAL's own words: rasterio's read errors say only "see previous exception", which is their cause."""
    cause = err.__cause__ if err.__cause__ is not None and "previous exception" in str(err) else err
    message = str(cause)
    for name in (f"'{path}' ", f"{path}: ", f"{path}, ", f"{path.name}: ", f"{path.name}, "):
        message = message.replace(name, "")  # GDAL repeats the path the error names already
    return message


def _require_projected(scene: str, path: Path, crs: CRS | pyproj.CRS | None) -> None:
    """Cells and patches are metric; degrees would make every size and density wrong."""
    if crs is None:
        raise SceneError(scene, path, "no CRS; a projected CRS is required")
    if not crs.is_projected:
        kind = "geographic (unprojected)" if crs.is_geographic else "unprojected"
        raise SceneError(scene, path, f"{kind} CRS {crs.to_string()}; a projected CRS is required")


def _require_overlap(scene: str, path: Path, crs: CRS, bounds: tuple[float, ...], grid: Grid) -> None:
    west, south, east, north = transform_bounds(crs, grid.crs, *bounds, densify_pts=21)
    ref_west, ref_south, ref_east, ref_north = grid.bounds
    if min(east, ref_east) <= max(west, ref_west) or min(north, ref_north) <= max(south, ref_south):
        raise SceneError(scene, path, grid.not_covered("bounds", (west, south, east, north)))


def _multispectral_header(scene: str, path: Path, config: Config) -> tuple[Grid, bool]:
    """The reference grid, and whether reflectance comes as floats (scaled by streams.float_reflectance_scale)."""
    bands = config.streams.multispectral_bands
    with _open_raster(scene, path) as src:
        _require_projected(scene, path, src.crs)
        if src.count != len(bands):
            raise SceneError(
                scene, path, f"{src.count} bands, but config.streams.multispectral_bands has {len(bands)}: "
                f"{', '.join(bands)}"
            )
        return Grid(src.crs, src.transform, src.height, src.width), np.dtype(src.dtypes[0]).kind == "f"


def _read_multispectral(scene: str, path: Path, window: Window, plan: ScenePlan,
                        config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance in uint16 units over a window, NaN where any band is invalid, and where every band is valid."""
    with _open_raster(scene, path) as src:
        data = src.read(window=window, out_dtype=np.float32)
        valid = _gdal_valid(src, window)
    if plan.float_multispectral:
        valid &= np.isfinite(data).all(axis=0)
        data *= np.float32(config.streams.float_reflectance_scale)
    if not valid.all():
        data[:, ~valid] = np.nan
    return data, valid


def _gdal_valid(src: rasterio.DatasetReader, window: Window) -> np.ndarray:
    """Pixels of a window GDAL finds valid in every band: not the nodata value, not masked (internal mask or
    alpha)."""
    if all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums):
        return np.ones((int(window.height), int(window.width)), bool)
    return (src.read_masks(window=window) > 0).all(axis=0)


def _source_window(src: rasterio.DatasetReader, grid: Grid) -> Window | None:
    """The window of `src` that resampling onto `grid` reads from (its footprint, padded), or None if the raster
    does not reach the grid."""
    footprint = rasterio.windows.from_bounds(*transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21),
                                             transform=src.transform)
    padded = Window(int(np.floor(footprint.col_off)) - _SOURCE_PAD, int(np.floor(footprint.row_off)) - _SOURCE_PAD,
                    int(np.ceil(footprint.width)) + 2 * _SOURCE_PAD + 1,
                    int(np.ceil(footprint.height)) + 2 * _SOURCE_PAD + 1)
    try:
        return padded.intersection(Window(0, 0, src.width, src.height))
    except WindowError:
        return None


def _labels_header(scene: str, path: Path, grid: Grid) -> None:
    with _open_raster(scene, path) as src:
        _require_projected(scene, path, src.crs)
        _require_overlap(scene, path, src.crs, src.bounds, grid)
        if src.count != 1:
            raise SceneError(scene, path, f"{src.count} bands; expected one band of class ids")


def _read_labels(scene: str, path: Path, grid: Grid, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Class ids on `grid` (a tile's window of the reference grid; 0 = unlabelled) and where the labels raster
    had a value at all."""
    labels = np.full(grid.shape, _NO_LABEL, np.int32)
    with _open_raster(scene, path) as src:
        window = _source_window(src, grid)
        if window is not None:
            source = src.read(1, window=window)
            valid = _gdal_valid(src, window)
            src_crs, src_transform = src.crs, src.window_transform(window)
    if window is not None:
        if source.dtype.kind == "f":
            valid &= np.isfinite(source)
        _require_known_labels(scene, path, source[valid], config)
        class_ids = np.where(valid, source, _NO_LABEL).astype(np.int32)
        reproject(
            class_ids, labels, src_transform=src_transform, src_crs=src_crs, src_nodata=_NO_LABEL,
            dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=_NO_LABEL, resampling=Resampling.nearest,
        )
    labels_valid = labels != _NO_LABEL
    labels[~labels_valid] = 0
    return labels, labels_valid


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


def _lidar_header(scene: str, scene_dir: Path, grid: Grid,
                  config: Config) -> tuple[str | None, int, pyproj.CRS | None, list[str]]:
    """The point cloud's file name, its promised points and CRS, or (None, 0, None) for pre-rasterised LiDAR;
    and the file(s) the LiDAR is read from."""
    channels = config.streams.lidar_channels
    for name in POINT_CLOUD_FILES:
        path = scene_dir / name
        if path.is_file():
            with scene_errors(scene, path):
                try:
                    with laspy.open(path) as reader:
                        promised = reader.header.point_count
                        try:
                            cloud_crs = reader.header.parse_crs()
                        except _POINT_CLOUD_READ_ERRORS as err:
                            raise SceneError(scene, path, f"cannot read point cloud: CRS: {err}") from err
                except _POINT_CLOUD_READ_ERRORS as err:
                    raise SceneError(scene, path, f"cannot read point cloud: {err}") from err
                if not promised:
                    raise SceneError(scene, path, "no points (an empty point cloud)")
                _to_reference_crs(scene, path, cloud_crs.to_wkt() if cloud_crs else None, grid, warn=True)
            return name, promised, cloud_crs, [name]
    names = [lidar_raster_file(channel) for channel in channels]
    if not any((scene_dir / name).is_file() for name in names):
        raise SceneError(
            scene, scene_dir / POINT_CLOUD_FILES[0],
            f"missing file: no point cloud ({' or '.join(POINT_CLOUD_FILES)}) and no pre-rasterised {', '.join(names)}",
        )
    for name in names:
        path = scene_dir / name
        with scene_errors(scene, path), _open_raster(scene, path) as src:
            _require_projected(scene, path, src.crs)
            _require_overlap(scene, path, src.crs, src.bounds, grid)
    return None, 0, None, names


def _fill_lidar(rasters: dict[str, tuple[np.ndarray, np.ndarray]], grid: Grid, core: tuple[slice, slice],
                config: Config) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, int]]:
    """(channels, H, W) values in config order, NaN where invalid; the mask of cells valid in every channel; per
    channel the core's cells filled and cells with data."""
    stack, valid, filled, measured = [], np.ones(grid.shape, bool), {}, {}
    nearest_cells: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # channels share their has_data
    for channel in config.streams.lidar_channels:
        values, has_data = rasters[channel]
        measured[channel] = int(np.count_nonzero(has_data[core]))
        if has_data.all():
            stack.append(values)
            filled[channel] = 0
            continue
        if not has_data.any():
            stack.append(np.full(grid.shape, np.nan, np.float32))
            filled[channel] = 0
            valid[:] = False
            continue
        if id(has_data) not in nearest_cells:
            nearest_cells[id(has_data)] = _nearest_within(has_data, grid, config.ingest.max_lidar_gap_m)
        rows, cols, fill = nearest_cells[id(has_data)]
        channel_valid = has_data | fill
        stack.append(np.where(channel_valid, values[rows, cols], np.nan))
        filled[channel] = int(np.count_nonzero(fill[core]))
        valid &= channel_valid
    return np.stack(stack).astype(np.float32), valid, filled, measured


def _nearest_within(has_data: np.ndarray, grid: Grid, max_gap_m: float) -> tuple[np.ndarray, ...]:
    """Per cell, the row and column of the nearest cell with data, and the empty cells that lie within
    `max_gap_m` of one (metric, so a CRS in feet or non-square pixels do not change the gap)."""
    distance, (rows, cols) = distance_transform_edt(~has_data, sampling=grid.pixel_size_m, return_indices=True)
    return rows, cols, ~has_data & (distance <= max_gap_m)


def _resample_lidar_raster(scene: str, path: Path, channel: str, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """A pre-rasterised channel on `grid` (bilinear), and where it has data."""
    values = np.full(grid.shape, np.nan, np.float32)
    with _open_raster(scene, path) as src:
        window = _source_window(src, grid)
        if window is not None:
            source = src.read(1, window=window, out_dtype=np.float32)
            source[~(_gdal_valid(src, window) & np.isfinite(source))] = np.nan  # bilinear must not blend them in
            reproject(
                source, values, src_transform=src.window_transform(window), src_crs=src.crs, src_nodata=np.nan,
                dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling.bilinear,
            )
    has_data = np.isfinite(values)
    if channel == "height":
        values = np.maximum(values, 0.0)
    return values, has_data


def _to_reference_crs(scene: str, path: Path, cloud_crs_wkt: str | None, grid: Grid, *,
                      warn: bool = False) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """What brings the cloud's x and y onto the reference grid's CRS (nothing, when they share it)."""
    if cloud_crs_wkt is None:
        if warn:
            log.warning("scene %s: %s has no CRS; assuming the CRS of %s (%s)", scene, path, MULTISPECTRAL_FILE,
                        grid.crs.to_string())
        return _unchanged
    cloud_crs = pyproj.CRS.from_wkt(cloud_crs_wkt)
    _require_projected(scene, path, cloud_crs)
    horizontal = cloud_crs.sub_crs_list[0] if cloud_crs.is_compound else cloud_crs
    reference = pyproj.CRS.from_wkt(grid.crs.to_wkt())
    if horizontal.equals(reference, ignore_axis_order=True):
        return _unchanged
    return Transformer.from_crs(horizontal, reference, always_xy=True).transform


def _unchanged(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x, y
