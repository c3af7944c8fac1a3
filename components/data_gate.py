"""The data gates: the only components that can stop a run before Transform.

TFX's validators only record anomalies; downstream components run regardless. DataGate reads what they found
(schema anomalies from ExampleValidator, the split-vs-train label comparisons of DistributionValidator), measures
label skew of validation and test against train, and the skew of every band's and LiDAR channel's value
distribution between train and test. DriftGate compares this span's training labels and per-feature value
distributions with the training data of the last blessed model (the newest version in the serving dir). Both fail
with a message naming the feature or class that moved, by how much, against which limit.

DataGate hands the Trainer the label counts of every split (class weights need no second pass over the data), the
data's span and input fingerprint, and the training split's stream-feature statistics, which the Trainer keeps in
the model's training record for the next span's drift check.

Per-feature divergences are TFDV's own: its skew and drift comparators' numeric Jensen-Shannon divergence,
measured on the statistics' QUANTILES histograms (equal-mass buckets, aligned to common boundaries), read back
from the anomalies' drift_skew_info. Equal-width STANDARD buckets span min to max, so a few outliers move them:
three glint pixels among 24,300 red values measured 0.33 on STANDARD histograms, 0.11 on QUANTILES (ordinary
variation 0.08 and 0.03). On the sample scenes QUANTILES also measured ordinary variation about a third lower, at
the same separation from scale faults (the limits' defaults in foundation/config.py say what was measured).
"""

import base64
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.statistics_gen import stats_artifact_utils
# The TFX modules themselves, not the public alias `tfx.v1`, which also imports google.cloud.aiplatform (3-5 s on
# every run).
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import Artifact, standard_artifacts

from components.label_counts import label_counts
from foundation.config import SPLITS, TEST, TRAIN, VALIDATION, Config, ValidationConfig
from foundation.published import TRAIN_STATISTICS_KEY, TRAINING_DATA_KEY, latest_published, training_record_or_none
from transforms.features import layout

LABEL_COUNTS_FILE = "label_counts.json"
DRIFT_COMPARISON = "last blessed model's training data vs this span's training data"
SKEW_COMPARISON = f"{TRAIN} vs {TEST}"
GATE_REPORT_PROPERTY = "gate_report"
SKEW, DRIFT = "skew", "drift"
# Per kind of comparison: the schema comparator, validate_statistics' argument for the control statistics and the
# drift_skew_info field the measurement comes back in.
_TFDV_COMPARISON = {
    SKEW: ("skew_comparator", "serving_statistics", "skew_measurements"),
    DRIFT: ("drift_comparator", "previous_statistics", "drift_measurements"),
}


class DataGateError(RuntimeError):
    """The data is not fit to train on; the message says why."""


@dataclass(frozen=True)
class Divergence:
    comparison: str  # e.g. "train vs test"
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


@dataclass(frozen=True)
class FeatureDivergence:
    """Jensen-Shannon divergence of one band's or LiDAR channel's value distribution between two datasets."""

    comparison: str  # SKEW_COMPARISON or DRIFT_COMPARISON
    feature: str
    js: float
    limit: float

    @property
    def exceeded(self) -> bool:
        return self.js > self.limit

    def describe(self) -> str:
        return (f"feature {self.feature!r}, {self.comparison}: Jensen-Shannon divergence of its values "
                f"{self.js:.4f} (limit {self.limit})")


@dataclass(frozen=True)
class FeatureComparison:
    divergences: list[FeatureDivergence]
    skipped: list[str]  # per feature not compared: its name and why


@dataclass
class GateReport:
    label_counts: dict[str, dict[int, int]]
    divergences: list[Divergence] = field(default_factory=list)
    feature_divergences: list[FeatureDivergence] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
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
                "feature_divergences": [asdict(d) for d in self.feature_divergences],
                "skipped": self.skipped,
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


