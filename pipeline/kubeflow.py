"""Kubeflow Pipelines: the one DAG (`pipeline.dag.create_pipeline`) compiled by KubeflowV2DagRunner into a KFP
pipeline spec, then run, scheduled and unscheduled through the kfp client.

Everything a request depends on is checked before anything is sent: the cron, the spec's image against the
config, the data root's spans, the host's reachability. Authentication is the kfp client's own (in-cluster
service account token, kube config, `existing_token=` / `credentials=` in `client_options`, the KF_PIPELINES_*
environment variables); nothing secret is written into the spec. TFX and kfp load inside the functions, so the
CLI stays quick to start. See docs/kubeflow.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import posixpath
import re
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from foundation.config import PROJECT_DIR, Config, ConfigError

# Where the Dockerfile installs the project: the curated schema's path inside the image starts here.
IMAGE_PROJECT_DIR = "/opt/terrafuse"
# Spec 2.1: with 2.0 the file-based ExampleGen executor ignores the span its pre-cache-check driver resolved
# (docs/kubeflow.md, "Spec schema").
USE_PIPELINE_SPEC_2_1 = True
SPEC_SUFFIXES = (".yaml", ".yml")  # the kfp client rejects .json; KubeflowV2DagRunner writes a Vertex job there
CRON_FIELDS = (
    ("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23),
    ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6),
)
CRON_NAMES = {
    "month": {n: i for i, n in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)},
    "day of week": {n: i for i, n in enumerate("SUN MON TUE WED THU FRI SAT".split())},
}
CRON_HELP = ("a KFP cron has six fields, seconds first: SECOND MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK, "
             "e.g. '0 0 3 * * *' runs daily at 03:00:00")
_SPAN_PLACEHOLDER = re.compile(r"\{(SPAN|VERSION)(:\d+)?\}")


class KubeflowError(RuntimeError):
    """A compile, submit or schedule that cannot go ahead; the message says what to fix."""


@dataclass(frozen=True)
class ClusterPaths:
    """Paths as the cluster's containers see them."""

    pipeline_root: str
    data_root: str
    serving_dir: str


@dataclass(frozen=True)
class Schedule:
    recurring_run_id: str
    name: str
    cron: str
    enabled: bool


def cluster_paths(config: Config) -> ClusterPaths:
    """kubeflow.* paths, else run.*; relative paths mean nothing inside a container, so they are refused."""
    kubeflow, run = config.kubeflow, config.run
    pipeline_root = _cluster_path("kubeflow.pipeline_root", kubeflow.pipeline_root or run.pipeline_root)
    data_root = _cluster_path("kubeflow.data_root", kubeflow.data_root or run.data_root)
    serving_dir = kubeflow.serving_dir or run.serving_dir or posixpath.join(pipeline_root, "serving")
    if "://" in serving_dir or not posixpath.isabs(serving_dir):
        raise ConfigError(f"kubeflow.serving_dir is {serving_dir!r}: it must be an absolute POSIX path (a volume "
                          f"the containers mount), since the pusher publishes a version by renaming a folder")
    return ClusterPaths(pipeline_root, data_root, serving_dir)


def _cluster_path(key: str, value: str) -> str:
    if "://" in value or posixpath.isabs(value):
        return value.rstrip("/")
    raise ConfigError(f"{key} (or its run.* fallback) is {value!r}: the cluster needs a URI such as "
                      f"gs://bucket/terrafuse or an absolute path its containers mount")


def compile_pipeline(config: Config, project_dir_in_image: str = IMAGE_PROJECT_DIR) -> Path:
    """Compiles create_pipeline for the cluster into config.kubeflow.spec_file (a KFP PipelineSpec YAML).

    The user-code wheels of Transform and Trainer are built now, into <pipeline root>/_wheels: the cluster
    must be able to read that folder at run time. `project_dir_in_image` is where the image holds this project
    (the tests' launcher runs in this checkout and passes PROJECT_DIR).
    """
    spec_file = Path(config.kubeflow.spec_file)
    if spec_file.suffix not in SPEC_SUFFIXES:
        raise ConfigError(f"kubeflow.spec_file {str(spec_file)!r} must end in .yaml: the kfp client rejects .json "
                          f"packages, and for .json KubeflowV2DagRunner writes a Vertex PipelineJob instead")
    paths = cluster_paths(config)
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as runner

    from pipeline.dag import create_pipeline

    cluster_config = config.replace({"run.pipeline_root": paths.pipeline_root, "run.data_root": paths.data_root,
                                     "run.serving_dir": paths.serving_dir})
    pipeline = create_pipeline(cluster_config)
    _schema_file_in_image(pipeline, project_dir_in_image)
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    runner.KubeflowV2DagRunner(
        runner.KubeflowV2DagRunnerConfig(default_image=config.kubeflow.image,
                                         use_pipeline_spec_2_1=USE_PIPELINE_SPEC_2_1),
        output_dir=str(spec_file.parent),
        output_filename=spec_file.name,
    ).run(pipeline)
    _ingest_every_run(spec_file, pipeline)
    return spec_file


