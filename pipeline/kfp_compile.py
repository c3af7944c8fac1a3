"""Compiling for Kubeflow Pipelines: the one DAG (`pipeline.dag.create_pipeline`) with the cluster's paths, turned
by KubeflowV2DagRunner into a KFP pipeline spec (YAML), then patched where the open-source KFP backend needs it.

Every change to what KubeflowV2DagRunner writes by default is in "Spec patches" below, each saying why. The rest
of what the open-source backend lacks is handled at run time, in the step that meets it (docs/kubeflow.md,
"Where the compiled spec can run"): the ExampleGen executor resolves the newest span itself
(components/scene_example_gen.py), the Trainer reuses the serving model when no new span came
(models/trainer.py) and the Pusher does not publish it again (components/atomic_pusher.py), and PublishedBaseline
reads the serving dir instead of a Resolver step (components/baseline.py).

TFX and yaml load inside the functions, so the CLI stays quick to start.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation.config import PROJECT_DIR, Config, ConfigError, KubeflowConfig
from pipeline.component_ids import TRAINER

# Where the Dockerfile installs the project: the curated schema's path inside the image starts here.
IMAGE_PROJECT_DIR = "/opt/terrafuse"
SPEC_SUFFIXES = (".yaml", ".yml")  # the kfp client rejects .json; KubeflowV2DagRunner writes a Vertex job there


@dataclass(frozen=True)
class ClusterPaths:
    """Paths as the cluster's containers see them."""

    pipeline_root: str
    data_root: str
    serving_dir: str


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


def compile_pipeline(config: Config) -> Path:
    """Compiles create_pipeline for the cluster into config.kubeflow.spec_file (a KFP PipelineSpec YAML).

    With kubeflow.module_source "image" (the default) Transform and Trainer name their functions by import path in
    the image, and compiling reads and writes nothing under the pipeline root. With "wheel" their user-code wheels
    are built now, into <pipeline root>/_wheels: this machine must be able to write there, the cluster to read.
    """
    spec_file = Path(config.kubeflow.spec_file)
    if spec_file.suffix not in SPEC_SUFFIXES:
        raise ConfigError(f"kubeflow.spec_file {str(spec_file)!r} must end in .yaml: the kfp client rejects .json "
                          f"packages, and for .json KubeflowV2DagRunner writes a Vertex PipelineJob instead")
    paths = cluster_paths(config)
    import yaml
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as runner

    from pipeline.dag import create_pipeline

    cluster_config = config.replace({"run.pipeline_root": paths.pipeline_root, "run.data_root": paths.data_root,
                                     "run.serving_dir": paths.serving_dir})
    pipeline = create_pipeline(cluster_config, module_source=config.kubeflow.module_source)
    _schema_file_in_image(pipeline)
    _known_steps(config.kubeflow, pipeline)
    for component in pipeline.components:
        component.with_platform_config(step_resources(config.kubeflow, component.id))
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    runner.KubeflowV2DagRunner(
        runner.KubeflowV2DagRunnerConfig(default_image=config.kubeflow.image,
                                         use_pipeline_spec_2_1=USE_PIPELINE_SPEC_2_1),
        output_dir=str(spec_file.parent),
        output_filename=spec_file.name,
    ).run(pipeline)
    spec = yaml.safe_load(spec_file.read_text())
    _ingest_every_run(spec, pipeline)
    _example_gen_resources(spec, pipeline)
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_file


