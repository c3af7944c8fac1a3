"""Peak memory and CPU of ingesting one scene, each scene in a fresh process (issue 13, bounded memory).

The child imports what SceneExampleGen's worker imports, collects the imports' garbage (a full collection owed to
them would otherwise land in the measured work, or not, by chance: 0.26 s of a 2.5 s run), notes its peak resident
memory (VmHWM, bench.measure), then makes every example of the scene as one worker makes them (`read_in_tiles`: the
plan, each point range, each tile, one after the other, a tile's cell sums waiting on disk as in Beam's shuffle and
its examples let go once serialized) and notes the peak again; the parent compares a scene of 16 times the default
scene's pixels with a default scene.

    python -m bench.ingest_memory RESULT_JSON SCENE_DIR [SECTION.KEY=VALUE ...]

The code before tiles runs in bench/ingest_reference.py's child, from its commit's files (`extract_commit`).
"""
from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.measure import REPO, BenchError, peak_rss_mib, run_measured
from foundation.environment import prepare_tensorflow


def ingest_memory(scene_dir: Path, work: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """The child on one scene: patches, seconds, CPU seconds, peak MiB after the imports and at the end."""
    return _child_result(["-m", "bench.ingest_memory"], scene_dir, work, name, overrides)


def _child_result(command: list[str], scene_dir: Path, work: Path, name: str, overrides: list[str],
                  code: Path = REPO) -> dict[str, Any]:
    """`python COMMAND RESULT_JSON SCENE_DIR OVERRIDES...` in a fresh process (packages from `code`), its result."""
    out = work / "jobs" / f"{name}.result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    log = work / "logs" / f"{name}.log"
    measure = run_measured([*command, str(out), str(scene_dir), *overrides], log, code=code)
    if measure.returncode != 0 or not out.exists():
        raise BenchError(f"{name}: {' '.join(command)} exited {measure.returncode}; see {log}")
    return json.loads(out.read_text())


def extract_commit(commit: str, tree: Path) -> Path:
    """The commit's files under `tree`, from this clone's history; once, and whole or not at all (extracted beside
    it, then renamed), so a tree already there is that commit's."""
    if not tree.is_dir():
        archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=False)
        if archive.returncode != 0:
            raise BenchError(f"cannot extract commit {commit} (a clone with its history is needed): "
                             f"{archive.stderr.decode(errors='replace').strip()}")
        partial = tree.with_name(tree.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive.stdout, check=True)
        partial.rename(tree)
    return tree


def reference_ingest(tree: Path, scene_dir: Path, work: Path, name: str, overrides: list[str]) -> dict[str, Any]:
    """bench/ingest_reference.py's child on one scene with the old code of `tree`: patches, seconds, CPU seconds."""
    return _child_result([str(REPO / "bench" / "ingest_reference.py")], scene_dir, work, name, overrides, code=tree)


def child(result: Path, scene_dir: str, overrides: list[str]) -> None:
    prepare_tensorflow()
    from components.patches import encode_examples
    from components.scene_example_gen import read_in_tiles
    from foundation.config import load_config

    config = load_config(None, overrides)
    gc.collect()
    after_imports = peak_rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    patches = 0

    def encode(tile) -> None:
        nonlocal patches
        patches += len(encode_examples(tile.rasters, tile.rows, tile.cols, config))

    read_in_tiles(scene_dir, config, encode)
    result.write_text(json.dumps({
        "scene": scene_dir, "patches": patches,
        "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mib_after_imports": after_imports, "peak_rss_mib": peak_rss_mib(),
    }, indent=1))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    child(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
