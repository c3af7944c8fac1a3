"""Peak memory and CPU of ingesting one scene, each scene in a fresh process (issue 13, bounded memory).

The child imports what SceneExampleGen's worker imports, notes its peak resident memory (VmHWM, bench.measure),
then makes every example of the scene (`ingest_scene`: the plan, each point range, each tile, one after the other
as one worker would, a tile's cell sums waiting on disk as in Beam's shuffle) and notes the peak again; the parent
compares a scene of 16 times the default scene's pixels with a default scene.

    python -m bench.ingest_memory RESULT_JSON SCENE_DIR [SECTION.KEY=VALUE ...]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import BenchError, peak_rss_mib, run_measured
from foundation.environment import prepare_tensorflow


def ingest_memory(scene_dir: Path, work: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """The child on one scene: patches, seconds, CPU seconds, peak MiB after the imports and at the end."""
    out = work / "jobs" / f"{name}.result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    log = work / "logs" / f"{name}.log"
    measure = run_measured(["-m", "bench.ingest_memory", str(out), str(scene_dir), *overrides], log)
    if measure.returncode != 0 or not out.exists():
        raise BenchError(f"{name}: ingest_memory exited {measure.returncode}; see {log}")
    return json.loads(out.read_text())


def child(result: Path, scene_dir: str, overrides: list[str]) -> None:
    prepare_tensorflow()
    from components.scene_example_gen import ingest_scene
    from foundation.config import load_config

    config = load_config(None, overrides)
    after_imports = peak_rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    examples = ingest_scene(scene_dir, config, str(Path(scene_dir).parent))
    result.write_text(json.dumps({
        "scene": scene_dir, "patches": len(examples.serialized),
        "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mib_after_imports": after_imports, "peak_rss_mib": peak_rss_mib(),
    }, indent=1))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    child(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
