"""Runs a compiled KFP pipeline spec (schema 2.1) without Kubernetes, the way the open-source KFP backend drives it.

A test harness (tests/test_kubeflow.py, bench/kubeflow_spec.py); nothing in the product exists for it.

It refuses a spec with executors other than containers before running anything (that backend also runs
importers, which TFX specs here do not use, and refuses TFX's `resolver` steps), and it ignores
`lifecycle.preCacheCheck` (TFX's ExampleGen driver), as that backend does.

Tasks of root.dag.tasks run in topological order. For each container task the launcher builds the ExecutorInput
JSON a KFP launcher passes (inputs.artifacts with name, uri, type schema and metadata; inputs.parameterValues;
outputs.artifacts with uris under <pipeline root>/<pipeline>/<run>/<task>/; outputs.outputFile), puts it in place
of `{{$}}` and runs the task's own command (`python -m ...`, with this interpreter) in a subprocess, from a
scratch directory, so nothing leans on this checkout's working directory. Downstream inputs come from each task's
ExecutorOutput (the outputFile).

This checkout stands in for the image: the image's environment (foundation.environment) is set, and a parameter
naming a file under the image's project folder (IMAGE_PROJECT_DIR, e.g. the curated schema) is pointed at the
same file here.

Like a KFP backend it caches tasks whose `cachingOptions.enableCache` is set: a task whose container, input
artifact names and parameter values were seen before reuses that execution's outputs and is reported CACHED.
Cache entries live in <pipeline root>/_launcher/state.json.
"""
from __future__ import annotations

import graphlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from foundation.config import PROJECT_DIR
from foundation.environment import TENSORFLOW_ENVIRONMENT
from pipeline.kfp_compile import IMAGE_PROJECT_DIR

EXECUTED, CACHED, FAILED = "EXECUTED", "CACHED", "FAILED"


@dataclass
class TaskRun:
    state: str
    log: str = ""  # the task's output, when it ran
    seconds: float = 0.0


@dataclass
class LaunchResult:
    run_id: str
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    outputs: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # task -> key -> runtime artifacts
    failed_task: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failed_task is None

    def states(self) -> dict[str, str]:
        return {name: task.state for name, task in self.tasks.items()}


class Launcher:
    def __init__(self, spec_file: str | Path, pipeline_root: str | Path, python: str = sys.executable):
        self.spec = yaml.safe_load(Path(spec_file).read_text())
        if self.spec.get("schemaVersion") != "2.1.0":
            raise ValueError(f"{spec_file}: schema {self.spec.get('schemaVersion')}; this launcher reads spec 2.1 "
                             f"(parameterValues only)")
        unsupported = sorted(label for label, executor in self.spec["deploymentSpec"]["executors"].items()
                             if "container" not in executor)
        if unsupported:  # the open-source backend: "non-container and non-importer executor not implemented"
            raise ValueError(f"{spec_file}: executors other than containers: {unsupported}")
        self.pipeline_root = Path(pipeline_root)
        self.python = python
        self.state_file = self.pipeline_root / "_launcher" / "state.json"

    def run(self) -> LaunchResult:
        """One pipeline run; stops at the first failing task, as KFP does."""
        started = time.perf_counter()
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {"cache": {}}
        result = LaunchResult(run_id=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
        tasks = self.spec["root"]["dag"]["tasks"]
        with tempfile.TemporaryDirectory(prefix="kfp-launcher-") as workdir:
            for name in graphlib.TopologicalSorter({n: _upstream(t) for n, t in tasks.items()}).static_order():
                task_started = time.perf_counter()
                task_run = self._run_task(name, tasks[name], result, state, workdir)
                task_run.seconds = time.perf_counter() - task_started
                result.tasks[name] = task_run
                self.state_file.parent.mkdir(parents=True, exist_ok=True)
                self.state_file.write_text(json.dumps(state))
                if task_run.state == FAILED:
                    result.failed_task = name
                    break
        result.seconds = time.perf_counter() - started
        return result

    def _run_task(self, name: str, task: dict, result: LaunchResult, state: dict, workdir: str) -> TaskRun:
        component = self.spec["components"][task["componentRef"]["name"]]
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        inputs = {key: _artifact_list(result.outputs, source)
                  for key, source in task.get("inputs", {}).get("artifacts", {}).items()}
        container = executor["container"]
        task_dir = self.pipeline_root / self.spec["pipelineInfo"]["name"] / result.run_id / name
        output_types = {key: d["artifactType"] for key, d in component.get("outputDefinitions", {})
                        .get("artifacts", {}).items()}
        executor_input = {
            "inputs": {
                "artifacts": {key: {"artifacts": artifacts} for key, artifacts in inputs.items()},
                "parameterValues": {key: _in_checkout(p["runtimeValue"]["constant"])
                                    for key, p in task.get("inputs", {}).get("parameters", {}).items()},
            },
            "outputs": {
                "artifacts": {key: {"artifacts": [{"name": f"{result.run_id}/{name}/{key}", "type": artifact_type,
                                                   "uri": str(task_dir / key), "metadata": {}}]}
                              for key, artifact_type in output_types.items()},
                "outputFile": str(task_dir / "executor_output.json"),
            },
        }
        cache_key = hashlib.sha256(json.dumps({
            "container": [container["image"], container["command"], container["args"]],
            "inputs": {key: [a["name"] for a in artifacts] for key, artifacts in inputs.items()},
            "parameters": executor_input["inputs"]["parameterValues"], "outputs": output_types,
        }, sort_keys=True).encode()).hexdigest()
        if task.get("cachingOptions", {}).get("enableCache") and cache_key in state["cache"]:
            result.outputs[name] = state["cache"][cache_key]
            return TaskRun(CACHED)
        code, log = self._execute(container["command"], container["args"], executor_input, workdir)
        if code:
            return TaskRun(FAILED, log)
        produced = _read_json(executor_input["outputs"]["outputFile"]).get("artifacts", {})
        outputs = {}
        for key, artifact_type in output_types.items():
            artifacts = produced.get(key, executor_input["outputs"]["artifacts"][key])["artifacts"]
            outputs[key] = [{**artifact, "type": artifact_type} for artifact in artifacts]
        result.outputs[name] = state["cache"][cache_key] = outputs
        return TaskRun(EXECUTED, log)

    def _execute(self, command: list[str], args: list[str], executor_input: dict, workdir: str) -> tuple[int, str]:
        """Runs one entry point as its container would: the same module, this interpreter, the image's env."""
        argv = [self.python if part == "python" else part for part in command]
        argv += [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in args]
        env = {**os.environ, **TENSORFLOW_ENVIRONMENT, "TF_CPP_MIN_LOG_LEVEL": "2"}
        process = subprocess.run(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        return process.returncode, process.stdout


def _in_checkout(value: object) -> object:
    """A path under the image's project folder, as the same path in this checkout; other values as they are."""
    if isinstance(value, str) and value.startswith(IMAGE_PROJECT_DIR + "/"):
        return str(PROJECT_DIR) + value[len(IMAGE_PROJECT_DIR):]
    return value


def _upstream(task: dict) -> set[str]:
    producers = {source["taskOutputArtifact"]["producerTask"]
                 for source in task.get("inputs", {}).get("artifacts", {}).values() if "taskOutputArtifact" in source}
    return set(task.get("dependentTasks", [])) | producers


def _artifact_list(outputs: dict, source: dict) -> list[dict]:
    produced = source["taskOutputArtifact"]
    return outputs[produced["producerTask"]][produced["outputArtifactKey"]]


def _read_json(path: str) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}
