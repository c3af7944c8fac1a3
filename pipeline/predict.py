"""Map scenes with a published model: a class id for every pixel of a scene, on its multispectral grid.

A scene is read and aligned as ingestion reads it (components.scenes.load_scene; labels optional) and a pixel gets
a class only where ingestion could cut its patch: its whole P x P window inside the raster and observed in every
stream (components.patches.window_valid on SceneRasters.valid). Everywhere else the map holds NODATA (0, which is
never a class id: labels use it for unlabelled).

The model runs on whole tiles through its `map_tile` signature (foundation/published.py): its own Transform graph
and trained weights over every window of a tile at once. Tiles of `tile_size` x `tile_size` centre pixels are
cut with a P//2 halo, so they stitch without seams and a pixel's class does not depend on the tile size; classes
go tile by tile into a temporary tiled GeoTIFF, so what mapping holds in memory is a tile, not the scene (the
aligned streams themselves are the scene's: load_scene reads them whole).

Outputs per scene, in `out_dir`, each written under a temporary name and renamed when the scene is complete:
- `<scene>.classes.tif`: Cloud-Optimized GeoTIFF (deflate, tiled, nearest-neighbour overviews) on the scene's
  multispectral grid and CRS; one band of class ids with nodata NODATA, a colour table (class_colours) and the
  class table in the CLASSES_TAG metadata item (JSON [{"id", "name"}, ...]).
- with `probabilities`, `<scene>.probabilities.tif`, a second COG since a GeoTIFF holds one data type: float32,
  band 1 the confidence (the top probability), then one band per class in class-table order (band descriptions
  name them), NaN where the map holds NODATA.
- when the scene has labels.tif, `<scene>.recall.json`: per-class recall of the map on the labelled pixels it
  mapped (every pixel ingestion could cut a patch around, not a sample), macro and worst class, and the
  confusion counts.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from components.patches import window_valid
from components.scenes import SceneRasters, load_scene
from foundation.config import Config
from foundation.published import (MAP_INPUT, MAP_SIGNATURE, PROBABILITIES, latest_published, read_training_record)
from foundation.scene_folder import span_folder

NODATA = 0  # class ids are positive (foundation.config validates it); 0 is the labels' "unlabelled" too
DEFAULT_TILE_SIZE = 256
CLASSES_TAG = "TERRAFUSE_CLASSES"  # dataset metadata of a class map: JSON [{"id": 10, "name": "trees"}, ...]
MAP_SUFFIX = ".classes.tif"
PROBABILITIES_SUFFIX = ".probabilities.tif"
RECALL_SUFFIX = ".recall.json"
PROGRESS_MODES = ("auto", "bar", "lines", "off")
CONFIDENCE = "confidence"  # band 1 of the probabilities file
# Display colours of the default class table's names; other classes take _OTHER_COLOURS by class-table position.
_NAMED_COLOURS = {"trees": (26, 102, 46), "grass": (145, 207, 96), "building": (215, 48, 39), "road": (99, 99, 99),
                  "bare_soil": (191, 129, 45), "water": (33, 102, 172)}
_OTHER_COLOURS = ((230, 171, 2), (117, 112, 179), (231, 41, 138), (102, 166, 30), (27, 158, 119), (217, 95, 2),
                  (166, 118, 29), (31, 120, 180))
_SAVED_MODEL_FILE = "saved_model.pb"


class PredictError(Exception):
    """A model, scene list or output that predict cannot use; the message names it."""


@dataclass
class MapModel:
    """What mapping needs of a model: where it was loaded from, the config it was trained with (class table, bands,
    patch size: never the CLI's defaults) and its tile function, float32 [H, W, F] raw values without NaN (F the
    stream features in transforms.features.layout order) -> probabilities [H - P + 1, W - P + 1, K]."""

    model_dir: str
    config: Config
    map_tile: Callable[[np.ndarray], np.ndarray]


@dataclass
class SceneResult:
    """One mapped scene. `recall` maps class names to recall on the scene's labels (NaN for a class without
    labelled mapped pixels); it and `recall_path` are None for a scene without labels."""

    scene_id: str
    scene_dir: str
    map_path: str
    probabilities_path: str | None
    recall_path: str | None
    recall: dict[str, float] | None
    labelled_pixels: dict[str, int] | None  # per class, the labelled pixels the map classified
    pixels: int  # of the scene
    pixels_mapped: int  # with a class (the rest are NODATA)
    tiles: int  # run through the model
    seconds: float  # reading, mapping and writing (not loading the model)
    step_seconds: dict[str, float] = field(default_factory=dict)  # "read" (load_scene), "map" (tiles), "write"

    @property
    def macro_recall(self) -> float:
        """Mean recall over the classes the labels hold (NaN without labels or labelled mapped pixels)."""
        present = [r for r in (self.recall or {}).values() if not math.isnan(r)]
        return float(np.mean(present)) if present else math.nan

    @property
    def worst_class(self) -> str | None:
        present = {name: r for name, r in (self.recall or {}).items() if not math.isnan(r)}
        return min(present, key=present.get) if present else None

    def summary(self) -> str:
        """What predict prints for the scene: the map, its coverage and speed, and the recall on its labels."""
        lines = [f"{self.scene_id}: {self.pixels_mapped:,} of {self.pixels:,} pixels mapped in {self.tiles} tile(s), "
                 f"{self.seconds:.1f} s ({self.pixels / max(self.seconds, 1e-9):,.0f} px/s) -> {self.map_path}"]
        if self.probabilities_path:
            lines.append(f"  probabilities: {self.probabilities_path}")
        if self.recall is not None:
            labelled = sum(self.labelled_pixels.values())
            per_class = ", ".join(f"{name} {_recall_text(r)}" for name, r in self.recall.items())
            worst = self.worst_class
            lines.append(f"  recall on {labelled:,} labelled pixels: {per_class}")
            lines.append(f"  macro {_recall_text(self.macro_recall)}, worst "
                         f"{worst} {_recall_text(self.recall[worst]) if worst else 'n/a'} -> {self.recall_path}")
        return "\n".join(lines)


def _recall_text(recall: float) -> str:
    return "n/a" if math.isnan(recall) else f"{recall:.3f}"


def predict_scene(model: str | os.PathLike | MapModel, scene_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  tile_size: int = DEFAULT_TILE_SIZE, probabilities: bool = False,
                  progress: str = "auto") -> SceneResult:
    """Maps one scene (see predict_scenes)."""
    return predict_scenes(model, [scene_dir], out_dir, tile_size=tile_size, probabilities=probabilities,
                          progress=progress)[0]


def predict_scenes(model: str | os.PathLike | MapModel, scene_dirs: Sequence[str | os.PathLike],
                   out_dir: str | os.PathLike, *, tile_size: int = DEFAULT_TILE_SIZE, probabilities: bool = False,
                   progress: str = "auto") -> list[SceneResult]:
    """Maps each scene folder (input contract, labels.tif optional) into `out_dir`, one after another.

    model: a serving dir (its newest published version maps), one SavedModel folder the Trainer exported, or a
        MapModel from load_map_model (to load once for many calls).
    tile_size: centre pixels per tile side; memory grows with its square, and the map does not depend on it.
    probabilities: also write `<scene>.probabilities.tif` (confidence, then one band per class).
    progress: "bar" (tqdm on stderr), "lines" (plain progress lines on stderr), "auto" (a bar when stderr is a
        terminal, else lines) or "off"; unless "off", each scene's SceneResult.summary() is printed to stdout.

    Raises PredictError for a model without the map signature or training record, scene ids that repeat (their
    outputs would overwrite each other) or a tile size below 1, and components.scenes.SceneError (naming the file
    and the problem) for a scene that cannot be read; scenes mapped before it keep their outputs.
    """
    if tile_size < 1:
        raise PredictError(f"tile size must be at least 1, got {tile_size}")
    if progress not in PROGRESS_MODES:
        raise PredictError(f"progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    names = [Path(str(d).rstrip("/")).name for d in scene_dirs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PredictError(f"scene ids repeat ({', '.join(repeated)}): their maps would overwrite each other in "
                           f"{out_dir}; map them into separate output folders")
    if not isinstance(model, MapModel):
        model = load_map_model(model)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    mode = ("bar" if sys.stderr.isatty() else "lines") if progress == "auto" else progress
    results = []
    for scene_dir in scene_dirs:
        result = _map_scene(model, str(scene_dir), Path(out_dir), tile_size, probabilities, mode)
        if mode != "off":
            print(result.summary(), flush=True)
        results.append(result)
    return results


def scene_dirs_of_span(data_root: str | os.PathLike, span: int) -> list[str]:
    """The scene folders of one span of a data root (foundation.scene_folder's layout), sorted; local or gs://."""
    import tensorflow as tf

    folder = f"{str(data_root).rstrip('/')}/{span_folder(span)}"
    if not tf.io.gfile.isdir(folder):
        raise PredictError(f"{folder}: no such span folder")
    scenes = sorted(f"{folder}/{name.rstrip('/')}" for name in tf.io.gfile.listdir(folder)
                    if tf.io.gfile.isdir(f"{folder}/{name.rstrip('/')}"))
    if not scenes:
        raise PredictError(f"{folder}: no scene folders")
    return scenes


def load_map_model(model_dir: str | os.PathLike) -> MapModel:
    """The model of a serving dir (its newest version) or of one SavedModel folder, with its training config."""
    import tensorflow as tf

    version = _model_version(str(model_dir))
    try:
        record = read_training_record(version)
    except FileNotFoundError as err:
        raise PredictError(str(err)) from err
    loaded = tf.saved_model.load(version)
    if MAP_SIGNATURE not in loaded.signatures:
        raise PredictError(f"{version}: no {MAP_SIGNATURE} signature (it has {', '.join(sorted(loaded.signatures))}):"
                           " the model predates mapping (issue 12); train it again with this version to map scenes")
    return MapModel(version, Config.from_dict(record["config"]), _SavedModelTiles(loaded))


class _SavedModelTiles:
    """The map signature as a numpy function; it keeps the loaded SavedModel, whose lifetime its variables share."""

    def __init__(self, loaded: Any):
        self._loaded = loaded
        self._signature = loaded.signatures[MAP_SIGNATURE]

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._signature(**{MAP_INPUT: tf.constant(tile)})[PROBABILITIES].numpy()


def _model_version(model_dir: str) -> str:
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(model_dir, _SAVED_MODEL_FILE)):
        return model_dir
    version = latest_published(model_dir)
    if version is None:
        raise PredictError(f"{model_dir}: neither a SavedModel ({_SAVED_MODEL_FILE}) nor a serving dir with a "
                           "published version")
    return version


