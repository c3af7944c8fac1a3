"""The Evaluator's gate refuses each kind of degraded model, names the failed check, and blesses a healthy one.

Each crafted case runs through real TFMA with the Evaluator's own metrics specs, a candidate and a baseline
(the serving model's predictions, or the candidate's own when nothing comparable serves), so the thresholds are
proven to attach; `gate_failures`, the plain function, must give the same verdict on the same values. Then the
baseline choice: a serving model trained on another class table, band list, LiDAR channel list or patch size is
not a baseline.
"""
import json
import os

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis import constants as tfma_constants
from tfx.types import standard_artifacts
from tfx_bsl.arrow import table_util

from components.atomic_pusher import publish_atomically
from components.baseline import (BASELINE_COMPARABLE_PROPERTY, BASELINE_SOURCE_PROPERTY, PublishedBaseline,
                                 choose_baseline, compatibility_problems)
from foundation.config import Config
from foundation.published import TRAINING_RECORD_PATH
from models import metrics
from models.evaluation import (CHANGE, LOWER, UPPER, Check, eval_config, failed_checks, gate_checks, gate_failures,
                               read_evaluation, read_metric_values, verdict_lines)

CONFIG = Config()
K = len(CONFIG.class_ids)
ROAD, GRASS, WATER = (CONFIG.class_names.index(name) for name in ("road", "grass", "water"))
PER_CLASS = 100


def _labels(per_class=(PER_CLASS,) * K):
    return np.repeat(np.arange(K), per_class)


def _miss(labels, predicted, class_index, misses, to=None):
    """`misses` examples of `class_index` predicted as `to` (default: spread over the other classes)."""
    predicted = predicted.copy()
    where = np.flatnonzero(labels == class_index)[:misses]
    others = [k for k in range(K) if k != class_index]
    predicted[where] = to if to is not None else np.resize(others, misses)
    return predicted


def _probabilities(predicted):
    """Confident softmax-like rows whose argmax is `predicted`."""
    rows = np.full((len(predicted), K), 0.1 / (K - 1), dtype=np.float32)
    rows[np.arange(len(predicted)), predicted] = 0.9
    return list(rows)


def numpy_values(labels, predicted, baseline=None):
    """What the gate's TFMA metrics should read, computed independently with numpy; diffs only with a baseline."""
    def of(predicted):
        n = len(labels)
        labelled = np.bincount(labels, minlength=K).astype(float)
        counts = np.bincount(predicted, minlength=K).astype(float)
        hits = np.bincount(labels[predicted == labels], minlength=K)
        recall = np.where(labelled > 0, hits / np.maximum(labelled, 1), np.nan)
        top = np.flatnonzero(counts == counts.max())
        values = {(metrics.ARGMAX_RECALL_NAME, k): recall[k] for k in range(K)}
        values |= {(metrics.CLASS_EXAMPLE_COUNT_NAME, k): labelled[k] for k in range(K)}
        values |= {(metrics.CLASS_PREDICTION_COUNT_NAME, k): counts[k] for k in range(K)}
        values |= {(metrics.MACRO_ARGMAX_RECALL_NAME, None): recall.mean(),
                   (metrics.MAJORITY_PREDICTION_SHARE_NAME, None): counts.max() / n,
                   (metrics.MAJORITY_EXCESS_NAME, None): max(counts[top] - labelled[top]) / n,
                   ("example_count", None): n, ("sparse_categorical_accuracy", None): np.mean(predicted == labels)}
        return values

    candidate = of(predicted)
    values = {(name, k, False): value for (name, k), value in candidate.items()}
    if baseline is not None:
        values |= {(name, k, True): value - of(baseline)[(name, k)] for (name, k), value in candidate.items()}
    return values


