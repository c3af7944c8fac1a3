"""Deterministic sample scenes: real GeoTIFF and LAZ files with plausible physics, class imbalance and a known answer.

Tests and `make run` need data without downloads, and a known answer shows whether each stream carries the
signal it should: spectra separate road from bare soil but not grass from trees (height does), roofs look like
roads from above (height again), and the raw scales differ by about three orders of magnitude (reflectance x
10000 against metres), which an unnormalised model does not survive. Some pixels neither stream can tell, and
their neighbourhood can: canopy gaps inside stands look like shaded meadow, a sparse meadow pixel like a weedy
field's, and shadows change band levels where LiDAR sees nothing. A model that fuses both streams over a window
has something to win over one that classifies single pixels (bench/pixel_baselines.py).

`generate_sample` writes span and scene folders as the input contract lays them out (foundation/scene_folder.py):
a LAZ point cloud, or with grids="prerasterized" the height and intensity rasters instead. Span folders hold only
scene folders and scene folders only stream files, as ingestion matches every file of every scene (SPLIT_PATTERN).
Beside the spans, out_dir/manifest.json records the seed, sizes and class counts per span and scene: the known
answer.
"""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path

import laspy
import numpy as np
import pyproj
import rasterio
from rasterio import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject
from scipy import ndimage, special

from foundation.config import Config, StreamsConfig
from foundation.scene_folder import (LABELS_FILE, LAZ_FILE, MULTISPECTRAL_FILE, POINT_CLOUD_FILES, lidar_raster_file,
                                     span_folder)

# The reflectance tuples below follow the config's default band order; other orders are looked up by name.
SPECTRUM_BANDS = StreamsConfig().multispectral_bands


@dataclass(frozen=True)
class SurfaceSignature:
    """How one terrain class looks to each sensor, and how often annotators labelled it."""

    reflectance: tuple[float, ...]  # surface reflectance 0..1, one per SPECTRUM_BANDS band
    height_m: tuple[float, float]  # range of object heights above ground (canopy tops, roofs)
    intensity: int  # mean LiDAR intensity of a full-energy return (uint16 scale)
    asprs_class: int  # LAS classification of the surface return
    pulse_return_rate: float  # share of laser pulses that come back at all
    label_share: float  # expected share of the labelled pixels
    shifted_label_share: float  # the same in a drifted span (shifted_span)


_ASPHALT = (0.085, 0.092, 0.100, 0.118, 0.135)

# Keyed by the class names of the config's default class table.
SIGNATURES: dict[str, SurfaceSignature] = {
    # Sunlit broadleaf crowns are grass's spectrum ~20% brighter, but crowns shade each other and the gaps
    # between them (_illumination): a stand reads ~5% darker than grass, inside the region-to-region brightness
    # spread, so spectra alone cannot tell trees from grass; canopy height can.
    "trees": SurfaceSignature(
        reflectance=(0.048, 0.101, 0.060, 0.432, 0.240), height_m=(8.0, 25.0), intensity=24000,
        asprs_class=5, pulse_return_rate=1.0, label_share=0.265, shifted_label_share=0.14),
    "grass": SurfaceSignature(
        reflectance=(0.040, 0.084, 0.050, 0.360, 0.200), height_m=(0.0, 0.5), intensity=30000,
        asprs_class=2, pulse_return_rate=1.0, label_share=0.41, shifted_label_share=0.15),
    # Bitumen flat roofs and asphalt roads are one material seen from above: only height separates them.
    "building": SurfaceSignature(
        reflectance=_ASPHALT, height_m=(4.0, 15.0), intensity=11000,
        asprs_class=6, pulse_return_rate=1.0, label_share=0.07, shifted_label_share=0.06),
    "road": SurfaceSignature(
        reflectance=_ASPHALT, height_m=(0.0, 0.0), intensity=10000,
        asprs_class=2, pulse_return_rate=1.0, label_share=0.09, shifted_label_share=0.08),
    # Dry ploughed soil: brighter and redder than asphalt with high SWIR, at ground height like roads.
    "bare_soil": SurfaceSignature(
        reflectance=(0.100, 0.140, 0.190, 0.250, 0.330), height_m=(0.0, 0.0), intensity=21000,
        asprs_class=2, pulse_return_rate=1.0, label_share=0.13, shifted_label_share=0.30),
    # Water absorbs NIR and SWIR, and most of the 1064 nm pulse reflects specularly away from the sensor: one
    # pulse in five returns, about a third of its 1 m cells get none. Fewer, and ingestion (rightly) finds
    # no water window whose every cell has a return within ingest.max_lidar_gap_m: at 0.03 ingestion kept
    # 18 of 541 water patches of the default sample, at 0.2 all of them.
    "water": SurfaceSignature(
        reflectance=(0.060, 0.072, 0.045, 0.012, 0.004), height_m=(0.0, 0.0), intensity=2500,
        asprs_class=9, pulse_return_rate=0.2, label_share=0.03, shifted_label_share=0.27),
}

