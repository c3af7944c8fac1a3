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
"""
from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
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
from scipy.ndimage import distance_transform_edt

from components.lidar_rasters import CellSums, Grid, PointCloudError, Points
from foundation.config import Config
from foundation.scene_folder import LABELS_FILE, MULTISPECTRAL_FILE, POINT_CLOUD_FILES, lidar_raster_file

log = logging.getLogger(__name__)

# Labels that are nodata or outside the labels raster while reprojecting; 0 once on the reference grid.
_NO_LABEL = -1
# Points read at a time: about 25 MB of records and arrays, whatever the cloud's size.
POINTS_PER_CHUNK = 250_000
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
    filled_cells: dict[str, int]  # per LiDAR channel, cells without data filled from within max_lidar_gap_m
    files: dict[str, str]  # per stream (multispectral, lidar, labels if read): the file(s) it was read from

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


def load_scene(scene_dir: str | os.PathLike, config: Config, *, require_labels: bool = True) -> SceneRasters:
    """Every stream of one scene on the multispectral grid; the first problem found (multispectral, then
    labels, then LiDAR) raises SceneError. Without `require_labels`, a scene without labels.tif has labels None
    (a labels.tif that is there must still be good). A URI (gs://...) is copied to a local folder first: GDAL
    and laspy read local files, and a scene is small."""
    if _is_uri(scene_dir):
        return _load_remote_scene(str(scene_dir).rstrip("/"), config, require_labels)
    scene_dir = Path(scene_dir).absolute()
    scene = scene_dir.name
    with scene_errors(scene, scene_dir / MULTISPECTRAL_FILE):
        multispectral, multispectral_valid, grid = _read_multispectral(scene, scene_dir / MULTISPECTRAL_FILE, config)
    labels = labels_valid = None
    has_labels = require_labels or (scene_dir / LABELS_FILE).exists()
    if has_labels:
        with scene_errors(scene, scene_dir / LABELS_FILE):
            labels, labels_valid = _read_labels(scene, scene_dir / LABELS_FILE, grid, config)
    lidar, lidar_valid, filled, lidar_files = _read_lidar(scene, scene_dir, grid, config)
    files = {"multispectral": str(scene_dir / MULTISPECTRAL_FILE), "lidar": ", ".join(lidar_files)}
    if has_labels:
        files["labels"] = str(scene_dir / LABELS_FILE)
    return SceneRasters(scene, multispectral, lidar, labels, grid.crs, grid.transform, multispectral_valid,
                        lidar_valid, labels_valid, filled, files)


def _load_remote_scene(uri: str, config: Config, require_labels: bool) -> SceneRasters:
    import tensorflow as tf  # its filesystems read gs:// (and ram:// in tests); local scenes do not need it

    with tempfile.TemporaryDirectory(prefix="terrafuse-scene-") as local:
        local_dir = Path(local) / posixpath.basename(uri)
        local_dir.mkdir()
        for name in tf.io.gfile.listdir(uri):
            if not tf.io.gfile.isdir(posixpath.join(uri, name)):
                tf.io.gfile.copy(posixpath.join(uri, name), str(local_dir / name))
        try:
            rasters = load_scene(local_dir, config, require_labels=require_labels)
        except SceneError as err:  # name the file where it lives, not the temporary copy
            raise SceneError(err.scene, err.path.replace(str(local_dir), uri), err.problem) from err
    rasters.files = {stream: paths.replace(str(local_dir), uri) for stream, paths in rasters.files.items()}
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


def _read_multispectral(scene: str, path: Path, config: Config) -> tuple[np.ndarray, np.ndarray, Grid]:
    """Reflectance in uint16 units, NaN where any band is invalid, and the mask of pixels valid in every band."""
    bands = config.streams.multispectral_bands
    with _open_raster(scene, path) as src:
        _require_projected(scene, path, src.crs)
        if src.count != len(bands):
            raise SceneError(
                scene, path, f"{src.count} bands, but config.streams.multispectral_bands has {len(bands)}: "
                f"{', '.join(bands)}"
            )
        data = src.read(out_dtype=np.float32)
        valid = _gdal_valid(src)
        grid = Grid(src.crs, src.transform, src.height, src.width)
        is_float = np.dtype(src.dtypes[0]).kind == "f"
    if is_float:
        valid &= np.isfinite(data).all(axis=0)
        data *= np.float32(config.streams.float_reflectance_scale)
    if not valid.all():
        data[:, ~valid] = np.nan
    return data, valid, grid


def _gdal_valid(src: rasterio.DatasetReader) -> np.ndarray:
    """Pixels GDAL finds valid in every band: not the nodata value, not masked (internal mask or alpha)."""
    if all(flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums):
        return np.ones(src.shape, bool)
    return (src.read_masks() > 0).all(axis=0)


def _read_labels(scene: str, path: Path, grid: Grid, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Class ids on the reference grid (0 = unlabelled) and where the labels raster had a value at all."""
    with _open_raster(scene, path) as src:
        _require_projected(scene, path, src.crs)
        _require_overlap(scene, path, src.crs, src.bounds, grid)
        if src.count != 1:
            raise SceneError(scene, path, f"{src.count} bands; expected one band of class ids")
        source = src.read(1)
        valid = _gdal_valid(src)
        src_crs, src_transform = src.crs, src.transform
    if source.dtype.kind == "f":
        valid &= np.isfinite(source)
    _require_known_labels(scene, path, source[valid], config)
    class_ids = np.where(valid, source, _NO_LABEL).astype(np.int32)
    labels = np.full(grid.shape, _NO_LABEL, np.int32)
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


def _read_lidar(scene: str, scene_dir: Path, grid: Grid,
                config: Config) -> tuple[np.ndarray, np.ndarray, dict[str, int], list[str]]:
    """(channels, H, W) values, NaN where invalid; the mask of cells valid in every channel; the cells filled
    per channel; the file(s) read."""
    channels = config.streams.lidar_channels
    for name in POINT_CLOUD_FILES:
        if (scene_dir / name).is_file():
            with scene_errors(scene, scene_dir / name):
                rasters = _rasterise_point_cloud(scene, scene_dir / name, grid)
            files = [str(scene_dir / name)]
            break
    else:
        if not any((scene_dir / lidar_raster_file(channel)).is_file() for channel in channels):
            raise SceneError(
                scene, scene_dir / POINT_CLOUD_FILES[0],
                f"missing file: no point cloud ({' or '.join(POINT_CLOUD_FILES)}) and no pre-rasterised "
                f"{', '.join(lidar_raster_file(channel) for channel in channels)}",
            )
        rasters = {}
        for channel in channels:
            with scene_errors(scene, scene_dir / lidar_raster_file(channel)):
                rasters[channel] = _resample_lidar_raster(scene, scene_dir, channel, grid)
        files = [str(scene_dir / lidar_raster_file(channel)) for channel in channels]
    stack, valid, filled = [], np.ones(grid.shape, bool), {}
    nearest_cells: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # channels share their has_data
    for channel in channels:
        values, has_data = rasters[channel]
        if has_data.all():
            stack.append(values)
            filled[channel] = 0
            continue
        if id(has_data) not in nearest_cells:
            nearest_cells[id(has_data)] = _nearest_within(has_data, grid, config.ingest.max_lidar_gap_m)
        rows, cols, fill = nearest_cells[id(has_data)]
        channel_valid = has_data | fill
        stack.append(np.where(channel_valid, values[rows, cols], np.nan))
        filled[channel] = int(fill.sum())
        valid &= channel_valid
    return np.stack(stack).astype(np.float32), valid, filled, files


def _nearest_within(has_data: np.ndarray, grid: Grid, max_gap_m: float) -> tuple[np.ndarray, ...]:
    """Per cell, the row and column of the nearest cell with data, and the empty cells that lie within
    `max_gap_m` of one (metric, so a CRS in feet or non-square pixels do not change the gap)."""
    distance, (rows, cols) = distance_transform_edt(~has_data, sampling=grid.pixel_size_m, return_indices=True)
    return rows, cols, ~has_data & (distance <= max_gap_m)


def _resample_lidar_raster(scene: str, scene_dir: Path, channel: str, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    path = scene_dir / lidar_raster_file(channel)
    with _open_raster(scene, path) as src:
        _require_projected(scene, path, src.crs)
        _require_overlap(scene, path, src.crs, src.bounds, grid)
        source = src.read(1, out_dtype=np.float32)
        source[~(_gdal_valid(src) & np.isfinite(source))] = np.nan  # bilinear must not blend them in
        values = np.full(grid.shape, np.nan, np.float32)
        reproject(
            source, values, src_transform=src.transform, src_crs=src.crs, src_nodata=np.nan,
            dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling.bilinear,
        )
    has_data = np.isfinite(values)
    if not has_data.any():
        raise SceneError(scene, path, f"no valid cells on the {MULTISPECTRAL_FILE} grid (all nodata)")
    if channel == "height":
        values = np.maximum(values, 0.0)
    return values, has_data


def _rasterise_point_cloud(scene: str, path: Path, grid: Grid) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every channel the config may ask for, as (values, cell has points) on the reference grid. The points are
    read POINTS_PER_CHUNK at a time and summed per cell (CellSums): memory follows the grid, not the cloud."""
    try:
        reader = laspy.open(path)
    except _POINT_CLOUD_READ_ERRORS as err:
        raise SceneError(scene, path, f"cannot read point cloud: {err}") from err
    with reader:
        promised = reader.header.point_count
        try:
            cloud_crs = reader.header.parse_crs()
        except _POINT_CLOUD_READ_ERRORS as err:
            raise SceneError(scene, path, f"cannot read point cloud: CRS: {err}") from err
        to_reference = _to_reference_crs(scene, path, cloud_crs, grid)
        sums = CellSums(grid)
        try:
            for chunk in reader.chunk_iterator(POINTS_PER_CHUNK):
                x, y = to_reference(np.asarray(chunk.x, np.float64), np.asarray(chunk.y, np.float64))
                sums.add(Points(x, y, np.asarray(chunk.z, np.float64), np.asarray(chunk.classification),
                                np.asarray(chunk.intensity), np.asarray(chunk.number_of_returns)))
        except _POINT_CLOUD_READ_ERRORS as err:
            raise SceneError(scene, path, f"cannot read point records (truncated or corrupt) after an intact "
                             f"header of {promised:,} points: {err}") from err
    if sums.points < promised:  # laspy only logs this and returns the points it found
        raise SceneError(scene, path, f"the header promises {promised:,} points but the file holds "
                         f"{sums.points:,} (truncated)")
    try:
        return sums.rasters()
    except PointCloudError as err:
        raise SceneError(scene, path, str(err)) from err


def _to_reference_crs(scene: str, path: Path, cloud_crs: pyproj.CRS | None,
                      grid: Grid) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """What brings the cloud's x and y onto the reference grid's CRS (nothing, when they share it)."""
    if cloud_crs is None:
        log.warning("scene %s: %s has no CRS; assuming the CRS of %s (%s)", scene, path, MULTISPECTRAL_FILE,
                    grid.crs.to_string())
        return _unchanged
    _require_projected(scene, path, cloud_crs)
    horizontal = cloud_crs.sub_crs_list[0] if cloud_crs.is_compound else cloud_crs
    reference = pyproj.CRS.from_wkt(grid.crs.to_wkt())
    if horizontal.equals(reference, ignore_axis_order=True):
        return _unchanged
    return Transformer.from_crs(horizontal, reference, always_xy=True).transform


def _unchanged(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x, y
