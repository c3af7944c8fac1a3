"""The data gates' decisions, on label counts, anomalies and feature statistics computed in-process by TFDV."""
import json
import math

import numpy as np
import pyarrow as pa
import pytest
import tensorflow_data_validation as tfdv
from tensorflow_data_validation.statistics.stats_impl import generate_statistics_in_memory
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
from tfx import version as tfx_version
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils, standard_artifacts

from components.data_gate import (DRIFT_COMPARISON, GATE_REPORT_PROPERTY, LABEL_COUNTS_FILE, SKEW_COMPARISON, DataGate,
                                  DataGateError, DriftGate, FeatureComparison, anomaly_messages, compare,
                                  data_provenance, decode_statistics, evaluate, evaluate_drift, feature_drift,
                                  feature_name, feature_skew, jensen_shannon, stream_statistics,
                                  training_hyperparameters)
from foundation.config import SPLITS, TEST, TRAIN, VALIDATION, Config
from foundation.published import TRAIN_STATISTICS_KEY, TRAINING_DATA_KEY, TRAINING_RECORD_PATH
from schemas.curated import SERVING, build_schema
from synth.scenes import SIGNATURES, SPECTRUM_BANDS
from transforms.features import LABEL, layout

CONFIG = Config()
IDS = CONFIG.class_ids  # 10 trees, 30 grass, 50 building, 55 road, 60 bare_soil, 80 water
LAYOUT = layout(CONFIG)
NOT_MEASURED = FeatureComparison([], [])


def counts(*shares, total=10000):
    return {class_id: int(round(share * total)) for class_id, share in zip(IDS, shares)}


BALANCED = counts(0.30, 0.35, 0.05, 0.10, 0.15, 0.05)


def splits(train, validation=None, test=None):
    return {TRAIN: train, VALIDATION: validation or train, TEST: test or train}


# Feature statistics of sample-like data: each patch is one class, its values that class's signature (synth/scenes.py)
# with patch-to-patch brightness, pixel noise and a calibration factor per band that differs between datasets.
def patch_values(seed, patches=300, faults=None):
    rng = np.random.default_rng(seed)
    shares = np.array([SIGNATURES[name].label_share for name in CONFIG.class_names])
    classes = rng.choice(len(shares), size=patches, p=rng.dirichlet(400 * shares / shares.sum()))
    pixels = (patches, LAYOUT.patch_values)
    values = {}
    for band, name in zip(CONFIG.streams.multispectral_bands, LAYOUT.multispectral):
        reflectance = np.array([SIGNATURES[c].reflectance[SPECTRUM_BANDS.index(band)] for c in CONFIG.class_names])
        brightness = (1 + 0.08 * rng.standard_normal((patches, 1))) * rng.uniform(0.96, 1.04)
        values[name] = (reflectance[classes, None] * brightness * (1 + 0.03 * rng.standard_normal(pixels))
                        * CONFIG.streams.float_reflectance_scale)
    low, high = np.array([SIGNATURES[c].height_m for c in CONFIG.class_names]).T
    top = rng.uniform(low[classes], high[classes])[:, None]
    values["lidar_height"] = np.where(top > 0.5, top * rng.uniform(0.7, 1.0, pixels), 0) + np.abs(
        rng.normal(0, 0.03, pixels))
    intensity = np.array([SIGNATURES[c].intensity for c in CONFIG.class_names], float)
    values["lidar_intensity"] = intensity[classes, None] * (1 + 0.1 * rng.standard_normal(pixels))
    for name, change in (faults or {}).items():
        values[name] = change(values[name])
    return values, np.array(IDS)[classes]


def statistics(seed, faults=None, features=LAYOUT.stream_features):
    values, labels = patch_values(seed, faults=faults)
    columns = {name: pa.ListArray.from_arrays(
        pa.array(np.arange(0, values[name].size + 1, values[name].shape[1], dtype=np.int32)),
        pa.array(values[name].astype(np.float32).ravel())) for name in features}
    columns[LABEL] = pa.array([[label] for label in labels.tolist()], pa.list_(pa.int64()))
    batch = pa.RecordBatch.from_arrays(list(columns.values()), list(columns))
    # With the curated schema, as StatisticsGen computes them: the label is categorical, its counts exact.
    return generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=build_schema(CONFIG))).datasets[0]