def _ingest_every_run(spec_file: Path, pipeline: Any) -> None:
    """Switches KFP's cache off for the file-based ExampleGen tasks.

    The open-source KFP backend does not run the spec's pre-cache check (TFX's span-resolving driver), so the
    ExampleGen's cache key (its parameters) would never change with new data and every run would reuse the
    first span. Uncached, it resolves the newest span itself (components/scene_example_gen.py) and, when
    nothing new came, the Trainer reuses the serving model instead of training (models/trainer.py).
    """
    import yaml
    from tfx.types.standard_component_specs import INPUT_BASE_KEY

    spec = yaml.safe_load(spec_file.read_text())
    for component in pipeline.components:
        if INPUT_BASE_KEY in component.exec_properties:
            spec["root"]["dag"]["tasks"][component.id]["cachingOptions"] = {}  # enableCache false, as KFP writes it
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))


def _schema_file_in_image(pipeline: Any, project_dir_in_image: str) -> None:
    """The curated schema is a file of this checkout: point ImportSchemaGen at the same file inside the image."""
    from tfx.types.standard_component_specs import SCHEMA_FILE_KEY

    for component in pipeline.components:
        path = component.exec_properties.get(SCHEMA_FILE_KEY)
        if not isinstance(path, str) or "://" in path:
            continue
        relative = Path(os.path.relpath(path, PROJECT_DIR))
        if relative.parts[0] == os.pardir:
            raise ConfigError(f"run.schema_file {path} is outside the project, so the image does not hold it: put "
                              f"it under {PROJECT_DIR / 'schemas'} (built into the image) or on a bucket (gs://...)")
        component.exec_properties[SCHEMA_FILE_KEY] = posixpath.join(project_dir_in_image, *relative.parts)


def load_spec(config: Config) -> dict[str, Any]:
    """The compiled spec named by config.kubeflow.spec_file, as a dict."""
    import yaml

    spec_file = Path(config.kubeflow.spec_file)
    if not spec_file.is_file():
        raise KubeflowError(f"{spec_file}: no compiled spec; run `terrafuse kubeflow compile` first")
    return yaml.safe_load(spec_file.read_text())


def spec_images(spec: dict[str, Any]) -> set[str]:
    return {executor["container"]["image"] for executor in spec["deploymentSpec"]["executors"].values()
            if "container" in executor}


def spec_input_patterns(spec: dict[str, Any]) -> list[str]:
    """Every file-based ExampleGen's input glob (input_base joined with each split pattern, span left as `*`)."""
    patterns = []
    for task in spec["root"]["dag"]["tasks"].values():
        parameters = task.get("inputs", {}).get("parameters", {})
        if "input_base" not in parameters:
            continue
        input_base = parameters["input_base"]["runtimeValue"]["constant"]
        for split in json.loads(parameters["input_config"]["runtimeValue"]["constant"])["splits"]:
            patterns.append(posixpath.join(input_base, _SPAN_PLACEHOLDER.sub("*", split["pattern"])))
    return patterns


def check_spec(config: Config, spec: dict[str, Any], check_data: bool = True) -> None:
    """Refuses a spec built for another image than config.kubeflow.image, or whose data root holds no span.

    The data check reads the data root from this machine (tf.io.gfile: local paths and gs:// alike); a volume
    only the cluster mounts cannot be seen from here, hence `check_data=False`.
    """
    images = spec_images(spec)
    if images != {config.kubeflow.image}:
        raise KubeflowError(f"{config.kubeflow.spec_file} was compiled for image {', '.join(sorted(images))} but "
                            f"kubeflow.image is {config.kubeflow.image}: recompile (`terrafuse kubeflow compile`) "
                            f"or set kubeflow.image")
    if not check_data:
        return
    import tensorflow as tf

    for pattern in spec_input_patterns(spec):
        if not tf.io.gfile.glob(pattern):
            raise KubeflowError(f"no span under the data root: nothing matches {pattern} (expected "
                                f"span-NNNN/SCENE/ folders; pass --no-data-check if only the cluster mounts it)")


