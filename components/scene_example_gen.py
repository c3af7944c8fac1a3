"""Scene ExampleGen: a file-based TFX ExampleGen whose Beam source is one scene folder per element, and whose work
is spread over (scene, tile) elements.

Each scene's streams are aligned on the multispectral grid with a validity mask each, labelled pixels whose
whole window is valid in every stream are sampled and cut into patches (components.scenes /
components.patches). A scene is planned from its headers and cut into tiles (`ingest.tile_blocks`); its point
cloud is read in ranges of points, each binned into per-cell sums for the tiles it touches; each tile reads
its windows of the rasters and makes its patches; what a scene's steps found meets per scene for the checks
that are about the scene as a whole (its point cloud, its share of valid windows, its band scale). So neither a
scene's pixels nor its points are ever held whole, and a large scene spreads over workers.
Whole blocks (`block_id`, a coarse spatial tile) are dealt to train, validation and test so that every class
gets each split's share (see assign_blocks), and a patch whose window reaches into a block of another split is
dropped: no validation or test window overlaps a training window. `ingest.split_by: scene` deals whole scenes
instead. No step holds every block: blocks are dealt in groups of up to
`ingest.split_group_units` (a hash of the block id picks the group; one group at the sample's scale), and each
patch is joined by key with the splits of the blocks its window can touch.
A bad scene never stops the others being read: every bad scene of the run (one that cannot be read, one that lies
outside the data root, one whose valid pixels are too few, one whose band scale disagrees with the rest of its
span, one where anything else raised) is reported together, then the run fails (or, with
`ingest.on_bad_scene: skip`, goes on without them).
What ingestion kept and lost is written to `ingest_report.json` at the root of the Examples artifact and set
as its `ingest_report` custom property.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any, Callable, Iterable, Iterator

import apache_beam as beam
import numpy as np
from google.protobuf import any_pb2, struct_pb2
from tfx.components import FileBasedExampleGen
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components.lidar_rasters import CellSums, PointStats, SparseCells
from components.patches import (encode_examples, extract_patches, neighbour_block_ids, sample_pixels,
                                window_block_ids, window_valid)
from components.scenes import (SceneError, ScenePlan, SceneRasters, Tile, lidar_raster_error, plan_scene,
                               point_cloud_error, read_point_range, require_inside, scene_dirs, scene_errors,
                               scene_name, tile_parts, tile_rasters)
from foundation.config import SPLITS, TRAIN, Config, resolve_path
from transforms.features import BLOCK_ID

# At the root of the Examples artifact, and the artifact's string custom property holding the same JSON.
INGEST_REPORT_FILE = "ingest_report.json"
INGEST_REPORT_PROPERTY = "ingest_report"

_ERRORS = "errors"
_SUMMARIES = "summaries"
_UNITS = "units"
_DEALT = "dealt"
_EXAMPLES = "examples"
_RANGES = "ranges"
_PARTS = "parts"
_TILES = "tiles"
# What a step tells its scene (finish_scene_parts), and the stages an error can come from, in reading order.
_PLAN, _POINTS, _CELLS, _TILE, _ERROR = "plan", "points", "cells", "tile", "error"
_PLAN_STAGE, _TILE_STAGE, _POINTS_STAGE = 0, 1, 2
# Split indices after the splits (in SPLITS order): patches the buffer drops, and (SplitPlan) of bad scenes left out.
BUFFER_DROPPED = len(SPLITS)
BAD_SCENE_LEFT_OUT = len(SPLITS) + 1
_TRAIN_INDEX = SPLITS.index(TRAIN)
# Below this many scenes, the median of the others' band medians cannot say which scene is off.
MIN_SCENES_FOR_BAND_CHECK = 3


class BadScenesError(RuntimeError):
    """Raised once per run: every bad scene's problem, or too few scenes to deal to the splits."""


def custom_config_proto(config: Config) -> example_gen_pb2.CustomConfig:
    """ExampleGen only carries a proto Any: the config travels as JSON inside a Struct."""
    packed = any_pb2.Any()
    packed.Pack(struct_pb2.Struct(fields={"config": struct_pb2.Value(string_value=config.to_json())}))
    return example_gen_pb2.CustomConfig(custom_config=packed)


def config_from_exec_properties(exec_properties: dict[str, Any]) -> Config:
    custom = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY], custom)
    struct = struct_pb2.Struct()
    custom.custom_config.Unpack(struct)
    return Config.from_dict(json.loads(struct.fields["config"].string_value))


def tile_rng(config: Config, scene_id: str, tile: Tile) -> np.random.Generator:
    """Sampling depends on the seed, the scene and the tile only, not on the order Beam meets them in."""
    return np.random.default_rng([config.ingest.sampling_seed, zlib.crc32(scene_id.encode()), tile.row, tile.col])


@dataclass
class SceneSummary:
    """What the one global step (check_scenes) needs of a scene that was read: its size follows the scenes, not
    the blocks."""

    scene_id: str
    multispectral_file: str
    band_medians: tuple[float, ...]  # per multispectral band (config order) over its valid pixels
    report: dict[str, Any]  # the scene's entry in the ingest report


