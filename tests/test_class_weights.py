"""Label counts from real TFDV statistics protos, and class weights against hand-computed numbers."""
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from components.label_counts import LabelCountError, label_counts
from foundation.config import Config
from models.class_weights import ClassCountError, class_weights
from transforms.features import LABEL

CLASS_IDS = Config().class_ids  # 10, 30, 50, 55, 60, 80
COUNTS = dict(zip(CLASS_IDS, [400, 200, 100, 50, 30, 20]))  # N = 800, K = 6


def _frame(counts: dict[int, int]) -> pd.DataFrame:
    return pd.DataFrame({LABEL: [c for c, n in counts.items() for _ in range(n)], "x": 1.0})


def _categorical_statistics(frame: pd.DataFrame):
    """Statistics computed with a schema that marks the label categorical, as the pipeline's schema does."""
    schema = tfdv.infer_schema(tfdv.generate_statistics_from_dataframe(frame))
    tfdv.get_feature(schema, LABEL).int_domain.is_categorical = True
    return tfdv.generate_statistics_from_dataframe(frame, stats_options=tfdv.StatsOptions(schema=schema))


@pytest.fixture(scope="module")
def categorical_statistics():
    return _categorical_statistics(_frame(COUNTS))


def test_counts_from_categorical_statistics(categorical_statistics):
    assert categorical_statistics.datasets[0].features[0].HasField("string_stats")
    assert label_counts(categorical_statistics, CLASS_IDS) == COUNTS
    assert label_counts(categorical_statistics.datasets[0], CLASS_IDS) == COUNTS


def test_class_missing_from_statistics_counts_zero_and_cannot_be_weighted():
    counts = {**COUNTS, 55: 0}
    read = label_counts(_categorical_statistics(_frame(counts)), CLASS_IDS)
    assert read == counts
    with pytest.raises(ClassCountError, match=r"class id\(s\) \[55\]"):
        class_weights(read, CLASS_IDS, "inverse")


def test_label_outside_class_table_is_an_error():
    with pytest.raises(LabelCountError, match=r"outside the class table.*\[99\]"):
        label_counts(_categorical_statistics(_frame({**COUNTS, 99: 5})), CLASS_IDS)


def test_numeric_histogram_accepted_only_when_exact():
    small = {10: 7, 30: 3, 55: 2, 80: 1}
    numeric = tfdv.generate_statistics_from_dataframe(_frame(small))
    assert numeric.datasets[0].features[0].HasField("num_stats")
    assert label_counts(numeric, CLASS_IDS) == {10: 7, 30: 3, 50: 0, 55: 2, 60: 0, 80: 1}
    # At 800 examples the quantile-interpolated histogram smears one example: refused, not guessed.
    with pytest.raises(LabelCountError, match="799 of 800.*categorical"):
        label_counts(tfdv.generate_statistics_from_dataframe(_frame(COUNTS)), CLASS_IDS)


# Hand-computed: inverse N/(K n_k) = 800/(6 n_k); sqrt_inverse its square root; effective number with
# beta 0.99: e_k = 0.01/(1 - 0.99^n_k) = .0101828, .0115471, .0157737, .0253168, .0384172, .0549170,
# sum .1561546, w_k = 6 e_k / sum.
EXPECTED = {
    "none": [1, 1, 1, 1, 1, 1],
    "inverse": [1 / 3, 2 / 3, 4 / 3, 8 / 3, 40 / 9, 20 / 3],
    "sqrt_inverse": [0.577350, 0.816497, 1.154701, 1.632993, 2.108185, 2.581989],
    "effective_number": [0.391258, 0.443678, 0.606079, 0.972761, 1.476124, 2.110100],
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_weights_match_hand_computation(mode):
    # JSON string keys, as the Trainer receives them from the data gate.
    weights = class_weights({str(k): v for k, v in COUNTS.items()}, CLASS_IDS, mode, beta=0.99)
    assert list(weights) == list(range(len(CLASS_IDS)))
    assert list(weights.values()) == pytest.approx(EXPECTED[mode], abs=2e-6)


def test_weight_normalisations():
    total = sum(COUNTS.values())
    inverse = class_weights(COUNTS, CLASS_IDS, "inverse")
    # Inverse keeps the total weight of the training set: every class carries N/K.
    assert sum(inverse[i] * COUNTS[c] for i, c in enumerate(CLASS_IDS)) == pytest.approx(total)
    effective = class_weights(COUNTS, CLASS_IDS, "effective_number", beta=0.999)
    assert sum(effective.values()) == pytest.approx(len(CLASS_IDS))
    # Cui et al.: beta -> 0 gives equal weights.
    assert list(class_weights(COUNTS, CLASS_IDS, "effective_number", beta=0.0).values()) == pytest.approx([1.0] * 6)


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_zero_count_class_is_named_in_every_mode(mode):
    with pytest.raises(ClassCountError, match=r"\[60\].*cannot learn"):
        class_weights({**COUNTS, 60: 0}, CLASS_IDS, mode)


def test_bad_mode_and_beta_rejected():
    with pytest.raises(ValueError, match="mode"):
        class_weights(COUNTS, CLASS_IDS, "balanced")
    with pytest.raises(ValueError, match="beta"):
        class_weights(COUNTS, CLASS_IDS, "effective_number", beta=1.0)