def _evaluate(pipeline, name, config, labels, predicted, baseline_predicted, output_path):
    """Adds the Evaluator's computation on crafted predictions to `pipeline`: eval_config(config) with a candidate
    and a baseline model whose predictions are columns (TFMA's materialized-prediction models)."""
    cfg = eval_config(config)
    del cfg.model_specs[:]
    cfg.model_specs.add(name=tfma.CANDIDATE_KEY, label_key="label", prediction_key="prediction")
    cfg.model_specs.add(name=tfma.BASELINE_KEY, label_key="label", prediction_key="baseline", is_baseline=True)
    models = [tfma.types.EvalSharedModel(model_name=spec.name, is_baseline=spec.is_baseline,
                                         model_type=tfma_constants.MATERIALIZED_PREDICTION) for spec in cfg.model_specs]
    frame = pd.DataFrame({"label": labels, "prediction": _probabilities(predicted),
                          "baseline": _probabilities(baseline_predicted)})
    _ = (pipeline
         | f"Data {name}" >> beam.Create([table_util.CanonicalizeRecordBatch(pa.RecordBatch.from_pandas(frame))])
         | f"Evaluate {name}" >> tfma.ExtractEvaluateAndWriteResults(eval_shared_model=models, eval_config=cfg,
                                                                       output_path=output_path))


# Each case: (config, labels, candidate's argmax, baseline's argmax (the candidate's own: no comparable model)).
def _cases():
    labels = _labels()
    healthy = _miss(labels, _miss(labels, labels, ROAD, 8), GRASS, 5)
    few_water = _labels([PER_CLASS] * (K - 1) + [12])
    custom_floors = CONFIG.replace({"classes": [
        {"id": c.id, "name": c.name, "min_recall": {"road": 0.9, "water": 0.4}.get(c.name)} for c in CONFIG.classes]})
    floors_case = _miss(labels, _miss(labels, labels, ROAD, 15), WATER, 55)
    # road falls 1.00 -> 0.80 while grass rises 0.80 -> 1.00: macro recall unchanged
    dropping = _miss(labels, labels, ROAD, 20)
    serving = _miss(labels, labels, GRASS, 20)
    # 16 of every other class predicted as grass: every recall 0.84, grass takes 0.30 of predictions
    grass_everywhere = labels.copy()
    for k in range(K):
        if k != GRASS:
            grass_everywhere = _miss(labels, grass_everywhere, k, 16, to=GRASS)
    weak = _miss(labels, labels, ROAD, 51)
    no_water = _labels([PER_CLASS] * (K - 1) + [0])
    return {
        "healthy": (CONFIG, labels, healthy, _miss(labels, labels, ROAD, 3)),
        "weak_class": (CONFIG, labels, weak, weak),
        "few_examples": (CONFIG, few_water, few_water, few_water),
        "class_drop": (CONFIG, labels, dropping, serving),
        "majority_excess": (CONFIG, labels, grass_everywhere, grass_everywhere),
        "custom_floors": (custom_floors, labels, floors_case, floors_case),
        "absent_class": (CONFIG, no_water, no_water, no_water),
    }


CASES = _cases()


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """{case: (EvaluationSummary, TFMA's metric values, numpy's)}: every case in one Beam pipeline."""
    outputs = {name: str(tmp_path_factory.mktemp(name)) for name in CASES}
    with beam.Pipeline() as pipeline:
        for name, case in CASES.items():
            _evaluate(pipeline, name, *case, outputs[name])
    return {name: (read_evaluation(outputs[name], config), read_metric_values(outputs[name]),
                   numpy_values(labels, predicted, baseline))
            for name, (config, labels, predicted, baseline) in CASES.items()}


def test_healthy_model_is_blessed(gated):
    summary, values, _ = gated["healthy"]
    assert summary.blessed and summary.failures == []
    assert summary.per_class_recall["road"] == pytest.approx(0.92)
    assert summary.per_class_recall_change["road"] == pytest.approx(-0.05)  # within the 0.10 allowed
    assert summary.per_class_test_examples == dict.fromkeys(CONFIG.class_names, PER_CLASS)
    assert gate_failures(values, CONFIG) == []


def test_one_class_under_its_floor_is_refused(gated):
    summary, _, _ = gated["weak_class"]
    assert not summary.blessed
    assert summary.failures == ["recall of road = 0.490, below its floor 0.750"]
    assert [r for name, r in summary.per_class_recall.items() if name != "road"] == [1.0] * (K - 1)


