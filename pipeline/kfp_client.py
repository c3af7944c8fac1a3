"""The Kubeflow Pipelines client side: start, schedule, list and disable runs of the compiled spec (kfp client).

Everything a request depends on is checked before anything is sent: the cron, the spec's image against the
config, the data root's spans, the host's reachability; the server's HTTP errors come back as one line.
Authentication is the kfp client's own (in-cluster service account token, kube config, `existing_token=` /
`credentials=` in `client_options`, the KF_PIPELINES_* environment variables); nothing secret is written into
the spec. kfp, yaml and TensorFlow load inside the functions, so the CLI stays quick to start. See docs/kubeflow.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from foundation.config import Config, ConfigError
from foundation.scene_folder import SPAN_DIGITS, SPAN_PREFIX
from pipeline.kfp_compile import cluster_paths

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
    """A submit or schedule that cannot go ahead; the message says what to fix."""


@dataclass(frozen=True)
class Schedule:
    recurring_run_id: str
    name: str
    cron: str
    enabled: bool


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
                                f"{SPAN_PREFIX}{'N' * SPAN_DIGITS}/SCENE/ folders; pass --no-data-check if only "
                                f"the cluster mounts it)")


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
