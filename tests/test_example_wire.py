"""The hand-written tf.Example wire format: the bytes tf.train.Example serializes, for every value size."""
import numpy as np
import pytest
import tensorflow as tf

from components.example_wire import bytes_entry, float_entries, int64_entry, serialize_examples

# Varints of one to ten bytes, and int64's extremes (a negative takes ten).
INT64_VALUES = [0, 1, 127, 128, 300, 2**35, 2**63 - 1, -1, -(2**63)]
# Lengths of a one- and a two-byte varint.
BYTES_VALUES = [b"", b"scene-042/3_7", bytes(range(256)) * 2]


def proto_bytes(features: dict[str, tf.train.Feature]) -> bytes:
    """What tf.train.Example writes; deterministic sorts the map by key, so the entries below come sorted."""
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)


def int64_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def float_feature(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


@pytest.mark.parametrize("value", INT64_VALUES)
def test_an_int64_feature_is_what_the_proto_api_writes(value):
    (record,) = serialize_examples(np.empty((1, 0), np.uint8), [int64_entry("label", value)])
    assert record == proto_bytes({"label": int64_feature(value)})
    assert tf.train.Example.FromString(record).features.feature["label"].int64_list.value == [value]


@pytest.mark.parametrize("value", BYTES_VALUES, ids=len)
def test_a_bytes_feature_is_what_the_proto_api_writes(value):
    (record,) = serialize_examples(np.empty((1, 0), np.uint8), [bytes_entry("block_id", value)])
    assert record == proto_bytes({"block_id": bytes_feature(value)})


@pytest.mark.parametrize("n_values", [1, 31, 32, 81, 4096])  # 31 and 32 values: 124 and 128 bytes
def test_examples_of_float_and_other_features_are_what_the_proto_api_writes(n_values):
    rng = np.random.default_rng(n_values)
    values = rng.normal(0, 1e4, (5, 3, n_values)).astype(np.float32)
    values[0, 0, 0], values[1, 1, -1], values[2, 2, 0] = -0.0, np.inf, np.float32(1e-45)  # sign, inf, subnormal
    keys = ["lidar_height", "ms_blue", "ms_nir"]
    tails = [int64_entry("row", 200 * i) + bytes_entry("scene_id", b"s" * i) for i in range(5)]  # sizes differ
    records = serialize_examples(float_entries(keys, values), tails)

    assert len(records) == 5
    for i, record in enumerate(records):
        features = {key: float_feature(values[i, k].tolist()) for k, key in enumerate(keys)}
        features |= {"row": int64_feature(200 * i), "scene_id": bytes_feature(b"s" * i)}
        assert record == proto_bytes(features)
        parsed = tf.train.Example.FromString(record).features.feature
        np.testing.assert_array_equal(np.array(parsed["ms_blue"].float_list.value, np.float32), values[i, 1])


def test_float_values_of_other_types_are_written_as_float32():
    values = np.arange(6, dtype=np.float64).reshape(1, 2, 3)
    (record,) = serialize_examples(float_entries(["a", "b"], values), [b""])
    assert record == proto_bytes({"a": float_feature([0, 1, 2]), "b": float_feature([3, 4, 5])})
