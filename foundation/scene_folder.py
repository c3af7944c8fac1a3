"""The input contract: how a data root, its spans and a scene folder are laid out (README, "Input").

    DATA_ROOT/span-0001/SCENE_ID/multispectral.tif
                                 lidar.las | lidar.laz  (or lidar_ndsm.tif + lidar_<channel>.tif)
                                 labels.tif
"""
from __future__ import annotations

SPAN_PREFIX = "span-"
SPAN_DIGITS = 4
# Relative to the data root: TFX's `{SPAN:4}` placeholder picks the newest span, `*/*` every file of every scene.
SPLIT_PATTERN = f"{SPAN_PREFIX}{{SPAN:{SPAN_DIGITS}}}/*/*"
MULTISPECTRAL_FILE = "multispectral.tif"
LABELS_FILE = "labels.tif"
LAS_FILE = "lidar.las"
LAZ_FILE = "lidar.laz"
POINT_CLOUD_FILES = (LAS_FILE, LAZ_FILE)  # read in this order


def span_folder(span: int) -> str:
    return f"{SPAN_PREFIX}{span:0{SPAN_DIGITS}d}"


def lidar_raster_file(channel: str) -> str:
    """Pre-rasterised LiDAR file of a channel; height is a normalised DSM, hence its conventional name."""
    return "lidar_ndsm.tif" if channel == "height" else f"lidar_{channel}.tif"