GRIDS = ("reference", "mixed", "prerasterized")
PIXEL_SIZE_M = 1.0  # layout and LiDAR work in metres that are pixels: sizes below assume 1 m
REFERENCE_CRS = "EPSG:32633"  # UTM 33N: central Europe
MIXED_LIDAR_CRS = "EPSG:3035"  # ETRS89 / LAEA Europe: a real reprojection, rotated against UTM
MIXED_LABELS_CRS = "EPSG:32634"  # the neighbouring UTM zone, ~4 degrees of grid convergence here
MIXED_LABELS_PIXEL_M = 2.0
PRERASTERIZED_PIXEL_M = 2.0
PRERASTERIZED_NODATA = -9999.0
PULSE_DENSITY_PER_M2 = 6.0
LABELLED_FRACTION = 0.16  # sparse annotation: about 16,000 labelled pixels in the default sample
# Annotated blobs a few metres across, spread over the scene as field-survey polygons are: a spatial split
# then sees every class in many blocks, so train and eval label shares stay close.
ANNOTATION_BLOB_M = 3.0
MIN_SIZE = 32  # smaller scenes cannot hold a river, a road and a building side by side
WATER_SURFACE_BELOW_BANK_M = 0.6
ACQUISITION_DATE = datetime.date(2024, 6, 14)  # fixed, so LAZ files are byte-identical across runs
# The sun at the acquisition, about 10:00 solar time in mid-June at 48 degrees north: roofs and crowns cast
# shadows 0.6 times their height long to the north-west, and their faces turned from the sun get less direct
# light. A shadowed surface keeps only the diffuse skylight, a share of its reflectance in every band: its spectral
# shape (and NDVI) stays, its band levels do not. LiDAR, an active sensor, sees no shadows.
SUN_ELEVATION_DEG = 60.0
SUN_AZIMUTH_DEG = 120.0  # clockwise from north
DIFFUSE_SHARE = 0.35
# Meadows have worn and dry patches, ploughed parcels weeds and emerging crop, both in patches a metre or two
# across: a pixel of either is green vegetation over soil in a share that varies from pixel to pixel. A sparse
# meadow pixel and a weedy field pixel look alike to both sensors; their surroundings (the share around them) do
# not. Crowns mix leaves with branches and litter in the same way, in the spectrum only. Mean share per class,
# and its spread; the other classes are not mixed.
GREEN_COVER = {"grass": 0.8, "bare_soil": 0.2, "trees": 0.8}
# The classes whose signatures fix the green and the soil endmember, and whose LiDAR returns come from either.
ENDMEMBER_CLASSES = ("grass", "bare_soil")
GREEN_COVER_SPREAD = 0.24
GREEN_COVER_PATCH_M = 1.5
# The point cloud is written LAZ-compressed, as clouds are delivered.
PRERASTERIZED_CHANNELS = ("height", "intensity")
# Every file a scene folder may hold: what one call does not write is removed, so no stale stream is read.
STREAM_FILES = (MULTISPECTRAL_FILE, LABELS_FILE, *POINT_CLOUD_FILES,
                *(lidar_raster_file(channel) for channel in PRERASTERIZED_CHANNELS))


@dataclass(frozen=True)
class _LandscapeMix:
    """Land-cover proportions of one kind of span: the shifted one is a wet season after clearing."""

    tree_fraction: float
    soil_parcels: int
    soil_parcel_side: tuple[float, float]  # fraction of the scene side
    river_width: tuple[float, float]  # fraction of the scene side
    pond_probability: float
    building_fraction: float


_DEFAULT_MIX = _LandscapeMix(tree_fraction=0.30, soil_parcels=1, soil_parcel_side=(0.25, 0.45),
                             river_width=(0.05, 0.08), pond_probability=0.4, building_fraction=0.025)
_SHIFTED_MIX = _LandscapeMix(tree_fraction=0.12, soil_parcels=2, soil_parcel_side=(0.35, 0.55),
                             river_width=(0.18, 0.26), pond_probability=0.0, building_fraction=0.02)


@dataclass(frozen=True)
class _Building:
    centre: tuple[float, float]  # scene metres: x to the east, y down from the top edge
    ridge_angle: float
    half_width: float
    eave_m: float
    ridge_m: float  # equals eave_m for flat roofs


@dataclass(frozen=True)
class _Layout:
    """Land cover of a whole scene (labels cover only part of it) and the 3D objects standing on it."""

    cover: np.ndarray  # index into config.classes per pixel
    buildings: list[_Building]
    building_id: np.ndarray  # index into buildings, -1 elsewhere
    nearest_tree_top: np.ndarray  # (2, S, S) row/col of the closest tree top
    tree_top_height: np.ndarray  # metres at tree-top pixels, 0 elsewhere
    crown_radius: np.ndarray  # metres at tree-top pixels, 0 elsewhere
    terrain: tuple[float, np.ndarray, np.ndarray]  # base (m), plane gradient (2,), waves (k, 4)
    green_cover: np.ndarray  # share of each pixel under green vegetation, on the GREEN_COVER classes


