"""The Evaluator's gate: per class enough test examples, recall at its floor and no drop against the serving model;
overall no macro recall drop and no class predicted far beyond its true share.

The thresholds live in the EvalConfig (`metrics_specs`), so TFMA's validation decides the blessing. `gate_checks`
reads them back out of those specs and `failed_checks` applies them to metric values the way TFMA's validator
does, so the verdict can be computed and explained outside a TFMA run (and tests prove the two agree).

Label route (TFMA 0.47.1): the confusion matrix needs the label as a class *index* 0..K-1, but the
Evaluator reads raw ExampleGen examples whose label is the raw class id (10, 30, ...). The model spec
names the exported `transform_features` signature as a preprocessing function, so TFMA runs the real
Transform graph on each raw example and looks `label_key=LABEL_INDEX` up in the transformed features
first (then in the raw ones). Predictions come from `serving_default`, which takes the same serialized
raw examples. No class-id mapping is re-implemented here: the Transform's is the one that trains.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_specs

from foundation.config import Config
from foundation.published import PROBABILITIES, SERVING_SIGNATURE, TRANSFORM_SIGNATURE
from models import metrics
from transforms.features import LABEL_INDEX

METRICS_MODULE = metrics.__name__

# (metric name, class index or None for the whole test set, is a change against the baseline) -> value,
# as TFMA keys the candidate's metrics.
MetricValues = Mapping[tuple[str, int | None, bool], float]

LOWER, UPPER, CHANGE = "lower", "upper", "change"


def _metric(metric_class: type, threshold: tfma.MetricThreshold | None = None, **config) -> tfma.MetricConfig:
    return tfma.MetricConfig(class_name=metric_class.__name__, module=METRICS_MODULE, threshold=threshold,
                             config=json.dumps(config) if config else "")


def _no_drop_beyond(limit: float) -> tfma.GenericChangeThreshold:
    return tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -limit})


def metrics_specs(config: Config) -> list[tfma.MetricsSpec]:
    """The gate as TFMA thresholds: one per-class spec per distinct recall floor, one spec for the whole test set."""
    gate = config.gate
    floors = config.class_recall_floors
    per_class = [
        tfma.MetricsSpec(
            binarize=tfma.BinarizationOptions(class_ids={"values": [k for k, f in enumerate(floors) if f == floor]}),
            metrics=[
                _metric(metrics.ClassExampleCount, tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": gate.min_test_examples_per_class}))),
                _metric(metrics.ArgmaxRecall, tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(lower_bound={"value": floor}),
                    change_threshold=_no_drop_beyond(gate.max_class_recall_drop))),
                _metric(metrics.ClassPredictionCount),
            ])
        for floor in dict.fromkeys(floors)  # distinct floors, in class-table order
    ]
    overall = tfma.MetricsSpec(metrics=[
        tfma.MetricConfig(class_name="ExampleCount"),
        tfma.MetricConfig(class_name="SparseCategoricalAccuracy"),
        _metric(metrics.MacroArgmaxRecall, tfma.MetricThreshold(
            change_threshold=_no_drop_beyond(gate.max_macro_recall_drop)), num_classes=len(config.class_ids)),
        _metric(metrics.MajorityPredictionShare),
        _metric(metrics.MajorityPredictionExcess, tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
            upper_bound={"value": gate.max_majority_excess}))),
        # The whole argmax confusion matrix (no score floor, the matrix the gate's metrics read), for the run
        # report's heatmap (pipeline/report.py); it judges nothing.
        tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot",
                          config=json.dumps({"thresholds": [float("-inf")]})),
    ])
    return [*per_class, overall]


def eval_config(config: Config) -> tfma.EvalConfig:
    """EvalConfig for the Evaluator on raw examples (see the module docstring for the label route)."""
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name=SERVING_SIGNATURE,
            preprocessing_function_names=[TRANSFORM_SIGNATURE],
            label_key=LABEL_INDEX,
            prediction_key=PROBABILITIES,
        )],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=metrics_specs(config),
    )


@dataclass(frozen=True)
class Check:
    """One threshold of the gate: the value of `metric` (of class `class_index`; None: the whole test set) must be
    >= `limit` (LOWER), <= `limit` (UPPER), or change against the baseline by >= `limit` (CHANGE, limit <= 0)."""

    metric: str
    class_index: int | None
    bound: str
    limit: float

    @property
    def key(self) -> tuple[str, int | None, bool]:
        return self.metric, self.class_index, self.bound == CHANGE

    def passes(self, value: float) -> bool:
        """As TFMA's validator: bounds inclusive, NaN fails."""
        return value <= self.limit if self.bound == UPPER else value >= self.limit


