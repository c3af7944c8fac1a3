"""The data gates: the only components that can stop a run before Transform.

TFX's validators only record anomalies; downstream components run regardless. DataGate reads what they found
(schema anomalies from ExampleValidator, the eval-vs-train label comparison of DistributionValidator) and
measures train-vs-eval label skew itself; DriftGate compares this span's training labels with the training data
of the last blessed model (the newest version in the serving dir). Both fail with a message naming the feature or
class that moved, by how much, against which limit. DataGate hands the training split's label counts to the
Trainer, so class weights need no second pass over the data, with the data's span and input fingerprint.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.io import fileio
from tfx.types import Artifact

from components.atomic_pusher import latest_published
from models.class_weights import label_counts
from models.trainer import TRAINING_DATA_KEY, training_record_or_none
from pipeline.config import Config, ValidationConfig

LABEL_COUNTS_FILE = "label_counts.json"
DRIFT_COMPARISON = "last blessed model's training data vs this span's training data"
GATE_REPORT_PROPERTY = "gate_report"


class DataGateError(RuntimeError):
    """The data is not fit to train on; the message says why."""


@dataclass(frozen=True)
class Divergence:
    comparison: str  # e.g. "train vs eval"
    linf: float
    js: float
    linf_max: float
    js_max: float
    moved_class: int  # the class whose share changed most
    share_a: float
    share_b: float

    @property
    def exceeded(self) -> bool:
        return self.linf > self.linf_max or self.js > self.js_max

    def describe(self, class_names: dict[int, str]) -> str:
        name = class_names.get(self.moved_class, str(self.moved_class))
        a, b = self.comparison.split(" vs ")
        return (
            f"label distribution {self.comparison}: L-infinity {self.linf:.3f} (limit {self.linf_max}), "
            f"Jensen-Shannon {self.js:.4f} (limit {self.js_max}); class {self.moved_class} {name} moved most: "
            f"{100 * self.share_a:.1f} % of {a} vs {100 * self.share_b:.1f} % of {b}"
        )


@dataclass
class GateReport:
    label_counts: dict[str, dict[int, int]]
    divergences: list[Divergence] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps(
            {
                "passed": self.passed,
                "problems": self.problems,
                "label_counts": {split: {str(k): v for k, v in c.items()} for split, c in self.label_counts.items()},
                "divergences": [asdict(d) for d in self.divergences],
            },
            sort_keys=True,
        )


def distribution(counts: dict[int, int], class_ids: tuple[int, ...]) -> np.ndarray:
    total = sum(counts.get(c, 0) for c in class_ids)
    if total == 0:
        return np.zeros(len(class_ids))
    return np.array([counts.get(c, 0) / total for c in class_ids])


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Base-2 Jensen-Shannon divergence in [0, 1], as TFDV computes it."""
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def compare(comparison: str, a: dict[int, int], b: dict[int, int], class_ids: tuple[int, ...],
            linf_max: float, js_max: float) -> Divergence:
    p, q = distribution(a, class_ids), distribution(b, class_ids)
    moved = int(np.argmax(np.abs(p - q)))
    return Divergence(comparison, float(np.max(np.abs(p - q))), jensen_shannon(p, q), linf_max, js_max,
                      class_ids[moved], float(p[moved]), float(q[moved]))


def anomaly_messages(anomalies: anomalies_pb2.Anomalies, source: str) -> list[str]:
    messages = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = "; ".join(r.description or r.short_description for r in info.reason) or info.description
        messages.append(f"{source}: feature {feature!r}: {reasons}")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        reasons = "; ".join(r.description or r.short_description for r in info.reason) or info.description
        messages.append(f"{source}: dataset: {reasons}")
    return messages


def evaluate(config: Config, counts: dict[str, dict[int, int]], schema_anomalies: list[str],
             distribution_anomalies: list[str]) -> GateReport:
    """Whether this span's data may be trained on. Pure: every input is already read from disk."""
    limits: ValidationConfig = config.validation
    report = GateReport(label_counts=counts)
    names = dict(zip(config.class_ids, config.class_names))
    if schema_anomalies:
        if limits.fail_on_schema_anomalies:
            report.problems.extend(schema_anomalies)
        else:
            logging.warning("Schema anomalies (not failing: validation.fail_on_schema_anomalies is false):\n%s",
                            "\n".join(schema_anomalies))
    report.problems.extend(distribution_anomalies)
    for split in ("train", "eval"):
        if sum(counts[split].values()) == 0:
            report.problems.append(f"the {split} split has no labelled examples")
    missing = [f"{c} {names[c]}" for c in config.class_ids if counts["train"].get(c, 0) == 0]
    if missing:
        report.problems.append(f"classes with no training examples (the model cannot learn them): {missing}")
    if all(sum(counts[split].values()) for split in ("train", "eval")):
        _check(report, compare("train vs eval", counts["train"], counts["eval"], config.class_ids,
                               limits.train_eval_linf_max, limits.train_eval_js_max), names)
    return report


