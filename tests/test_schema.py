"""The curated schema file is what the config generates, describes every stream with the right shape, and makes
TFDV report a NaN or an infinity in any stream feature."""
import numpy as np
import pyarrow as pa
import pytest
import tensorflow_data_validation as tfdv
from google.protobuf import text_format
from tensorflow_data_validation.statistics.stats_impl import generate_statistics_in_memory
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from foundation.config import Config
from schemas.curated import DEFAULT_SCHEMA_FILE, SERVING, build_schema, schema_text
from transforms.features import LABEL, layout


def test_committed_schema_matches_default_config():
    assert DEFAULT_SCHEMA_FILE.read_text() == schema_text(Config()), "regenerate: terrafuse schema --out schemas/schema.pbtxt"


def test_schema_covers_streams_label_and_environments():
    config = Config()
    schema = text_format.Parse(DEFAULT_SCHEMA_FILE.read_text(), schema_pb2.Schema())
    features = {f.name: f for f in schema.feature}
    for name in layout(config).stream_features:
        assert [d.size for d in features[name].shape.dim] == [config.ingest.patch_size ** 2]
        assert features[name].float_domain.max > features[name].float_domain.min
        assert SERVING not in features[name].not_in_environment
    label = features[LABEL]
    assert label.int_domain.is_categorical
    assert (label.int_domain.min, label.int_domain.max) == (min(config.class_ids), max(config.class_ids))
    assert SERVING in label.not_in_environment


def test_extra_lidar_channel_gets_a_domain():
    config = Config().replace({"streams.lidar_channels": ["height", "intensity", "return_ratio"]})
    names = {f.name: f for f in build_schema(config).feature}
    assert names["lidar_return_ratio"].float_domain.max == 1.0


def serving_statistics(bad_value=None):
    """TFDV statistics, computed in-process, of 20 in-domain serving examples; one ms_red pixel set to bad_value."""
    config = Config()
    columns = {}
    for name in layout(config).stream_features:
        values = np.full((20, config.ingest.patch_size ** 2), 100.0, np.float32)
        if bad_value is not None and name == "ms_red":
            values[3, 4] = bad_value
        offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(values.ravel()))
    return generate_statistics_in_memory(pa.RecordBatch.from_arrays(list(columns.values()), list(columns)))


def test_nan_in_a_stream_feature_is_an_anomaly():
    schema = build_schema(Config())
    assert all(f.float_domain.disallow_nan for f in schema.feature if f.type == schema_pb2.FLOAT)
    assert not tfdv.validate_statistics(serving_statistics(), schema, environment=SERVING).anomaly_info
    anomalies = tfdv.validate_statistics(serving_statistics(np.nan), schema, environment=SERVING)
    assert list(anomalies.anomaly_info) == ["ms_red"]
    assert [r.type for r in anomalies.anomaly_info["ms_red"].reason] == [anomalies_pb2.AnomalyInfo.FLOAT_TYPE_HAS_NAN]


@pytest.mark.parametrize("infinity", [np.inf, -np.inf])
def test_an_infinity_falls_outside_the_domain(infinity):
    anomalies = tfdv.validate_statistics(serving_statistics(infinity), build_schema(Config()), environment=SERVING)
    assert list(anomalies.anomaly_info) == ["ms_red"]
