"""`terrafuse`: run the pipeline, make sample scenes, write the curated schema, summarise a run.

Heavy imports (TensorFlow, TFX) happen inside the commands that need them, so `terrafuse --help` is instant.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from foundation.config import Config, ConfigError, load_config
from foundation.environment import prepare_tensorflow
from pipeline.kubeflow import register_cli as register_kubeflow_cli


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON file overriding the defaults (sections as in foundation/config.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set model.epochs=5 (repeatable)")
    parser.add_argument("--data-root", help="folder of span-NNNN/SCENE/ folders (run.data_root)")
    parser.add_argument("--pipeline-root", help="where artifacts, metadata and the serving dir go (run.pipeline_root)")


def _config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"run.data_root={args.data_root}")
    if args.pipeline_root:
        overrides.append(f"run.pipeline_root={args.pipeline_root}")
    return load_config(args.config, overrides)


def has_spans(data_root: str) -> bool:
    return any(p.is_dir() and p.name.startswith("span-") for p in Path(data_root).glob("span-*"))


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)
    if not has_spans(config.run.data_root):
        if not args.generate_sample_if_missing:
            print(f"error: {config.run.data_root}: no span-NNNN folders (make sample scenes with "
                  f"`terrafuse sample-scenes --out {config.run.data_root}`)", file=sys.stderr)
            return 2
        from synth.scenes import generate_sample

        print(f"Generating sample scenes in {config.run.data_root} ...")
        generate_sample(config.run.data_root, config)
    from pipeline.local import run_local

    return 0 if run_local(config) else 1


def cmd_sample_scenes(args: argparse.Namespace) -> int:
    from synth.scenes import generate_sample

    config = _config(args)
    scenes = generate_sample(args.out, config, spans=args.spans, scenes_per_span=args.scenes, size=args.size,
                             seed=args.seed, shifted_span=args.shifted_span)
    print(f"Wrote {len(scenes)} scenes under {args.out}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from schemas.curated import write_schema

    print(f"Wrote {write_schema(_config(args), args.out)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.summary import last_run, render

    config = _config(args)
    print(render(config, last_run(config)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.run import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terrafuse", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show TFX and Beam logs")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole pipeline locally (LocalDagRunner, Beam DirectRunner)")
    _config_arguments(run)
    run.add_argument("--generate-sample-if-missing", action="store_true",
                     help="write the sample scenes into the data root first if it has no spans")
    run.set_defaults(func=cmd_run)

    sample = commands.add_parser("sample-scenes", help="write synthetic multispectral + LiDAR + label scenes")
    _config_arguments(sample)
    sample.add_argument("--out", required=True, help="data root to write span-NNNN/SCENE/ folders into")
    sample.add_argument("--spans", type=int, default=1)
    sample.add_argument("--scenes", type=int, default=4, help="scenes per span")
    sample.add_argument("--size", type=int, default=160, help="scene side in pixels (1 m)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--shifted-span", type=int, help="give this span a shifted label distribution")
    sample.set_defaults(func=cmd_sample_scenes)

    schema = commands.add_parser("schema", help="write the curated schema for a configuration")
    _config_arguments(schema)
    schema.add_argument("--out", required=True)
    schema.set_defaults(func=cmd_schema)

    report = commands.add_parser("report", help="summarise the last run recorded under the pipeline root")
    _config_arguments(report)
    report.set_defaults(func=cmd_report)

    bench = commands.add_parser("bench", add_help=False,
                                help="measure speed, scaling and the ablations into bench/results.md "
                                     "(options: terrafuse bench --help)")
    bench.set_defaults(func=cmd_bench)  # its options are bench.run's: main() hands them over unparsed

    register_kubeflow_cli(commands, _config_arguments, _config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unparsed = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = unparsed
    elif unparsed:
        parser.error(f"unrecognized arguments: {' '.join(unparsed)}")
    # TFX and Beam parse sys.argv with absl flags: ours (e.g. -v) must not reach them.
    sys.argv = sys.argv[:1]
    prepare_tensorflow()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if args.verbose else "3")
    if not args.verbose:  # TFX pip-installs the user-code wheels in a subprocess on every Transform and Trainer run
        os.environ.setdefault("PIP_QUIET", "1")
    # google-api-core warns on every import that Python 3.10 is old; TFX 1.16 installs on 3.10 only.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
