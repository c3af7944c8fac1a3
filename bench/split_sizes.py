"""What SceneExampleGen's split hands between workers, per element, on a sample of a given size (issue 14).

Runs ingestion's own functions in one process, no pipeline: `scene_examples` per scene, then the elements the
pipeline builds from them (components/scene_example_gen.py, `GenerateExamplesByBeam`): the scene summaries list
(the one global step, `CheckScenes`), the groups of blocks (`GroupUnits`, at the configured
`ingest.split_group_units`) and the join per block (`JoinSplits`: the splits of the 9 blocks around one block and
the serialized examples centred in it). Sizes are Beam's own encoding of each element (FastPrimitivesCoder, what
the runner ships between workers), plus tracemalloc of an unpickled copy for what a worker holds. Also times
`assign_blocks` on one synthetic group of `--group-blocks` blocks, the per-group work at 10^8 patches.

    python -m bench.split_sizes --scenes 64 --side 160 --json sizes.json
"""
from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from apache_beam.coders import coders

from components.scene_example_gen import (assign_in_groups, buffer_units, group_count, merge_block_counts,
                                          scene_examples, unit_group)
from components.scenes import scene_dirs
from foundation.config import Config
from foundation.scene_folder import span_folder
from synth.scenes import generate_sample

_CODER = coders.FastPrimitivesCoder()


def encoded(value: Any) -> int:
    return len(_CODER.encode(value))


def held(value: Any) -> int:
    """Bytes a worker holds for `value` once decoded: tracemalloc around unpickling a copy."""
    data = pickle.dumps(value)
    tracemalloc.start()
    copy = pickle.loads(data)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del copy
    return size


def measure(data_root: Path, config: Config) -> dict[str, Any]:
    summaries, unit_counts, by_block = [], [], defaultdict(list)
    patches = 0
    for folder in scene_dirs((data_root / span_folder(1)).glob("*/*")):
        examples = scene_examples(folder, config)
        summaries.append(examples.summary)
        unit_counts.append(examples.unit_counts)
        patches += len(examples.serialized)
        for (_, label, units), serialized in zip(examples.keys, examples.serialized):
            by_block[units[0]].append((label, units, serialized))
    blocks = merge_block_counts(unit_counts)
    fractions = [0.6, 0.2, 0.2]
    started = time.perf_counter()
    assignment = assign_in_groups(blocks, fractions, config.ingest.split_group_units)
    plan_seconds = time.perf_counter() - started
    groups = group_count(len(blocks), config.ingest.split_group_units)
    grouped: dict[int, list] = defaultdict(list)
    for block, counts in blocks.items():
        grouped[unit_group(block, groups)].append((block, counts))
    largest_group = max(grouped.values(), key=len)
    joins = []
    for block, examples in by_block.items():
        around = [(unit, assignment[unit]) for unit in buffer_units(block, config.ingest.split_by) if unit in assignment]
        joins.append((encoded((block, {"splits": around, "examples": examples})), len(examples)))
    largest_join = max(joins)
    return {
        "scenes": len(summaries), "patches": patches, "blocks": len(blocks), "patches_per_block": patches / len(blocks),
        "summaries_encoded": encoded(summaries), "summaries_held": held(summaries),
        "summary_encoded_per_scene": encoded(summaries) / len(summaries),
        "groups": groups, "largest_group_blocks": len(largest_group),
        "largest_group_encoded": encoded(largest_group), "largest_group_held": held(largest_group),
        "group_encoded_per_block": encoded(largest_group) / len(largest_group),
        "group_held_per_block": held(largest_group) / len(largest_group),
        "largest_join_encoded": largest_join[0], "largest_join_patches": largest_join[1],
        "plan_seconds": plan_seconds,
    }


def time_group(blocks: int, classes: int, seed: int = 0) -> float:
    """Seconds of assign_blocks on one group of `blocks` blocks of one patch each (random classes)."""
    rng = np.random.default_rng(seed)
    counts = {}
    for i, label in enumerate(rng.integers(0, classes, blocks).tolist()):
        block = np.zeros(classes, np.int64)
        block[label] = 1
        counts[b"scene-%05d/%d_%d" % (i // 10_000, (i % 10_000) // 100, i % 100)] = block
    started = time.perf_counter()
    assign_in_groups(counts, [0.6, 0.2, 0.2], blocks)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--side", type=int, default=160)
    parser.add_argument("--group-blocks", type=int, default=Config().ingest.split_group_units)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = Config()
    with tempfile.TemporaryDirectory() as work:
        generate_sample(work, config, spans=1, scenes_per_span=args.scenes, size=args.side)
        result = measure(Path(work), config)
    result["synthetic_group_blocks"] = args.group_blocks
    result["synthetic_group_seconds"] = time_group(args.group_blocks, len(config.class_ids))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
