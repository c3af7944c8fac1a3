"""`terrafuse`: run the pipeline, map scenes with its model, report on a run, run it on Kubeflow Pipelines.

Also: sample scenes and the curated schema for a configuration.

Heavy imports (TensorFlow, TFX, kfp) happen inside the commands that need them, so `terrafuse --help` is instant.
Each command takes only the options it uses; `-v` goes before or after the command name.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from foundation.config import Config, ConfigError, RunConfig, load_config
from foundation.environment import prepare_tensorflow
from foundation.scene_folder import SPAN_PREFIX
from pipeline import kfp_client, kfp_compile


PACKAGE = "terrafuse"  # the distribution setup.py names: its metadata holds the version


def version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: `make venv` installs it)"


def _verbose_argument(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show TFX and Beam logs, and the traceback of a failure")


def _config_arguments(parser: argparse.ArgumentParser, roots: bool = True) -> None:
    """--config and --set; with `roots`, also --data-root and --pipeline-root (for the commands that run the DAG)."""
    parser.add_argument("--config",
                        help="YAML or JSON file overriding the defaults (sections as in foundation/config.py)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting, e.g. --set model.epochs=5 (repeatable)")
    if roots:
        parser.add_argument("--data-root", help="folder of span-NNNN/SCENE/ folders (run.data_root)")
        parser.add_argument("--pipeline-root",
                            help="where artifacts, metadata and the serving dir go (run.pipeline_root)")


def _config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "data_root", None):
        overrides.append(f"run.data_root={args.data_root}")
    if getattr(args, "pipeline_root", None):
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
    from pipeline.report import write_report
    from pipeline.summary import run_ids

    earlier_runs = run_ids(config)
    ok = run_local(config)
    started = [run_id for run_id in run_ids(config) if run_id not in earlier_runs]
    if started:  # none when the run stopped before it began (e.g. the config and the schema disagree)
        print(f"Report: {write_report(config.run.pipeline_root, run_id=started[-1])}")
    return 0 if ok else 1


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
    """The run's own recorded config, not this command line's, decides class names, floors and limits."""
    if args.html:
        from pipeline.report import write_report

        print(f"Wrote {write_report(args.pipeline_root, args.html, args.run)}")
        return 0
    from pipeline.report import read_run
    from pipeline.summary import render

    record = read_run(args.pipeline_root, args.run)
    print(render(record.config, record.runs))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.predict import predict_scenes, scene_dirs_of_span

    scenes = args.scenes or scene_dirs_of_span(args.data_root, args.span)
    tiles = {"tile_size": args.tile_size} if args.tile_size is not None else {}
    predict_scenes(args.model, scenes, args.out, probabilities=args.probabilities, **tiles)
    return 0


def kubeflow_command(command: Callable[[argparse.Namespace, Config], int]) -> Callable[[argparse.Namespace], int]:
    """A `terrafuse kubeflow ...` command on the config its options give."""
    return lambda args: command(args, _config(args))


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _verbose_argument(parser, default=False)
    # After a command name too; SUPPRESS keeps a -v given before it when none follows.
    verbose = argparse.ArgumentParser(add_help=False)
    _verbose_argument(verbose, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, within=commands) -> argparse.ArgumentParser:
        return within.add_parser(name, help=help_text, description=help_text, parents=[verbose])

    run = command("run", "run the whole pipeline locally (LocalDagRunner, the Beam runner of run.beam_runner), then write the "
                         "run's page under the pipeline root and print its path")
    _config_arguments(run)
    run.add_argument("--generate-sample-if-missing", action="store_true",
                     help="write the sample scenes into the data root first if it has no spans")
    run.set_defaults(func=cmd_run)

    predict = command("predict", "map scenes with a published model: a class map per scene (Cloud-Optimized "
                                 "GeoTIFF), and per-class recall where the scene has labels")
    predict.add_argument("--model", required=True,
                         help="a serving dir (its newest version maps) or one exported SavedModel folder")
    which = predict.add_mutually_exclusive_group(required=True)
    which.add_argument("--scene", dest="scenes", action="append", metavar="DIR",
                       help="a scene folder in the input contract, labels.tif optional (repeatable)")
    which.add_argument("--data-root", help="map every scene of --span under this data root")
    predict.add_argument("--span", type=int, help="with --data-root: the span to map")
    predict.add_argument("--out", required=True, help="folder for the maps (and recall JSONs)")
    predict.add_argument("--tile-size", type=int,
                         help="centre pixels per tile side (default: DEFAULT_TILE_SIZE in pipeline/predict.py): "
                              "memory grows with its square; the map does not depend on it")
    predict.add_argument("--probabilities", action="store_true",
                         help="also write the confidence and per-class probabilities")
    predict.set_defaults(func=cmd_predict)

    report = command("report", "summarise a run recorded under the pipeline root, under the run's own config; "
                               "with --html, write its page")
    report.add_argument("--pipeline-root", default=RunConfig.pipeline_root,
                        help="the pipeline root the run used (default: %(default)s)")
    report.add_argument("--run", help="the run id (default: the newest run)")
    report.add_argument("--html", metavar="FILE", help="write the run's self-contained HTML page to FILE")
    report.set_defaults(func=cmd_report)

    sample = command("sample-scenes", "write synthetic multispectral + LiDAR + label scenes")
    _config_arguments(sample, roots=False)
    sample.add_argument("--out", required=True, help="data root to write span-NNNN/SCENE/ folders into")
    sample.add_argument("--spans", type=int, default=1)
    sample.add_argument("--scenes", type=int, default=4, help="scenes per span")
    sample.add_argument("--size", type=int, default=160, help="scene side in pixels (1 m)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--shifted-span", type=int, help="give this span a shifted label distribution")
    sample.set_defaults(func=cmd_sample_scenes)

    schema = command("schema", "write the curated schema for a configuration")
    _config_arguments(schema, roots=False)
    schema.add_argument("--out", required=True)
    schema.set_defaults(func=cmd_schema)

    kubeflow = command("kubeflow", "compile the pipeline for Kubeflow Pipelines, run or schedule it")
    kubeflow_commands = kubeflow.add_subparsers(dest="kubeflow_command", required=True)
    for name, help_text, run_command in (
            ("compile", "write the KFP pipeline spec (kubeflow.spec_file) for kubeflow.image", cmd_kubeflow_compile),
            ("submit", "start one run of the compiled spec", cmd_kubeflow_submit),
            ("schedule", "create, list or disable recurring runs of the compiled spec", cmd_kubeflow_schedule)):
        parser_of_command = command(name, help_text, kubeflow_commands)
        _config_arguments(parser_of_command)
        parser_of_command.set_defaults(func=kubeflow_command(run_command))
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


def _failures() -> tuple[type[Exception], ...]:
    """The errors a command reports as one line (their messages name the file or setting and the problem); the
    modules defining them are loaded only if the command loaded them."""
    found: list[type[Exception]] = [ConfigError, kfp_client.KubeflowError]
    for module, name in (("pipeline.predict", "PredictError"), ("components.scenes", "SceneError")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "predict" and args.data_root and args.span is None:
        parser.error("predict --data-root needs --span")
    # TFX and Beam parse sys.argv with absl flags: ours (e.g. -v) must not reach them.
    sys.argv = sys.argv[:1]
    prepare_tensorflow()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if args.verbose else "3")
    # google-api-core warns on every import that Python 3.10 is old; TFX 1.16 installs on 3.10 only.
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as err:
        if not isinstance(err, _failures()):
            raise
        print(f"error: {err}", file=sys.stderr)
        logging.info("Traceback of the error:", exc_info=True)  # shown with -v
        return 2


if __name__ == "__main__":
    sys.exit(main())
