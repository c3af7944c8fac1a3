"""Per-class label counts from TFDV statistics, and the loss weights that counter class imbalance.

Imbalance is one of the two causes of the one-class collapse this project exists to prevent: without
weights the loss is dominated by the majority class and the cheapest optimum predicts it everywhere.

Weights are keyed by class *index* (position in the class table, what the model's softmax and Keras'
`class_weight` use); counts are keyed by class *id* (what the data and the statistics carry).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tensorflow_metadata.proto.v0 import statistics_pb2

from pipeline.config import CLASS_WEIGHT_MODES
from transforms.features import LABEL



class ClassCountError(ValueError):
    """Label counts that cannot give class weights: the message names the class or feature."""


def label_counts(
    statistics: statistics_pb2.DatasetFeatureStatisticsList | statistics_pb2.DatasetFeatureStatistics,
    class_ids: Sequence[int],
) -> dict[int, int]:
    """Examples per class id, read from the statistics of the label feature.

    With the label categorical in the schema (`int_domain { is_categorical: true }`) TFDV writes exact
    counts in string_stats (rank_histogram, or top_values). Numeric statistics only carry a histogram
    interpolated from quantile sketches; it is accepted when every class falls in a bucket of its own
    and the rounded bucket counts add up to the number of labelled examples, and refused otherwise.
    Classes without examples get 0; label values outside the class table are an error.
    """
    dataset = _single_dataset(statistics)
    feature = _label_feature(dataset)
    if feature.HasField("string_stats"):
        by_value = _categorical_counts(feature.string_stats)
    elif feature.HasField("num_stats"):
        by_value = _numeric_histogram_counts(feature.num_stats, class_ids)
    else:
        raise ClassCountError(f"statistics of {LABEL!r} carry neither string nor numeric statistics")
    unknown = sorted(set(by_value) - set(class_ids))
    if unknown:
        raise ClassCountError(f"{LABEL!r} has values outside the class table {list(class_ids)}: {unknown}")
    return {class_id: by_value.get(class_id, 0) for class_id in class_ids}


def class_weights(
    counts: Mapping[int | str, int],
    class_ids: Sequence[int],
    mode: str,
    beta: float = 0.999,
) -> dict[int, float]:
    """Loss weight per class index, from training counts per class id (JSON string keys accepted).

    With N examples, K classes and n_k examples of class k:
      none              w_k = 1
      inverse           w_k = N / (K n_k)                 (each class carries the same total weight)
      sqrt_inverse      w_k = sqrt(N / (K n_k))           (a milder version of inverse)
      effective_number  w_k = K e_k / sum_j e_j, e_k = (1 - beta) / (1 - beta^n_k)
                        (Cui et al. 2019: weights average 1 over classes, i.e. sum to K)
    A class without training examples is an error in every mode: the model cannot learn it and the
    per-class recall gate would refuse the model anyway.
    """
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(f"class weight mode must be one of {list(CLASS_WEIGHT_MODES)}, got {mode!r}")
    by_id = {int(class_id): int(count) for class_id, count in counts.items()}
    unknown = sorted(set(by_id) - set(class_ids))
    if unknown:
        raise ClassCountError(f"counts for class ids outside the class table {list(class_ids)}: {unknown}")
    n = [by_id.get(class_id, 0) for class_id in class_ids]
    empty = [class_id for class_id, count in zip(class_ids, n) if count <= 0]
    if empty:
        raise ClassCountError(f"no training examples of class id(s) {empty}: the model cannot learn them")
    k, total = len(n), sum(n)
    if mode == "none":
        weights = [1.0] * k
    elif mode == "inverse":
        weights = [total / (k * n_k) for n_k in n]
    elif mode == "sqrt_inverse":
        weights = [math.sqrt(total / (k * n_k)) for n_k in n]
    else:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"effective_number beta must be in [0, 1), got {beta}")
        effective = [(1.0 - beta) / (1.0 - beta**n_k) for n_k in n]
        weights = [k * e / sum(effective) for e in effective]
    return dict(enumerate(weights))


def _single_dataset(statistics) -> statistics_pb2.DatasetFeatureStatistics:
    if isinstance(statistics, statistics_pb2.DatasetFeatureStatistics):
        return statistics
    if len(statistics.datasets) != 1:
        raise ClassCountError(
            f"expected the statistics of one split, got {len(statistics.datasets)} datasets: pass one of them")
    return statistics.datasets[0]


def _label_feature(dataset: statistics_pb2.DatasetFeatureStatistics) -> statistics_pb2.FeatureNameStatistics:
    for feature in dataset.features:
        if feature.name == LABEL or list(feature.path.step) == [LABEL]:
            return feature
    raise ClassCountError(f"no statistics for the label feature {LABEL!r}")


def _categorical_counts(string_stats: statistics_pb2.StringStatistics) -> dict[int, int]:
    buckets = string_stats.rank_histogram.buckets
    if buckets:
        pairs = [(bucket.label, bucket.sample_count) for bucket in buckets]
    else:
        pairs = [(top.value, top.frequency) for top in string_stats.top_values]
    if len(pairs) < string_stats.unique:
        raise ClassCountError(f"statistics of {LABEL!r} list {len(pairs)} of its {string_stats.unique} values")
    return {int(value): int(round(count)) for value, count in pairs}


def _numeric_histogram_counts(num_stats: statistics_pb2.NumericStatistics, class_ids) -> dict[int, int]:
    standard = [h for h in num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD]
    if not standard:
        raise ClassCountError(f"numeric statistics of {LABEL!r} carry no standard histogram")
    buckets = standard[0].buckets
    bucket_of = {c: max((i for i, b in enumerate(buckets) if b.low_value <= c <= buckets[-1].high_value),
                        default=None) for c in class_ids}
    counts: dict[int, int] = {}
    for c, index in bucket_of.items():
        sharing = [other for other, other_index in bucket_of.items() if index is not None and other_index == index]
        if len(sharing) > 1:
            raise ClassCountError(f"classes {sharing} share one histogram bucket of {LABEL!r}: "
                                  "mark the label categorical in the schema for exact counts")
        if index is not None:
            counts[c] = int(round(buckets[index].sample_count))
    labelled = num_stats.common_stats.num_non_missing
    if sum(counts.values()) != labelled:
        raise ClassCountError(
            f"the numeric histogram of {LABEL!r} gives {sum(counts.values())} of {labelled} examples: "
            "mark the label categorical in the schema for exact counts")
    return counts
