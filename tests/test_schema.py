"""The curated schema file is what the config generates, and describes every stream with the right shape."""
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from pipeline.config import Config
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