def generate_sample(out_dir, config: Config | None = None, spans: int = 1, scenes_per_span: int = 4,
                    size: int = 160, seed: int = 0, shifted_span: int | None = None,
                    grids: str = "reference") -> list[Path]:
    """Write `spans` x `scenes_per_span` synthetic scenes under out_dir and return the scene folders.

    out_dir: created if missing; files of the same names are overwritten, and a scene folder keeps only the
        stream files this call writes (stale spans from an earlier call with more spans stay).
    config: band order and names (`streams.multispectral_bands`) and the class table (`classes`); every class
        name must be a key of SIGNATURES and every band one of SPECTRUM_BANDS. Default: Config().
    spans: span folders 1 .. spans (span_folder). scenes_per_span: scene folders scene-000 .. per span.
    size: scene side in pixels of 1 m (at least MIN_SIZE); 160 gives ~16,000 labelled pixels over 4 scenes.
    seed: same seed, same arrays; each scene draws from its own stream keyed by (seed, span, scene).
    shifted_span: 1-based span whose land cover and labels drift (more water and bare soil, less grass).
    grids: "reference" (labels on the multispectral grid, LiDAR in its CRS); "mixed" (labels on a 2 m grid
        in MIXED_LABELS_CRS, LiDAR in MIXED_LIDAR_CRS); "prerasterized" (height and intensity rasters,
        lidar_raster_file, on a 2 m grid offset from the multispectral grid instead of the point cloud).
    """
    config = config or Config()
    _check_arguments(config, spans, scenes_per_span, size, shifted_span, grids)
    out_dir = Path(out_dir)
    manifest = {
        "generator": "synth.scenes.generate_sample",
        "seed": seed, "size": size, "pixel_size_m": PIXEL_SIZE_M, "grids": grids, "shifted_span": shifted_span,
        "crs": REFERENCE_CRS, "bands": list(config.streams.multispectral_bands),
        "classes": [{"id": c.id, "name": c.name} for c in config.classes],
        "class_counts_grid": "multispectral (reference) grid", "spans": {},
    }
    scene_dirs = []
    for span in range(1, spans + 1):
        span_name = span_folder(span)
        span_entry = {"class_counts": dict.fromkeys(config.class_names, 0), "scenes": {}}
        for scene in range(scenes_per_span):
            scene_dir = out_dir / span_name / f"scene-{scene:03d}"
            rng = np.random.default_rng([seed, span, scene])
            scene_entry = _write_scene(scene_dir, rng, config, size, span == shifted_span, grids)
            span_entry["scenes"][scene_dir.name] = scene_entry
            for name, count in scene_entry["class_counts"].items():
                span_entry["class_counts"][name] += count
            scene_dirs.append(scene_dir)
        manifest["spans"][span_name] = span_entry
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return scene_dirs


