"""Per-class label counts, read from the TFDV statistics StatisticsGen already computed (no second pass over the
data): the data gate's label skew checks and the Trainer's class weights both start from them. Counts are keyed
by class *id*, what the data and the statistics carry.
"""
from __future__ import annotations

from collections.abc import Sequence

from tensorflow_metadata.proto.v0 import statistics_pb2

from transforms.features import LABEL


class LabelCountError(ValueError):
    """Statistics that do not give exact label counts: the message names the feature and the problem."""


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
        raise LabelCountError(f"statistics of {LABEL!r} carry neither string nor numeric statistics")
    unknown = sorted(set(by_value) - set(class_ids))
    if unknown:
        raise LabelCountError(f"{LABEL!r} has values outside the class table {list(class_ids)}: {unknown}")
    return {class_id: by_value.get(class_id, 0) for class_id in class_ids}


def _single_dataset(statistics) -> statistics_pb2.DatasetFeatureStatistics:
    if isinstance(statistics, statistics_pb2.DatasetFeatureStatistics):
        return statistics
    if len(statistics.datasets) != 1:
        raise LabelCountError(
            f"expected the statistics of one split, got {len(statistics.datasets)} datasets: pass one of them")
    return statistics.datasets[0]


def _label_feature(dataset: statistics_pb2.DatasetFeatureStatistics) -> statistics_pb2.FeatureNameStatistics:
    for feature in dataset.features:
        if feature.name == LABEL or list(feature.path.step) == [LABEL]:
            return feature
    raise LabelCountError(f"no statistics for the label feature {LABEL!r}")


def _categorical_counts(string_stats: statistics_pb2.StringStatistics) -> dict[int, int]:
    buckets = string_stats.rank_histogram.buckets
    if buckets:
        pairs = [(bucket.label, bucket.sample_count) for bucket in buckets]
    else:
        pairs = [(top.value, top.frequency) for top in string_stats.top_values]
    if len(pairs) < string_stats.unique:
        raise LabelCountError(f"statistics of {LABEL!r} list {len(pairs)} of its {string_stats.unique} values")
    return {int(value): int(round(count)) for value, count in pairs}


def _numeric_histogram_counts(num_stats: statistics_pb2.NumericStatistics, class_ids) -> dict[int, int]:
    standard = [h for h in num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD]
    if not standard:
        raise LabelCountError(f"numeric statistics of {LABEL!r} carry no standard histogram")
    buckets = standard[0].buckets
    bucket_of = {c: max((i for i, b in enumerate(buckets) if b.low_value <= c <= buckets[-1].high_value),
                        default=None) for c in class_ids}
    counts: dict[int, int] = {}
    for c, index in bucket_of.items():
        sharing = [other for other, other_index in bucket_of.items() if index is not None and other_index == index]
        if len(sharing) > 1:
            raise LabelCountError(f"classes {sharing} share one histogram bucket of {LABEL!r}: "
                                  "mark the label categorical in the schema for exact counts")
        if index is not None:
            counts[c] = int(round(buckets[index].sample_count))
    labelled = num_stats.common_stats.num_non_missing
    if sum(counts.values()) != labelled:
        raise LabelCountError(
            f"the numeric histogram of {LABEL!r} gives {sum(counts.values())} of {labelled} examples: "
            "mark the label categorical in the schema for exact counts")
    return counts