def _check(metric_name: str, class_index: int | None, threshold) -> Check:
    """A Check from TFMA's threshold proto (GenericValueThreshold or GenericChangeThreshold)."""
    if isinstance(threshold, tfma.GenericChangeThreshold):
        return Check(metric_name, class_index, CHANGE, threshold.absolute.value)
    if threshold.HasField("upper_bound"):
        return Check(metric_name, class_index, UPPER, threshold.upper_bound.value)
    return Check(metric_name, class_index, LOWER, threshold.lower_bound.value)


def gate_checks(config: Config) -> list[Check]:
    """Every threshold TFMA applies with `metrics_specs(config)`, per class in class-table order, then overall."""
    checks = [_check(key.name, key.sub_key.class_id if key.sub_key else None, threshold)
              for key, thresholds in metric_specs.metric_thresholds_from_metrics_specs(metrics_specs(config)).items()
              for _, threshold in thresholds]
    return sorted(checks, key=lambda c: (c.class_index is None, c.class_index or 0))


def failed_checks(values: MetricValues, config: Config) -> list[tuple[Check, float]]:
    """The checks `values` fail, with the value each saw (NaN: not measured), as TFMA's validation would.
    Without any change value (no baseline), the change checks are left out, as TFMA does on a first run."""
    with_baseline = _has_baseline(values)
    return [(check, values.get(check.key, math.nan)) for check in gate_checks(config)
            if (with_baseline or check.bound != CHANGE) and not check.passes(values.get(check.key, math.nan))]


def _has_baseline(values: MetricValues) -> bool:
    return any(is_change for _, _, is_change in values)


def gate_failures(values: MetricValues, config: Config) -> list[str]:
    """The verdict on `values`: one sentence per failed check (empty: blessed)."""
    return [describe(check, value, values, config) for check, value in failed_checks(values, config)]


def describe(check: Check, value: float, values: MetricValues, config: Config) -> str:
    """A failed check in words: what, of which class, the measured value and the limit."""
    name = config.class_names[check.class_index] if check.class_index is not None else None
    measured = not math.isnan(value)
    if check.metric == metrics.CLASS_EXAMPLE_COUNT_NAME:
        return f"test examples of {name} = {value:.0f}, below {check.limit:.0f}: insufficient evidence"
    if (check.metric, check.bound) == (metrics.ARGMAX_RECALL_NAME, LOWER):
        if not measured:
            return f"recall of {name} not measured (no test examples of it), below its floor {check.limit:.3f}"
        return f"recall of {name} = {value:.3f}, below its floor {check.limit:.3f}"
    if check.bound == CHANGE:
        what = "macro recall" if name is None else f"recall of {name}"
        if not measured:
            return f"{what}: change against the baseline not measured (limit {-check.limit:.3f})"
        return f"{what} fell by {-value:.3f} against the serving model (limit {-check.limit:.3f})"
    if check.metric == metrics.MAJORITY_EXCESS_NAME:
        majority, predicted, labelled = _majority(values, config)
        if majority is None:
            return f"most predicted class not measured (no test examples), limit {check.limit:.2f}"
        return (f"most predicted class {config.class_names[majority]} takes {predicted:.2f} of predictions vs "
                f"{labelled:.2f} of test labels: excess {value:.2f} (limit {check.limit:.2f})")
    # A check these specs no longer make (an output written by another version of them).
    where = "" if name is None else f" of {name}"
    return f"{check.metric}{where} = {value:.3f}, outside the {check.bound} limit {check.limit:.3f}"