def _check_arguments(config, spans, scenes_per_span, size, shifted_span, grids) -> None:
    unknown_classes = sorted(set(config.class_names) - set(SIGNATURES))
    missing_classes = sorted(set(SIGNATURES) - set(config.class_names))
    if unknown_classes or missing_classes:
        raise ValueError(f"the sample generator paints exactly the classes {sorted(SIGNATURES)}; config has no "
                         f"{missing_classes} and unknown {unknown_classes}")
    unknown_bands = sorted(set(config.streams.multispectral_bands) - set(SPECTRUM_BANDS))
    if unknown_bands:
        raise ValueError(f"no sample spectra for bands {unknown_bands}; known bands: {list(SPECTRUM_BANDS)}")
    if spans < 1 or scenes_per_span < 1:
        raise ValueError(f"spans and scenes_per_span must be at least 1, got {spans} and {scenes_per_span}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    if shifted_span is not None and not 1 <= shifted_span <= spans:
        raise ValueError(f"shifted_span must be between 1 and spans={spans}, got {shifted_span}")
    if grids not in GRIDS:
        raise ValueError(f"grids must be one of {list(GRIDS)}, got {grids!r}")


def _write_scene(scene_dir: Path, rng, config: Config, size: int, shifted: bool, grids: str) -> dict:
    scene_dir.mkdir(parents=True, exist_ok=True)
    # UTM 33N eastings and northings of Bavaria, Austria and Czechia, snapped to whole metres.
    origin = (float(rng.integers(420_000, 580_000)), float(rng.integers(5_350_000, 5_650_000)))
    transform = _north_up(origin, PIXEL_SIZE_M)
    layout = _layout(rng, size, shifted, config)
    multispectral = _multispectral(rng, layout, config)
    labels = _labels(rng, layout.cover, config, shifted)
    points = _point_cloud(rng, layout, config)

    written = {MULTISPECTRAL_FILE, LABELS_FILE}
    _write_raster(scene_dir / MULTISPECTRAL_FILE, multispectral, REFERENCE_CRS, transform,
                  descriptions=config.streams.multispectral_bands,
                  tags={"REFLECTANCE_SCALE": str(config.streams.float_reflectance_scale)})
    if grids == "mixed":
        _write_reprojected_labels(scene_dir / LABELS_FILE, labels, transform)
    else:
        _write_raster(scene_dir / LABELS_FILE, labels[np.newaxis], REFERENCE_CRS, transform, nodata=0)
    if grids == "prerasterized":
        _write_prerasterized_lidar(scene_dir, points, origin, size)
        written |= {lidar_raster_file(channel) for channel in PRERASTERIZED_CHANNELS}
    else:
        _write_laz(scene_dir / LAZ_FILE, points, origin,
                   MIXED_LIDAR_CRS if grids == "mixed" else REFERENCE_CRS)
        written.add(LAZ_FILE)
    for stale in set(STREAM_FILES) - written:
        (scene_dir / stale).unlink(missing_ok=True)

    counts = np.bincount(labels.ravel(), minlength=max(config.class_ids) + 1)
    return {"origin": list(origin), "points": int(points["x"].size), "labelled_pixels": int(np.count_nonzero(labels)),
            "class_counts": {c.name: int(counts[c.id]) for c in config.classes}}


def _north_up(top_left, pixel_m: float) -> Affine:
    return Affine(pixel_m, 0.0, top_left[0], 0.0, -pixel_m, top_left[1])


def _smooth_noise(rng, shape, sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~sigma pixels."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / field.std()


def _frame(x, y, centre, angle: float):
    """Coordinates along and across a direction through a centre point."""
    dx, dy = x - centre[0], y - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _pixel(x, y, size: int):
    """Row and column of the 1 m pixel under scene coordinates in [0, size]."""
    return np.minimum(y.astype(int), size - 1), np.minimum(x.astype(int), size - 1)


def _layout(rng, size: int, shifted: bool, config: Config) -> _Layout:
    """Grass base, tree stands, soil parcels, a river or pond, a road network and buildings along it."""
    mix = _SHIFTED_MIX if shifted else _DEFAULT_MIX
    index = {name: i for i, name in enumerate(config.class_names)}
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cover = np.full((size, size), index["grass"], np.int8)

    stands = _smooth_noise(rng, cover.shape, size / 10)
    cover[stands > np.quantile(stands, 1 - mix.tree_fraction)] = index["trees"]
    for _ in range(mix.soil_parcels):
        along, across = _frame(xx, yy, rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0, math.pi))
        half = rng.uniform(*mix.soil_parcel_side, 2) * size / 2
        cover[(np.abs(along) < half[0]) & (np.abs(across) < half[1])] = index["bare_soil"]

    water = _water(rng, xx, yy, size, mix)
    cover[water] = index["water"]
    roads, main_road = _roads(rng, xx, yy, size)
    cover[roads] = index["road"]
    buildings, building_id = _buildings(rng, xx, yy, size, main_road, ~(water | roads), mix.building_fraction)
    cover[building_id >= 0] = index["building"]

    nearest_tree_top, tree_top_height, crown_radius = _tree_crowns(rng, cover == index["trees"])
    base = rng.uniform(135.0, 150.0)
    slope, aspect = rng.uniform(0.005, 0.05), rng.uniform(0, 2 * math.pi)
    gradient = slope * np.array([math.cos(aspect), math.sin(aspect)])
    # Low-frequency bumps, one row each: amplitude (m), wavelength (m), direction, phase.
    waves = np.column_stack([rng.uniform(0.5, 2.5, 3), rng.uniform(60, 250, 3), rng.uniform(0, 2 * math.pi, 3),
                             rng.uniform(0, 2 * math.pi, 3)])
    green_cover = np.zeros(cover.shape)
    patches = _smooth_noise(rng, cover.shape, GREEN_COVER_PATCH_M)
    for name, share in GREEN_COVER.items():
        mixed = cover == index[name]
        green_cover[mixed] = np.clip(share + GREEN_COVER_SPREAD * patches[mixed], 0.0, 1.0)
    return _Layout(cover, buildings, building_id, nearest_tree_top, tree_top_height, crown_radius,
                   (base, gradient, waves), green_cover)


def _water(rng, xx, yy, size: int, mix: _LandscapeMix) -> np.ndarray:
    """A meandering river across the scene, or a pond with an irregular shore."""
    centre = rng.uniform(0.3, 0.7, 2) * size
    along, across = _frame(xx, yy, centre, rng.uniform(0, math.pi))
    if rng.random() < mix.pond_probability:
        radii = rng.uniform(0.09, 0.15, 2) * size
        shore = 0.15 * _smooth_noise(rng, xx.shape, size / 16)
        return np.hypot(along / radii[0], across / radii[1]) + shore < 1.0
    amplitude, wavelength = rng.uniform(0.05, 0.12) * size, rng.uniform(0.6, 1.2) * size
    meander = amplitude * np.sin(2 * math.pi * along / wavelength + rng.uniform(0, 2 * math.pi))
    return np.abs(across - meander) < rng.uniform(*mix.river_width) * size / 2


def _roads(rng, xx, yy, size: int):
    """One straight road through the scene, often crossed by a second; returns the mask and the first road."""
    centre, angle, half_width = rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0, math.pi), rng.uniform(2.0, 3.5)
    roads = np.abs(_frame(xx, yy, centre, angle)[1]) < half_width
    if rng.random() < 0.6:
        cross_angle = angle + math.pi / 2 + rng.normal(0, 0.15)
        cross = _frame(xx, yy, rng.uniform(0.2, 0.8, 2) * size, cross_angle)[1]
        roads |= np.abs(cross) < rng.uniform(2.0, 3.5)
    return roads, (centre, angle, half_width)