def test_too_few_test_examples_is_insufficient_evidence(gated):
    summary, _, _ = gated["few_examples"]
    assert summary.per_class_recall["water"] == 1.0  # perfect, and still not enough to judge
    assert not summary.blessed
    assert summary.failures == ["test examples of water = 12, below 30: insufficient evidence"]
    assert summary.per_class_test_examples["water"] == 12


def test_one_class_dropping_against_the_serving_model_is_refused_while_macro_holds(gated):
    summary, _, _ = gated["class_drop"]
    assert summary.macro_recall_change == pytest.approx(0.0, abs=1e-9)
    assert summary.per_class_recall["road"] == pytest.approx(0.8)  # above its floor: only the change check fails
    assert summary.per_class_recall_change["road"] == pytest.approx(-0.2)
    assert summary.per_class_recall_change["grass"] == pytest.approx(0.2)
    assert not summary.blessed
    assert summary.failures == ["recall of road fell by 0.200 against the serving model (limit 0.100)"]


def test_a_class_predicted_far_beyond_its_share_is_refused(gated):
    summary, _, _ = gated["majority_excess"]
    assert min(summary.per_class_recall.values()) >= CONFIG.gate.min_class_recall
    assert summary.most_predicted_class == "grass"
    assert summary.majority_excess == pytest.approx((PER_CLASS + 5 * 16) / (K * PER_CLASS) - 1 / K)
    assert not summary.blessed
    assert summary.failures == ["most predicted class grass takes 0.30 of predictions vs 0.17 of test labels: "
                                "excess 0.13 (limit 0.10)"]


def test_per_class_floors_attach_per_class(gated):
    summary, _, _ = gated["custom_floors"]
    # road 0.85 is above the default floor but under its own 0.9; water 0.45 is under the default but above 0.4
    assert summary.per_class_recall["road"] == pytest.approx(0.85)
    assert summary.per_class_recall["water"] == pytest.approx(0.45)
    assert not summary.blessed
    assert summary.failures == ["recall of road = 0.850, below its floor 0.900"]


@pytest.mark.parametrize("case", list(CASES))
def test_tfma_reads_what_numpy_computes_and_the_plain_verdict_agrees(gated, case):
    summary, values, expected = gated[case]
    config = CASES[case][0]
    assert set(expected) <= set(values)
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert gate_failures(values, config) == summary.failures
    assert gate_failures(expected, config) == summary.failures


def test_a_class_without_test_examples_is_refused_on_every_check_it_cannot_pass(gated):
    summary, _, _ = gated["absent_class"]
    assert not summary.blessed
    assert summary.failures == [
        "test examples of water = 0, below 30: insufficient evidence",
        "recall of water not measured (no test examples of it), below its floor 0.750",
        "recall of water: change against the baseline not measured (limit 0.100)",
        "macro recall: change against the baseline not measured (limit 0.020)",
    ]


def test_verdict_lines_show_each_class_against_its_limits_and_every_failure(gated):
    summary, _, _ = gated["class_drop"]
    lines = verdict_lines(summary, CONFIG, "published version /serving/12")
    assert f"  road            {PER_CLASS}  0.800 (0.75)  -0.200" in lines
    assert lines[-3:] == ["Baseline: published version /serving/12", "Verdict: NOT BLESSED",
                          "  - recall of road fell by 0.200 against the serving model (limit 0.100)"]
    assert verdict_lines(gated["healthy"][0], CONFIG)[-1] == "Verdict: BLESSED"


# --- the plain functions ------------------------------------------------------------------------------------


