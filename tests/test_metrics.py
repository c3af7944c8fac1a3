"""The gate's metrics in TFMA itself (analyze_raw_data on labels + prediction vectors) against numpy.

The failure this project exists for is a model that predicts one class everywhere: the gate must refuse
it class by class, and must not refuse a healthy model. (tests/test_gate.py: each check of the gate.)
"""
import numpy as np
import pandas as pd
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types

from foundation.config import Config
from models import metrics
from models.evaluation import metrics_specs, read_evaluation
from models.metrics import argmax_recalls, majority_excess

CONFIG = Config()
K = len(CONFIG.class_ids)
N = 1000  # the rarest classes get about 50 examples, above gate.min_test_examples_per_class
FLOOR = CONFIG.gate.min_class_recall


def _labels(rng, drop_class=None):
    labels = rng.choice(K, size=N, p=[0.45, 0.25, 0.1, 0.1, 0.05, 0.05])
    if drop_class is not None:
        labels[labels == drop_class] = 0
    return labels


def _healthy(labels, rng):
    """Right most of the time, with confident mistakes: per-class recalls well inside (FLOOR, 1)."""
    logits = 2.5 * np.eye(K)[labels] + rng.normal(0, 1.0, (len(labels), K))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _constant(labels):
    """The collapsed model: the same majority-class vector for every example."""
    return np.tile(np.full(K, 0.1 / (K - 1)) + np.eye(K)[0] * (0.9 - 0.1 / (K - 1)), (len(labels), 1))


def _analyze(labels, probabilities, output_path):
    eval_config = tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(label_key="label", prediction_key="prediction")],
        slicing_specs=[tfma.SlicingSpec()], metrics_specs=metrics_specs(CONFIG))
    # No baseline here: the macro recall change threshold is dropped, as the Evaluator does on a first run.
    eval_config = tfma.utils.update_eval_config_with_defaults(eval_config, has_baseline=False, rubber_stamp=True)
    frame = pd.DataFrame({"label": labels, "prediction": list(probabilities.astype(np.float32))})
    tfma.analyze_raw_data(frame, eval_config, output_path=output_path)
    (overall,) = [m for m in tfma.load_metrics(output_path) if not m.slice_key.single_slice_keys]
    values = {(kv.key.name, kv.key.sub_key.class_id.value if kv.key.sub_key.HasField("class_id") else None):
              kv.value.double_value.value for kv in overall.metric_keys_and_values}
    validation = tfma.load_validation_result(output_path)
    failures = [(f.metric_key.name,
                 f.metric_key.sub_key.class_id.value if f.metric_key.sub_key.HasField("class_id") else None)
                for s in validation.metric_validations_per_slice for f in s.failures]
    return values, validation.validation_ok, sorted(failures)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = _labels(rng)
    absent_labels = _labels(rng, drop_class=4)
    cases = {"constant": (labels, _constant(labels)), "healthy": (labels, _healthy(labels, rng)),
             "absent": (absent_labels, _healthy(absent_labels, rng))}
    paths = {name: str(tmp_path_factory.mktemp(name)) for name in cases}
    return {name: (labels, probabilities, *_analyze(labels, probabilities, paths[name]), paths[name])
            for name, (labels, probabilities) in cases.items()}


def test_constant_majority_predictor_fails_every_other_class(runs):
    labels, _, values, ok, failures, _ = runs["constant"]
    assert [values[("argmax_recall", k)] for k in range(K)] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert values[("macro_argmax_recall", None)] == pytest.approx(1 / K)
    assert values[("majority_prediction_share", None)] == 1.0
    assert values[("majority_prediction_excess", None)] == pytest.approx(1 - np.mean(labels == 0))
    assert not ok
    assert failures == sorted([("argmax_recall", k) for k in range(1, K)] + [("majority_prediction_excess", None)])


