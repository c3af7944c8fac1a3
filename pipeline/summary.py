"""What a run found, read back from ML Metadata: data, skew, per-class recall, the verdict, the push.

The pipeline's components record everything in MLMD, including the config each was given; this module only reads
(one exception: `record_stop`, the message of the error that stopped a local run, which TFX does not keep). The same
summary works for a fresh run, a cached rerun and a run that stopped at a gate, and for `terrafuse report` long
after the run, under whatever config the run had (`recorded_config`), not the command line's.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from foundation.config import Config, ConfigError
from pipeline.component_ids import (BASELINE, DATA_GATE, DRIFT_GATE, EVALUATOR, PUSHER, SCENE_EXAMPLE_GEN,
                                    STATISTICS_GEN, TRAINER)

# Set by `record_stop` on the execution that raised: why the run stopped, in the error's own words.
STOP_MESSAGE_PROPERTY = "terrafuse_stop_message"
FAILED = "FAILED"


@dataclass
class ComponentRun:
    node: str
    state: str  # COMPLETE, CACHED, FAILED, RUNNING ...
    seconds: float
    outputs: dict[str, list[metadata_store_pb2.Artifact]] = field(default_factory=dict)
    # The execution's string properties: TFX records every exec property (a component's config among them).
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def stop_message(self) -> str | None:
        return self.properties.get(STOP_MESSAGE_PROPERTY)


def open_store(metadata_path: str, read_only: bool = True) -> metadata_store.MetadataStore:
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = os.path.abspath(metadata_path)
    connection.sqlite.connection_mode = (metadata_store_pb2.SqliteMetadataSourceConfig.READONLY if read_only
                                         else metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE)
    return metadata_store.MetadataStore(connection)


def _pipeline_runs(store: metadata_store.MetadataStore) -> list[metadata_store_pb2.Context]:
    return sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: (c.create_time_since_epoch, c.id))


def run_ids(config: Config) -> list[str]:
    """The runs recorded under the pipeline root, oldest first (LocalDagRunner names them by their start time)."""
    if not os.path.exists(config.metadata_path):
        return []
    return [context.name for context in _pipeline_runs(open_store(config.metadata_path))]


def last_run(config: Config, run_id: str | None = None) -> list[ComponentRun]:
    """Every component execution of the newest pipeline run (or of `run_id`), in the order they started."""
    if not os.path.exists(config.metadata_path):
        return []
    store = open_store(config.metadata_path)
    runs = _pipeline_runs(store)
    if run_id is not None:
        runs = [context for context in runs if context.name == run_id]
        if not runs:
            raise ConfigError(f"{config.metadata_path}: no run {run_id!r} recorded")
    if not runs:
        return []
    node_of = {}
    for node in store.get_contexts_by_type("node"):
        for execution in store.get_executions_by_context(node.id):
            node_of[execution.id] = node.name.split(".", 1)[-1]
    executions = sorted(store.get_executions_by_context(runs[-1].id), key=lambda e: e.create_time_since_epoch)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    artifacts = {a.id: a for a in store.get_artifacts_by_id({e.artifact_id for e in events})}
    result = []
    for execution in executions:
        run = ComponentRun(
            node=node_of.get(execution.id, str(execution.type)),
            state=metadata_store_pb2.Execution.State.Name(execution.last_known_state),
            seconds=(execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0,
            properties={name: value.string_value for name, value in execution.custom_properties.items()
                        if value.HasField("string_value")},
        )
        for event in events:
            if event.execution_id == execution.id and event.type == metadata_store_pb2.Event.OUTPUT:
                key = event.path.steps[0].key if event.path.steps else "output"
                run.outputs.setdefault(key, []).append(artifacts[event.artifact_id])
        result.append(run)
    return result


def record_stop(config: Config, message: str, earlier_runs: list[str]) -> bool:
    """Records `message` on the failed execution of the newest run, so that reports of the run say why it stopped.
    False when there is no run besides `earlier_runs` (the error came before the run started) or the run has no
    failed execution (the error came from outside any component)."""
    if not os.path.exists(config.metadata_path):
        return False
    store = open_store(config.metadata_path, read_only=False)
    runs = [context for context in _pipeline_runs(store) if context.name not in earlier_runs]
    failed = [execution for execution in (store.get_executions_by_context(runs[-1].id) if runs else [])
              if execution.last_known_state == metadata_store_pb2.Execution.FAILED]
    if not failed:
        return False
    execution = min(failed, key=lambda e: e.create_time_since_epoch)
    execution.custom_properties[STOP_MESSAGE_PROPERTY].string_value = message
    store.put_executions([execution])
    return True


def stopped(runs: list[ComponentRun]) -> ComponentRun | None:
    """The component that stopped the run (the first that failed), if one did."""
    return next((run for run in runs if run.state == FAILED), None)


def output(runs: list[ComponentRun], node: str, key: str) -> metadata_store_pb2.Artifact | None:
    for run in runs:
        if run.node == node and run.outputs.get(key):
            return run.outputs[key][0]
    return None


def string_property(artifact: metadata_store_pb2.Artifact, name: str) -> str | None:
    value = artifact.custom_properties.get(name)
    return value.string_value if value is not None else None


def _int_property(artifact: metadata_store_pb2.Artifact | None, name: str) -> int | None:
    value = artifact.custom_properties.get(name) if artifact is not None else None
    return int(value.int_value or value.double_value) if value is not None else None


def _recorded_configs(runs: list[ComponentRun]) -> list[dict[str, Any]]:
    """The config dicts the components were given (each `Config.restricted` to what it reads), as recorded."""
    from components.scene_example_gen import config_from_exec_properties
    from tfx.types import standard_component_specs

    found = []
    for run in runs:
        if run.node == SCENE_EXAMPLE_GEN and standard_component_specs.CUSTOM_CONFIG_KEY in run.properties:
            found.append(json.loads(config_from_exec_properties(run.properties).to_json()))
            continue
        for name in ("config_json", "custom_config"):  # the custom components' and Transform's/Trainer's
            try:
                value = json.loads(run.properties.get(name) or "null")
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and isinstance(value.get("config"), dict):
                value = value["config"]
            if isinstance(value, dict) and "classes" in value:
                found.append(value)
    return found


def recorded_config(runs: list[ComponentRun], pipeline_root: str) -> Config:
    """The config the run had, rebuilt from what its components recorded in MLMD.

    Each component records the config it was given, restricted to the sections it reads, the others at their
    defaults (Config.restricted). So each section is taken from a component whose copy differs from the default
    (any such copy is the run's own value); a section no component recorded a change of is the default, or was
    read by no component of this run. The run section comes from what it decided: the data root ExampleGen read,
    the pipeline root and the serving dir the Pusher publishes to.
    """
    defaults = json.loads(Config().to_json())  # as recorded: JSON, tuples as lists
    merged = dict(defaults)
    for recorded in _recorded_configs(runs):
        for section, value in recorded.items():
            if section in merged and value != defaults[section]:
                merged[section] = value
    run = dict(defaults["run"], pipeline_root=pipeline_root)
    for component in runs:
        if component.node == SCENE_EXAMPLE_GEN and component.properties.get("input_base"):
            run["data_root"] = component.properties["input_base"]
        if component.node in (DRIFT_GATE, BASELINE) and component.properties.get("serving_dir"):
            run["serving_dir"] = component.properties["serving_dir"]
    merged["run"] = run
    return Config.from_dict(merged)


def span(runs: list[ComponentRun]) -> int | None:
    """The span ExampleGen read."""
    from tfx.components.example_gen import utils as example_gen_utils

    return _int_property(output(runs, SCENE_EXAMPLE_GEN, "examples"), example_gen_utils.SPAN_PROPERTY_NAME)


def ingest_report(runs: list[ComponentRun]) -> dict[str, Any] | None:
    """SceneExampleGen's account of what the masks and the split buffer removed (see its module)."""
    from components.scene_example_gen import INGEST_REPORT_PROPERTY

    examples = output(runs, SCENE_EXAMPLE_GEN, "examples")
    recorded = string_property(examples, INGEST_REPORT_PROPERTY) if examples is not None else None
    return json.loads(recorded) if recorded else None


def gate_reports(runs: list[ComponentRun]) -> dict[str, dict[str, Any]]:
    """The DataGate's and DriftGate's reports, by node (a gate that failed published none: see `stopped`)."""
    from components.data_gate import GATE_REPORT_PROPERTY

    reports = {}
    for node, key in ((DATA_GATE, "training_labels"), (DRIFT_GATE, "drift_report")):
        artifact = output(runs, node, key)
        recorded = string_property(artifact, GATE_REPORT_PROPERTY) if artifact is not None else None
        if recorded:
            reports[node] = json.loads(recorded)
    return reports


def statistics_uri(runs: list[ComponentRun]) -> str | None:
    artifact = output(runs, STATISTICS_GEN, "statistics")
    return artifact.uri if artifact is not None else None


def model_dir(runs: list[ComponentRun]) -> str | None:
    """The SavedModel the Trainer exported in this run (the one the Evaluator judged)."""
    from tfx.utils import path_utils

    model = output(runs, TRAINER, "model")
    return path_utils.serving_model_path(model.uri) if model is not None else None


@dataclass(frozen=True)
class Baseline:
    source: str | None  # why this baseline, in words
    comparable: bool  # False: the candidate was its own baseline, so its "changes" are no comparison


def baseline(runs: list[ComponentRun]) -> Baseline:
    from components.baseline import BASELINE_COMPARABLE_PROPERTY, BASELINE_SOURCE_PROPERTY

    artifact = output(runs, BASELINE, "baseline")
    if artifact is None:
        return Baseline(None, False)
    return Baseline(string_property(artifact, BASELINE_SOURCE_PROPERTY),
                    bool(_int_property(artifact, BASELINE_COMPARABLE_PROPERTY)))


def evaluation(runs: list[ComponentRun], config: Config):
    """The Evaluator's verdict (models.evaluation.EvaluationSummary), or None when no model was evaluated."""
    from models.evaluation import read_evaluation

    artifact = output(runs, EVALUATOR, "evaluation")
    return read_evaluation(artifact.uri, config) if artifact is not None else None


def push_outcome(runs: list[ComponentRun], blessed: bool | None) -> str:
    """Where the model was pushed, or why nothing was (`blessed`: the verdict; None when nothing was evaluated)."""
    from components.atomic_pusher import NOT_PUSHED_REASON_PROPERTY

    pushed = output(runs, PUSHER, "pushed_model")
    if pushed is not None and _int_property(pushed, "pushed"):
        return "Pushed: " + string_property(pushed, "pushed_destination")
    reason = string_property(pushed, NOT_PUSHED_REASON_PROPERTY) if pushed is not None else None
    if reason:  # blessed, but publishing it was refused
        return f"Nothing pushed: {reason}"
    if blessed is None:
        halted = stopped(runs)
        return "Nothing pushed" + (f" (the run stopped at {halted.node})" if halted else " (no model was evaluated)")
    return "Nothing pushed" + ("" if blessed else " (the model was not blessed)")


def render(config: Config, runs: list[ComponentRun]) -> str:
    """A short plain-text summary for the terminal."""
    if not runs:
        return "No run recorded in " + config.metadata_path
    lines = ["Components (state, seconds):"]
    lines += [f"  {r.node:<28} {r.state:<9} {r.seconds:7.1f}" for r in runs]
    halted = stopped(runs)
    if halted is not None:
        lines.append(f"Stopped by {halted.node}" + (f": {halted.stop_message}" if halted.stop_message else ""))
    lines += ingest_lines(runs)
    names = dict(zip(config.class_ids, config.class_names))
    reports = gate_reports(runs)
    if DATA_GATE in reports:
        lines.append("Examples per split and class:")
        for split, counts in reports[DATA_GATE]["label_counts"].items():
            total = sum(counts.values())
            per_class = ", ".join(f"{names[int(k)]} {v}" for k, v in sorted(counts.items(), key=lambda kv: int(kv[0])))
            lines.append(f"  {split:<10} {total:6d}: {per_class}")
    for d in (d for report in reports.values() for d in report["divergences"]):
        lines.append(f"  label skew {d['comparison']}: L-inf {d['linf']:.3f} (limit {d['linf_max']}), "
                     f"JS {d['js']:.4f} (limit {d['js_max']})")
    for d in (d for report in reports.values() for d in report.get("feature_divergences", [])):
        lines.append(f"  {d['comparison']}: {d['feature']} Jensen-Shannon {d['js']:.4f} (limit {d['limit']})"
                     + ("  OVER LIMIT" if d["js"] > d["limit"] else ""))
    lines += [f"  drift not compared: {why}" for report in reports.values() for why in report.get("skipped", [])]
    lines += evaluation_lines(config, runs)
    return "\n".join(lines)


def ingest_lines(runs: list[ComponentRun]) -> list[str]:
    """What the valid-pixel masks and the split buffer removed, per scene, from SceneExampleGen's report."""
    report = ingest_report(runs)
    if not report:
        return []
    lines = ["Scenes (labelled pixels whose window is valid in every stream; pixels masked per stream; "
             "LiDAR cells filled from returns within the allowed gap):"]
    lines += [f"  {scene}: {scene_line(found)}" for scene, found in sorted(report["scenes"].items())]
    lines += [f"  bad scene: {problem}" for problem in report.get("bad_scenes", [])]
    lines.append(f"  {split_line(report)}")
    return lines


def scene_line(found: dict[str, Any]) -> str:
    """One scene of the ingest report in words."""
    masked = ", ".join(f"{stream} {n}" for stream, n in found["masked_pixels"].items() if stream != "labels")
    filled = ", ".join(f"{channel} {n}" for channel, n in found["lidar_filled_cells"].items())
    share = "no labels" if found["valid_share"] is None else f"{100 * found['valid_share']:.1f} %"
    return (f"{found['valid_labelled_pixels']} of {found['labelled_pixels']} labelled pixels valid ({share}), "
            f"{found['patches']} patches; masked: {masked}, unlabelled or label nodata "
            f"{found['masked_pixels']['labels']}; filled: {filled}")


def split_line(report: dict[str, Any]) -> str:
    """The split and what its buffer cost, in words."""
    per_split = ", ".join(f"{split} {n}" for split, n in report["patches_per_split"].items())
    return (f"split by {report['split_by']}: {per_split}; {report['buffer_dropped']} patches dropped because "
            f"their window reached into another split")


def evaluation_lines(config: Config, runs: list[ComponentRun]) -> list[str]:
    from models.evaluation import verdict_lines

    result = evaluation(runs, config)
    if result is None:
        return ["No model evaluated in this run.", push_outcome(runs, None)]
    return [*verdict_lines(result, config, baseline(runs).source), push_outcome(runs, result.blessed)]
