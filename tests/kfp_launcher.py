"""Runs a compiled KFP pipeline spec (schema 2.1) without Kubernetes, the way a KFP backend drives it.

Tasks of root.dag.tasks run in topological order. For each container task the launcher builds the ExecutorInput
JSON a KFP launcher passes (inputs.artifacts with name, uri, type schema and metadata; inputs.parameterValues;
outputs.artifacts with uris under <pipeline root>/<pipeline>/<run>/<task>/; outputs.outputFile), puts it in place
of `{{$}}` and runs the task's own command (`python -m ...`, with this interpreter) in a subprocess, from a
scratch directory, so nothing leans on this checkout's working directory. Downstream inputs come from each task's
ExecutorOutput (the outputFile). A `lifecycle.preCacheCheck` (the file-based ExampleGen driver) runs first and
writes the span it resolved into the same outputFile, which the executor reads; its artifact metadata (span,
fingerprint) goes on to the executor's output artifact, as the backend does.

Like a KFP backend it caches: a task whose container, input artifact names and parameter values (after the
pre-cache check) were seen before reuses that execution's outputs and is reported CACHED. Resolver tasks answer
their MLMD filter queries from the artifacts earlier runs produced under the same pipeline root (none on the
first run). Produced artifacts and cache entries live in <pipeline root>/_launcher/state.json.
"""
from __future__ import annotations

import graphlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

EXECUTED, CACHED, RESOLVED, FAILED = "EXECUTED", "CACHED", "RESOLVED", "FAILED"
_PLACEHOLDER = re.compile(r"\{\{\$\.inputs\.artifacts\['(\w+)'\]\.metadata\['(\w+)'\]\}\}")


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
        self.pipeline_root = Path(pipeline_root)
        self.python = python
        self.state_file = self.pipeline_root / "_launcher" / "state.json"

    def run(self) -> LaunchResult:
        """One pipeline run; stops at the first failing task, as KFP does."""
        started = time.perf_counter()
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {"artifacts": [], "cache": {}}
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
        if "resolver" in executor:
            result.outputs[name] = {key: _query(query["filter"], inputs, state["artifacts"])
                                    for key, query in executor["resolver"]["outputArtifactQueries"].items()}
            return TaskRun(RESOLVED)
        container = executor["container"]
        task_dir = self.pipeline_root / self.spec["pipelineInfo"]["name"] / result.run_id / name
        output_types = {key: d["artifactType"] for key, d in component.get("outputDefinitions", {})
                        .get("artifacts", {}).items()}
        executor_input = {
            "inputs": {
                "artifacts": {key: {"artifacts": artifacts} for key, artifacts in inputs.items()},
                "parameterValues": {key: p["runtimeValue"]["constant"]
                                    for key, p in task.get("inputs", {}).get("parameters", {}).items()},
            },
            "outputs": {
                "artifacts": {key: {"artifacts": [{"name": f"{result.run_id}/{name}/{key}", "type": artifact_type,
                                                   "uri": str(task_dir / key), "metadata": {}}]}
                              for key, artifact_type in output_types.items()},
                "outputFile": str(task_dir / "executor_output.json"),
            },
        }
        log = ""
        pre_cache_check = container.get("lifecycle", {}).get("preCacheCheck")
        parameters = dict(executor_input["inputs"]["parameterValues"])
        if pre_cache_check:
            code, log = self._execute(pre_cache_check["command"], pre_cache_check["args"], executor_input, workdir)
            if code:
                return TaskRun(FAILED, log)
            checked = _read_json(executor_input["outputs"]["outputFile"])
            parameters.update(checked.get("parameterValues", {}))
            # The backend hands the driver's artifact metadata (span, fingerprint) on to the executor's outputs.
            for key, updated in checked.get("artifacts", {}).items():
                for given, found in zip(executor_input["outputs"]["artifacts"][key]["artifacts"], updated["artifacts"]):
                    given["metadata"].update(found.get("metadata", {}))
        cache_key = hashlib.sha256(json.dumps({
            "container": [container["image"], container["command"], container["args"]],
            "inputs": {key: [a["name"] for a in artifacts] for key, artifacts in inputs.items()},
            "parameters": parameters, "outputs": output_types,
        }, sort_keys=True).encode()).hexdigest()
        if task.get("cachingOptions", {}).get("enableCache") and cache_key in state["cache"]:
            result.outputs[name] = state["cache"][cache_key]
            return TaskRun(CACHED, log)
        code, executor_log = self._execute(container["command"], container["args"], executor_input, workdir)
        log += executor_log
        if code:
            return TaskRun(FAILED, log)
        produced = _read_json(executor_input["outputs"]["outputFile"]).get("artifacts", {})
        outputs = {}
        for key, artifact_type in output_types.items():
            artifacts = produced.get(key, executor_input["outputs"]["artifacts"][key])["artifacts"]
            outputs[key] = [{**artifact, "type": artifact_type} for artifact in artifacts]
            state["artifacts"].extend(outputs[key])
        result.outputs[name] = state["cache"][cache_key] = outputs
        return TaskRun(EXECUTED, log)

    def _execute(self, command: list[str], args: list[str], executor_input: dict, workdir: str) -> tuple[int, str]:
        """Runs one entry point as its container would: the same module, this interpreter, the image's env."""
        argv = [self.python if part == "python" else part for part in command]
        argv += [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in args]
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        process = subprocess.run(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        return process.returncode, process.stdout


def _upstream(task: dict) -> set[str]:
    producers = {source["taskOutputArtifact"]["producerTask"]
                 for source in task.get("inputs", {}).get("artifacts", {}).values() if "taskOutputArtifact" in source}
    return set(task.get("dependentTasks", [])) | producers


def _artifact_list(outputs: dict, source: dict) -> list[dict]:
    produced = source["taskOutputArtifact"]
    return outputs[produced["producerTask"]][produced["outputArtifactKey"]]


def _read_json(path: str) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def _schema_title(artifact: dict) -> str:
    artifact_type = artifact["type"]
    return artifact_type.get("schemaTitle") or yaml.safe_load(artifact_type["instanceSchema"])["title"]


def _query(filter_text: str, inputs: dict[str, list[dict]], artifacts: list[dict]) -> list[dict]:
    """The newest artifact matching a resolver's MLMD filter (the clause forms TFX writes), or none."""
    for input_key, metadata_key in _PLACEHOLDER.findall(filter_text):
        if not inputs.get(input_key):
            return []
        value = inputs[input_key][0]["metadata"].get(metadata_key)
        filter_text = filter_text.replace(f"{{{{$.inputs.artifacts['{input_key}'].metadata['{metadata_key}']}}}}",
                                          str(value))
    tests = []
    for clause in filter_text.split(" AND "):
        key, _, expected = clause.partition("=")
        expected = expected.strip('"')
        if key == "schema_title":
            tests.append(lambda a, e=expected: _schema_title(a) == e)
        elif key == "name":
            tests.append(lambda a, e=expected: a.get("name") == e)
        elif key == "state":
            continue  # every artifact the launcher recorded is LIVE
        elif key.startswith("metadata.") and key.endswith(".number_value"):
            field_name = key[len("metadata."):-len(".number_value")]
            tests.append(lambda a, f=field_name, e=float(expected): a.get("metadata", {}).get(f) == e)
        else:
            raise NotImplementedError(f"resolver filter clause {clause!r} in {filter_text!r}")
    matches = [a for a in artifacts if all(test(a) for test in tests)]
    return matches[-1:]