def feature_name(feature: statistics_pb2.FeatureNameStatistics) -> str:
    return ".".join(feature.path.step) if feature.path.step else feature.name


def stream_statistics(dataset: statistics_pb2.DatasetFeatureStatistics,
                      features: Iterable[str]) -> statistics_pb2.DatasetFeatureStatistics:
    """A copy of `dataset` holding only the statistics of `features`."""
    wanted = set(features)
    kept = statistics_pb2.DatasetFeatureStatistics()
    kept.CopyFrom(dataset)
    del kept.features[:]
    kept.features.extend(f for f in dataset.features if feature_name(f) in wanted)
    return kept


def encode_statistics(dataset: statistics_pb2.DatasetFeatureStatistics) -> str:
    return base64.b64encode(dataset.SerializeToString()).decode("ascii")


def decode_statistics(text: str) -> statistics_pb2.DatasetFeatureStatistics:
    return statistics_pb2.DatasetFeatureStatistics.FromString(base64.b64decode(text))


def feature_limits(config: Config, kind: str) -> dict[str, float]:
    """The JS limit of every band and LiDAR channel the config names, for SKEW or DRIFT."""
    limits: ValidationConfig = config.validation
    lay = layout(config)
    multispectral, lidar = ((limits.multispectral_skew_js_max, limits.lidar_skew_js_max) if kind == SKEW
                            else (limits.multispectral_drift_js_max, limits.lidar_drift_js_max))
    return {**dict.fromkeys(lay.multispectral, multispectral), **dict.fromkeys(lay.lidar, lidar)}


def jensen_shannon_by_feature(current: statistics_pb2.DatasetFeatureStatistics,
                              control: statistics_pb2.DatasetFeatureStatistics,
                              limits: Mapping[str, float], kind: str) -> dict[str, float]:
    """TFDV's numeric Jensen-Shannon divergence per feature of `limits`, from its SKEW comparator (`control` as
    the serving statistics) or DRIFT comparator (`control` as the previous span's), on the QUANTILES histograms.

    validate_statistics records every comparator's measurement in drift_skew_info, above its threshold or not;
    a feature without a histogram in either dataset gets none and is absent from the result.
    """
    comparator, control_argument, measurements = _TFDV_COMPARISON[kind]
    schema = schema_pb2.Schema()
    for name, limit in limits.items():
        divergence = getattr(schema.feature.add(name=name, type=schema_pb2.FLOAT), comparator).jensen_shannon_divergence
        divergence.threshold = limit
        divergence.source.type = schema_pb2.HistogramSelection.QUANTILES

    def only_compared(dataset):
        return statistics_pb2.DatasetFeatureStatisticsList(datasets=[stream_statistics(dataset, limits)])

    anomalies = tfdv.validate_statistics(only_compared(current), schema,
                                         **{control_argument: only_compared(control)})
    return {".".join(info.path.step): measurement.value
            for info in anomalies.drift_skew_info for measurement in getattr(info, measurements)
            if measurement.type == anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE}


def compare_features(comparison: str, current: statistics_pb2.DatasetFeatureStatistics,
                     control: statistics_pb2.DatasetFeatureStatistics, limits: Mapping[str, float], kind: str,
                     current_name: str, control_name: str) -> FeatureComparison:
    """Every feature of `limits` that both datasets describe, measured; the others skipped, saying why."""
    present = {name: {feature_name(f) for f in dataset.features}
               for name, dataset in ((current_name, current), (control_name, control))}
    skipped = [f"{feature}: not in the {name}" for feature in limits for name, features in present.items()
               if feature not in features]
    both = {feature: limit for feature, limit in limits.items()
            if all(feature in features for features in present.values())}
    measured = jensen_shannon_by_feature(current, control, both, kind) if both else {}
    skipped += [f"{feature}: TFDV measured no Jensen-Shannon divergence (no value histogram)"
                for feature in both if feature not in measured]
    return FeatureComparison(
        [FeatureDivergence(comparison, feature, measured[feature], limit) for feature, limit in both.items()
         if feature in measured], skipped)


