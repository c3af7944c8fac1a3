"""The data gate's decision, on label counts and anomalies already read from disk."""
import math

import numpy as np
from tensorflow_metadata.proto.v0 import anomalies_pb2

from tfx.types import standard_artifacts

from components.baseline import baseline_source
from components.data_gate import anomaly_messages, compare, data_provenance, evaluate, evaluate_drift, jensen_shannon
from pipeline.config import Config

CONFIG = Config()
IDS = CONFIG.class_ids  # 10 trees, 30 grass, 50 building, 55 road, 60 bare_soil, 80 water


def counts(*shares, total=10000):
    return {class_id: int(round(share * total)) for class_id, share in zip(IDS, shares)}


BALANCED = counts(0.30, 0.35, 0.05, 0.10, 0.15, 0.05)


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
    divergence = compare("train vs eval", BALANCED, skewed, IDS, 0.15, 0.05)
    assert math.isclose(divergence.linf, 0.20, abs_tol=1e-9)
    assert divergence.moved_class in (30, 80)
    assert divergence.exceeded


def test_passes_unskewed_data():
    report = evaluate(CONFIG, {"train": BALANCED, "eval": counts(0.28, 0.37, 0.05, 0.09, 0.16, 0.05)}, [], [])
    assert report.passed, report.problems
    assert len(report.divergences) == 1 and report.divergences[0].linf < 0.03


def test_stops_on_train_eval_skew_with_figures_and_limit():
    report = evaluate(CONFIG, {"train": BALANCED, "eval": counts(0.08, 0.37, 0.05, 0.10, 0.15, 0.25)}, [], [])
    assert not report.passed
    message = report.problems[0]
    assert "train vs eval" in message and "L-infinity 0.220 (limit 0.15)" in message
    assert "class 10 trees" in message and "30.0 % of train vs 8.0 % of eval" in message


def test_stops_on_drift_from_the_blessed_models_training_data():
    drifted = counts(0.10, 0.20, 0.05, 0.10, 0.25, 0.30)
    report = evaluate_drift(CONFIG, drifted, BALANCED)
    assert len(report.problems) == 1 and "last blessed model's training data" in report.problems[0]
    assert "L-infinity 0.250 (limit 0.1)" in report.problems[0]
    assert evaluate_drift(CONFIG, counts(0.29, 0.36, 0.05, 0.10, 0.15, 0.05), BALANCED).passed


def test_schema_anomalies_stop_the_run_unless_configured_to_report_only():
    split = {"train": BALANCED, "eval": BALANCED}
    anomaly = ["ExampleValidator (Split-train): feature 'ms_red': out of range"]
    assert evaluate(CONFIG, split, anomaly, []).problems == anomaly
    lenient = CONFIG.replace({"validation.fail_on_schema_anomalies": False})
    assert evaluate(lenient, split, anomaly, []).passed


def test_class_missing_from_training_stops_the_run():
    no_water = {**BALANCED, 80: 0}
    report = evaluate(CONFIG.replace({"validation.train_eval_linf_max": 1.0, "validation.train_eval_js_max": 1.0}),
                      {"train": no_water, "eval": BALANCED}, [], [])
    assert any("80 water" in p for p in report.problems)


def test_anomaly_messages_name_feature_and_reason():
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["lidar_height"]
    info.severity = anomalies_pb2.AnomalyInfo.ERROR
    info.reason.add(type=anomalies_pb2.AnomalyInfo.FLOAT_TYPE_BIG_FLOAT, short_description="Out-of-range values",
                    description="Unexpectedly large value: 512.")
    assert anomaly_messages(anomalies, "ExampleValidator (Split-eval)") == [
        "ExampleValidator (Split-eval): feature 'lidar_height': Unexpectedly large value: 512."]


def test_data_provenance_reads_span_and_fingerprint_as_either_runner_records_them():
    examples = standard_artifacts.Examples()
    assert data_provenance(examples) == {"span": None, "input_fingerprint": None}
    examples.set_int_custom_property("span", 0)  # LocalDagRunner: an int, and span 0 is a span
    examples.set_string_custom_property("input_fingerprint", "split:scenes,num_files:9")
    assert data_provenance(examples) == {"span": 0, "input_fingerprint": "split:scenes,num_files:9"}
    examples.set_json_value_custom_property("span", 2.0)  # KFP: metadata numbers arrive as floats
    assert data_provenance(examples)["span"] == 2


def test_the_baseline_is_the_newest_published_version_else_the_candidate(tmp_path):
    serving = tmp_path / "serving"
    source, why = baseline_source("/models/candidate", str(serving))
    assert source == "/models/candidate" and "nothing published" in why
    for version in ("7", "12", ".staging-13-99"):
        (serving / version).mkdir(parents=True)
    source, why = baseline_source("/models/candidate", str(serving))
    assert source == str(serving / "12") and why == f"published version {serving / '12'}"