def as_list(dataset):
    return statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])


def tenth(values):
    return values * 0.1


def feet(values):
    return values * 3.28


def eight_bit(values):
    return np.clip(np.round(values * 255 / CONFIG.streams.float_reflectance_scale), 0, 255)


@pytest.fixture(scope="module")
def train():
    return statistics(seed=1)


def test_jensen_shannon_known_values():
    p = np.array([1.0, 0.0])
    assert jensen_shannon(p, p) == 0.0
    assert math.isclose(jensen_shannon(p, np.array([0.0, 1.0])), 1.0)
    # Hand-computed, base 2: 0.5*KL(p||m) + 0.5*KL(q||m) with m = (0.625, 0.375).
    expected = 0.5 * (0.5 * math.log2(0.5 / 0.625) + 0.5 * math.log2(0.5 / 0.375)) + 0.5 * (
        0.75 * math.log2(0.75 / 0.625) + 0.25 * math.log2(0.25 / 0.375))
    assert math.isclose(jensen_shannon(np.array([0.5, 0.5]), np.array([0.75, 0.25])), expected)


def test_compare_names_the_class_that_moved():
    skewed = counts(0.30, 0.15, 0.05, 0.10, 0.15, 0.25)
    divergence = compare(f"{TRAIN} vs {TEST}", BALANCED, skewed, IDS, 0.15, 0.05)
    assert math.isclose(divergence.linf, 0.20, abs_tol=1e-9)
    assert divergence.moved_class in (30, 80)
    assert divergence.exceeded


def test_passes_unskewed_data_comparing_validation_and_test_with_train():
    report = evaluate(CONFIG, splits(BALANCED, counts(0.28, 0.37, 0.05, 0.09, 0.16, 0.05),
                                     counts(0.31, 0.34, 0.05, 0.10, 0.14, 0.06)), [], [], NOT_MEASURED)
    assert report.passed, report.problems
    assert [d.comparison for d in report.divergences] == [f"{TRAIN} vs {VALIDATION}", f"{TRAIN} vs {TEST}"]
    assert all(d.linf < 0.03 for d in report.divergences)


@pytest.mark.parametrize("skewed_split", [VALIDATION, TEST])
def test_stops_on_label_skew_of_either_split_with_figures_and_limit(skewed_split):
    by_split = splits(BALANCED)
    by_split[skewed_split] = counts(0.08, 0.37, 0.05, 0.10, 0.15, 0.25)
    report = evaluate(CONFIG, by_split, [], [], NOT_MEASURED)
    assert len(report.problems) == 1
    message = report.problems[0]
    assert f"train vs {skewed_split}" in message and "L-infinity 0.220 (limit 0.15)" in message
    assert "class 10 trees" in message and f"30.0 % of train vs 8.0 % of {skewed_split}" in message


def test_an_empty_split_stops_the_run():
    report = evaluate(CONFIG, splits(BALANCED, test={c: 0 for c in IDS}), [], [], NOT_MEASURED)
    assert report.problems == ["the test split has no labelled examples"]


def test_stops_on_drift_from_the_blessed_models_training_data():
    drifted = counts(0.10, 0.20, 0.05, 0.10, 0.25, 0.30)
    report = evaluate_drift(CONFIG, drifted, BALANCED, NOT_MEASURED)
    assert len(report.problems) == 1 and "last blessed model's training data" in report.problems[0]
    assert "L-infinity 0.250 (limit 0.1)" in report.problems[0]
    assert evaluate_drift(CONFIG, counts(0.29, 0.36, 0.05, 0.10, 0.15, 0.05), BALANCED, NOT_MEASURED).passed


def test_schema_anomalies_stop_the_run_unless_configured_to_report_only():
    anomaly = ["schema anomalies (Split-train): feature 'ms_red': out of range"]
    assert evaluate(CONFIG, splits(BALANCED), anomaly, [], NOT_MEASURED).problems == anomaly
    lenient = CONFIG.replace({"validation.fail_on_schema_anomalies": False})
    assert evaluate(lenient, splits(BALANCED), anomaly, [], NOT_MEASURED).passed