def _buildings(rng, xx, yy, size: int, road, free: np.ndarray, target_fraction: float):
    """Rectangular houses set back from the main road, on free ground, until they cover target_fraction."""
    road_centre, road_angle, road_half_width = road
    direction = np.array([math.cos(road_angle), math.sin(road_angle)])
    normal = np.array([-direction[1], direction[0]])
    low, high = SIGNATURES["building"].height_m
    building_id = np.full(xx.shape, -1, np.int16)
    buildings: list[_Building] = []
    fallback = None
    for _ in range(60):
        length, depth = rng.uniform(8, 18), rng.uniform(7, 13)
        setback = road_half_width + rng.uniform(2.5, 7.0) + depth / 2
        centre = (road_centre + rng.uniform(-0.45, 0.45) * size * direction
                  + rng.choice([-1.0, 1.0]) * setback * normal)
        angle = road_angle + rng.normal(0, 0.04)
        along, across = _frame(xx, yy, centre, angle)
        footprint = (np.abs(along) < length / 2) & (np.abs(across) < depth / 2)
        if footprint.sum() < 0.6 * length * depth:
            continue
        if rng.random() < 0.5:
            eave = ridge = rng.uniform(low, high)
        else:
            eave = rng.uniform(low, (low + high) / 2)
            ridge = min(eave + rng.uniform(2.0, 5.0), high)
        ridge_along_length = length >= depth
        building = _Building(
            centre=(float(centre[0]), float(centre[1])),
            ridge_angle=angle if ridge_along_length else angle + math.pi / 2,
            half_width=min(length, depth) / 2, eave_m=eave, ridge_m=ridge)
        clear = ~ndimage.binary_dilation(building_id >= 0, iterations=2) & free
        if np.all(clear[footprint]):
            building_id[footprint] = len(buildings)
            buildings.append(building)
        elif fallback is None:
            fallback = (building, footprint)
        if np.count_nonzero(building_id >= 0) >= target_fraction * size * size:
            break
    if not buildings:
        # Crowded small scenes: a building that overlaps road or water beats a scene without the class.
        building, footprint = fallback
        building_id[footprint] = 0
        buildings.append(building)
    return buildings, building_id


def _tree_crowns(rng, trees: np.ndarray):
    """Individual crowns: tree tops scattered in the stands, each pixel belongs to its nearest top."""
    low, high = SIGNATURES["trees"].height_m
    tops = trees & (rng.random(trees.shape) < 1 / 30)
    if trees.any() and not tops.any():
        tops[np.unravel_index(np.argmax(trees), trees.shape)] = True
    stand_height = low + (high - low) * special.ndtr(_smooth_noise(rng, trees.shape, trees.shape[0] / 8))
    tree_top_height = np.where(tops, stand_height * rng.uniform(0.85, 1.0, trees.shape), 0.0)
    crown_radius = np.where(tops, np.clip(0.25 * tree_top_height, 2.5, 5.0), 0.0)
    nearest_tree_top = ndimage.distance_transform_edt(~tops, return_distances=False, return_indices=True)
    return nearest_tree_top, tree_top_height, crown_radius


def _terrain(terrain, x, y, size: int) -> np.ndarray:
    """Absolute ground elevation (m a.s.l.): a tilted plane plus low-frequency bumps."""
    base, gradient, waves = terrain
    z = base + gradient[0] * (x - size / 2) + gradient[1] * (y - size / 2)
    for amplitude, wavelength, direction, phase in waves:
        along = x * math.cos(direction) + y * math.sin(direction)
        z = z + amplitude * np.sin(2 * math.pi * along / wavelength + phase)
    return z


def _multispectral(rng, layout: _Layout, config: Config) -> np.ndarray:
    """Scaled reflectance (bands, rows, cols) uint16 in config band order: mixed pixels at class edges, green
    cover mixed with soil, under the sun's illumination and shadows."""
    cover, names = layout.cover, config.class_names
    band_index = [SPECTRUM_BANDS.index(band) for band in config.streams.multispectral_bands]
    spectra = np.array([[SIGNATURES[name].reflectance[b] for b in band_index] for name in names])
    one_hot = (cover[np.newaxis] == np.arange(len(names))[:, np.newaxis, np.newaxis]).astype(np.float64)
    # Smoothing the class indicators blends neighbouring spectra: a 1 m pixel at an edge sees both surfaces.
    weights = ndimage.gaussian_filter(one_hot, sigma=(0, 0.7, 0.7))
    size = cover.shape[0]
    # Per class: field-to-field brightness (moisture, condition, roof age) and fine texture.
    brightness = np.stack([(1 + 0.08 * _smooth_noise(rng, cover.shape, size / 8))
                           * (1 + 0.03 * _smooth_noise(rng, cover.shape, 1.0)) for _ in names])
    # Per class and pixel: its spectrum. Grass and bare soil mix a green and a soil endmember in the pixel's green
    # share; the endmembers are those whose mixtures at the classes' mean shares are the classes' signatures.
    # Crowns mix the same way, scaled to their own signature.
    surfaces = np.broadcast_to(spectra[:, :, np.newaxis, np.newaxis], (*spectra.shape, *cover.shape)).copy()
    endmembers = np.linalg.solve([[GREEN_COVER[name], 1 - GREEN_COVER[name]] for name in ENDMEMBER_CLASSES],
                                 spectra[[names.index(name) for name in ENDMEMBER_CLASSES]])
    for name, share in GREEN_COVER.items():
        k = names.index(name)
        mixture = np.einsum("e,eb->b", [share, 1 - share], endmembers)
        pixel = (layout.green_cover[np.newaxis] * endmembers[0][:, np.newaxis, np.newaxis]
                 + (1 - layout.green_cover[np.newaxis]) * endmembers[1][:, np.newaxis, np.newaxis])
        surfaces[k] = pixel * (spectra[k] / mixture)[:, np.newaxis, np.newaxis]
    reflectance = np.einsum("kyx,kbyx->byx", weights * brightness, surfaces)
    reflectance *= _illumination(layout, cover == names.index("trees"))
    # Per-scene calibration and atmosphere, then sensor noise (relative and absolute).
    reflectance *= rng.uniform(0.96, 1.04, (len(band_index), 1, 1))
    reflectance *= 1 + 0.01 * rng.standard_normal(reflectance.shape)
    reflectance += 0.003 * rng.standard_normal(reflectance.shape)
    scaled = np.rint(reflectance * config.streams.float_reflectance_scale)
    return np.clip(scaled, 1, np.iinfo(np.uint16).max).astype(np.uint16)


