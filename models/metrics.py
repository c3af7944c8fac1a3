"""TFMA metrics that see a collapsed classifier: recall of the argmax prediction, per class and macro.

TFMA's own per-class `Recall` is unusable as a gate: binarized it counts p(class) > 0.5, not the
argmax, and with `top_k=1` it reads 1.0 for every class on a constant model (see FACTS.md). These
metrics reuse TFMA's multi-class confusion matrix (argmax prediction, no score threshold), so they
agree with `argmax_recalls` below, which computes the same numbers outside TFMA.

Use `ArgmaxRecall` in a MetricsSpec whose `binarize.class_ids` are the class *indices*: it reports one
value per index (so a `lower_bound` attaches per class), from the argmax over the whole prediction
vector. A class absent from the eval data reads NaN, which fails any bound.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.metrics import multi_class_confusion_matrix_metrics as mccm

ARGMAX_RECALL_NAME = "argmax_recall"
MACRO_ARGMAX_RECALL_NAME = "macro_argmax_recall"
MAJORITY_PREDICTION_SHARE_NAME = "majority_prediction_share"

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


def _class_recall(matrix: _Matrix, class_index: int) -> float:
    positives = sum(count for key, count in matrix.items() if key.actual_class_id == class_index)
    hits = matrix.get(mccm.MatrixEntryKey(class_index, class_index), 0.0)
    return hits / positives if positives else float("nan")


def _macro_recall(num_classes: int) -> Callable[[_Matrix], float]:
    return lambda matrix: float(np.mean([_class_recall(matrix, k) for k in range(num_classes)]))


def _majority_share(matrix: _Matrix) -> float:
    per_prediction: dict[int, float] = {}
    for key, count in matrix.items():
        per_prediction[key.predicted_class_id] = per_prediction.get(key.predicted_class_id, 0.0) + count
    total = sum(per_prediction.values())
    return max(per_prediction.values()) / total if total else float("nan")


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


def _argmax_recall(name=ARGMAX_RECALL_NAME, eval_config=None, model_name="", output_name="",
                   sub_key=None, example_weighted=False):
    if sub_key is None or sub_key.class_id is None or sub_key.top_k or sub_key.k:
        raise ValueError(f"{name} needs MetricsSpec.binarize.class_ids (class indices), got sub_key={sub_key}")
    return _from_confusion_matrix(lambda matrix: _class_recall(matrix, sub_key.class_id), name, eval_config,
                                  model_name, output_name, sub_key, example_weighted)


def _macro_argmax_recall(num_classes, name=MACRO_ARGMAX_RECALL_NAME, eval_config=None, model_name="",
                         output_name="", example_weighted=False):
    return _from_confusion_matrix(_macro_recall(num_classes), name, eval_config, model_name, output_name,
                                  None, example_weighted)


def _majority_prediction_share(name=MAJORITY_PREDICTION_SHARE_NAME, eval_config=None, model_name="",
                               output_name="", example_weighted=False):
    return _from_confusion_matrix(_majority_share, name, eval_config, model_name, output_name, None,
                                  example_weighted)


class ArgmaxRecall(metric_types.Metric):
    """Recall of the argmax prediction for each `binarize` class index."""

    def __init__(self, name: str = ARGMAX_RECALL_NAME):
        super().__init__(metric_util.merge_per_key_computations(_argmax_recall), name=name)


class MacroArgmaxRecall(metric_types.Metric):
    """Mean argmax recall over all `num_classes` classes; NaN when one of them has no eval examples."""

    def __init__(self, num_classes: int, name: str = MACRO_ARGMAX_RECALL_NAME):
        super().__init__(metric_util.merge_per_key_computations(_macro_argmax_recall),
                         num_classes=num_classes, name=name)


class MajorityPredictionShare(metric_types.Metric):
    """Share of examples whose argmax is the most predicted class: 1.0 is a collapsed, constant model."""

    def __init__(self, name: str = MAJORITY_PREDICTION_SHARE_NAME):
        super().__init__(metric_util.merge_per_key_computations(_majority_prediction_share), name=name)


for _metric_class in (ArgmaxRecall, MacroArgmaxRecall, MajorityPredictionShare):
    metric_types.register_metric(_metric_class)
