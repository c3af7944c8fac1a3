"""Sample labelled pixels of an aligned scene, cut P x P patches around them and serialize tf.Examples
(in the wire format components.example_wire writes)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import minimum_filter

from components.example_wire import bytes_entry, float_entries, int64_entry, serialize_examples
from components.scenes import SceneRasters
from foundation.config import Config
from transforms.features import BLOCK_ID, COL, LABEL, ROW, SCENE_ID, layout

# Patches are cut and laid out in chunks: the buffers stay a few MB whatever the number of examples.
_EXAMPLES_PER_CHUNK = 2048


def window_valid(valid: np.ndarray, patch_size: int, outside_valid: bool = False) -> np.ndarray:
    """Pixels whose P x P window is valid at every pixel. With `outside_valid`, pixels beyond the raster's
    edge count as valid (to tell what a stream masked from what the edge did); without, they do not."""
    window = minimum_filter(np.ascontiguousarray(valid).view(np.uint8), size=patch_size, mode="constant",
                            cval=int(outside_valid))
    return window.view(bool)


def sample_pixels(labels: np.ndarray, valid: np.ndarray, config: Config,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pixels to cut patches around, at most config.ingest.max_per_class per class (0 = all).

    Only pixels whose whole P x P window is `valid` (every stream observed there) qualify, and windows that
    would reach beyond the raster's edge are skipped rather than padded: every value in a patch is an
    observation, so the model never learns from fabricated borders or filled gaps. Rows and columns come
    back in row-major order; the draw depends only on `rng`, so a seeded generator repeats it.
    """
    width = labels.shape[1]
    flat = np.flatnonzero(window_valid(valid, config.ingest.patch_size) & (labels != 0))
    flat_labels = labels.ravel()[flat]
    cap = config.ingest.max_per_class
    chosen = []
    for class_id in config.class_ids:
        of_class = flat[flat_labels == class_id]
        if cap and of_class.size > cap:
            of_class = rng.choice(of_class, size=cap, replace=False)
        chosen.append(of_class)
    return np.divmod(np.sort(np.concatenate(chosen)), width)


def extract_patches(stack: np.ndarray, rows: np.ndarray, cols: np.ndarray, patch_size: int) -> np.ndarray:
    """(N, C, P*P) float32 patches of a (C, H, W) stack centred on (rows, cols), row-major within a patch."""
    half = patch_size // 2
    _, height, width = stack.shape
    rows = np.asarray(rows, np.intp)
    cols = np.asarray(cols, np.intp)
    if rows.size and (rows.min() < half or rows.max() >= height - half
                      or cols.min() < half or cols.max() >= width - half):
        raise ValueError(f"patch centres must lie at least {half} pixels inside the {height}x{width} raster")
    if not rows.size:
        return np.empty((0, stack.shape[0], patch_size * patch_size), np.float32)
    windows = sliding_window_view(np.moveaxis(stack, 0, -1), (patch_size, patch_size), axis=(0, 1))
    patches = windows[rows - half, cols - half]
    return patches.reshape(len(rows), stack.shape[0], patch_size * patch_size).astype(np.float32, copy=False)