def _illumination(layout: _Layout, trees: np.ndarray) -> np.ndarray:
    """Reflectance factor of each pixel under the sun (1 on open flat ground): the diffuse share everywhere, plus
    direct light by the cosine of the incidence on the roof or crown surface, unless the surface towards the sun
    rises above the sun's line of sight (a shadow; penumbrae soften its edges)."""
    size = layout.cover.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    crown, inside = _crown_surface(layout, xx.ravel(), yy.ravel())
    crowns = inside.reshape(size, size) & trees
    height = np.where(crowns, crown.reshape(size, size), 0.0)
    roofs = layout.building_id >= 0
    height[roofs] = _roof_height(layout, xx[roofs], yy[roofs])
    # Each roof and crown its own surface: slopes are taken within one, not down its edges.
    owner = np.where(roofs, layout.building_id, -1).astype(np.int64)
    owner[crowns] = size * size + np.ravel_multi_index(tuple(layout.nearest_tree_top[:, crowns]), (size, size))
    slope = [_slope_within(height, owner, axis) for axis in (0, 1)]

    elevation, azimuth = math.radians(SUN_ELEVATION_DEG), math.radians(SUN_AZIMUTH_DEG)
    sun_row, sun_col = -math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth)
    normal_length = np.sqrt(1 + slope[0] ** 2 + slope[1] ** 2)
    incidence = (math.sin(elevation) - slope[0] * sun_row - slope[1] * sun_col) / normal_length
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    rise = math.tan(elevation)
    shadow = np.zeros(height.shape, bool)
    for distance in np.arange(0.5, height.max() / rise + 0.5, 0.5):
        toward = ndimage.map_coordinates(height, [rows + distance * sun_row / math.cos(elevation),
                                                  cols + distance * sun_col / math.cos(elevation)],
                                         order=0, mode="nearest")
        shadow |= toward > height + distance * rise
    sunlit = 1 - np.clip(ndimage.gaussian_filter(shadow.astype(float), 0.5), 0.0, 1.0)
    return DIFFUSE_SHARE + (1 - DIFFUSE_SHARE) * sunlit * np.maximum(incidence, 0) / math.sin(elevation)


def _slope_within(height: np.ndarray, owner: np.ndarray, axis: int) -> np.ndarray:
    """dh per pixel along an axis, from the neighbours of the same owner (0 where neither is)."""
    padded_height, padded_owner = np.pad(height, 1, mode="edge"), np.pad(owner, 1, constant_values=-2)
    inner = slice(1, -1)
    total, count = np.zeros(height.shape), np.zeros(height.shape)
    for step in (-1, 1):
        window = [inner, inner]
        window[axis] = slice(1 + step, padded_height.shape[axis] - 1 + step)
        same = padded_owner[tuple(window)] == owner
        total += np.where(same, step * (padded_height[tuple(window)] - height), 0.0)
        count += same
    return total / np.maximum(count, 1)


def _labels(rng, cover: np.ndarray, config: Config, shifted: bool) -> np.ndarray:
    """Class ids on annotated blobs covering LABELLED_FRACTION of the scene, 0 elsewhere.

    Annotators label blobs of a smooth field, more of rare classes than their area: the top pixels of that
    field within each class make coherent patches whose counts follow the class's label share.
    """
    shares = np.array([getattr(SIGNATURES[name], "shifted_label_share" if shifted else "label_share")
                       for name in config.class_names])
    shares = shares * np.exp(rng.normal(0, 0.12, shares.size))
    targets = np.rint(shares / shares.sum() * LABELLED_FRACTION * cover.size).astype(int)
    annotation = _smooth_noise(rng, cover.shape, ANNOTATION_BLOB_M)
    dtype = np.uint8 if max(config.class_ids) <= np.iinfo(np.uint8).max else np.uint16
    labels = np.zeros(cover.shape, dtype)
    for k, terrain_class in enumerate(config.classes):
        in_class = cover == k
        wanted = min(int(targets[k]), int(in_class.sum()))
        if wanted:
            threshold = np.sort(annotation[in_class])[-wanted]
            labels[in_class & (annotation >= threshold)] = terrain_class.id
    return labels