def test_class_missing_from_training_stops_the_run():
    no_water = {**BALANCED, 80: 0}
    report = evaluate(CONFIG.replace({"validation.label_skew_linf_max": 1.0, "validation.label_skew_js_max": 1.0}),
                      splits(no_water, BALANCED, BALANCED), [], [], NOT_MEASURED)
    assert any("80 water" in p for p in report.problems)


def test_anomaly_messages_name_feature_and_reason():
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["lidar_height"]
    info.severity = anomalies_pb2.AnomalyInfo.ERROR
    info.reason.add(type=anomalies_pb2.AnomalyInfo.FLOAT_TYPE_BIG_FLOAT, short_description="Out-of-range values",
                    description="Unexpectedly large value: 512.")
    assert anomaly_messages(anomalies, "schema anomalies (Split-test)") == [
        "schema anomalies (Split-test): feature 'lidar_height': Unexpectedly large value: 512."]


def test_a_nan_in_the_statistics_stops_the_run(train):
    def one_nan(values):
        values[3, 4] = np.nan
        return values

    schema = build_schema(CONFIG)
    clean = stream_statistics(train, LAYOUT.stream_features)
    assert not tfdv.validate_statistics(as_list(clean), schema, environment=SERVING).anomaly_info
    with_nan = stream_statistics(statistics(seed=1, faults={"ms_red": one_nan}), LAYOUT.stream_features)
    anomalies = tfdv.validate_statistics(as_list(with_nan), schema, environment=SERVING)
    report = evaluate(CONFIG, splits(BALANCED), anomaly_messages(anomalies, "schema anomalies (Split-train)"), [],
                      NOT_MEASURED)
    assert report.problems == ["schema anomalies (Split-train): feature 'ms_red': Float feature has NaN values."]


def test_ordinary_variation_passes_skew_and_drift(train):
    other = statistics(seed=2)  # another draw: other class mix, calibration and noise
    skew = feature_skew(CONFIG, train, other)
    drift = feature_drift(CONFIG, other, train)
    assert sorted(d.feature for d in skew.divergences) == sorted(LAYOUT.stream_features) and not skew.skipped
    assert all(0 < d.js < d.limit for d in skew.divergences + drift.divergences), skew.divergences + drift.divergences
    assert evaluate(CONFIG, splits(BALANCED), [], [], skew).passed
    assert evaluate_drift(CONFIG, BALANCED, BALANCED, drift).passed


def test_red_band_at_a_tenth_stops_the_run_on_skew_naming_feature_figure_and_limit(train):
    skew = feature_skew(CONFIG, train, statistics(seed=2, faults={"ms_red": tenth}))
    report = evaluate(CONFIG, splits(BALANCED), [], [], skew)
    assert [d.feature for d in skew.divergences if d.exceeded] == ["ms_red"]
    red = next(d for d in report.feature_divergences if d.feature == "ms_red")
    assert red.js > 0.9 and red.comparison == SKEW_COMPARISON
    assert report.problems == [f"feature 'ms_red', train vs test: Jensen-Shannon divergence of its values "
                               f"{red.js:.4f} (limit {CONFIG.validation.multispectral_skew_js_max})"]


@pytest.mark.parametrize("feature, fault, limit", [
    ("ms_red", tenth, CONFIG.validation.multispectral_drift_js_max),
    ("ms_nir", eight_bit, CONFIG.validation.multispectral_drift_js_max),
    ("lidar_height", feet, CONFIG.validation.lidar_drift_js_max),
])
def test_a_span_in_another_scale_stops_the_run_on_drift(train, feature, fault, limit):
    faults = {feature: fault} if fault is not eight_bit else dict.fromkeys(LAYOUT.multispectral, eight_bit)
    drift = feature_drift(CONFIG, statistics(seed=2, faults=faults), train)
    report = evaluate_drift(CONFIG, BALANCED, BALANCED, drift)
    assert sorted(d.feature for d in drift.divergences if d.exceeded) == sorted(faults)
    moved = next(d for d in report.feature_divergences if d.feature == feature)
    assert moved.comparison == DRIFT_COMPARISON
    assert f"feature {feature!r}, {DRIFT_COMPARISON}: Jensen-Shannon divergence of its values {moved.js:.4f} " \
           f"(limit {limit})" in report.problems


