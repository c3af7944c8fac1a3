"""Serialized tf.train.Examples written in the protobuf wire format directly, many examples at a time.

Why by hand: building tf.train.Example objects through the proto API managed about 7,000 examples/s (P = 9,
seven float features), this over 180,000. Every float feature of a batch has the same size, so its map entry
is a constant header followed by the values, laid out for all examples at once in numpy. The bytes are those
tf.train.Example serializes for the same features in the same order (tests/test_example_wire.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Field numbers of tf.train.Example and the messages inside it (tensorflow/core/example/feature.proto).
_EXAMPLE_FEATURES = 1  # Example.features
_FEATURES_ENTRY = 1  # Features.feature, a map<string, Feature>: repeated {key = 1, value = 2}
_ENTRY_KEY = 1
_ENTRY_VALUE = 2
_FEATURE_BYTES_LIST = 1
_FEATURE_FLOAT_LIST = 2
_FEATURE_INT64_LIST = 3
_LIST_VALUE = 1  # BytesList/FloatList/Int64List.value; numeric lists are packed
_LENGTH_DELIMITED = 2


def int64_entry(key: str, value: int) -> bytes:
    """The map entry of an int64 feature holding one value."""
    return _feature_entry(key, _field(_FEATURE_INT64_LIST, _field(_LIST_VALUE, _varint(value))))


def bytes_entry(key: str, value: bytes) -> bytes:
    """The map entry of a bytes feature holding one value."""
    return _feature_entry(key, _field(_FEATURE_BYTES_LIST, _field(_LIST_VALUE, value)))


def float_entries(keys: Sequence[str], values: np.ndarray) -> np.ndarray:
    """(N, bytes) uint8: per example, the map entries of float features `keys`, feature i holding
    values[:, i] of the (N, len(keys), V) array."""
    values = np.ascontiguousarray(values, "<f4")
    n_examples, _, n_values = values.shape
    headers = [_float_entry_header(key, n_values) for key in keys]
    entries = np.empty((n_examples, sum(len(h) + 4 * n_values for h in headers)), np.uint8)
    value_bytes = values.view(np.uint8)  # (N, C, 4 * V)
    offset = 0
    for feature, header in enumerate(headers):
        entries[:, offset:offset + len(header)] = np.frombuffer(header, np.uint8)
        offset += len(header)
        entries[:, offset:offset + 4 * n_values] = value_bytes[:, feature]
        offset += 4 * n_values
    return entries


def serialize_examples(floats: np.ndarray, more_entries: Sequence[bytes]) -> list[bytes]:
    """Serialized Examples, one per row of `floats` (float_entries), each followed by its item of
    `more_entries` (int64_entry and bytes_entry results, concatenated)."""
    entries_size = floats.shape[1]
    rows = memoryview(np.ascontiguousarray(floats).reshape(-1))
    headers: dict[int, bytes] = {}  # per example size: examples of a batch mostly share a few sizes
    serialized = []
    for i, tail in enumerate(more_entries):
        size = entries_size + len(tail)
        header = headers.get(size)
        if header is None:
            header = headers[size] = _field_header(_EXAMPLE_FEATURES, size)
        serialized.append(b"".join((header, rows[i * entries_size:(i + 1) * entries_size], tail)))
    return serialized


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 is written as its 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_header(field_number: int, length: int) -> bytes:
    return _varint(field_number << 3 | _LENGTH_DELIMITED) + _varint(length)


def _field(field_number: int, payload: bytes) -> bytes:
    return _field_header(field_number, len(payload)) + payload


def _feature_entry(key: str, feature: bytes) -> bytes:
    return _field(_FEATURES_ENTRY, _field(_ENTRY_KEY, key.encode()) + _field(_ENTRY_VALUE, feature))


def _float_entry_header(key: str, n_values: int) -> bytes:
    """Everything of a float feature's map entry that precedes its packed little-endian float32 values."""
    values_length = 4 * n_values
    float_list_length = len(_field_header(_LIST_VALUE, values_length)) + values_length
    feature_length = len(_field_header(_FEATURE_FLOAT_LIST, float_list_length)) + float_list_length
    value_header = (_field_header(_ENTRY_VALUE, feature_length)
                    + _field_header(_FEATURE_FLOAT_LIST, float_list_length)
                    + _field_header(_LIST_VALUE, values_length))
    key_field = _field(_ENTRY_KEY, key.encode())
    entry_length = len(key_field) + len(value_header) + values_length
    return _field_header(_FEATURES_ENTRY, entry_length) + key_field + value_header