def validate_cron(cron: str) -> str:
    """The cron if it is a valid six-field KFP cron (robfig/cron syntax); otherwise ConfigError saying why."""
    fields = cron.split()
    if len(fields) != len(CRON_FIELDS):
        hint = " (a five-field cron lacks the seconds: prepend '0 ')" if len(fields) == 5 else ""
        raise ConfigError(f"cron {cron!r} has {len(fields)} fields{hint}; {CRON_HELP}")
    for text, (name, low, high) in zip(fields, CRON_FIELDS):
        for item in text.split(","):
            problem = _cron_item_problem(item.upper(), name, low, high)
            if problem:
                raise ConfigError(f"cron {cron!r}: {name} field {text!r}: {problem}; {CRON_HELP}")
    return " ".join(fields)


def _cron_item_problem(item: str, name: str, low: int, high: int) -> str | None:
    """What is wrong with one comma-separated item of a cron field (`*`, `?`, `a`, `a-b`, each `/step`), if anything."""
    names = CRON_NAMES.get(name, {})
    base, slash, step = item.partition("/")
    if slash and not (step.isdigit() and int(step) > 0):
        return f"step {step!r} is not a positive number"
    if base in ("*", "?"):
        return None if base == "*" or name in ("day of month", "day of week") else "'?' only fits the day fields"
    bounds = base.split("-")
    if len(bounds) > 2:
        return f"{base!r} is not a value or a range a-b"
    values = []
    for bound in bounds:
        value = names.get(bound, int(bound) if bound.isdigit() else None)
        if value is None or not low <= value <= high:
            return f"{bound!r} is not in {low}-{high}" + (f" or {list(names)[0]}-{list(names)[-1]}" if names else "")
        values.append(value)
    return f"range {base!r} runs backwards" if values != sorted(values) else None


def submit(config: Config, host: str | None = None, check_data: bool = True,
           client_options: dict[str, Any] | None = None) -> str:
    """Starts one run of the compiled spec in config.kubeflow.experiment (created if missing); returns its id."""
    spec = load_spec(config)
    check_spec(config, spec, check_data)
    client, host = _client(config, host, client_options)
    name = f"{spec['pipelineInfo']['name']} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    with _talking_to(host, "starting the run"):
        result = client.create_run_from_pipeline_package(
            config.kubeflow.spec_file, run_name=name, experiment_name=config.kubeflow.experiment,
            pipeline_root=cluster_paths(config).pipeline_root)
    return result.run_id


def schedule(config: Config, host: str | None = None, cron: str | None = None, check_data: bool = True,
             client_options: dict[str, Any] | None = None) -> str:
    """Creates a recurring run of the compiled spec: one run at a time, no backfill; returns its id.

    Every scheduled run ingests the newest span (the ExampleGen runs uncached); one without a new span trains
    nothing: the Trainer reuses the serving model (docs/kubeflow.md, "Scheduled runs and new spans").
    """
    cron = validate_cron(cron or config.kubeflow.cron)
    spec = load_spec(config)
    check_spec(config, spec, check_data)
    client, host = _client(config, host, client_options)
    with _talking_to(host, "creating the recurring run"):
        experiment = client.create_experiment(config.kubeflow.experiment)
        recurring_run = client.create_recurring_run(
            experiment_id=experiment.experiment_id, job_name=f"{spec['pipelineInfo']['name']} ({cron})",
            cron_expression=cron, max_concurrency=1, no_catchup=True,
            pipeline_package_path=config.kubeflow.spec_file, pipeline_root=cluster_paths(config).pipeline_root)
    return recurring_run.recurring_run_id


def list_schedules(config: Config, host: str | None = None,
                   client_options: dict[str, Any] | None = None) -> list[Schedule]:
    """Recurring runs in config.kubeflow.experiment (none when the experiment does not exist)."""
    client, host = _client(config, host, client_options)
    with _talking_to(host, "listing recurring runs"):
        try:
            experiment = client.get_experiment(experiment_name=config.kubeflow.experiment)
        except ValueError:  # the kfp client's "No experiment is found with name ..."
            return []
        listing = client.list_recurring_runs(experiment_id=experiment.experiment_id, page_size=100)
    return [Schedule(r.recurring_run_id, r.display_name,
                     r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else "",
                     r.status == "ENABLED")
            for r in listing.recurring_runs or []]


def disable_schedule(config: Config, host: str | None, recurring_run_id: str,
                     client_options: dict[str, Any] | None = None) -> None:
    """Stops a recurring run from starting new runs (it stays listed, disabled)."""
    client, host = _client(config, host, client_options)
    with _talking_to(host, f"disabling recurring run {recurring_run_id}"):
        client.disable_recurring_run(recurring_run_id)