def step_resources(kubeflow: KubeflowConfig, step: str) -> Any:
    """The step's container resources as the spec holds them (a ResourceSpec: cores, GB of 10^9 bytes; 0 is unset),
    from kubeflow.* and kubeflow.step_resources; the Trainer's GPUs from kubeflow.trainer_gpu_*."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    values = kubeflow.resources_of(step)
    resources = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
        cpu_request=values["cpu_request"], cpu_limit=values["cpu_limit"],
        memory_request=values["memory_request_gb"], memory_limit=values["memory_limit_gb"])
    if step == TRAINER and kubeflow.trainer_gpu_count:
        resources.accelerator.type = kubeflow.trainer_gpu_type
        resources.accelerator.count = kubeflow.trainer_gpu_count
    return resources


def _known_steps(kubeflow: KubeflowConfig, pipeline: Any) -> None:
    """kubeflow.step_resources may only name steps of the DAG: a misspelt one would be silently ignored."""
    ids = [component.id for component in pipeline.components]
    unknown = [entry.step for entry in kubeflow.step_resources if entry.step not in ids]
    if unknown:
        raise ConfigError(f"kubeflow.step_resources names {unknown}, not a step of the DAG: one of {ids}")


# ---- Spec patches: every departure from what KubeflowV2DagRunner writes by default, and why ----------------------

# Spec schema 2.1 instead of 2.0. With 2.0 the file-based ExampleGen executor ignores the span and input config
# its pre-cache-check driver resolved, on a backend that runs that driver (Vertex); 2.1 passes them as
# parameterValues. The open-source backend runs no driver at all: see _ingest_every_run.
USE_PIPELINE_SPEC_2_1 = True


def _ingest_every_run(spec: dict, pipeline: Any) -> None:
    """Switches KFP's cache off for the file-based ExampleGen tasks (after compiling, in the YAML).

    The open-source KFP backend does not run the spec's pre-cache check (TFX's span-resolving driver), so the
    ExampleGen's cache key (its parameters) would never change with new data and every run would reuse the
    first span. Uncached, it resolves the newest span itself (components/scene_example_gen.py) and, when
    nothing new came, the Trainer reuses the serving model instead of training (models/trainer.py).
    """
    from tfx.types.standard_component_specs import INPUT_BASE_KEY

    for component in pipeline.components:
        if INPUT_BASE_KEY in component.exec_properties:
            spec["root"]["dag"]["tasks"][component.id]["cachingOptions"] = {}  # enableCache false, as KFP writes it


def _example_gen_resources(spec: dict, pipeline: Any) -> None:
    """Gives the file-based ExampleGen's container the resources of its platform config (after compiling).

    TFX 1.16's step builder copies a component's platform config into its container spec for every component but
    a FileBasedExampleGen, whose container it builds separately and without them (`_build_file_based_example_gen_
    spec` in tfx/orchestration/kubeflow/v2/step_builder.py): ingestion would get the cluster's default resources.
    """
    from google.protobuf import json_format
    from tfx.types.standard_component_specs import INPUT_BASE_KEY

    for component in pipeline.components:
        if INPUT_BASE_KEY in component.exec_properties:
            component_ref = spec["root"]["dag"]["tasks"][component.id]["componentRef"]["name"]
            executor = spec["components"][component_ref]["executorLabel"]
            spec["deploymentSpec"]["executors"][executor]["container"]["resources"] = json_format.MessageToDict(
                component.platform_config)


def _schema_file_in_image(pipeline: Any) -> None:
    """Points ImportSchemaGen at the curated schema inside the image (before compiling, on the pipeline).

    Not a backend problem but one of every container runner: the DAG names the schema by its path in this
    checkout, which the image holds under IMAGE_PROJECT_DIR. A schema outside the project is not in the image.
    """
    from tfx.types.standard_component_specs import SCHEMA_FILE_KEY

    for component in pipeline.components:
        path = component.exec_properties.get(SCHEMA_FILE_KEY)
        if not isinstance(path, str) or "://" in path:
            continue
        relative = Path(os.path.relpath(path, PROJECT_DIR))
        if relative.parts[0] == os.pardir:
            raise ConfigError(f"run.schema_file {path} is outside the project, so the image does not hold it: put "
                              f"it under {PROJECT_DIR / 'schemas'} (built into the image) or on a bucket (gs://...)")
        component.exec_properties[SCHEMA_FILE_KEY] = posixpath.join(IMAGE_PROJECT_DIR, *relative.parts)
