"""The Evaluator's gate: every class recalled, no collapse, macro recall not worse than the blessed model.

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
from dataclasses import dataclass

import tensorflow_model_analysis as tfma

from models import metrics
from models.trainer import PROBABILITIES, SERVING_SIGNATURE, TRANSFORM_SIGNATURE
from pipeline.config import Config
from transforms.features import LABEL_INDEX

METRICS_MODULE = metrics.__name__


def metrics_specs(config: Config) -> list[tfma.MetricsSpec]:
    """Per-class argmax recall floors, the macro recall change gate, the collapse indicator, counts."""
    num_classes = len(config.class_ids)
    per_class = tfma.MetricsSpec(
        binarize=tfma.BinarizationOptions(class_ids={"values": list(range(num_classes))}),
        metrics=[tfma.MetricConfig(
            class_name=metrics.ArgmaxRecall.__name__, module=METRICS_MODULE,
            threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
                lower_bound={"value": config.gate.min_class_recall})))],
    )
    overall = tfma.MetricsSpec(metrics=[
        tfma.MetricConfig(class_name="ExampleCount"),
        tfma.MetricConfig(class_name="SparseCategoricalAccuracy"),
        tfma.MetricConfig(
            class_name=metrics.MacroArgmaxRecall.__name__, module=METRICS_MODULE,
            config=json.dumps({"num_classes": num_classes}),
            threshold=tfma.MetricThreshold(change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -config.gate.max_macro_recall_drop}))),
        tfma.MetricConfig(class_name=metrics.MajorityPredictionShare.__name__, module=METRICS_MODULE),
    ])
    return [per_class, overall]


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
class EvaluationSummary:
    """What the gate saw on the overall eval slice, for reports."""

    per_class_recall: dict[str, float]  # class name -> argmax recall; NaN when the class had no eval examples
    macro_recall: float
    macro_recall_change: float | None  # candidate minus baseline; None when evaluated without a baseline
    majority_prediction_share: float
    example_count: int
    blessed: bool
    failures: list[str]


def read_evaluation(output_path: str, config: Config) -> EvaluationSummary:
    """Reads an Evaluator (or tfma.run_model_analysis) output directory written with `eval_config(config)`."""
    (overall,) = [m for m in tfma.load_metrics(output_path) if not m.slice_key.single_slice_keys]
    candidate: dict[tuple[str, int | None], float] = {}
    change = None
    for item in overall.metric_keys_and_values:
        key = item.key
        if key.model_name == tfma.BASELINE_KEY or not item.value.HasField("double_value"):
            continue
        value = item.value.double_value.value
        if key.is_diff:
            if key.name == metrics.MACRO_ARGMAX_RECALL_NAME:
                change = value
            continue
        candidate[(key.name, key.sub_key.class_id.value if key.sub_key.HasField("class_id") else None)] = value
    validation = tfma.load_validation_result(output_path)
    failures = [_describe(failure, config) for per_slice in validation.metric_validations_per_slice
                for failure in per_slice.failures]
    return EvaluationSummary(
        per_class_recall={name: candidate.get((metrics.ARGMAX_RECALL_NAME, index), math.nan)
                          for index, name in enumerate(config.class_names)},
        macro_recall=candidate.get((metrics.MACRO_ARGMAX_RECALL_NAME, None), math.nan),
        macro_recall_change=change,
        majority_prediction_share=candidate.get((metrics.MAJORITY_PREDICTION_SHARE_NAME, None), math.nan),
        example_count=int(candidate.get(("example_count", None), 0)),
        blessed=validation.validation_ok,
        failures=failures,
    )


def _describe(failure, config: Config) -> str:
    key = failure.metric_key
    what = key.name
    if key.sub_key.HasField("class_id"):
        what += f" of {config.class_names[key.sub_key.class_id.value]}"
    if not failure.metric_value.HasField("double_value"):
        return f"{what}: not computed ({failure.message.strip() or 'no value'})"
    value = failure.metric_value.double_value.value
    threshold = failure.metric_threshold
    if threshold.HasField("change_threshold"):
        return (f"{what} changed by {value:+.3f} against the blessed model "
                f"(at least {threshold.change_threshold.absolute.value:+.3f} required)")
    return f"{what} = {value:.3f}, below the floor {threshold.value_threshold.lower_bound.value:.3f}"