def test_gate_checks_are_the_thresholds_of_the_specs():
    config = CONFIG.replace({"classes": [{"id": c.id, "name": c.name, "min_recall": 0.6 if c.name == "water" else None}
                                         for c in CONFIG.classes]})
    checks = gate_checks(config)
    gate = config.gate
    assert checks[:3] == [Check(metrics.CLASS_EXAMPLE_COUNT_NAME, 0, LOWER, gate.min_test_examples_per_class),
                          Check(metrics.ARGMAX_RECALL_NAME, 0, LOWER, gate.min_class_recall),
                          Check(metrics.ARGMAX_RECALL_NAME, 0, CHANGE, -gate.max_class_recall_drop)]
    assert Check(metrics.ARGMAX_RECALL_NAME, WATER, LOWER, 0.6) in checks
    assert checks[-2:] == [Check(metrics.MACRO_ARGMAX_RECALL_NAME, None, CHANGE, -gate.max_macro_recall_drop),
                           Check(metrics.MAJORITY_EXCESS_NAME, None, UPPER, gate.max_majority_excess)]
    assert len(checks) == 3 * K + 2


def test_plain_verdict_lists_every_failing_check_in_order():
    labels = _labels([PER_CLASS] * (K - 1) + [12])
    predicted = _miss(labels, _miss(labels, labels, ROAD, 51, to=GRASS), WATER, 6, to=GRASS)
    serving = labels
    assert gate_failures(numpy_values(labels, predicted, serving), CONFIG) == [
        "recall of road = 0.490, below its floor 0.750",
        "recall of road fell by 0.510 against the serving model (limit 0.100)",
        "test examples of water = 12, below 30: insufficient evidence",
        "recall of water = 0.500, below its floor 0.750",
        "recall of water fell by 0.500 against the serving model (limit 0.100)",
        "macro recall fell by 0.168 against the serving model (limit 0.020)",
        "most predicted class grass takes 0.31 of predictions vs 0.20 of test labels: excess 0.11 (limit 0.10)",
    ]


def test_without_a_baseline_the_change_checks_are_left_out():
    labels = _labels()
    dropped = numpy_values(labels, _miss(labels, labels, ROAD, 20), labels)
    assert [(check.metric, check.bound) for check, _ in failed_checks(dropped, CONFIG)] == [
        (metrics.ARGMAX_RECALL_NAME, CHANGE), (metrics.MACRO_ARGMAX_RECALL_NAME, CHANGE)]
    first_run = {key: value for key, value in dropped.items() if not key[2]}
    assert failed_checks(first_run, CONFIG) == []


def test_a_class_without_test_examples_fails_unmeasured():
    labels = _labels([PER_CLASS] * (K - 1) + [0])
    assert gate_failures(numpy_values(labels, labels), CONFIG) == [
        "test examples of water = 0, below 30: insufficient evidence",
        "recall of water not measured (no test examples of it), below its floor 0.750",
    ]


def test_a_missing_metric_fails_as_in_tfma():
    values = numpy_values(_labels(), _labels())
    del values[(metrics.MAJORITY_EXCESS_NAME, None, False)]
    assert [check.metric for check, _ in failed_checks(values, CONFIG)] == [metrics.MAJORITY_EXCESS_NAME]


# --- the baseline ---------------------------------------------------------------------------------------------


def _record(config):
    """A training record as models/trainer.py writes it and read_training_record reads it back (JSON)."""
    return json.loads(json.dumps({
        "class_table": [{"index": i, "id": c.id, "name": c.name} for i, c in enumerate(config.classes)],
        "config": config.restricted("streams", "ingest", "transform", "model").to_dict(), "epochs_run": 3}))


INCOMPATIBLE = {
    "class table": (CONFIG.replace({"classes": [{"id": c.id, "name": c.name} for c in CONFIG.classes[:-1]]}),
                    "class ids [10, 30, 50, 55, 60] (serving) vs [10, 30, 50, 55, 60, 80] (this run)"),
    "bands": (CONFIG.replace({"streams.multispectral_bands": ["blue", "green", "red", "nir"]}),
              "multispectral bands ['blue', 'green', 'red', 'nir'] (serving) vs "
              "['blue', 'green', 'red', 'nir', 'swir'] (this run)"),
    "channels": (CONFIG.replace({"streams.lidar_channels": ["height", "intensity", "return_ratio"]}),
                 "LiDAR channels ['height', 'intensity', 'return_ratio'] (serving) vs "
                 "['height', 'intensity'] (this run)"),
    "patch size": (CONFIG.replace({"ingest.patch_size": 7}), "patch size 7 (serving) vs 9 (this run)"),
}