def feature_skew(config: Config, train: statistics_pb2.DatasetFeatureStatistics,
                 test: statistics_pb2.DatasetFeatureStatistics) -> FeatureComparison:
    """Each band's and LiDAR channel's values, train vs test."""
    return compare_features(SKEW_COMPARISON, train, test, feature_limits(config, SKEW), SKEW,
                            f"{TRAIN} split's statistics", f"{TEST} split's statistics")


def feature_drift(config: Config, train: statistics_pb2.DatasetFeatureStatistics,
                  baseline_train: statistics_pb2.DatasetFeatureStatistics | None) -> FeatureComparison:
    """Each band's and LiDAR channel's values, the blessed model's training data vs this span's; only the
    features both have (a model trained on another band list shares some or none)."""
    limits = feature_limits(config, DRIFT)
    if baseline_train is None:
        return FeatureComparison([], [f"{feature}: the serving model's training record holds no {TRAIN_STATISTICS_KEY}"
                                      for feature in limits])
    compared = compare_features(DRIFT_COMPARISON, train, baseline_train, limits, DRIFT,
                                "this span's training statistics", "serving model's training statistics")
    retired = sorted({feature_name(f) for f in baseline_train.features} - set(limits))
    return FeatureComparison(compared.divergences, compared.skipped + [
        f"{feature}: the serving model was trained on it, this configuration has no such band or channel"
        for feature in retired])


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
             distribution_anomalies: list[str], skew: FeatureComparison) -> GateReport:
    """Whether this span's data may be trained on. Pure: every input is already read from disk and measured."""
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
    for split in SPLITS:
        if sum(counts[split].values()) == 0:
            report.problems.append(f"the {split} split has no labelled examples")
    missing = [f"{c} {names[c]}" for c in config.class_ids if counts[TRAIN].get(c, 0) == 0]
    if missing:
        report.problems.append(f"classes with no training examples (the model cannot learn them): {missing}")
    for split in (VALIDATION, TEST):
        if sum(counts[TRAIN].values()) and sum(counts[split].values()):
            _check(report, compare(f"{TRAIN} vs {split}", counts[TRAIN], counts[split], config.class_ids,
                                   limits.label_skew_linf_max, limits.label_skew_js_max), names)
    # Every band and channel must be compared: one the statistics lack or TFDV cannot measure is not vouched for.
    report.problems.extend(f"feature skew {SKEW_COMPARISON} not measured: {why}" for why in skew.skipped)
    _check_features(report, skew)
    return report


def evaluate_drift(config: Config, train_counts: dict[int, int], baseline_train_counts: dict[int, int],
                   drift: FeatureComparison) -> GateReport:
    """Whether this span's labels or feature values moved too far from the data the blessed model was trained on.
    Features the two do not share are skipped (logged and listed in the report), not failed."""
    limits: ValidationConfig = config.validation
    report = GateReport(label_counts={TRAIN: train_counts, "baseline_train": baseline_train_counts})
    if sum(train_counts.values()) and sum(baseline_train_counts.values()):
        _check(report, compare(DRIFT_COMPARISON, baseline_train_counts, train_counts, config.class_ids,
                               limits.span_drift_linf_max, limits.span_drift_js_max),
               dict(zip(config.class_ids, config.class_names)))
    if drift.skipped:
        logging.warning("Drift gate: features not compared with the serving model's training data:\n  %s",
                        "\n  ".join(drift.skipped))
    report.skipped.extend(drift.skipped)
    _check_features(report, drift)
    return report


def _check(report: GateReport, divergence: Divergence, names: dict[int, str]) -> None:
    report.divergences.append(divergence)
    logging.info("Data gate: %s", divergence.describe(names))
    if divergence.exceeded:
        report.problems.append(divergence.describe(names))