def block_ids(scene_id: str, rows: np.ndarray, cols: np.ndarray, block_size: int) -> list[bytes]:
    """Spatial tile of each pixel: the unit the split deals to train, validation and test."""
    prefix = scene_id.encode()
    return [_block_id(prefix, r, c)
            for r, c in zip((np.asarray(rows) // block_size).tolist(), (np.asarray(cols) // block_size).tolist())]


def _block_id(scene_prefix: bytes, block_row: int, block_col: int) -> bytes:
    return b"%s/%d_%d" % (scene_prefix, block_row, block_col)


def window_block_ids(scene_id: str, rows: np.ndarray, cols: np.ndarray, block_size: int,
                     patch_size: int) -> list[tuple[bytes, ...]]:
    """Per patch, the distinct blocks its window touches, the centre's first: up to four, as a block is at
    least a window wide. A patch may be kept only where all of them share one split."""
    half = patch_size // 2
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    block_row, block_col = rows // block_size, cols // block_size
    # Whether the window reaches the block above, below, left, right: with the centre's block, one code.
    reaches = np.stack([(rows - half) // block_size < block_row, (rows + half) // block_size > block_row,
                        (cols - half) // block_size < block_col, (cols + half) // block_size > block_col])
    flags = (reaches * np.array([[1], [2], [4], [8]])).sum(axis=0)
    codes = ((block_row * (block_col.max(initial=0) + 1) + block_col) << 4) | flags
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    prefix = scene_id.encode()
    keys = []
    for i in first.tolist():
        centre_row, centre_col = int(block_row[i]), int(block_col[i])
        up, down, left, right = reaches[:, i].tolist()
        touched_rows = [centre_row] + [centre_row - 1] * up + [centre_row + 1] * down
        touched_cols = [centre_col] + [centre_col - 1] * left + [centre_col + 1] * right
        keys.append(tuple(_block_id(prefix, r, c) for r in touched_rows for c in touched_cols))
    return [keys[i] for i in inverse.tolist()]


def neighbour_block_ids(block: bytes) -> list[bytes]:
    """The block and the eight around it: every block a window centred in `block` can touch (a block is at least
    a window wide), so the only splits the buffer check of its patches needs."""
    prefix, _, position = block.rpartition(b"/")
    row, col = map(int, position.split(b"_"))
    return [_block_id(prefix, row + dr, col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)]


def encode_examples(rasters: SceneRasters, rows: np.ndarray, cols: np.ndarray, config: Config) -> list[bytes]:
    """Serialized tf.train.Examples, one per (row, col) of the rasters' arrays: a patch per band and LiDAR channel
    plus metadata (row, col and block on the scene's grid)."""
    lay = layout(config)
    stack = np.concatenate([rasters.multispectral, rasters.lidar])
    if stack.shape[0] != len(lay.stream_features):
        raise ValueError(f"scene {rasters.scene_id}: {stack.shape[0]} bands and channels, the feature layout "
                         f"has {len(lay.stream_features)}: {', '.join(lay.stream_features)}")
    rows = np.asarray(rows, np.intp)
    cols = np.asarray(cols, np.intp)
    tails = _metadata_entries(rasters, rows, cols, config)
    serialized = []
    for start in range(0, rows.size, _EXAMPLES_PER_CHUNK):
        chunk = slice(start, start + _EXAMPLES_PER_CHUNK)
        patches = extract_patches(stack, rows[chunk], cols[chunk], lay.patch_size)
        serialized += serialize_examples(float_entries(lay.stream_features, patches), tails[chunk])
    return serialized


def _metadata_entries(rasters: SceneRasters, rows: np.ndarray, cols: np.ndarray, config: Config) -> list[bytes]:
    """Per example, the map entries of label, scene id, block id, row and col (on the scene's grid); each distinct
    value is encoded once and picked by index."""
    labels = rasters.labels[rows, cols]
    rows, cols = rows + rasters.origin[0], cols + rasters.origin[1]
    block_rows, block_cols = rows // config.ingest.block_size, cols // config.ingest.block_size
    width = int(block_cols.max(initial=0)) + 1
    prefix = rasters.scene_id.encode()
    scene_entry = bytes_entry(SCENE_ID, prefix)
    columns = (
        _entries(labels, lambda label: int64_entry(LABEL, label)),
        _entries(block_rows * width + block_cols,
                 lambda code: bytes_entry(BLOCK_ID, _block_id(prefix, *divmod(code, width)))),
        _entries(rows, lambda row: int64_entry(ROW, row)),
        _entries(cols, lambda col: int64_entry(COL, col)),
    )
    return [b"".join((label, scene_entry, block, row, col)) for label, block, row, col in zip(*columns)]


def _entries(values: np.ndarray, entry) -> np.ndarray:
    """entry(value) of each value, computed once per distinct value (an object array, one item per value)."""
    distinct, index = np.unique(values, return_inverse=True)
    return np.array([entry(value) for value in distinct.tolist()], dtype=object)[index]