def class_colours(config: Config) -> dict[int, tuple[int, int, int]]:
    """RGB per class id, as the class map's colour table holds them (for previews beside the labels)."""
    others = iter(_OTHER_COLOURS * (1 + len(config.classes) // len(_OTHER_COLOURS)))
    return {c.id: _NAMED_COLOURS.get(c.name) or next(others) for c in config.classes}


@dataclass
class _Tally:
    """What the tiles add up to: mapped pixels, model calls and (with labels) confusion counts."""

    classes: int
    mapped: int = 0
    tiles: int = 0
    confusion: np.ndarray | None = None  # [true class index, predicted class index]

    def add_labels(self, label_index: np.ndarray, predicted_index: np.ndarray) -> None:
        counts = np.bincount(label_index * self.classes + predicted_index, minlength=self.classes ** 2)
        self.confusion += counts.reshape(self.classes, self.classes)


@dataclass
class _Outputs:
    """The temporary tiled GeoTIFFs tiles are written into, and their final COG names."""

    classes: Any = None
    probabilities: Any = None
    finals: dict[Path, Path] = field(default_factory=dict)  # staged file -> its name in out_dir

    def close(self) -> None:
        for dataset in (self.classes, self.probabilities):
            if dataset is not None and not dataset.closed:
                dataset.close()


def _map_scene(model: MapModel, scene_dir: str, out_dir: Path, tile_size: int, with_probabilities: bool,
               mode: str) -> SceneResult:
    started = time.perf_counter()
    config = model.config
    rasters = load_scene(scene_dir, config, require_labels=False)
    steps = {"read": time.perf_counter() - started}
    half = config.ingest.patch_size // 2
    mappable = window_valid(rasters.valid, config.ingest.patch_size)
    height, width = mappable.shape
    tally = _Tally(len(config.class_ids))
    label_index = None
    if rasters.labels is not None:
        tally.confusion = np.zeros((tally.classes, tally.classes), np.int64)
        label_index = np.full(max(config.class_ids) + 1, -1, np.int64)
        label_index[list(config.class_ids)] = np.arange(tally.classes)
    windows = [(row, col) for row in range(0, height, tile_size) for col in range(0, width, tile_size)]
    staging = Path(tempfile.mkdtemp(prefix=f".{rasters.scene_id}.", dir=out_dir))
    outputs = _Outputs()
    try:
        _open_outputs(outputs, staging, out_dir, rasters, config, model.model_dir, tile_size, with_probabilities)
        with _Progress(mode, rasters.scene_id, len(windows)) as advance:
            for row, col in windows:
                rows, cols = slice(row, min(row + tile_size, height)), slice(col, min(col + tile_size, width))
                _map_tile(model, rasters, mappable, rows, cols, half, outputs, tally, label_index)
                advance()
        steps["map"] = time.perf_counter() - started - steps["read"]
        _finish(outputs)
    finally:
        outputs.close()
        shutil.rmtree(staging, ignore_errors=True)
    recall = labelled = None
    if tally.confusion is not None:
        recall, labelled = _recalls(tally.confusion, config)
    result = SceneResult(
        scene_id=rasters.scene_id, scene_dir=scene_dir, map_path=str(out_dir / (rasters.scene_id + MAP_SUFFIX)),
        probabilities_path=str(out_dir / (rasters.scene_id + PROBABILITIES_SUFFIX)) if with_probabilities else None,
        recall_path=None, recall=recall, labelled_pixels=labelled, pixels=height * width, pixels_mapped=tally.mapped,
        tiles=tally.tiles, seconds=0.0)
    if recall is not None:
        recall_path = out_dir / (rasters.scene_id + RECALL_SUFFIX)
        result.recall_path = str(recall_path)
        _write_json_atomically(recall_path, _recall_record(result, tally.confusion, model, config))
    result.seconds = time.perf_counter() - started
    result.step_seconds = {**steps, "write": result.seconds - steps["read"] - steps["map"]}
    return result


def _map_tile(model: MapModel, rasters: SceneRasters, mappable: np.ndarray, rows: slice, cols: slice, half: int,
              outputs: _Outputs, tally: _Tally, label_index: np.ndarray | None) -> None:
    """Classifies the centre pixels rows x cols (those with a valid window; NODATA elsewhere) and writes them."""
    config = model.config
    height, width = mappable.shape
    window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    classes = np.full((window.height, window.width), NODATA, _class_dtype(config))
    probabilities = None
    if outputs.probabilities is not None:
        probabilities = np.full((1 + len(config.class_ids), window.height, window.width), np.nan, np.float32)
    # Centres whose window fits in the scene; a tile's input is them plus a halo of half a patch on each side.
    top, bottom = max(rows.start, half), min(rows.stop, height - half)
    left, right = max(cols.start, half), min(cols.stop, width - half)
    if top < bottom and left < right and mappable[top:bottom, left:right].any():
        inside = (slice(top - half, bottom + half), slice(left - half, right + half))
        tile = np.concatenate([rasters.multispectral[:, inside[0], inside[1]], rasters.lidar[:, inside[0], inside[1]]])
        tile = np.ascontiguousarray(np.moveaxis(tile, 0, -1))
        tile[~np.isfinite(tile)] = 0.0  # invalid pixels: their windows are masked below; NaN would spread
        scores = model.map_tile(tile)
        tally.tiles += 1
        valid = mappable[top:bottom, left:right]
        predicted = np.argmax(scores, axis=-1)
        centres = (slice(top - rows.start, bottom - rows.start), slice(left - cols.start, right - cols.start))
        classes[centres] = np.where(valid, np.asarray(config.class_ids)[predicted], NODATA)
        tally.mapped += int(np.count_nonzero(valid))
        if probabilities is not None:
            mapped = np.concatenate([np.max(scores, axis=-1, keepdims=True), scores], axis=-1)
            probabilities[(slice(None), *centres)] = np.where(valid, np.moveaxis(mapped, -1, 0), np.nan)
        if label_index is not None:
            labels = rasters.labels[top:bottom, left:right]
            scored = valid & (labels != 0)
            tally.add_labels(label_index[labels[scored]], predicted[scored])
    outputs.classes.write(classes, 1, window=window)
    if probabilities is not None:
        outputs.probabilities.write(probabilities, window=window)


def _class_dtype(config: Config) -> str:
    return "uint8" if max(config.class_ids) <= np.iinfo(np.uint8).max else "uint16"


def _open_outputs(outputs: _Outputs, staging: Path, out_dir: Path, rasters: SceneRasters, config: Config,
                  model_dir: str, tile_size: int, with_probabilities: bool) -> None:
    """Uncompressed tiled GeoTIFFs in the staging folder, on the scene's grid, with everything but the pixels."""
    height, width = rasters.valid.shape
    block = max(16, min(512, 16 * round(tile_size / 16)))  # GeoTIFF blocks are multiples of 16
    profile = {"driver": "GTiff", "width": width, "height": height, "crs": rasters.crs, "transform": rasters.transform,
               "tiled": True, "blockxsize": block, "blockysize": block}
    tags = {"TERRAFUSE_SCENE": rasters.scene_id, "TERRAFUSE_MODEL": model_dir}
    outputs.classes = classes = rasterio.open(staging / "classes.tif", "w", count=1, dtype=_class_dtype(config),
                                              nodata=NODATA, **profile)
    classes.write_colormap(1, {NODATA: (0, 0, 0, 0), **{class_id: (*rgb, 255)
                                                        for class_id, rgb in class_colours(config).items()}})
    classes.update_tags(**tags, **{CLASSES_TAG: json.dumps([{"id": c.id, "name": c.name} for c in config.classes])})
    classes.set_band_description(1, "class_id")
    outputs.finals[staging / "classes.tif"] = out_dir / (rasters.scene_id + MAP_SUFFIX)
    if with_probabilities:
        outputs.probabilities = probabilities = rasterio.open(
            staging / "probabilities.tif", "w", count=1 + len(config.class_ids), dtype="float32", nodata=np.nan,
            **profile)
        probabilities.update_tags(**tags)
        for band, name in enumerate((CONFIDENCE, *config.class_names), start=1):
            probabilities.set_band_description(band, name)
        outputs.finals[staging / "probabilities.tif"] = out_dir / (rasters.scene_id + PROBABILITIES_SUFFIX)


def _finish(outputs: _Outputs) -> None:
    """Each staged GeoTIFF becomes a COG in the staging folder, then takes its final name."""
    outputs.close()
    cogs = {}
    for staged, final in outputs.finals.items():
        categorical = staged.name == "classes.tif"
        cog = staged.with_suffix(".cog.tif")
        rasterio.shutil.copy(staged, cog, driver="COG", COMPRESS="DEFLATE",
                             PREDICTOR="NO" if categorical else "FLOATING_POINT",
                             RESAMPLING="NEAREST" if categorical else "AVERAGE")
        cogs[cog] = final
    for cog, final in cogs.items():
        os.replace(cog, final)


def _recalls(confusion: np.ndarray, config: Config) -> tuple[dict[str, float], dict[str, int]]:
    """Per class name, argmax recall on the labelled mapped pixels (NaN without any; as models.metrics.
    argmax_recalls computes it, which is not imported: TFMA would add seconds to every predict) and their count."""
    labelled = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recalls = np.where(labelled > 0, np.diag(confusion) / labelled, np.nan)
    return (dict(zip(config.class_names, recalls.tolist())),
            dict(zip(config.class_names, labelled.tolist())))


def _recall_record(result: SceneResult, confusion: np.ndarray, model: MapModel, config: Config) -> dict[str, Any]:
    def finite(value: float) -> float | None:
        return None if math.isnan(value) else value

    return {
        "scene": result.scene_id,
        "scene_dir": result.scene_dir,
        "model": model.model_dir,
        "map": result.map_path,
        "pixels": "labelled pixels whose window ingestion could cut (every one, not a sample)",
        "classes": [{"id": c.id, "name": c.name, "labelled_pixels": result.labelled_pixels[c.name],
                     "recall": finite(result.recall[c.name])} for c in config.classes],
        "per_class_recall": {name: finite(recall) for name, recall in result.recall.items()},
        "macro_recall": finite(result.macro_recall),
        "worst_class": result.worst_class,
        "confusion": {"rows": "labelled class, class-table order", "columns": "mapped class, class-table order",
                      "counts": confusion.tolist()},
    }


def _write_json_atomically(path: Path, record: dict[str, Any]) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        staged.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


class _Progress:
    """A tqdm bar, plain lines about every tenth of the tiles, or nothing; `advance()` counts one tile."""

    def __init__(self, mode: str, scene_id: str, total: int):
        self._mode, self._scene, self._total, self._done, self._bar = mode, scene_id, total, 0, None

    def __enter__(self) -> Callable[[], None]:
        if self._mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, desc=self._scene, unit="tile", file=sys.stderr, leave=False)
        return self._advance

    def _advance(self) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update()
        elif self._mode == "lines" and (self._done == self._total
                                        or self._done * 10 // self._total > (self._done - 1) * 10 // self._total):
            print(f"{self._scene}: tile {self._done}/{self._total} ({100 * self._done // self._total} %)",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.close()