@dataclass
class TileReport:
    """What a tile adds to its scene's report and checks: counts over its core, which sum to the scene's."""

    labelled_pixels: int
    valid_labelled_pixels: int
    masked_pixels: dict[str, int]  # per stream
    lidar_filled_cells: dict[str, int]
    lidar_measured_cells: dict[str, int]
    patches: int
    lost_windows: dict[str, int]  # labelled pixels whose window reaches masked LiDAR, masked multispectral, the edge
    band_values: list[tuple[np.ndarray, np.ndarray]]  # per band, (rounded value, count) of its valid pixels

    def merge(self, other: TileReport) -> TileReport:
        """Both tiles' counts as one, so a scene's steps are merged one at a time whatever their number."""
        def added(mine: dict[str, int], theirs: dict[str, int]) -> dict[str, int]:
            return {key: mine[key] + theirs[key] for key in mine}

        return TileReport(
            self.labelled_pixels + other.labelled_pixels, self.valid_labelled_pixels + other.valid_labelled_pixels,
            added(self.masked_pixels, other.masked_pixels), added(self.lidar_filled_cells, other.lidar_filled_cells),
            added(self.lidar_measured_cells, other.lidar_measured_cells), self.patches + other.patches,
            added(self.lost_windows, other.lost_windows),
            [merge_band_values(pair) for pair in zip(self.band_values, other.band_values)])


@dataclass
class TilePatches:
    """One tile's patch centres (on its read window) with what the split and the scene's checks need of them."""

    rasters: SceneRasters
    rows: np.ndarray  # on the tile's read window; rasters.origin brings them onto the scene's grid
    cols: np.ndarray
    labels: np.ndarray  # class id per patch centre
    units: list[tuple[bytes, ...]]  # per patch, the split units its window touches, the centre's first
    report: TileReport


@dataclass
class ScenePatches:
    """One scene's patches, tile by tile, with its split units and summary: what ingestion and bench/floor.py share."""

    tiles: list[TilePatches]
    unit_counts: dict[bytes, np.ndarray]  # label counts of the patch centres per split unit (block or scene)
    summary: SceneSummary

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([tile.labels for tile in self.tiles])

    @property
    def rows(self) -> np.ndarray:
        """Patch centres' rows on the scene's grid."""
        return np.concatenate([tile.rows + tile.rasters.origin[0] for tile in self.tiles])

    @property
    def cols(self) -> np.ndarray:
        return np.concatenate([tile.cols + tile.rasters.origin[1] for tile in self.tiles])

    @property
    def units(self) -> list[tuple[bytes, ...]]:
        return [units for tile in self.tiles for units in tile.units]

    def patch_values(self, patch_size: int) -> np.ndarray:
        """(N, bands + LiDAR channels, P*P) float32 patches, in the order of `labels`."""
        return np.concatenate([
            extract_patches(np.concatenate([tile.rasters.multispectral, tile.rasters.lidar]), tile.rows, tile.cols,
                            patch_size) for tile in self.tiles])


@dataclass
class SceneExamples:
    serialized: list[bytes]
    keys: list[tuple[str, int, tuple[bytes, ...]]]  # per example: scene id, class id, split units its window touches
    unit_counts: dict[bytes, np.ndarray]  # as ScenePatches'
    summary: SceneSummary


def tile_patches(plan: ScenePlan, tile: Tile, rasters: SceneRasters, config: Config) -> TilePatches:
    """The labelled pixels of the tile's core to cut patches around, drawn among those whose whole window is valid
    in every stream, and the tile's part of the scene's report."""
    valid = rasters.valid
    core_labels = np.zeros_like(rasters.labels)
    core_labels[tile.core] = rasters.labels[tile.core]
    rows, cols = sample_pixels(core_labels, valid, config, tile_rng(config, plan.scene_id, tile))
    labels = rasters.labels[rows, cols]
    row0, col0 = rasters.origin
    units = split_units(plan.scene_id, rows + row0, cols + col0, config)
    return TilePatches(rasters, rows, cols, labels, units, tile_report(rasters, valid, tile.core, len(rows), config))


def tile_report(rasters: SceneRasters, valid: np.ndarray, core: tuple[slice, slice], patches: int,
                config: Config) -> TileReport:
    """What the masks did to the tile's core. Windows are judged on the read window, whose halo holds every pixel
    a core pixel's window reaches inside the scene."""
    size = config.ingest.patch_size
    labelled = rasters.labels[core] != 0
    multispectral_valid = rasters.multispectral_valid[core]
    return TileReport(
        labelled_pixels=int(np.count_nonzero(labelled)),
        valid_labelled_pixels=int(np.count_nonzero(labelled & window_valid(valid, size)[core])),
        masked_pixels={"multispectral": int(np.count_nonzero(~multispectral_valid)),
                       "lidar": int(np.count_nonzero(~rasters.lidar_valid[core])),
                       "labels": int(np.count_nonzero(~rasters.labels_valid[core]))},
        lidar_filled_cells=dict(rasters.filled_cells),
        lidar_measured_cells=dict(rasters.measured_cells),
        patches=patches,
        lost_windows={
            "lidar": int(np.count_nonzero(
                labelled & ~window_valid(rasters.lidar_valid, size, outside_valid=True)[core])),
            "multispectral": int(np.count_nonzero(
                labelled & ~window_valid(rasters.multispectral_valid, size, outside_valid=True)[core])),
            "edge": _edge_lost(rasters, core, labelled, size),
        },
        band_values=[band_histogram(band[core][multispectral_valid]) for band in rasters.multispectral],
    )


def _edge_lost(rasters: SceneRasters, core: tuple[slice, slice], labelled: np.ndarray, size: int) -> int:
    """Labelled pixels of the core whose window reaches beyond the scene's edge (a read window's edge inside the
    scene is a halo away from the core)."""
    return int(np.count_nonzero(labelled & ~window_valid(np.ones(rasters.labels.shape, bool), size)[core]))


