"""`python -m bench.run`: measure speed and quality and write results.md, results.json and the plots.

Sections (issue): ingest (2), pipeline (3), scaling and floor (5), ablations (9), quality (11), predict (12). The
full run trains dozens of models (every size up to 16x the sample; 3 seeds x 12 ablation cells plus a retrained full
model; 3 seeds x 3 stream modes) and takes hours on 2 cores: run it on a quiet machine, where its times mean
something. `--quick` (tiny data, one epoch) only checks the harness. With `--only`, the sections not run are kept
from the out dir's results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from foundation.environment import prepare_tensorflow

prepare_tensorflow()  # `python -m bench.run` is an entry point: the switch goes before TensorFlow loads

from bench import report
from bench.settings import ABLATION_CELL_SETS, SECTIONS, make_settings

OUT_DIR = Path(__file__).resolve().parent


def _multiples(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1 or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"sizes must be increasing positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where results and plots go (default: bench/)")
    parser.add_argument("--seeds", type=int, help="ablation seeds (default 3; 1 with --quick)")
    parser.add_argument("--sizes", type=_multiples,
                        help="data sizes as multiples of the default sample, e.g. 1,4,16 (default; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and one epoch: checks the harness, measures nothing worth reporting")
    parser.add_argument("--ablation-cells", choices=ABLATION_CELL_SETS, default="all",
                        help="all 12 cells (default); essential: what terrafuse ships and the seed project's failure; "
                             "streams: those and the single-stream models with the shipped normalization and weights")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable); sections reuse each other's runs when both run. "
                             "The out dir's other recorded sections are kept, each with the commit it was measured at")
    parser.add_argument("--work-dir", type=Path,
                        help="sample data, pipeline roots and logs (default: a new temporary folder, removed at the "
                             "end unless a section failed)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    return parser


def json_ready(value: Any) -> Any:
    """NaN and infinities become null and numpy scalars Python ones: results.json stays strict JSON."""
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def keep_unrun_sections(results: dict[str, Any], previous: dict[str, Any], selected: list[str]) -> list[str]:
    """Copies into `results` the sections of an earlier record (`previous`) that this run does not measure, each
    stamped with the commit, date and command it was measured with; a record older than those stamps gets its
    top-level ones. Returns the names kept."""
    stamp = {"date": previous["machine"]["date"], "git_commit": previous["machine"]["git_commit"],
             "git_modified_tracked_files": previous["machine"]["git_modified_tracked_files"],
             "command": previous["command"]}
    kept = [name for name in SECTIONS if name not in selected and name in previous]
    for name in kept:
        results[name] = {report.MEASURED_KEY: stamp, **previous[name]}
    return kept


def _previous_record(out_dir: Path, quick: bool) -> dict[str, Any] | None:
    """The out dir's results.json, if it is a record of the same kind (quick or not) as this run."""
    path = out_dir / "results.json"
    if not path.exists():
        return None
    previous = json.loads(path.read_text())
    if previous.get("quick") != quick:
        print(f"bench: {path} is {'a quick' if previous.get('quick') else 'a full'} record: its sections are not "
              "kept beside this run's", flush=True)
        return None
    return previous


def write(results: dict[str, Any], out_dir: Path) -> None:
    """results.json, results.md and the plots, from everything measured so far."""
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["targets"] = report.targets(results)
    (out_dir / "results.json").write_text(json.dumps(json_ready(results), indent=2, allow_nan=False) + "\n")
    (out_dir / "results.md").write_text(report.render(results))
    report.plot(results, out_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench.measure import code_and_date, command, machine  # TFX and TensorFlow load here: `--help` is instant
    from bench.sections import SECTION_FUNCTIONS, Bench

    settings = make_settings(args.seeds, args.sizes, args.quick, args.ablation_cells)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="terrafuse-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench: work folder {work}", flush=True)
    started = time.perf_counter()
    selected = [name for name in SECTIONS if not args.only or name in args.only]
    results: dict[str, Any] = {"command": command(argv), "machine": machine(), "quick": settings.quick,
                               "settings": dataclasses.asdict(settings), "sections_run": selected}
    previous = _previous_record(args.out_dir, settings.quick) if args.only else None
    if previous:  # a partial run must not destroy the record of the sections it does not measure
        results["sections_kept"] = keep_unrun_sections(results, previous, selected)
    bench = Bench(settings, work)
    failed = []
    for name in selected:
        measured = {**code_and_date(), "command": results["command"]}
        try:
            results[name] = SECTION_FUNCTIONS[name](bench)
        except Exception as err:  # the other sections still run and report; this one says why it is empty
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            failed.append(name)
        results[name][report.MEASURED_KEY] = measured
        results["bench_seconds"] = time.perf_counter() - started
        write(results, args.out_dir)  # after every section: a long run stopped later keeps what it measured
    print(f"bench: wrote {args.out_dir / 'results.md'}, results.json and the plots "
          f"in {results['bench_seconds']:.0f} s", flush=True)
    for row in results["targets"]:
        print(f"  {'PASS' if row['passed'] else 'FAIL'}  {row['target']}: {row['measured']}")
    if failed:
        print(f"bench: sections failed: {', '.join(failed)}; work folder kept: {work}", file=sys.stderr)
        return 1
    if not (args.keep_work or args.work_dir):
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