def test_healthy_predictor_passes_and_matches_numpy(runs):
    labels, probabilities, values, ok, failures, _ = runs["healthy"]
    expected = argmax_recalls(labels, probabilities, K)
    assert FLOOR < expected.min() and expected.max() < 1.0  # a real test of the argmax, not a trivial 0/1
    np.testing.assert_allclose([values[("argmax_recall", k)] for k in range(K)], expected, atol=1e-6)
    assert values[("macro_argmax_recall", None)] == pytest.approx(expected.mean(), abs=1e-6)
    predicted = probabilities.argmax(axis=1)
    assert [values[("class_example_count", k)] for k in range(K)] == np.bincount(labels, minlength=K).tolist()
    assert [values[("class_prediction_count", k)] for k in range(K)] == np.bincount(predicted, minlength=K).tolist()
    majority = np.bincount(predicted).argmax()
    assert values[("majority_prediction_share", None)] == pytest.approx(np.bincount(predicted).max() / N)
    assert values[("majority_prediction_excess", None)] == pytest.approx(
        np.mean(predicted == majority) - np.mean(labels == majority))
    assert values[("sparse_categorical_accuracy", None)] == pytest.approx((predicted == labels).mean(), abs=1e-6)
    assert values[("example_count", None)] == N
    assert min(values[("class_example_count", k)] for k in range(K)) >= CONFIG.gate.min_test_examples_per_class
    assert ok and failures == []


def test_class_absent_from_test_data_fails(runs):
    labels, _, values, ok, failures, _ = runs["absent"]
    assert 4 not in labels
    assert np.isnan(values.get(("argmax_recall", 4), np.nan))
    assert values[("class_example_count", 4)] == 0
    assert np.isnan(values[("macro_argmax_recall", None)])
    assert not ok
    assert failures == [("argmax_recall", 4), ("class_example_count", 4)]


def test_summary_without_baseline_puts_the_failures_in_words(runs):
    labels, _, _, _, _, output_path = runs["constant"]
    summary = read_evaluation(output_path, CONFIG)
    assert summary.macro_recall_change is None and summary.per_class_recall_change is None
    assert summary.per_class_test_examples == dict(zip(CONFIG.class_names, np.bincount(labels).tolist()))
    assert summary.most_predicted_class == "trees"
    share = np.mean(labels == 0)
    assert summary.failures == [f"recall of {name} = 0.000, below its floor 0.750" for name in CONFIG.class_names[1:]] + [
        f"most predicted class trees takes 1.00 of predictions vs {share:.2f} of test labels: excess {1 - share:.2f} "
        "(limit 0.10)"]


def test_majority_excess_by_hand():
    assert majority_excess({0: 5, 1: 3, 2: 2}, {0: 2, 1: 4, 2: 4}) == (0, pytest.approx(0.3))
    # classes 1 and 2 are predicted equally often: the one further beyond its true share is judged
    assert majority_excess({0: 2, 1: 4, 2: 4}, {0: 4, 1: 4, 2: 2}) == (2, pytest.approx(0.2))
    assert majority_excess({0: 5, 1: 5}, {0: 5, 1: 5}) == (0, 0.0)
    # labels outside the class table (-1) count in the total, for no class
    assert majority_excess({0: 6, 1: 4}, {-1: 2, 0: 4, 1: 4}) == (0, pytest.approx(0.2))
    assert majority_excess({}, {})[0] is None


def test_argmax_recalls_by_hand():
    labels = [0, 0, 0, 1, 1, 2]
    probabilities = [[.6, .3, .1], [.2, .7, .1], [.5, .4, .1], [.1, .8, .1], [.3, .3, .4], [.1, .2, .7]]
    np.testing.assert_allclose(argmax_recalls(labels, probabilities, 4), [2 / 3, 1 / 2, 1.0, np.nan])
    # -1, the Transform's index for an id outside the class table, counts for no class.
    np.testing.assert_allclose(argmax_recalls(labels + [-1], probabilities + [[.9, .05, .05]], 4),
                               [2 / 3, 1 / 2, 1.0, np.nan])


def test_metric_names_are_ours_not_builtins():
    registered = metric_types.registered_metrics()
    for metric_class in metrics.GATE_METRICS:
        assert registered[metric_class.__name__] is metric_class


@pytest.mark.parametrize("metric_class", [metrics.ArgmaxRecall, metrics.ClassExampleCount, metrics.ClassPredictionCount])
def test_per_class_metrics_need_binarized_class_ids(metric_class):
    with pytest.raises(ValueError, match="binarize"):
        metric_class().computations()
