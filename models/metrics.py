"""TFMA metrics the gate reads, all from one argmax confusion matrix: per-class recall, test examples and
predictions, macro recall, and how far the most predicted class exceeds its true share.

TFMA's own per-class `Recall` is unusable as a gate: binarized it counts p(class) > 0.5, not the
argmax, and with `top_k=1` it reads 1.0 for every class on a constant model (measured with the locked
TFMA 0.47.1). These metrics reuse TFMA's multi-class confusion matrix (argmax prediction, no score threshold), so they
agree with `argmax_recalls` below, which computes the same recalls outside TFMA.

The per-class metrics (`ArgmaxRecall`, `ClassExampleCount`, `ClassPredictionCount`) go in a MetricsSpec
whose `binarize.class_ids` are class *indices*: each reports one value per index, so a threshold attaches
per class. A class absent from the data has recall NaN (which fails any bound) and count 0.
Class names must not clash with TFMA's built-ins (built-ins win); `module=` names this module.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.metrics import multi_class_confusion_matrix_metrics as mccm

ARGMAX_RECALL_NAME = "argmax_recall"
CLASS_EXAMPLE_COUNT_NAME = "class_example_count"
CLASS_PREDICTION_COUNT_NAME = "class_prediction_count"
MACRO_ARGMAX_RECALL_NAME = "macro_argmax_recall"
MAJORITY_PREDICTION_SHARE_NAME = "majority_prediction_share"
MAJORITY_EXCESS_NAME = "majority_prediction_excess"

# No score floor: every example counts under its argmax class.
_NO_SCORE_FLOOR = float("-inf")

_Matrix = dict  # {MatrixEntryKey(actual_class_id, predicted_class_id): weighted count}


def argmax_recalls(labels, probabilities, num_classes: int) -> np.ndarray:
    """Per-class recall of the argmax prediction: #(label k and argmax k) / #(label k), NaN if no label k.

    Labels outside 0..num_classes-1 (the Transform's -1 for an unknown class id) count for no class,
    as in TFMA's confusion matrix.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predicted = np.argmax(np.asarray(probabilities), axis=-1).reshape(-1)
    known = (labels >= 0) & (labels < num_classes)
    labels, predicted = labels[known], predicted[known]
    positives = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels[predicted == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, hits / positives, np.nan)


def majority_excess(predicted: Mapping[int, float], labelled: Mapping[int, float]) -> tuple[int | None, float]:
    """(most predicted class, its share of predictions minus its share of labels); (None, NaN) without data.

    `predicted` and `labelled` count examples per class index; every example has a prediction, so the
    predictions' total is the number of examples. Among classes predicted equally often, the one with the
    largest excess (then the lowest index) is the one judged.
    """
    total = sum(predicted.values())
    if not total:
        return None, math.nan
    top = max(predicted.values())
    excess, index = min((labelled.get(k, 0.0) - count, k) for k, count in predicted.items() if count == top)
    return index, -excess / total


def _labelled(matrix: _Matrix, class_index: int) -> float:
    return sum(count for key, count in matrix.items() if key.actual_class_id == class_index)


def _per_prediction(matrix: _Matrix) -> dict[int, float]:
    counts: dict[int, float] = {}
    for key, count in matrix.items():
        counts[key.predicted_class_id] = counts.get(key.predicted_class_id, 0.0) + count
    return counts


def _per_label(matrix: _Matrix) -> dict[int, float]:
    counts: dict[int, float] = {}
    for key, count in matrix.items():
        counts[key.actual_class_id] = counts.get(key.actual_class_id, 0.0) + count
    return counts


def _class_recall(matrix: _Matrix, class_index: int) -> float:
    positives = _labelled(matrix, class_index)
    hits = matrix.get(mccm.MatrixEntryKey(class_index, class_index), 0.0)
    return hits / positives if positives else math.nan


def _class_predictions(matrix: _Matrix, class_index: int) -> float:
    return _per_prediction(matrix).get(class_index, 0.0)


def _macro_recall(num_classes: int) -> Callable[[_Matrix], float]:
    return lambda matrix: float(np.mean([_class_recall(matrix, k) for k in range(num_classes)]))


def _majority_share(matrix: _Matrix) -> float:
    per_prediction = _per_prediction(matrix)
    total = sum(per_prediction.values())
    return max(per_prediction.values()) / total if total else math.nan


def _majority_excess(matrix: _Matrix) -> float:
    return majority_excess(_per_prediction(matrix), _per_label(matrix))[1]


def _from_confusion_matrix(value_of: Callable[[_Matrix], float], name: str, eval_config=None,
                           model_name: str = "", output_name: str = "", sub_key=None,
                           example_weighted: bool = False) -> metric_types.MetricComputations:
    """TFMA's argmax confusion matrix computation, plus one derived value read from it."""
    computations = mccm.multi_class_confusion_matrices(
        thresholds=[_NO_SCORE_FLOOR], eval_config=eval_config, model_name=model_name,
        output_name=output_name, example_weighted=example_weighted)
    matrix_key = computations[-1].keys[-1]
    key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                 sub_key=sub_key, example_weighted=example_weighted)

    def result(metrics):
        return {key: value_of(metrics[matrix_key].get(_NO_SCORE_FLOOR, {}))}

    computations.append(metric_types.DerivedMetricComputation(keys=[key], result=result))
    return computations