def _point_cloud(rng, layout: _Layout, config: Config) -> dict[str, np.ndarray]:
    """Discrete-return airborne LiDAR over the scene, in scene metres (x east, y down from the top edge).

    Pulses fall uniformly; the surface under each decides its returns: tree crowns give up to four (canopy,
    branches, ground), roofs, roads and soil one, grass one near the ground, water few.
    """
    names = config.class_names
    index = {name: i for i, name in enumerate(names)}
    size = layout.cover.shape[0]
    pulses = rng.poisson(PULSE_DENSITY_PER_M2 * size * size)
    x, y = rng.uniform(0, size, pulses), rng.uniform(0, size, pulses)
    along_track = np.argsort(y, kind="stable")  # one flight line north to south: time follows y
    x, y = x[along_track], y[along_track]
    surface = layout.cover[_pixel(x, y, size)]
    return_rate = np.array([SIGNATURES[name].pulse_return_rate for name in names])
    answered = rng.random(pulses) < return_rate[surface]
    x, y, surface = x[answered], y[answered], surface[answered]
    pulse_time = np.flatnonzero(answered) * 1e-5  # 100 kHz pulse rate

    is_tree = surface == index["trees"]
    canopy_top, in_gap = _canopy(rng, layout, x, y)
    in_gap &= is_tree
    returns = np.where(is_tree & ~in_gap, rng.choice([1, 2, 3, 4], x.size, p=[0.2, 0.35, 0.3, 0.15]), 1)

    # One entry per return; the returns of a pulse are consecutive and share its position and time.
    pulse = np.repeat(np.arange(x.size), returns)
    number = np.arange(pulse.size) - np.repeat(np.cumsum(returns) - returns, returns) + 1
    count, kind, n = returns[pulse], surface[pulse], pulse.size
    x, y = x[pulse], y[pulse]
    classification = np.array([SIGNATURES[name].asprs_class for name in names])[kind]
    intensity = np.array([SIGNATURES[name].intensity for name in names], float)[kind]
    # On grass and bare soil a return comes from green vegetation or from soil, as the pixel's green cover has it.
    mixed = np.isin(kind, [index[name] for name in ENDMEMBER_CLASSES])
    vegetation = mixed & (rng.random(n) < layout.green_cover[_pixel(x, y, size)])
    intensity[mixed] = np.where(vegetation, SIGNATURES["grass"].intensity, SIGNATURES["bare_soil"].intensity)[mixed]
    height = np.abs(rng.normal(0, 0.03, n))  # bare ground roughness

    under_trees = is_tree[pulse]
    on_ground = under_trees & (((number == count) & (count > 1)) | in_gap[pulse])
    in_canopy = under_trees & ~on_ground
    depth = (number - 1) / np.maximum(count - 1, 1)  # 0 at the first return, 1 at the last
    crown = canopy_top[pulse] * (1 - depth * rng.uniform(0.7, 1.0, n)) - np.abs(rng.normal(0, 0.4, n))
    height[in_canopy] = np.maximum(crown[in_canopy], 0.3)
    classification[on_ground] = 2
    classification[in_canopy] = np.select([height[in_canopy] >= 5, height[in_canopy] >= 2], [5, 4], 3)
    intensity[on_ground] = SIGNATURES["grass"].intensity  # understorey and litter under the crowns
    # A pulse split over several surfaces returns only a share of its energy from each.
    intensity[count > 1] *= np.where(number == 1, 0.55, 0.35)[count > 1]

    low_grass = vegetation & (rng.random(n) < 0.3)
    height[low_grass] = rng.uniform(0.1, SIGNATURES["grass"].height_m[1], n)[low_grass]
    classification[low_grass] = 3
    water = kind == index["water"]
    height[water] = -WATER_SURFACE_BELOW_BANK_M + rng.normal(0, 0.02, n)[water]
    on_roof = kind == index["building"]
    height[on_roof] = _roof_height(layout, x[on_roof], y[on_roof])

    flying_height_m = 900.0
    return {
        "x": x, "y": y, "z": _terrain(layout.terrain, x, y, size) + height, "height": height,
        "intensity": np.clip(np.rint(intensity * rng.lognormal(0, 0.2, n)), 0, 65535).astype(np.uint16),
        "return_number": number.astype(np.uint8), "number_of_returns": count.astype(np.uint8),
        "classification": classification.astype(np.uint8),
        "scan_angle_deg": np.degrees(np.arctan((x - size / 2) / flying_height_m)),
        "gps_time": 3.5e8 + pulse_time[pulse],
    }


def _canopy(rng, layout: _Layout, x, y):
    """Crown surface height under each pulse, and whether the pulse finds a gap between crowns."""
    crown, inside = _crown_surface(layout, x, y)
    return crown, ~inside | (rng.random(x.size) < 0.05)


def _crown_surface(layout: _Layout, x, y):
    """Height of the nearest crown's surface at scene coordinates, and whether they lie inside that crown."""
    pixel = _pixel(x, y, layout.cover.shape[0])
    top_row, top_col = layout.nearest_tree_top[0][pixel], layout.nearest_tree_top[1][pixel]
    radius = layout.crown_radius[top_row, top_col]
    distance = np.hypot(x - (top_col + 0.5), y - (top_row + 0.5))
    # Crowns are flattened domes: 30% lower at the rim than at the top.
    relative = np.minimum(distance / np.maximum(radius, 1e-6), 1.0)
    return layout.tree_top_height[top_row, top_col] * (1 - 0.3 * relative ** 2), distance <= radius