def evaluate_drift(config: Config, train_counts: dict[int, int], baseline_train_counts: dict[int, int]) -> GateReport:
    """Whether this span's labels moved too far from the data the blessed model was trained on."""
    limits: ValidationConfig = config.validation
    report = GateReport(label_counts={"train": train_counts, "baseline_train": baseline_train_counts})
    if sum(train_counts.values()) and sum(baseline_train_counts.values()):
        _check(report, compare(DRIFT_COMPARISON, baseline_train_counts, train_counts, config.class_ids,
                               limits.span_drift_linf_max, limits.span_drift_js_max),
               dict(zip(config.class_ids, config.class_names)))
    return report


def _check(report: GateReport, divergence: Divergence, names: dict[int, str]) -> None:
    report.divergences.append(divergence)
    logging.info("Data gate: %s", divergence.describe(names))
    if divergence.exceeded:
        report.problems.append(divergence.describe(names))


def _train_eval_counts(statistics: Artifact, config: Config) -> dict[str, dict[int, int]]:
    return {split: label_counts(stats_artifact_utils.load_statistics(statistics, split).proto(), config.class_ids)
            for split in ("train", "eval")}


def _read_anomalies(artifact: Artifact, source: str) -> list[str]:
    messages = []
    for path in sorted(fileio.glob(os.path.join(artifact.uri, "*", "SchemaDiff.pb"))):
        with fileio.open(path, "rb") as f:
            anomalies = anomalies_pb2.Anomalies.FromString(f.read())
        where = os.path.basename(os.path.dirname(path))
        messages.extend(anomaly_messages(anomalies, f"{source} ({where})"))
    return messages


def _record(report: GateReport, artifact: Artifact, gate: str) -> None:
    artifact.set_string_custom_property(GATE_REPORT_PROPERTY, report.to_json())
    if not report.passed:
        raise DataGateError(f"{gate} stopped the run before Transform:\n  " + "\n  ".join(report.problems))


def data_provenance(examples: Artifact) -> dict[str, Any]:
    """Which data the Trainer sees: the span and input fingerprint ExampleGen recorded (None when not recorded).
    KFP hands metadata numbers over as floats; get_int_custom_property converts them."""
    span, fingerprint = example_gen_utils.SPAN_PROPERTY_NAME, example_gen_utils.FINGERPRINT_PROPERTY_NAME
    return {"span": examples.get_int_custom_property(span) if examples.has_custom_property(span) else None,
            "input_fingerprint": examples.get_string_custom_property(fingerprint)
            if examples.has_custom_property(fingerprint) else None}


@tfx.dsl.components.component
def DataGate(
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    distribution_anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    training_labels: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.HyperParameters],
    config_json: tfx.dsl.components.Parameter[str],
) -> None:
    """Fails the run on schema anomalies or train/eval label skew; else hands the Trainer its label counts and
    the data's provenance (span, input fingerprint).

    It takes no baseline, so on a rerun over the same data it is cached and so is the Trainer it feeds.
    """
    config = Config.from_dict(json.loads(config_json))
    counts = _train_eval_counts(statistics, config)
    report = evaluate(config, counts, _read_anomalies(schema_anomalies, "ExampleValidator"),
                      _read_anomalies(distribution_anomalies, "DistributionValidator"))
    _record(report, training_labels, "Data gate")
    fileio.makedirs(training_labels.uri)
    with fileio.open(os.path.join(training_labels.uri, LABEL_COUNTS_FILE), "w") as f:
        json.dump({**{split: {str(k): v for k, v in c.items()} for split, c in counts.items()},
                   TRAINING_DATA_KEY: data_provenance(examples)}, f, sort_keys=True)


@tfx.dsl.components.component
def DriftGate(
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    drift_report: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    config_json: tfx.dsl.components.Parameter[str],
    serving_dir: tfx.dsl.components.Parameter[str],
) -> None:
    """Fails the run when this span's training labels drifted from those of the model serving now (the newest
    version in the serving dir: the blessed models, found the same way on every runner)."""
    config = Config.from_dict(json.loads(config_json))
    published = latest_published(serving_dir)
    record = training_record_or_none(published) if published else None
    if record is None:
        logging.warning("Drift gate: nothing to compare with: %s", f"{published} holds no training record (pushed by "
                        f"hand?)" if published else f"nothing published in {serving_dir} yet")
        report = GateReport(label_counts={})
    else:
        baseline = {int(k): int(v) for k, v in record["label_counts"]["train"].items()}
        logging.info("Drift gate: comparing with the training data of %s", published)
        report = evaluate_drift(config, _train_eval_counts(statistics, config)["train"], baseline)
    _record(report, drift_report, "Drift gate")