def _per_class(value_of: Callable[[_Matrix, int], float]):
    """A computations function reporting `value_of(matrix, class index)` under each binarize class index."""

    def computations(name, eval_config=None, model_name="", output_name="", sub_key=None, example_weighted=False):
        if sub_key is None or sub_key.class_id is None or sub_key.top_k or sub_key.k:
            raise ValueError(f"{name} needs MetricsSpec.binarize.class_ids (class indices), got sub_key={sub_key}")
        return _from_confusion_matrix(lambda matrix: value_of(matrix, sub_key.class_id), name, eval_config,
                                      model_name, output_name, sub_key, example_weighted)

    return computations


def _overall(value_of: Callable[[_Matrix], float]):
    """A computations function reporting `value_of(matrix)` once, without class."""

    def computations(name, eval_config=None, model_name="", output_name="", example_weighted=False):
        return _from_confusion_matrix(value_of, name, eval_config, model_name, output_name, None,
                                      example_weighted)

    return computations


def _macro_argmax_recall(num_classes, name=MACRO_ARGMAX_RECALL_NAME, eval_config=None, model_name="",
                         output_name="", example_weighted=False):
    return _from_confusion_matrix(_macro_recall(num_classes), name, eval_config, model_name, output_name,
                                  None, example_weighted)


class ArgmaxRecall(metric_types.Metric):
    """Recall of the argmax prediction for each `binarize` class index."""

    def __init__(self, name: str = ARGMAX_RECALL_NAME):
        super().__init__(metric_util.merge_per_key_computations(_per_class(_class_recall)), name=name)


class ClassExampleCount(metric_types.Metric):
    """Examples labelled with each `binarize` class index: the evidence behind its recall."""

    def __init__(self, name: str = CLASS_EXAMPLE_COUNT_NAME):
        super().__init__(metric_util.merge_per_key_computations(_per_class(_labelled)), name=name)


class ClassPredictionCount(metric_types.Metric):
    """Examples whose argmax is each `binarize` class index."""

    def __init__(self, name: str = CLASS_PREDICTION_COUNT_NAME):
        super().__init__(metric_util.merge_per_key_computations(_per_class(_class_predictions)), name=name)


class MacroArgmaxRecall(metric_types.Metric):
    """Mean argmax recall over all `num_classes` classes; NaN when one of them has no examples."""

    def __init__(self, num_classes: int, name: str = MACRO_ARGMAX_RECALL_NAME):
        super().__init__(metric_util.merge_per_key_computations(_macro_argmax_recall),
                         num_classes=num_classes, name=name)


class MajorityPredictionShare(metric_types.Metric):
    """Share of examples whose argmax is the most predicted class: 1.0 is a collapsed, constant model."""

    def __init__(self, name: str = MAJORITY_PREDICTION_SHARE_NAME):
        super().__init__(metric_util.merge_per_key_computations(_overall(_majority_share)), name=name)


class MajorityPredictionExcess(metric_types.Metric):
    """The most predicted class's share of predictions minus its share of labels (`majority_excess`)."""

    def __init__(self, name: str = MAJORITY_EXCESS_NAME):
        super().__init__(metric_util.merge_per_key_computations(_overall(_majority_excess)), name=name)


GATE_METRICS = (ArgmaxRecall, ClassExampleCount, ClassPredictionCount, MacroArgmaxRecall, MajorityPredictionShare,
                MajorityPredictionExcess)
for _metric_class in GATE_METRICS:
    metric_types.register_metric(_metric_class)