def _per_class(values: MetricValues, metric: str, config: Config) -> list[float]:
    return [values.get((metric, k, False), math.nan) for k in range(len(config.class_ids))]


def _majority(values: MetricValues, config: Config) -> tuple[int | None, float, float]:
    """(most predicted class, its share of predictions, its share of test labels), as MajorityPredictionExcess."""
    predicted = _per_class(values, metrics.CLASS_PREDICTION_COUNT_NAME, config)
    labelled = _per_class(values, metrics.CLASS_EXAMPLE_COUNT_NAME, config)
    majority, _ = metrics.majority_excess(dict(enumerate(predicted)), dict(enumerate(labelled)))
    if majority is None:
        return None, math.nan, math.nan
    total = sum(predicted)
    return majority, predicted[majority] / total, labelled[majority] / total


@dataclass(frozen=True)
class EvaluationSummary:
    """What the gate saw on the test split, for reports."""

    per_class_recall: dict[str, float]  # class name -> argmax recall; NaN when the class had no test examples
    macro_recall: float
    macro_recall_change: float | None  # candidate minus baseline; None when evaluated without a baseline
    majority_prediction_share: float
    example_count: int
    blessed: bool
    failures: list[str]  # one sentence per failed check, per class in class-table order, then overall
    per_class_test_examples: dict[str, int]
    per_class_recall_change: dict[str, float] | None  # candidate minus baseline; None without a baseline
    most_predicted_class: str | None  # None without test examples
    majority_excess: float  # the most predicted class's share of predictions minus its share of test labels


def read_metric_values(output_path: str) -> MetricValues:
    """The candidate's metrics on the overall slice of an Evaluator (or TFMA) output directory."""
    (overall,) = [m for m in tfma.load_metrics(output_path) if not m.slice_key.single_slice_keys]
    return {(item.key.name, item.key.sub_key.class_id.value if item.key.sub_key.HasField("class_id") else None,
             item.key.is_diff): item.value.double_value.value
            for item in overall.metric_keys_and_values
            if item.key.model_name != tfma.BASELINE_KEY and item.value.HasField("double_value")}


def _tfma_failures(output_path: str) -> tuple[bool, list[tuple[Check, float]]]:
    """TFMA's blessing and the checks it failed, with the value each saw (NaN: not computed)."""
    validation = tfma.load_validation_result(output_path)
    failed = []
    for failure in (f for per_slice in validation.metric_validations_per_slice for f in per_slice.failures):
        key, threshold = failure.metric_key, failure.metric_threshold
        check = _check(key.name, key.sub_key.class_id.value if key.sub_key.HasField("class_id") else None,
                       threshold.change_threshold if threshold.HasField("change_threshold")
                       else threshold.value_threshold)
        failed.append((check, failure.metric_value.double_value.value
                       if failure.metric_value.HasField("double_value") else math.nan))
    return validation.validation_ok, failed