def _roof_height(layout: _Layout, x, y) -> np.ndarray:
    """Flat roofs at their eave height; pitched roofs rise linearly from the eaves to the ridge."""
    owner = layout.building_id[_pixel(x, y, layout.cover.shape[0])]
    height = np.zeros(x.size)
    for i, building in enumerate(layout.buildings):
        mine = owner == i
        across = _frame(x[mine], y[mine], building.centre, building.ridge_angle)[1]
        rise = np.clip(1 - np.abs(across) / building.half_width, 0, 1)
        height[mine] = building.eave_m + (building.ridge_m - building.eave_m) * rise
    return height


def _write_raster(path: Path, data: np.ndarray, crs: str, transform, descriptions=None, nodata=None,
                  tags=None) -> None:
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1], "width": data.shape[2],
               "dtype": data.dtype, "crs": crs, "transform": transform, "compress": "deflate", "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)
        if tags:
            dst.update_tags(**tags)


def _write_reprojected_labels(path: Path, labels: np.ndarray, transform) -> None:
    """Labels as a vendor might deliver them: another CRS, 2 m pixels, nearest-neighbour resampled."""
    size = labels.shape[0]
    west, south, east, north = rasterio.transform.array_bounds(size, size, transform)
    dst_transform, width, height = calculate_default_transform(
        REFERENCE_CRS, MIXED_LABELS_CRS, size, size, left=west, bottom=south, right=east, top=north,
        resolution=MIXED_LABELS_PIXEL_M)
    resampled = np.zeros((height, width), labels.dtype)
    reproject(labels, resampled, src_transform=transform, src_crs=REFERENCE_CRS, src_nodata=0,
              dst_transform=dst_transform, dst_crs=MIXED_LABELS_CRS, dst_nodata=0, resampling=Resampling.nearest)
    _write_raster(path, resampled[np.newaxis], MIXED_LABELS_CRS, dst_transform, nodata=0)


def _world(points: dict, origin) -> tuple[np.ndarray, np.ndarray]:
    return origin[0] + points["x"], origin[1] - points["y"]


def _write_laz(path: Path, points: dict, origin, crs: str) -> None:
    """LAS 1.4 point format 6, LAZ-compressed, 1 cm resolution, CRS as a WKT VLR."""
    x, y = _world(points, origin)
    if crs != REFERENCE_CRS:
        x, y = pyproj.Transformer.from_crs(REFERENCE_CRS, crs, always_xy=True).transform(x, y)
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.floor([x.min(), y.min(), points["z"].min()])
    header.add_crs(pyproj.CRS.from_user_input(crs))
    header.creation_date = ACQUISITION_DATE
    header.generating_software = "terrafuse synth"
    header.system_identifier = "synthetic ALS"
    las = laspy.LasData(header)
    las.x, las.y, las.z = x, y, points["z"]
    las.intensity = points["intensity"]
    las.return_number = points["return_number"]
    las.number_of_returns = points["number_of_returns"]
    las.classification = points["classification"]
    las.scan_angle = np.rint(points["scan_angle_deg"] / 0.006).astype(np.int16)  # LAS 1.4: 0.006 degree units
    las.point_source_id = np.ones(x.size, np.uint16)
    las.gps_time = points["gps_time"]
    las.write(path)


def _write_prerasterized_lidar(scene_dir: Path, points: dict, origin, size: int) -> None:
    """A vendor's nDSM (top of points minus ground) and mean first-return intensity on a coarser, offset grid.

    Cells without points (mostly water) are nodata, as in delivered products.
    """
    step = PRERASTERIZED_PIXEL_M
    grid_origin = (origin[0] - 3.0, origin[1] + 3.0)  # odd metres: cell edges fall mid-pixel of the 1 m grid
    cells = math.ceil((size + 6.0) / step)
    x, y = _world(points, origin)
    cell = (np.floor((grid_origin[1] - y) / step).astype(int) * cells
            + np.floor((x - grid_origin[0]) / step).astype(int))
    top = np.full(cells * cells, -np.inf)
    np.maximum.at(top, cell, np.maximum(points["height"], 0.0))
    first = points["return_number"] == 1
    hits = np.bincount(cell[first], minlength=cells * cells)
    intensity_sum = np.bincount(cell[first], weights=points["intensity"][first].astype(float), minlength=cells * cells)
    ndsm = np.where(np.isfinite(top), top, PRERASTERIZED_NODATA)
    intensity = np.where(hits > 0, intensity_sum / np.maximum(hits, 1), PRERASTERIZED_NODATA)
    transform = _north_up(grid_origin, step)
    rasters = {"height": ndsm, "intensity": intensity}
    for channel in PRERASTERIZED_CHANNELS:
        values = rasters[channel].reshape(1, cells, cells).astype(np.float32)
        _write_raster(scene_dir / lidar_raster_file(channel), values, REFERENCE_CRS, transform,
                      nodata=PRERASTERIZED_NODATA)