def band_histogram(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, count) of a band's valid pixels, rounded to whole reflectance units (uint16 x 10000): the median
    of a scene is then the median of its tiles' histograms, exactly for uint16 deliveries."""
    units = np.rint(values).astype(np.int64)
    if units.size and units.min() >= 0 and units.max() < 2**16:  # a uint16 range: counting beats sorting
        counts = np.bincount(units)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(units, return_counts=True)


def merge_band_values(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One histogram of (value, count) from several."""
    values, counts = zip(*parts)
    merged, inverse = np.unique(np.concatenate(values), return_inverse=True)
    return merged, np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)


def histogram_median(values: np.ndarray, counts: np.ndarray) -> float:
    """The median of the values a histogram counts (NaN for none): a scene's band median from its tiles'."""
    total = int(counts.sum())
    if not total:
        return float("nan")
    ends = np.cumsum(counts)
    low, high = values[np.searchsorted(ends, (total - 1) // 2, side="right")], values[
        np.searchsorted(ends, total // 2, side="right")]
    return (float(low) + float(high)) / 2


def finish_scene(plan: ScenePlan, points: PointStats, tiles: TileReport, config: Config) -> SceneSummary:
    """The scene's summary from what its point ranges and tiles (merged) found, or the SceneError of a scene that
    is unusable as a whole: its point cloud, a LiDAR raster without data, too few valid windows."""
    if plan.point_cloud is not None:
        error = point_cloud_error(plan, points)
        if error:
            raise error
    error = lidar_raster_error(plan, tiles.lidar_measured_cells)
    if error:
        raise error
    labelled, valid = tiles.labelled_pixels, tiles.valid_labelled_pixels
    report = {
        "labelled_pixels": labelled,
        "valid_labelled_pixels": valid,
        "valid_share": valid / labelled if labelled else None,
        "masked_pixels": tiles.masked_pixels,
        "lidar_filled_cells": tiles.lidar_filled_cells,
        "patches": tiles.patches,
    }
    if report["valid_share"] is not None and report["valid_share"] < config.ingest.min_valid_share:
        raise _too_few_valid(plan, report, tiles.lost_windows, config)
    logging.info("scene %s: %d patches; %d of %d labelled pixels have a valid window; masked pixels %s; LiDAR "
                 "cells filled %s", plan.scene_id, report["patches"], valid, labelled, report["masked_pixels"],
                 report["lidar_filled_cells"])
    return SceneSummary(plan.scene_id, plan.files["multispectral"],
                        tuple(histogram_median(*values) for values in tiles.band_values), report)


def _too_few_valid(plan: ScenePlan, report: dict[str, Any], lost: dict[str, int], config: Config) -> SceneError:
    """The error of a scene under min_valid_share, naming the file whose mask cost the most windows."""
    size = config.ingest.patch_size
    what = {"lidar": f"LiDAR cells with no return within ingest.max_lidar_gap_m {config.ingest.max_lidar_gap_m:g} m",
            "multispectral": "nodata, masked or non-finite multispectral pixels",
            "edge": "beyond the raster's edge"}
    worst = max(lost, key=lost.get)
    causes = ", ".join(f"{what[cause]}: {n:,}" for cause, n in sorted(lost.items(), key=lambda item: -item[1]))
    return SceneError(
        plan.scene_id, plan.files["multispectral" if worst == "edge" else worst],
        f"only {report['valid_share']:.1%} of its {report['labelled_pixels']:,} labelled pixels have a "
        f"{size} x {size} window valid in every stream (ingest.min_valid_share {config.ingest.min_valid_share:.0%}); "
        f"windows reaching {causes}",
    )


def split_units(scene_id: str, rows: np.ndarray, cols: np.ndarray, config: Config) -> list[tuple[bytes, ...]]:
    """Per patch (centre on the scene's grid), the units the split deals that its window touches, the centre's
    first: blocks, or the scene."""
    if config.ingest.split_by == "scene":
        return [(scene_id.encode(),)] * len(rows)
    return window_block_ids(scene_id, rows, cols, config.ingest.block_size, config.ingest.patch_size)


def read_in_tiles(scene_dir: str, config: Config, use_tile: Callable[[TilePatches], None]) -> SceneSummary:
    """What the pipeline's steps do with one scene, in one process and in the memory of one step: the plan, each
    point range (its sums for each tile's window kept on disk, as Beam's shuffle keeps them), then each tile, given
    to `use_tile` and let go; then the scene's checks. Raises SceneError naming the scene and file on bad input."""
    plan = plan_scene(scene_dir, config)
    points, merged = PointStats(), None
    with tempfile.TemporaryDirectory(prefix="terrafuse-tiles-") as spill:
        for start, count in plan.point_ranges():
            cells, stats = read_point_range(plan, start, count)
            points = points.merge(stats)
            for index, part in tile_parts(plan, cells):
                with open(os.path.join(spill, str(index)), "ab") as parts:
                    pickle.dump(part, parts, protocol=pickle.HIGHEST_PROTOCOL)
        for index, tile in enumerate(plan.tiles):
            sums = None
            if plan.point_cloud is not None:
                sums = CellSums(plan.tile_grid(tile))
                for part in _spilled(os.path.join(spill, str(index))):
                    sums.add(part)
            patches = tile_patches(plan, tile, tile_rasters(plan, tile, sums, config), config)
            merged = patches.report if merged is None else merged.merge(patches.report)
            use_tile(patches)
    return finish_scene(plan, points, merged, config)


def _spilled(path: str) -> Iterator[SparseCells]:
    if os.path.exists(path):
        with open(path, "rb") as parts:
            while parts.peek(1):
                yield pickle.load(parts)


def scene_patches(scene_dir: str, config: Config) -> ScenePatches:
    """Every tile's sampled patch centres of one scene, with its rasters (so the whole scene's are held), their
    split units and the scene's summary; raises SceneError naming the scene and file on bad input."""
    tiles: list[TilePatches] = []
    summary = read_in_tiles(scene_dir, config, tiles.append)
    units = [units for tile in tiles for units in tile.units]
    labels = np.concatenate([tile.labels for tile in tiles])
    return ScenePatches(tiles, unit_label_counts(units, labels, config.class_ids), summary)


def scene_examples(scene_dir: str, config: Config) -> SceneExamples:
    """Every example of one scene, tile by tile (no tile's rasters outlive it); raises SceneError naming the scene
    and file on bad input."""
    serialized, labels, units = [], [], []

    def encode(tile: TilePatches) -> None:
        serialized.extend(encode_examples(tile.rasters, tile.rows, tile.cols, config))
        labels.extend(tile.labels.tolist())
        units.extend(tile.units)

    summary = read_in_tiles(scene_dir, config, encode)
    return SceneExamples(
        serialized=serialized,
        keys=[(summary.scene_id, label, touched) for label, touched in zip(labels, units)],
        unit_counts=unit_label_counts(units, np.array(labels, np.int64), config.class_ids),
        summary=summary,
    )


def ingest_scene(scene_dir: str, config: Config, data_root: str) -> SceneExamples:
    """What the pipeline makes of one scene folder, in one process: scene_examples of a scene inside the data
    root. Every exception becomes a SceneError naming the scene (and the file, where one was being read)."""
    with scene_errors(scene_name(scene_dir), scene_dir):
        require_inside(scene_dir, data_root)
        return scene_examples(scene_dir, config)


def unit_label_counts(units: list[tuple[bytes, ...]], labels: np.ndarray,
                      class_ids: tuple[int, ...]) -> dict[bytes, np.ndarray]:
    """Label counts per split unit of the patch centres (the first unit of each patch)."""
    index = {class_id: i for i, class_id in enumerate(class_ids)}
    counts: dict[bytes, np.ndarray] = {}
    for (unit, label), n in Counter(zip(map(itemgetter(0), units), np.asarray(labels).tolist())).items():
        counts.setdefault(unit, np.zeros(len(class_ids), np.int64))[index[label]] = n
    return counts


def split_fractions(output_config: example_gen_pb2.Output) -> list[float]:
    """Each split's share of the units, in the output config's split order, from its hash buckets."""
    buckets = [split.hash_buckets for split in output_config.split_config.splits]
    return [b / sum(buckets) for b in buckets]


def assign_blocks(block_counts: dict[bytes, np.ndarray], fractions: list[float]) -> dict[bytes, int]:
    """Split index per unit (a block, or a scene with split_by: scene), so that each split holds its fraction
    of every class.

    Units are visited in the order of a hash of their id (reproducible, independent of scene order) and each
    goes to the split whose per-class shortfall it reduces most, relative to each class's total so rare
    classes count as much as common ones; the last units go to splits still empty, so none is left without
    data while units remain. A plain hash split leaves the label mix to chance: on the sample scenes its
    train-vs-held-out L-infinity distance ranged from 0.04 to 0.32 with the seed.
    """
    if not block_counts:
        return {}
    totals = np.maximum(np.sum(list(block_counts.values()), axis=0), 1).astype(float)
    targets = np.outer(fractions, totals)
    filled = np.zeros_like(targets)
    units = np.zeros(len(fractions), np.int64)
    assignment = {}
    order = sorted(block_counts, key=lambda block: hashlib.sha256(block).digest())
    for position, block in enumerate(order):
        counts = block_counts[block]
        relief = ((np.abs(filled - targets) - np.abs(filled + counts - targets)) / totals).sum(axis=1)
        if len(order) - position <= np.count_nonzero(units == 0):
            relief[units > 0] = -np.inf
        split = int(np.argmax(relief))
        filled[split] += counts
        units[split] += 1
        assignment[block] = split
    return assignment


def merge_block_counts(parts: Iterable[dict[bytes, np.ndarray]]) -> dict[bytes, np.ndarray]:
    merged: dict[bytes, np.ndarray] = {}
    for part in parts:
        for block, counts in part.items():
            merged[block] = merged[block] + counts if block in merged else counts
    return merged


def group_count(units: int, group_units: int) -> int:
    """How many groups `units` split units are dealt in, each on its own: one up to `ingest.split_group_units`."""
    return max(1, -(-units // group_units))


def unit_group(unit: bytes, groups: int) -> int:
    """The group a unit is dealt in: a hash of its id, so any worker finds it without a global table."""
    return int.from_bytes(hashlib.sha256(unit).digest()[:8], "big") % groups


def deal_group(units: Iterable[tuple[bytes, np.ndarray]], fractions: list[float]) -> list[tuple[bytes, int]]:
    """(unit, split index) for one group's (unit, label counts): assign_blocks within the group."""
    return list(assign_blocks(dict(units), fractions).items())


def assign_in_groups(unit_counts: dict[bytes, np.ndarray], fractions: list[float],
                     group_units: int) -> dict[bytes, int]:
    """Split index per unit, dealt group by group as SceneExampleGen's pipeline does (unit_group, deal_group):
    the whole plan in one process, for tests and bench/floor.py. With one group it is assign_blocks itself."""
    groups = group_count(len(unit_counts), group_units)
    parts: dict[int, list[tuple[bytes, np.ndarray]]] = {}
    for unit, counts in unit_counts.items():
        parts.setdefault(unit_group(unit, groups), []).append((unit, counts))
    return dict(pair for part in parts.values() for pair in deal_group(part, fractions))


def band_scale_outliers(summaries: list[SceneSummary], config: Config) -> dict[str, str]:
    """Scene id -> problem, for scenes whose median of a band differs from the median of the other scenes'
    medians by `ingest.max_scene_band_ratio` or more, either way: an 8-bit, unscaled or mis-scaled delivery."""
    if len(summaries) < MIN_SCENES_FOR_BAND_CHECK:
        logging.warning("Band scales not compared across scenes: %d scene(s) read, the check needs at least %d",
                        len(summaries), MIN_SCENES_FOR_BAND_CHECK)
        return {}
    limit = config.ingest.max_scene_band_ratio
    medians = np.array([summary.band_medians for summary in summaries], float)
    outliers = {}
    for i, summary in enumerate(summaries):
        rest = np.nanmedian(np.delete(medians, i, axis=0), axis=0)
        problems = []
        for band, own, others in zip(config.streams.multispectral_bands, medians[i], rest):
            ratio = _scale_ratio(own, others)
            if ratio >= limit:
                problems.append(f"band {band} median {own:,.1f} vs {others:,.1f}")
        if problems:
            outliers[summary.scene_id] = str(SceneError(
                summary.scene_id, summary.multispectral_file,
                f"{', '.join(problems)} in the rest of the span (a factor of {limit:g} or more: "
                f"ingest.max_scene_band_ratio); an 8-bit or unscaled delivery?"))
    return outliers


def _scale_ratio(a: float, b: float) -> float:
    """max(a/b, b/a) for non-negative medians; 1 where either is unknown (NaN)."""
    if np.isnan(a) or np.isnan(b):
        return 1.0
    if min(a, b) <= 0:
        return 1.0 if max(a, b) <= 0 else float("inf")
    return max(a / b, b / a)


@dataclass
class SceneCheck:
    """The one global step's decision, about scenes only: which are bad and left out, and their report."""

    split_by: str
    left_out: frozenset[str]  # bad scenes (on_bad_scene: skip): whatever patches they made are dropped
    bad_scenes: list[str]  # every bad scene's problem, read errors first
    scenes: dict[str, dict[str, Any]]  # report entries of the scenes whose patches are used


def check_scenes(errors: list[SceneError], summaries: list[SceneSummary], config: Config) -> SceneCheck:
    """Checks band scales across scenes and fails on bad scenes (or leaves them out: their tiles may have made
    examples before another part of the scene failed)."""
    outliers = band_scale_outliers(summaries, config)
    bad_scenes = sorted(map(str, errors)) + [outliers[scene] for scene in sorted(outliers)]
    report_bad_scenes(bad_scenes, len(errors) + len(summaries), config.ingest.on_bad_scene)
    good = sorted((s for s in summaries if s.scene_id not in outliers), key=lambda s: s.scene_id)
    if config.ingest.split_by == "scene" and len(good) < len(SPLITS):
        raise BadScenesError(f"ingest.split_by: scene deals whole scenes to {len(SPLITS)} splits "
                             f"({', '.join(SPLITS)}), but only {len(good)} good scene(s) were read; "
                             f"use ingest.split_by: block")
    return SceneCheck(config.ingest.split_by, frozenset(outliers) | {err.scene for err in errors}, bad_scenes,
                      {s.scene_id: s.report for s in good})


def unit_scene(unit: bytes) -> str:
    """The scene of a split unit: a block id starts with its scene id, a scene unit is the scene id."""
    return unit.split(b"/", 1)[0].decode()


def buffer_units(unit: bytes, split_by: str) -> list[bytes]:
    """The units whose splits decide whether a patch centred in `unit` is kept (window_split)."""
    return [unit] if split_by == "scene" else neighbour_block_ids(unit)


def window_split(units: tuple[bytes, ...], assignment: dict[bytes, int]) -> int:
    """Index into SPLITS of a patch whose window touches `units` (its centre's first), or BUFFER_DROPPED if
    they are not all of one split. Units without a patch centre are train's."""
    split = assignment.get(units[0], _TRAIN_INDEX)
    if any(assignment.get(unit, _TRAIN_INDEX) != split for unit in units[1:]):
        return BUFFER_DROPPED
    return split


@dataclass
class SplitPlan:
    """The whole split decision in one process (tests, bench/floor.py); the pipeline never builds it."""

    check: SceneCheck
    assignment: dict[bytes, int]  # unit -> index into SPLITS

    def split_index(self, key: tuple[str, int, tuple[bytes, ...]]) -> int:
        """window_split of the patch, or BAD_SCENE_LEFT_OUT."""
        scene_id, _, units = key
        return BAD_SCENE_LEFT_OUT if scene_id in self.check.left_out else window_split(units, self.assignment)


def plan_splits(errors: list[SceneError], summaries: list[SceneSummary], unit_counts: Iterable[dict[bytes, np.ndarray]],
                fractions: list[float], config: Config) -> SplitPlan:
    """What SceneExampleGen decides, in one process: check_scenes, then the good scenes' units dealt in groups."""
    check = check_scenes(errors, summaries, config)
    good = {unit: counts for unit, counts in merge_block_counts(unit_counts).items()
            if unit_scene(unit) not in check.left_out}
    return SplitPlan(check, assign_in_groups(good, fractions, config.ingest.split_group_units))


def ingest_report(check: SceneCheck, counts: list[tuple[tuple[int, int], int]], config: Config) -> dict[str, Any]:
    """The report from the scene check and the patches counted per (split index, class id).

    The patches of the scenes listed sum to the patches of every split plus those the buffer dropped.
    """
    names = dict(zip(config.class_ids, config.class_names))
    per_class = {split: dict.fromkeys(config.class_names, 0) for split in SPLITS}
    dropped = 0
    for (index, class_id), n in counts:
        if index == BUFFER_DROPPED:
            dropped += n
        elif index < len(SPLITS):
            per_class[SPLITS[index]][names[class_id]] += n
    return {
        "split_by": check.split_by,
        "scenes": check.scenes,
        "bad_scenes": check.bad_scenes,
        "buffer_dropped": dropped,
        "patches_per_split": {split: sum(by_class.values()) for split, by_class in per_class.items()},
        "patches_per_class": per_class,
    }


def write_ingest_report(check: SceneCheck, counts: list[tuple[tuple[int, int], int]], examples_uri: str,
                        config: Config) -> None:
    report = ingest_report(check, counts, config)
    with fileio.open(os.path.join(examples_uri, INGEST_REPORT_FILE), "w") as f:
        f.write(json.dumps(report, indent=1, sort_keys=True))
    logging.info("Ingestion: %s patches per split, %d dropped by the buffer between splits",
                 report["patches_per_split"], report["buffer_dropped"])


def read_ingest_report(examples_uri: str) -> dict[str, Any]:
    """The ingest report of an Examples artifact written by SceneExampleGen."""
    with fileio.open(os.path.join(examples_uri, INGEST_REPORT_FILE)) as f:
        return json.loads(f.read())


class _ConfiguredDoFn(beam.DoFn):
    def __init__(self, config_json: str):
        self._config_json = config_json
        self._config: Config | None = None

    def setup(self) -> None:
        self._config = Config.from_dict(json.loads(self._config_json))


def _scene_part(scene_id: str, kind: str, value: Any) -> beam.pvalue.TaggedOutput:
    """What a step found about its scene, for the scene's own check (finish_scene_parts)."""
    return beam.pvalue.TaggedOutput(_PARTS, (scene_id, (kind, value)))


class _PlanScene(_ConfiguredDoFn):
    """Scene folder -> its plan (a part of the scene), its point ranges (tagged) and ((scene, tile), plan) per
    tile: the elements the rest of ingestion spreads over workers."""

    def __init__(self, config_json: str, data_root: str):
        super().__init__(config_json)
        self._data_root = data_root

    def process(self, scene_dir: str) -> Iterable[Any]:
        scene = scene_name(scene_dir)
        try:
            with scene_errors(scene, scene_dir):
                require_inside(scene_dir, self._data_root)
                plan = plan_scene(scene_dir, self._config)
        except SceneError as err:
            yield _scene_part(scene, _ERROR, (_PLAN_STAGE, err))
            return
        yield _scene_part(scene, _PLAN, plan)
        for start, count in plan.point_ranges():
            yield beam.pvalue.TaggedOutput(_RANGES, (plan, start, count))
        for index in range(len(plan.tiles)):
            yield (scene, index), (_PLAN, plan)


class _ReadPointRange(beam.DoFn):
    """(plan, first point, count) -> ((scene, tile), its cells' sums) per tile the points touch, and the range's
    point counts as a part of the scene."""

    def process(self, point_range: tuple[ScenePlan, int, int]) -> Iterable[Any]:
        plan, start, count = point_range
        try:
            with scene_errors(plan.scene_id, plan.files["lidar"]):
                cells, stats = read_point_range(plan, start, count)
                parts = tile_parts(plan, cells)
        except SceneError as err:
            yield _scene_part(plan.scene_id, _ERROR, (_POINTS_STAGE, err))
            return
        yield _scene_part(plan.scene_id, _POINTS, stats)
        for index, part in parts:
            yield (plan.scene_id, index), (_CELLS, part)


class _TileExamples(_ConfiguredDoFn):
    """((scene, tile), [its plan and cell sums]) -> ((scene, label, units), serialized example) per patch, and,
    tagged, the tile's (unit, label counts) and its report (a part of the scene)."""

    def process(self, keyed: tuple[tuple[str, int], Iterable[tuple[str, Any]]]) -> Iterable[Any]:
        (scene, index), values = keyed
        plan, parts = None, []
        for kind, value in values:
            if kind == _PLAN:
                plan = value
            else:
                parts.append(value)
        tile = plan.tiles[index]
        try:
            with scene_errors(scene, plan.scene_dir):
                sums = None
                if plan.point_cloud is not None:
                    sums = CellSums(plan.tile_grid(tile))
                    for part in parts:
                        sums.add(part)
                patches = tile_patches(plan, tile, tile_rasters(plan, tile, sums, self._config), self._config)
                serialized = encode_examples(patches.rasters, patches.rows, patches.cols, self._config)
        except SceneError as err:
            yield _scene_part(scene, _ERROR, (_TILE_STAGE, err))
            return
        yield _scene_part(scene, _TILE, patches.report)
        for unit_counts in unit_label_counts(patches.units, patches.labels, self._config.class_ids).items():
            yield beam.pvalue.TaggedOutput(_UNITS, unit_counts)
        yield from zip(((scene, label, touched) for label, touched in zip(patches.labels.tolist(), patches.units)),
                       serialized)


class _FinishScene(_ConfiguredDoFn):
    """(scene, [what its steps found]) -> its summary, or, tagged, its error."""

    def process(self, keyed: tuple[str, Iterable[tuple[str, Any]]]) -> Iterable[Any]:
        scene, parts = keyed
        try:
            summary = finish_scene_parts(parts, self._config)
        except SceneError as err:
            yield beam.pvalue.TaggedOutput(_ERRORS, err)
            return
        yield summary


def finish_scene_parts(parts: Iterable[tuple[str, Any]], config: Config) -> SceneSummary:
    """finish_scene from the parts a scene's steps emitted; the first error found (planning, then a tile's files,
    then the point cloud's ranges, as one process reads a scene) is the scene's."""
    errors, plan, points, merged = [], None, PointStats(), None
    for kind, value in parts:
        if kind == _ERROR:
            errors.append(value)
        elif kind == _PLAN:
            plan = value
        elif kind == _POINTS:
            points = points.merge(value)
        else:
            merged = value if merged is None else merged.merge(value)
    if errors:
        raise min(errors, key=lambda found: (found[0], str(found[1])))[1]
    with scene_errors(plan.scene_id, plan.scene_dir):
        return finish_scene(plan, points, merged, config)


def _example_kept(keyed: tuple[tuple[str, int, tuple[bytes, ...]], bytes], left_out: frozenset[str]) -> bool:
    return keyed[0][0] not in left_out


def _unit_kept(unit_counts: tuple[bytes, np.ndarray], left_out: frozenset[str]) -> bool:
    return unit_scene(unit_counts[0]) not in left_out


def _keyed_by_group(unit_counts: tuple[bytes, np.ndarray], units: int,
                    group_units: int) -> tuple[int, tuple[bytes, np.ndarray]]:
    return unit_group(unit_counts[0], group_count(units, group_units)), unit_counts


def _deal_grouped(group: tuple[int, Iterable[tuple[bytes, np.ndarray]]],
                  fractions: list[float]) -> list[tuple[bytes, int]]:
    return deal_group(group[1], fractions)


def _to_buffer_units(dealt: tuple[bytes, int], split_by: str) -> list[tuple[bytes, tuple[bytes, int]]]:
    """(unit, split) keyed by each unit whose patches may need it: the unit and, for blocks, those around it."""
    return [(unit, dealt) for unit in buffer_units(dealt[0], split_by)]


def _keyed_by_centre(keyed: tuple[tuple[str, int, tuple[bytes, ...]], bytes]) -> tuple[bytes, tuple[Any, ...]]:
    (_, label, units), serialized = keyed
    return units[0], (label, units, serialized)


def split_examples(joined: tuple[bytes, dict[str, Iterable[Any]]]) -> Iterable[tuple[int, int, bytes]]:
    """(split index or BUFFER_DROPPED, class id, serialized) for the patches centred in one unit, from the
    splits of the units around it: a few units and one block's patches, whatever the data's size."""
    _, grouped = joined
    splits = dict(grouped[_DEALT])
    for label, units, serialized in grouped[_EXAMPLES]:
        yield window_split(units, splits), label, serialized


def report_bad_scenes(errors: list[str], scene_count: int, on_bad_scene: str) -> None:
    """Fails the run listing every bad scene, unless skipping was asked for and some scene was good."""
    if not errors:
        return
    listing = "\n  ".join(errors)
    summary = f"{len(errors)} of {scene_count} scenes are bad:\n  {listing}"
    if on_bad_scene == "skip" and len(errors) < scene_count:
        logging.warning("%s\nContinuing without them (ingest.on_bad_scene: skip).", summary)
        return
    raise BadScenesError(summary)


@beam.ptransform_fn
def _ScenesToExamples(pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str):
    """Scene folders matched by the pattern -> keyed serialized tf.Examples, plus (unit, label counts), scene
    summaries and errors. A scene is planned, its point cloud read in ranges and its tiles made on any worker;
    what they found about the scene meets again, per scene, in FinishScenes."""
    config = config_from_exec_properties(exec_properties)
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    matched = fileio.glob(os.path.join(input_base, split_pattern))
    scenes = scene_dirs(matched)
    if not scenes:
        raise BadScenesError(f"{os.path.join(input_base, split_pattern)}: no scene folders match")
    logging.info("Reading %d scenes under %s", len(scenes), os.path.join(input_base, split_pattern))
    config_json = config.to_json()
    planned = (
        pipeline
        | "Scenes" >> beam.Create(scenes, reshuffle=True)
        | "PlanScenes" >> beam.ParDo(_PlanScene(config_json, input_base)).with_outputs(_PARTS, _RANGES, main=_TILES)
    )
    points = (
        planned[_RANGES]
        | "SpreadPointRanges" >> beam.Reshuffle()
        | "ReadPointRanges" >> beam.ParDo(_ReadPointRange()).with_outputs(_PARTS, main=_CELLS)
    )
    tiles = (
        (planned[_TILES], points[_CELLS])
        | "TileInputs" >> beam.Flatten()
        | "GroupTileInputs" >> beam.GroupByKey()
        | "TileExamples" >> beam.ParDo(_TileExamples(config_json)).with_outputs(_PARTS, _UNITS, main=_EXAMPLES)
    )
    finished = (
        (planned[_PARTS], points[_PARTS], tiles[_PARTS])
        | "SceneParts" >> beam.Flatten()
        | "GroupSceneParts" >> beam.GroupByKey()
        | "FinishScenes" >> beam.ParDo(_FinishScene(config_json)).with_outputs(_ERRORS, main=_SUMMARIES)
    )
    return {_ERRORS: finished[_ERRORS], _SUMMARIES: finished[_SUMMARIES], _UNITS: tiles[_UNITS],
            _EXAMPLES: tiles[_EXAMPLES]}


def resolve_newest_span(exec_properties: dict[str, Any]) -> dict[str, Any]:
    """The exec properties with `{SPAN}` resolved to the newest span, as TFX's ExampleGen driver does.

    LocalDagRunner and Vertex AI run that driver before the executor; the open-source Kubeflow Pipelines backend
    does not (it skips the spec's pre-cache check), so the pattern arrives unresolved; the compiled spec runs this
    step uncached so that it gets here on every run (`_ingest_every_run` in pipeline/kfp_compile.py). Already
    resolved properties come back unchanged.
    """
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    if not any("{SPAN" in split.pattern or "{VERSION" in split.pattern for split in input_config.splits):
        return exec_properties
    resolved = example_gen_driver.FileBasedDriver(metadata_handle=None).resolve_exec_properties(
        dict(exec_properties), None, None)
    logging.info("Resolved the newest span: %s (input fingerprint %s)", resolved[example_gen_utils.SPAN_PROPERTY_NAME],
                 resolved[example_gen_utils.FINGERPRINT_PROPERTY_NAME])
    return resolved


class Executor(BaseExampleGenExecutor):
    """Deals whole blocks (or scenes) to the splits, stratified by label, with a buffer between splits
    (window_split), instead of TFX's per-block hash; writes the ingest report."""

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:
        resolved = resolve_newest_span(exec_properties)
        if resolved is not exec_properties:
            for examples in output_dict[standard_component_specs.EXAMPLES_KEY]:
                example_gen_driver.update_output_artifact(resolved, examples.mlmd_artifact)
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        self._examples_uri = examples.uri  # where GenerateExamplesByBeam's last step writes the ingest report
        super().Do(input_dict, output_dict, resolved)
        examples.set_string_custom_property(INGEST_REPORT_PROPERTY,
                                            json.dumps(read_ingest_report(examples.uri), sort_keys=True))

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ScenesToExamples

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: dict[str, Any]) -> dict[str, beam.pvalue.PCollection]:
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        splits = output_config.split_config.splits
        if (len(input_config.splits) != 1 or output_config.split_config.partition_feature_name != BLOCK_ID
                or tuple(split.name for split in splits) != SPLITS):
            raise ValueError(f"SceneExampleGen reads one input split and writes the splits {', '.join(SPLITS)}, "
                             f"partitioned on {BLOCK_ID!r}")
        fractions = split_fractions(output_config)
        config = config_from_exec_properties(exec_properties)
        read = pipeline | "InputToRecord" >> _ScenesToExamples(exec_properties, input_config.splits[0].pattern)
        # The one global step is about scenes (a summary each, no block in it): bad scenes, their report.
        summaries = read[_SUMMARIES] | "CollectSummaries" >> beam.combiners.ToList()
        check = (
            read[_ERRORS]
            | "CollectErrors" >> beam.combiners.ToList()
            | "CheckScenes" >> beam.Map(check_scenes, summaries=beam.pvalue.AsSingleton(summaries), config=config)
        )
        left_out = beam.pvalue.AsSingleton(check | "LeftOut" >> beam.Map(attrgetter("left_out")))
        # Units (blocks or scenes) are dealt in groups picked by a hash of their id; only their number is global.
        units = read[_UNITS] | "GoodUnits" >> beam.Filter(_unit_kept, left_out=left_out)
        unit_total = units | "CountUnits" >> beam.combiners.Count.Globally()
        dealt = (
            units
            | "KeyByGroup" >> beam.Map(_keyed_by_group, units=beam.pvalue.AsSingleton(unit_total),
                                       group_units=config.ingest.split_group_units)
            | "GroupUnits" >> beam.GroupByKey()
            | "DealGroups" >> beam.FlatMap(_deal_grouped, fractions=fractions)
            | "ToBufferUnits" >> beam.FlatMap(_to_buffer_units, split_by=config.ingest.split_by)
        )
        # Each patch meets the splits of its centre's unit and the units around it, keyed by its centre's unit.
        examples = (
            read[_EXAMPLES]
            | "GoodExamples" >> beam.Filter(_example_kept, left_out=left_out)
            | "KeyByCentreUnit" >> beam.Map(_keyed_by_centre)
        )
        indexed = (
            {_DEALT: dealt, _EXAMPLES: examples}
            | "JoinSplits" >> beam.CoGroupByKey()
            | "SplitExamples" >> beam.FlatMap(split_examples)
        )
        counts = (
            indexed
            | "SplitAndLabel" >> beam.Map(itemgetter(0, 1))
            | "CountPatches" >> beam.combiners.Count.PerElement()
            | "CollectCounts" >> beam.combiners.ToList()
        )
        _ = check | "WriteIngestReport" >> beam.Map(write_ingest_report, counts=beam.pvalue.AsSingleton(counts),
                                                    examples_uri=self._examples_uri, config=config)
        partitions = indexed | "SplitData" >> beam.Partition(lambda item, _: item[0], len(SPLITS) + 1)
        return {name: partitions[i] | f"Records[{name}]" >> beam.Map(itemgetter(2))
                for i, name in enumerate(SPLITS)}


def SceneExampleGen(config: Config) -> FileBasedExampleGen:
    """The ingestion component: newest span under config.run.data_root, split spatially with a buffer."""
    return FileBasedExampleGen(
        input_base=resolve_path(config.run.data_root),
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="scenes", pattern=config.ingest.split_pattern)]
        ),
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[example_gen_pb2.SplitConfig.Split(
                    name=split, hash_buckets=getattr(config.ingest, f"{split}_hash_buckets")) for split in SPLITS],
                partition_feature_name=BLOCK_ID,
            )
        ),
        custom_config=custom_config_proto(config.restricted("streams", "ingest")),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor),
    )