def _check_features(report: GateReport, comparison: FeatureComparison) -> None:
    for divergence in comparison.divergences:
        report.feature_divergences.append(divergence)
        logging.info("Data gate: %s", divergence.describe())
        if divergence.exceeded:
            report.problems.append(divergence.describe())


def split_statistics(statistics: Artifact, splits: Iterable[str] = SPLITS
                     ) -> dict[str, statistics_pb2.DatasetFeatureStatistics]:
    """Each split's statistics of all examples (StatisticsGen computes no slices)."""
    return {split: stats_artifact_utils.load_statistics(statistics, split).get_default_slice_or_die().proto()
            for split in splits}


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


def training_hyperparameters(config: Config, counts: dict[str, dict[int, int]],
                             train: statistics_pb2.DatasetFeatureStatistics, data: dict[str, Any]) -> dict[str, Any]:
    """What the Trainer receives as `fn_args.hyperparameters`: label counts per split, the data's provenance and
    the training split's stream-feature statistics (base64, for the model's training record)."""
    return {**{split: {str(k): v for k, v in c.items()} for split, c in counts.items()},
            TRAINING_DATA_KEY: data,
            TRAIN_STATISTICS_KEY: encode_statistics(stream_statistics(train, layout(config).stream_features))}


@component
def DataGate(
    examples: InputArtifact[standard_artifacts.Examples],
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    schema_anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    distribution_anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    training_labels: OutputArtifact[standard_artifacts.HyperParameters],
    config_json: Parameter[str],
) -> None:
    """Fails the run on schema anomalies, label skew of validation or test against train, or a band's or LiDAR
    channel's value skew between train and test; else hands the Trainer its hyperparameters (see
    `training_hyperparameters`).

    It takes no baseline, so on a rerun over the same data it is cached and so is the Trainer it feeds.
    """
    config = Config.from_dict(json.loads(config_json))
    by_split = split_statistics(statistics)
    counts = {split: label_counts(dataset, config.class_ids) for split, dataset in by_split.items()}
    report = evaluate(config, counts, _read_anomalies(schema_anomalies, "schema anomalies"),
                      _read_anomalies(distribution_anomalies, "label skew anomalies"),
                      feature_skew(config, by_split[TRAIN], by_split[TEST]))
    _record(report, training_labels, "Data gate")
    fileio.makedirs(training_labels.uri)
    with fileio.open(os.path.join(training_labels.uri, LABEL_COUNTS_FILE), "w") as f:
        json.dump(training_hyperparameters(config, counts, by_split[TRAIN], data_provenance(examples)), f,
                  sort_keys=True)


@component
def DriftGate(
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    drift_report: OutputArtifact[standard_artifacts.ExampleAnomalies],
    config_json: Parameter[str],
    serving_dir: Parameter[str],
) -> None:
    """Fails the run when this span's training labels or feature values drifted from those the model serving now
    was trained on (the newest version in the serving dir: the blessed models, found the same way on every
    runner)."""
    config = Config.from_dict(json.loads(config_json))
    published = latest_published(serving_dir)
    record = training_record_or_none(published) if published else None
    if record is None:
        logging.warning("Drift gate: nothing to compare with: %s", f"{published} holds no training record (pushed by "
                        f"hand?)" if published else f"nothing published in {serving_dir} yet")
        report = GateReport(label_counts={})
    else:
        logging.info("Drift gate: comparing with the training data of %s", published)
        train = split_statistics(statistics, [TRAIN])[TRAIN]
        baseline_counts = {int(k): int(v) for k, v in record["label_counts"][TRAIN].items()}
        baseline_statistics = record.get(TRAIN_STATISTICS_KEY)
        report = evaluate_drift(config, label_counts(train, config.class_ids), baseline_counts,
                                feature_drift(config, train,
                                              decode_statistics(baseline_statistics) if baseline_statistics else None))
    _record(report, drift_report, "Drift gate")
