"""`terrafuse`: run the pipeline, make sample scenes, write the curated schema, summarise a run, and compile, run or
schedule the pipeline on Kubeflow Pipelines.

Heavy imports (TensorFlow, TFX, kfp) happen inside the commands that need them, so `terrafuse --help` is instant.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from foundation.config import Config, ConfigError, load_config
from foundation.environment import prepare_tensorflow
from foundation.scene_folder import SPAN_PREFIX
from pipeline import kfp_client, kfp_compile


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config",
                        help="YAML or JSON file overriding the defaults (sections as in foundation/config.py)")
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
    return any(p.is_dir() for p in Path(data_root).glob(f"{SPAN_PREFIX}*"))


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


def kubeflow_command(command: Callable[[argparse.Namespace, Config], int]) -> Callable[[argparse.Namespace], int]:
    """A `terrafuse kubeflow ...` command: a refusal of the spec, the cron or the server is an error line, exit 2."""

    def run(args: argparse.Namespace) -> int:
        config = _config(args)
        try:
            return command(args, config)
        except kfp_client.KubeflowError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


def cmd_kubeflow_compile(args: argparse.Namespace, config: Config) -> int:
    started = time.perf_counter()
    spec_file = kfp_compile.compile_pipeline(config)
    print(f"Wrote {spec_file} ({spec_file.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - started:.1f} s) "
          f"for image {config.kubeflow.image}; pipeline root {kfp_compile.cluster_paths(config).pipeline_root}")
    return 0


def cmd_kubeflow_submit(args: argparse.Namespace, config: Config) -> int:
    print(f"Run {kfp_client.submit(config, args.host, check_data=not args.no_data_check)} started")
    return 0


def cmd_kubeflow_schedule(args: argparse.Namespace, config: Config) -> int:
    if args.list:
        for entry in kfp_client.list_schedules(config, args.host):
            state = "enabled " if entry.enabled else "disabled"
            print(f"{entry.recurring_run_id}  {state}  {entry.cron}  {entry.name}")
        return 0
    if args.disable:
        kfp_client.disable_schedule(config, args.host, args.disable)
        print(f"Recurring run {args.disable} disabled")
        return 0
    recurring_run_id = kfp_client.schedule(config, args.host, args.cron, check_data=not args.no_data_check)
    print(f"Recurring run {recurring_run_id} created ({args.cron or config.kubeflow.cron})")
    return 0


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

    kubeflow = commands.add_parser("kubeflow", help="compile the pipeline for Kubeflow Pipelines, run or schedule it")
    kubeflow_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True)
    for name, help_text, command in (
            ("compile", "write the KFP pipeline spec (kubeflow.spec_file) for kubeflow.image", cmd_kubeflow_compile),
            ("submit", "start one run of the compiled spec", cmd_kubeflow_submit),
            ("schedule", "create, list or disable recurring runs of the compiled spec", cmd_kubeflow_schedule)):
        parser_of_command = kubeflow_commands.add_parser(name, help=help_text)
        _config_arguments(parser_of_command)
        parser_of_command.set_defaults(func=kubeflow_command(command))
    submit, schedule = kubeflow_commands.choices["submit"], kubeflow_commands.choices["schedule"]
    for command_parser in (submit, schedule):
        command_parser.add_argument("--host", help="KFP API endpoint (default: kubeflow.host)")
        command_parser.add_argument("--no-data-check", action="store_true",
                                    help="do not look for spans under the data root (it is mounted only in the "
                                         "cluster)")
    schedule.add_argument("--cron", help=f"default: kubeflow.cron; {kfp_client.CRON_HELP}")
    what = schedule.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the recurring runs of kubeflow.experiment")
    what.add_argument("--disable", metavar="ID", help="disable the recurring run with this id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