def _client(config: Config, host: str | None, client_options: dict[str, Any] | None) -> tuple[Any, str]:
    """A kfp.Client for host (else kubeflow.host; inside a cluster the client finds the endpoint itself), and
    the name error messages give the server."""
    host = host or config.kubeflow.host
    if host:
        _check_reachable(host)
    elif not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise KubeflowError("no Kubeflow Pipelines host: pass --host URL or set kubeflow.host")
    import kfp

    server = host or "the in-cluster Kubeflow Pipelines endpoint"
    with _talking_to(server, "checking the server's health"):
        try:
            return kfp.Client(host=host or None, **(client_options or {})), server
        except TimeoutError as err:  # the client's health probe gave up after its retries
            raise KubeflowError(f"{server}: {err}") from None


def _check_reachable(host: str, timeout_s: float = 5.0) -> None:
    """Fails at once with the host's name, instead of the client's retries and a urllib3 traceback."""
    url = urllib.parse.urlsplit(host if "://" in host else f"https://{host}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        raise KubeflowError(f"cannot reach Kubeflow Pipelines at {host} ({url.hostname}:{port}): "
                            f"{err.strerror or err}") from None


@contextlib.contextmanager
def _talking_to(host: str, action: str) -> Iterator[None]:
    """Turns the server's HTTP errors into one line with the status and the server's own message."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as err:
        raise KubeflowError(f"{host} refused {action}: HTTP {err.status} {err.reason}: "
                            f"{_server_message(err.body)}") from None
    except urllib3.exceptions.HTTPError as err:
        raise KubeflowError(f"lost {host} while {action}: {err}") from None


def _server_message(body: Any) -> str:
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return str(body or "").strip() or "(no message)"
    return str(data.get("message") or data.get("error") or data) if isinstance(data, dict) else str(data)


def register_cli(commands: argparse._SubParsersAction, config_arguments: Callable[[argparse.ArgumentParser], None],
                 load_config: Callable[[argparse.Namespace], Config]) -> None:
    """Adds `terrafuse kubeflow compile|submit|schedule` to the CLI's sub-commands."""
    kubeflow = commands.add_parser("kubeflow", help="compile the pipeline for Kubeflow Pipelines, run or schedule it")
    actions = kubeflow.add_subparsers(dest="kubeflow_command", required=True)

    def add(name: str, help_text: str, command: Callable[[argparse.Namespace, Config], int]) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text)
        config_arguments(parser)
        parser.set_defaults(func=lambda args: _run_command(command, args, load_config))
        return parser

    add("compile", "write the KFP pipeline spec (kubeflow.spec_file) for kubeflow.image", _cmd_compile)
    for parser in (add("submit", "start one run of the compiled spec", _cmd_submit),
                   add("schedule", "create, list or disable recurring runs of the compiled spec", _cmd_schedule)):
        parser.add_argument("--host", help="KFP API endpoint (default: kubeflow.host)")
        parser.add_argument("--no-data-check", action="store_true",
                            help="do not look for spans under the data root (it is mounted only in the cluster)")
    schedule_parser = actions.choices["schedule"]
    schedule_parser.add_argument("--cron", help=f"default: kubeflow.cron; {CRON_HELP}")
    what = schedule_parser.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the recurring runs of kubeflow.experiment")
    what.add_argument("--disable", metavar="ID", help="disable the recurring run with this id")


def _run_command(command: Callable[[argparse.Namespace, Config], int], args: argparse.Namespace,
                 load_config: Callable[[argparse.Namespace], Config]) -> int:
    config = load_config(args)
    try:
        return command(args, config)
    except KubeflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _cmd_compile(args: argparse.Namespace, config: Config) -> int:
    started = time.perf_counter()
    spec_file = compile_pipeline(config)
    print(f"Wrote {spec_file} ({spec_file.stat().st_size / 1024:.0f} KiB, {time.perf_counter() - started:.1f} s) "
          f"for image {config.kubeflow.image}; pipeline root {cluster_paths(config).pipeline_root}")
    return 0


def _cmd_submit(args: argparse.Namespace, config: Config) -> int:
    print(f"Run {submit(config, args.host, check_data=not args.no_data_check)} started")
    return 0


def _cmd_schedule(args: argparse.Namespace, config: Config) -> int:
    if args.list:
        for entry in list_schedules(config, args.host):
            state = "enabled " if entry.enabled else "disabled"
            print(f"{entry.recurring_run_id}  {state}  {entry.cron}  {entry.name}")
        return 0
    if args.disable:
        disable_schedule(config, args.host, args.disable)
        print(f"Recurring run {args.disable} disabled")
        return 0
    recurring_run_id = schedule(config, args.host, args.cron, check_data=not args.no_data_check)
    print(f"Recurring run {recurring_run_id} created ({args.cron or config.kubeflow.cron})")
    return 0