def test_heights_in_feet_stop_the_run_on_skew(train):
    report = evaluate(CONFIG, splits(BALANCED), [], [], feature_skew(CONFIG, train, statistics(seed=2, faults={
        "lidar_height": feet})))
    assert len(report.problems) == 1 and report.problems[0].startswith("feature 'lidar_height', train vs test")
    assert f"(limit {CONFIG.validation.lidar_skew_js_max})" in report.problems[0]


def test_the_gate_report_carries_every_feature_divergence(train):
    report = evaluate(CONFIG, splits(BALANCED), [], [], feature_skew(CONFIG, train, statistics(seed=2)))
    recorded = json.loads(report.to_json())["feature_divergences"]
    assert {d["feature"] for d in recorded} == set(LAYOUT.stream_features)
    red = next(d for d in recorded if d["feature"] == "ms_red")
    assert set(red) == {"comparison", "feature", "js", "limit"}
    assert red["comparison"] == SKEW_COMPARISON and red["limit"] == CONFIG.validation.multispectral_skew_js_max


def test_a_feature_missing_from_the_test_statistics_stops_the_run(train):
    without_swir = statistics(seed=2, features=tuple(f for f in LAYOUT.stream_features if f != "ms_swir"))
    report = evaluate(CONFIG, splits(BALANCED), [], [], feature_skew(CONFIG, train, without_swir))
    assert report.problems == ["feature skew train vs test not measured: ms_swir: not in the test split's statistics"]


def test_drift_compares_only_the_features_the_serving_model_was_trained_on(train):
    """The serving model was trained on blue, green, red, nir and coastal; this configuration has swir, not coastal."""
    older_bands = statistics(seed=2, faults={"ms_swir": tenth})
    older_bands.features[[feature_name(f) for f in older_bands.features].index("ms_swir")].path.step[0] = "ms_coastal"
    older_bands = stream_statistics(older_bands, LAYOUT.stream_features + ("ms_coastal",))  # as the record holds them
    drift = feature_drift(CONFIG, statistics(seed=3), older_bands)
    report = evaluate_drift(CONFIG, BALANCED, BALANCED, drift)
    assert report.passed, report.problems
    assert report.skipped == ["ms_swir: not in the serving model's training statistics",
                              "ms_coastal: the serving model was trained on it, this configuration has no such band "
                              "or channel"]
    assert {d.feature for d in report.feature_divergences} == set(LAYOUT.stream_features) - {"ms_swir"}


def test_drift_without_the_serving_models_statistics_still_checks_labels(train):
    drift = feature_drift(CONFIG, train, None)
    report = evaluate_drift(CONFIG, counts(0.10, 0.20, 0.05, 0.10, 0.25, 0.30), BALANCED, drift)
    assert not report.feature_divergences and len(report.skipped) == len(LAYOUT.stream_features)
    assert all(TRAIN_STATISTICS_KEY in why for why in report.skipped)
    assert len(report.problems) == 1 and "L-infinity" in report.problems[0]


def test_the_trainer_gets_counts_of_every_split_provenance_and_the_train_statistics(train):
    data = {"span": 3, "input_fingerprint": "f"}
    hyperparameters = json.loads(json.dumps(training_hyperparameters(
        CONFIG, splits(BALANCED, counts(0.3, 0.3, 0.1, 0.1, 0.1, 0.1)), train, data)))
    assert set(hyperparameters) == set(SPLITS) | {TRAINING_DATA_KEY, TRAIN_STATISTICS_KEY}
    assert hyperparameters[VALIDATION]["10"] == 3000 and hyperparameters[TRAINING_DATA_KEY] == data
    recorded = decode_statistics(hyperparameters[TRAIN_STATISTICS_KEY])
    assert sorted(feature_name(f) for f in recorded.features) == sorted(LAYOUT.stream_features)  # no label
    # What the next span's drift gate decodes from the training record compares as the original statistics do.
    assert feature_drift(CONFIG, train, recorded).divergences == feature_drift(CONFIG, train, train).divergences
    assert all(d.js == 0 for d in feature_drift(CONFIG, train, recorded).divergences)


