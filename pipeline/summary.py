"""What the last run found, read back from ML Metadata: data, skew, per-class recall, the verdict, the push.

The pipeline's components record everything in MLMD; this module only reads, so the same summary works for a
fresh run, a cached rerun and a run that stopped at the data gate.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from foundation.config import Config
from pipeline.component_ids import BASELINE, DATA_GATE, DRIFT_GATE, EVALUATOR, PUSHER, SCENE_EXAMPLE_GEN


@dataclass
class ComponentRun:
    node: str
    state: str  # COMPLETE, CACHED, FAILED, RUNNING ...
    seconds: float
    outputs: dict[str, list[metadata_store_pb2.Artifact]] = field(default_factory=dict)


def open_store(config: Config) -> metadata_store.MetadataStore:
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = os.path.abspath(config.metadata_path)
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(connection)


def last_run(config: Config) -> list[ComponentRun]:
    """Every component execution of the newest pipeline run, in the order they started."""
    if not os.path.exists(config.metadata_path):
        return []
    store = open_store(config)
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    if not runs:
        return []
    newest = max(runs, key=lambda c: c.create_time_since_epoch)
    node_of = {}
    for node in store.get_contexts_by_type("node"):
        for execution in store.get_executions_by_context(node.id):
            node_of[execution.id] = node.name.split(".", 1)[-1]
    executions = sorted(store.get_executions_by_context(newest.id), key=lambda e: e.create_time_since_epoch)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    artifacts = {a.id: a for a in store.get_artifacts_by_id({e.artifact_id for e in events})}
    result = []
    for execution in executions:
        run = ComponentRun(
            node=node_of.get(execution.id, str(execution.type)),
            state=metadata_store_pb2.Execution.State.Name(execution.last_known_state),
            seconds=(execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0,
        )
        for event in events:
            if event.execution_id == execution.id and event.type == metadata_store_pb2.Event.OUTPUT:
                key = event.path.steps[0].key if event.path.steps else "output"
                run.outputs.setdefault(key, []).append(artifacts[event.artifact_id])
        result.append(run)
    return result


def _output(runs: list[ComponentRun], node: str, key: str) -> metadata_store_pb2.Artifact | None:
    for run in runs:
        if run.node == node and run.outputs.get(key):
            return run.outputs[key][0]
    return None


def _string_property(artifact: metadata_store_pb2.Artifact, name: str) -> str | None:
    value = artifact.custom_properties.get(name)
    return value.string_value if value is not None else None


def render(config: Config, runs: list[ComponentRun]) -> str:
    """A short plain-text summary for the terminal."""
    from components.data_gate import GATE_REPORT_PROPERTY

    if not runs:
        return "No run recorded in " + config.metadata_path
    lines = ["Components (state, seconds):"]
    lines += [f"  {r.node:<28} {r.state:<9} {r.seconds:7.1f}" for r in runs]
    lines += ingest_lines(runs)
    names = dict(zip(config.class_ids, config.class_names))
    reports = [json.loads(_string_property(artifact, GATE_REPORT_PROPERTY) or "{}")
               for artifact in (_output(runs, DATA_GATE, "training_labels"), _output(runs, DRIFT_GATE, "drift_report"))
               if artifact is not None]
    if reports:
        lines.append("Examples per split and class:")
        for split, counts in reports[0]["label_counts"].items():
            total = sum(counts.values())
            per_class = ", ".join(f"{names[int(k)]} {v}" for k, v in sorted(counts.items(), key=lambda kv: int(kv[0])))
            lines.append(f"  {split:<10} {total:6d}: {per_class}")
    for d in (d for report in reports for d in report["divergences"]):
        lines.append(f"  label skew {d['comparison']}: L-inf {d['linf']:.3f} (limit {d['linf_max']}), "
                     f"JS {d['js']:.4f} (limit {d['js_max']})")
    for d in (d for report in reports for d in report.get("feature_divergences", [])):
        lines.append(f"  {d['comparison']}: {d['feature']} Jensen-Shannon {d['js']:.4f} (limit {d['limit']})"
                     + ("  OVER LIMIT" if d["js"] > d["limit"] else ""))
    lines += [f"  drift not compared: {why}" for report in reports for why in report.get("skipped", [])]
    lines += evaluation_lines(config, runs)
    return "\n".join(lines)


def ingest_lines(runs: list[ComponentRun]) -> list[str]:
    """What the valid-pixel masks and the split buffer removed, per scene, from SceneExampleGen's report."""
    from components.scene_example_gen import INGEST_REPORT_PROPERTY

    examples = _output(runs, SCENE_EXAMPLE_GEN, "examples")
    recorded = _string_property(examples, INGEST_REPORT_PROPERTY) if examples is not None else None
    if not recorded:
        return []
    report = json.loads(recorded)
    lines = ["Scenes (labelled pixels whose window is valid in every stream; pixels masked per stream; "
             "LiDAR cells filled from returns within the allowed gap):"]
    for scene, found in sorted(report["scenes"].items()):
        masked = ", ".join(f"{stream} {n}" for stream, n in found["masked_pixels"].items() if stream != "labels")
        filled = ", ".join(f"{channel} {n}" for channel, n in found["lidar_filled_cells"].items())
        share = "no labels" if found["valid_share"] is None else f"{100 * found['valid_share']:.1f} %"
        lines.append(f"  {scene}: {found['valid_labelled_pixels']} of {found['labelled_pixels']} labelled pixels "
                     f"valid ({share}), {found['patches']} patches; masked: {masked}, unlabelled or label nodata "
                     f"{found['masked_pixels']['labels']}; filled: {filled}")
    lines += [f"  bad scene: {problem}" for problem in report.get("bad_scenes", [])]
    per_split = ", ".join(f"{split} {n}" for split, n in report["patches_per_split"].items())
    lines.append(f"  split by {report['split_by']}: {per_split}; {report['buffer_dropped']} patches dropped because "
                 f"their window reached into another split")
    return lines


def evaluation_lines(config: Config, runs: list[ComponentRun]) -> list[str]:
    from components.baseline import BASELINE_SOURCE_PROPERTY
    from models.evaluation import read_evaluation, verdict_lines

    evaluation = _output(runs, EVALUATOR, "evaluation")
    if evaluation is None:
        return ["No model evaluated in this run."]
    result = read_evaluation(evaluation.uri, config)
    baseline = _output(runs, BASELINE, "baseline")
    lines = verdict_lines(result, config, _string_property(baseline, BASELINE_SOURCE_PROPERTY) if baseline else None)
    pushed = _output(runs, PUSHER, "pushed_model")
    if pushed is not None and pushed.custom_properties.get("pushed") and pushed.custom_properties["pushed"].int_value:
        lines.append("Pushed: " + _string_property(pushed, "pushed_destination"))
    else:
        lines.append("Nothing pushed" + ("" if result.blessed else " (the model was not blessed)"))
    return lines