def read_evaluation(output_path: str, config: Config) -> EvaluationSummary:
    """Reads an Evaluator (or tfma.run_model_analysis) output directory written with `eval_config(config)`.
    The blessing and the failures are TFMA's own validation result, put in words in `gate_checks` order."""
    values = read_metric_values(output_path)
    blessed, failed = _tfma_failures(output_path)
    order = {check: position for position, check in enumerate(gate_checks(config))}
    failed.sort(key=lambda failure: order.get(failure[0], len(order)))
    names = config.class_names
    with_baseline = _has_baseline(values)
    majority, _, _ = _majority(values, config)
    return EvaluationSummary(
        per_class_recall=dict(zip(names, _per_class(values, metrics.ARGMAX_RECALL_NAME, config))),
        macro_recall=values.get((metrics.MACRO_ARGMAX_RECALL_NAME, None, False), math.nan),
        macro_recall_change=values.get((metrics.MACRO_ARGMAX_RECALL_NAME, None, True)) if with_baseline else None,
        majority_prediction_share=values.get((metrics.MAJORITY_PREDICTION_SHARE_NAME, None, False), math.nan),
        example_count=int(values.get(("example_count", None, False), 0)),
        blessed=blessed,
        failures=[describe(check, value, values, config) for check, value in failed],
        per_class_test_examples={name: int(values.get((metrics.CLASS_EXAMPLE_COUNT_NAME, k, False), 0))
                                 for k, name in enumerate(names)},
        per_class_recall_change=({name: values.get((metrics.ARGMAX_RECALL_NAME, k, True), math.nan)
                                  for k, name in enumerate(names)} if with_baseline else None),
        most_predicted_class=None if majority is None else names[majority],
        majority_excess=values.get((metrics.MAJORITY_EXCESS_NAME, None, False), math.nan),
    )


def verdict_lines(summary: EvaluationSummary, config: Config, baseline: str | None = None) -> list[str]:
    """The gate's verdict for a terminal: per class what was measured against its limits, the baseline (`baseline`:
    why this one, e.g. the PublishedBaseline artifact's baseline_source), then every failed check."""
    gate = config.gate
    changes = summary.per_class_recall_change
    lines = [f"Test split, per class: examples (min {gate.min_test_examples_per_class}), argmax recall (floor), "
             f"change against the baseline (max drop {gate.max_class_recall_drop:.2f}):"]
    for name, floor in zip(config.class_names, config.class_recall_floors):
        change = "" if changes is None else f"  {changes[name]:+.3f}"
        lines.append(f"  {name:<12} {summary.per_class_test_examples[name]:6d}  {summary.per_class_recall[name]:.3f} "
                     f"({floor:.2f}){change}")
    macro_change = "" if summary.macro_recall_change is None else (
        f", change {summary.macro_recall_change:+.3f} (max drop {gate.max_macro_recall_drop:.2f})")
    lines.append(f"  macro recall {summary.macro_recall:.3f}{macro_change}")
    lines.append(f"  most predicted class {summary.most_predicted_class}: "
                 f"{100 * summary.majority_prediction_share:.1f} % of predictions, "
                 f"{summary.majority_excess:+.3f} beyond its share of test labels (max {gate.max_majority_excess:.2f})")
    if baseline:
        lines.append(f"Baseline: {baseline}")
    if summary.blessed:
        return [*lines, "Verdict: BLESSED"]
    return [*lines, "Verdict: NOT BLESSED", *(f"  - {failure}" for failure in summary.failures)]


def confusion_matrix(evaluation_uri: str, num_classes: int) -> np.ndarray | None:
    """The candidate's argmax confusion counts [label index, predicted index] on the test split, from the
    Evaluator's MultiClassConfusionMatrixPlot; None when its output holds none."""
    for plots in tfma.load_plots(evaluation_uri):
        if plots.slice_key.single_slice_keys:
            continue
        for item in plots.plot_keys_and_values:
            if item.key.model_name == tfma.BASELINE_KEY or \
                    not item.value.HasField("multi_class_confusion_matrix_at_thresholds"):
                continue
            matrices = item.value.multi_class_confusion_matrix_at_thresholds.matrices
            counts = np.zeros((num_classes, num_classes))
            for entry in matrices[0].entries if matrices else []:
                if 0 <= entry.actual_class_id < num_classes and 0 <= entry.predicted_class_id < num_classes:
                    counts[entry.actual_class_id, entry.predicted_class_id] += entry.num_weighted_examples
            return counts
    return None
