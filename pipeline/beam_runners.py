"""The Beam arguments of the data steps, built from `run.beam_runner` and the `beam` section (foundation/config.py
validates them). Every runner gets the same DAG: LocalDagRunner and the compiled Kubeflow spec both take these
arguments as the pipeline's `beam_pipeline_args`.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from foundation.config import Config, ConfigError

# Beam's PortableRunner with its job service in this process and LOOPBACK workers; the experiment starts each
# worker as its own `python` process, the way a Flink or Spark task manager runs Python code, so what fails to
# pickle or import there fails here too.
PORTABLE = ("--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK",
            "--experiments=use_loopback_process_worker")
# Beam args that already say how workers get the code; without one, TFX builds an sdist of itself per component.
PACKAGING_FLAGS = ("--sdk_container_image", "--worker_harness_container_image", "--setup_file", "--extra_package",
                   "--requirements_file")


def beam_args(config: Config) -> list[str]:
    """The runner's arguments, the worker image, then `run.beam_args` (last, so they may override).

    The worker image is the project's own (kubeflow.image holds TFX and terrafuse). Naming it also stops TFX from
    building an sdist of itself for every Beam component, 2.5 s each, which no runner here needs.
    """
    runner, beam = config.run.beam_runner, config.beam
    if runner == "direct":
        args = [f"--direct_running_mode={config.run.direct_running_mode}"]
        if config.run.direct_running_mode != "in_memory":  # in-memory runs one worker whatever is asked
            args.append(f"--direct_num_workers={config.run.direct_num_workers or os.cpu_count() or 1}")
    elif runner == "portable":
        args = list(PORTABLE)
    elif runner == "flink":
        # Without a job server the pods reach, an uber jar goes to Flink's REST API: kubeflow.image has no Java to
        # start a job server of its own. The same holds for Spark.
        submit = [f"--job_endpoint={beam.job_endpoint}"] if beam.job_endpoint else ["--flink_submit_uber_jar"]
        args = ["--runner=FlinkRunner", f"--flink_master={beam.flink_master}", *submit,
                *([f"--parallelism={beam.parallelism}"] if beam.parallelism else []), *_docker_workers(config)]
    elif runner == "spark":
        submit = ([f"--job_endpoint={beam.job_endpoint}"] if beam.job_endpoint
                  else ["--spark_submit_uber_jar", f"--spark_rest_url={beam.spark_rest_url}"])
        args = ["--runner=SparkRunner", f"--spark_master_url={beam.spark_master_url}", *submit,
                *_docker_workers(config)]
    elif runner == "dataflow":
        args = ["--runner=DataflowRunner", f"--project={beam.project}", f"--region={beam.region}",
                f"--temp_location={beam.temp_location}",
                *([f"--max_num_workers={beam.max_num_workers}"] if beam.max_num_workers else []),
                *([f"--machine_type={beam.machine_type}"] if beam.machine_type else [])]
    else:
        raise ConfigError(f"run.beam_runner {runner!r} has no arguments")  # config validation names the choices
    if not any(arg.startswith(PACKAGING_FLAGS) for arg in config.run.beam_args):
        args.append(f"--sdk_container_image={config.kubeflow.image}")
    return args + list(config.run.beam_args)


def _docker_workers(config: Config) -> list[str]:
    """Flink and Spark start the Python workers as containers of the project's image."""
    return ["--environment_type=DOCKER", f"--environment_config={config.kubeflow.image}"]


@contextlib.contextmanager
def portable_workers(config: Config) -> Iterator[None]:
    """This interpreter's folder first on PATH while a portable run lasts: Beam starts each LOOPBACK worker as
    `python` from PATH, and another interpreter (without Beam) would leave the pipeline waiting for a worker."""
    if config.run.beam_runner != "portable":
        yield
        return
    folder = os.path.dirname(sys.executable)
    if not os.access(os.path.join(folder, "python"), os.X_OK):
        raise ConfigError(f"run.beam_runner 'portable' starts its workers as `python`, which {folder} lacks: run "
                          f"terrafuse from a virtualenv")
    before = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(filter(None, [folder, before]))
    try:
        yield
    finally:
        if before is None:
            del os.environ["PATH"]
        else:
            os.environ["PATH"] = before