def test_data_provenance_reads_span_and_fingerprint_as_either_runner_records_them():
    examples = standard_artifacts.Examples()
    assert data_provenance(examples) == {"span": None, "input_fingerprint": None}
    examples.set_int_custom_property("span", 0)  # LocalDagRunner: an int, and span 0 is a span
    examples.set_string_custom_property("input_fingerprint", "split:scenes,num_files:9")
    assert data_provenance(examples) == {"span": 0, "input_fingerprint": "split:scenes,num_files:9"}
    examples.set_json_value_custom_property("span", 2.0)  # KFP: metadata numbers arrive as floats
    assert data_provenance(examples)["span"] == 2



def statistics_artifact(tmp_path, by_split):
    """An ExampleStatistics artifact on disk, as StatisticsGen writes it."""
    artifact = standard_artifacts.ExampleStatistics()
    artifact.uri = str(tmp_path / "statistics")
    artifact.split_names = artifact_utils.encode_split_names(list(by_split))
    # Written by this TFX: load_statistics reads the binary FeatureStats.pb.
    artifact.set_string_custom_property(artifact_utils.ARTIFACT_TFX_VERSION_CUSTOM_PROPERTY_KEY,
                                        tfx_version.__version__)
    for split, dataset in by_split.items():
        folder = tmp_path / "statistics" / f"Split-{split}"
        folder.mkdir(parents=True)
        (folder / stats_artifact_utils.BINARY_PB_BASENAME).write_bytes(as_list(dataset).SerializeToString())
    return artifact


def output_artifact(kind, path):
    artifact = kind()
    artifact.uri = str(path)
    return artifact


def test_the_gates_hand_the_train_statistics_through_the_training_record_to_the_next_spans_drift_check(
        tmp_path, train):
    config_json = CONFIG.to_json()
    no_anomalies = output_artifact(standard_artifacts.ExampleAnomalies, tmp_path / "none")
    labels = output_artifact(standard_artifacts.HyperParameters, tmp_path / "labels")
    DataGate.test_call(
        examples=standard_artifacts.Examples(), schema_anomalies=no_anomalies, distribution_anomalies=no_anomalies,
        statistics=statistics_artifact(tmp_path / "first", {TRAIN: train, VALIDATION: statistics(seed=4),
                                                            TEST: statistics(seed=5)}),
        training_labels=labels, config_json=config_json)
    recorded = json.loads(labels.get_string_custom_property(GATE_REPORT_PROPERTY))
    assert recorded["passed"] and len(recorded["feature_divergences"]) == len(LAYOUT.stream_features)
    hyperparameters = json.loads((tmp_path / "labels" / LABEL_COUNTS_FILE).read_text())
    assert set(hyperparameters) == set(SPLITS) | {TRAINING_DATA_KEY, TRAIN_STATISTICS_KEY}

    # The Trainer copies label counts and train statistics into the published model's training record.
    record = tmp_path / "serving" / "1" / TRAINING_RECORD_PATH
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"label_counts": {TRAIN: hyperparameters[TRAIN]},
                                  TRAIN_STATISTICS_KEY: hyperparameters[TRAIN_STATISTICS_KEY]}))
    drift_report = output_artifact(standard_artifacts.ExampleAnomalies, tmp_path / "drift")
    next_span = statistics(seed=2, faults={"ms_red": tenth})
    with pytest.raises(DataGateError, match=r"feature 'ms_red', last blessed model's training data vs this "
                                            r"span's training data: Jensen-Shannon divergence of its values 1\.0000 "
                                            r"\(limit 0\.2\)"):
        DriftGate.test_call(statistics=statistics_artifact(tmp_path / "next", {TRAIN: next_span}),
                            drift_report=drift_report, config_json=config_json,
                            serving_dir=str(tmp_path / "serving"))
    recorded = json.loads(drift_report.get_string_custom_property(GATE_REPORT_PROPERTY))
    assert [d["feature"] for d in recorded["feature_divergences"] if d["js"] > d["limit"]] == ["ms_red"]
