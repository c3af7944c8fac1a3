"""The child that measures the code before tiles (bench.settings.INGEST_BEFORE_COMMIT) on one scene, in a fresh
process: issue 13's "no less than today's patches/s per core", measured on the same machine, at the same time and on
the same scene as the tiled code's child (bench.ingest_memory, which also holds the parent's side).

The parent runs this file with that commit's tree first on PYTHONPATH, so `components` and `foundation` are the
old code's: it imports nothing of the bench and only what that commit has (whole-scene `scene_examples`). The span
measured matches bench.ingest_memory's child: after the imports and a garbage collection, every example made and
serialized.

    PYTHONPATH=TREE python bench/ingest_reference.py RESULT_JSON SCENE_DIR [SECTION.KEY=VALUE ...]
"""
from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path


def child(result: Path, scene_dir: str, overrides: list[str]) -> None:
    from foundation.environment import prepare_tensorflow

    prepare_tensorflow()
    from components.scene_example_gen import scene_examples
    from foundation.config import load_config

    config = load_config(None, overrides)
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    patches = len(scene_examples(scene_dir, config).serialized)
    result.write_text(json.dumps({
        "scene": scene_dir, "patches": patches,
        "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
    }, indent=1))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    child(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