@pytest.mark.parametrize("what", list(INCOMPATIBLE))
def test_a_model_trained_on_other_classes_bands_channels_or_patches_is_not_comparable(what):
    trained, problem = INCOMPATIBLE[what]
    assert compatibility_problems(_record(trained), CONFIG) == [problem]


def test_comparable_despite_other_training_settings():
    other = CONFIG.replace({"model.streams": "multispectral", "model.epochs": 2, "ingest.max_per_class": 10,
                            "classes": [{"id": c.id, "name": c.name.upper()} for c in CONFIG.classes]})
    assert compatibility_problems(_record(other), CONFIG) == []
    assert compatibility_problems(None, CONFIG) == ["it has no terrafuse training record"]


def _model(folder, config=None):
    """A model folder (not a real SavedModel: the choice reads only the training record)."""
    os.makedirs(os.path.join(folder, os.path.dirname(TRAINING_RECORD_PATH)))
    if config is not None:
        with open(os.path.join(folder, TRAINING_RECORD_PATH), "w") as f:
            json.dump(_record(config), f)
    return str(folder)


def test_the_baseline_is_the_newest_comparable_published_version_else_the_candidate(tmp_path):
    serving, candidate = str(tmp_path / "serving"), str(tmp_path / "candidate")
    choice = choose_baseline(candidate, serving, CONFIG)
    assert (choice.model_dir, choice.comparable) == (candidate, False) and "nothing published" in choice.why
    older = publish_atomically(_model(tmp_path / "a", CONFIG), serving, version=7)
    newest = publish_atomically(_model(tmp_path / "b", CONFIG), serving, version=12)
    os.makedirs(os.path.join(serving, ".staging-13-99"))
    choice = choose_baseline(candidate, serving, CONFIG)
    assert (choice.model_dir, choice.comparable, choice.why) == (newest, True, f"published version {newest}")
    # The serving model has another patch size: not comparable, even with a comparable older version.
    assert older != newest
    newest = publish_atomically(_model(tmp_path / "c", INCOMPATIBLE["patch size"][0]), serving, version=14)
    choice = choose_baseline(candidate, serving, CONFIG)
    assert (choice.model_dir, choice.comparable) == (candidate, False)
    assert choice.why == (f"published version {newest} is not comparable (patch size 7 (serving) vs 9 (this run)): "
                          "the candidate is its own baseline, only the absolute checks judge it")
    newest = publish_atomically(_model(tmp_path / "d"), serving, version=15)  # pushed by hand: no record
    assert choose_baseline(candidate, serving, CONFIG).model_dir == candidate


def test_published_baseline_component_records_its_choice(tmp_path):
    serving = str(tmp_path / "serving")
    published = publish_atomically(_model(tmp_path / "old", INCOMPATIBLE["bands"][0]), serving, version=3)
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "candidate")
    _model(os.path.join(model.uri, "Format-Serving"), CONFIG)
    executor = PublishedBaseline.EXECUTOR_SPEC.executor_class()
    for config, comparable in ((INCOMPATIBLE["bands"][0], 1), (CONFIG, 0)):
        baseline = standard_artifacts.Model()
        baseline.uri = str(tmp_path / f"baseline-{comparable}")
        executor.Do({"model": [model]}, {"baseline": [baseline]},
                    {"serving_dir": serving, "config_json": config.restricted("streams", "ingest", "gate").to_json()})
        assert baseline.get_int_custom_property(BASELINE_COMPARABLE_PROPERTY) == comparable
        why = baseline.get_string_custom_property(BASELINE_SOURCE_PROPERTY)
        assert why.startswith(f"published version {published}") and ("not comparable" in why) == (not comparable)
        with open(os.path.join(baseline.uri, "Format-Serving", TRAINING_RECORD_PATH)) as f:
            bands = json.load(f)["config"]["streams"]["multispectral_bands"]
        assert bands == list(config.streams.multispectral_bands if comparable else CONFIG.streams.multispectral_bands)
