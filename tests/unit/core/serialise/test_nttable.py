"""nttable_se00 / nttable_senv serialisers and the value-less schemas, decoded with
streaming_data_types."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from streaming_data_types.array_1d_se00 import deserialise_se00
from streaming_data_types.sample_environment_senv import deserialise_senv

from forwarder.core.serialise import (
    NoValueSerialiser,
    Se00Serialiser,
    SenvSerialiser,
    UnsupportedValue,
    make_value_serialiser,
)

T0 = 1_700_000_000_123_456_789
TS = np.array([T0, T0 + 1000, T0 + 2000], dtype=np.int64)


@pytest.mark.parametrize("code", ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"])
def test_se00_every_value_type(code: str) -> None:
    ser = make_value_serialiser("nttable_se00", "TABLE:PV")
    assert isinstance(ser, Se00Serialiser)
    values = np.array([1, 2, 3], dtype=code)
    out = ser.serialise({"value": values, "timestamp": TS}, 5)
    assert out is not None and out[4:8] == b"se00"
    msg = deserialise_se00(out)
    assert msg.name == "TABLE:PV" and msg.channel == 0
    assert msg.timestamp_unix_ns == T0 and msg.sample_ts_delta == 1000
    assert msg.values.dtype == np.dtype(code)
    np.testing.assert_array_equal(msg.values, values)
    np.testing.assert_array_equal(msg.value_ts, TS.astype(np.uint64))


def test_message_counter_counts_messages_per_stream() -> None:
    ser = Se00Serialiser("c")
    senv = SenvSerialiser("c")
    table = {"value": np.arange(3.0), "timestamp": TS}
    assert [deserialise_se00(ser.serialise(table, 1) or b"").message_counter for _ in range(3)] \
        == [0, 1, 2]  # fmt: skip
    assert deserialise_senv(senv.serialise(table, 1) or b"").message_counter == 0
    assert ser.serialise({"value": np.zeros(0), "timestamp": np.zeros(0, np.int64)}, 1) is None
    assert deserialise_se00(ser.serialise(table, 1) or b"").message_counter == 3


@pytest.mark.parametrize("code", ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "?"])
def test_senv_integer_values(code: str) -> None:
    values = np.array([1, 0, 1], dtype=code)
    out = SenvSerialiser("S").serialise({"value": values, "timestamp": TS}, 1)
    assert out is not None and out[4:8] == b"senv"
    msg = deserialise_senv(out)
    np.testing.assert_array_equal(msg.values, values.astype(np.int64))
    assert msg.sample_ts_delta == 1000
    assert abs(msg.timestamp.timestamp() * 1e9 - T0) < 1e4  # senv stores via datetime


def test_senv_rounds_floats_like_the_ess_forwarder() -> None:
    values = np.array([1.4, 2.6, -3.5], dtype=">f8")
    msg = deserialise_senv(SenvSerialiser("S").serialise({"value": values, "timestamp": TS}, 1)
                           or b"")  # fmt: skip
    assert msg.values.dtype == np.int64
    np.testing.assert_array_equal(msg.values, [1, 3, -4])
    with pytest.raises(UnsupportedValue, match="NaN"):
        SenvSerialiser("S").serialise({"value": np.array([np.nan]), "timestamp": TS[:1]}, 1)


def test_single_row_has_zero_delta_and_empty_table_is_none() -> None:
    one = {"value": np.array([7.5]), "timestamp": TS[:1]}
    assert deserialise_se00(Se00Serialiser("x").serialise(one, 1) or b"").sample_ts_delta == 0
    assert deserialise_senv(SenvSerialiser("x").serialise(one, 1) or b"").sample_ts_delta == 0
    empty = {"value": np.zeros(0), "timestamp": np.zeros(0, np.int64)}
    assert Se00Serialiser("x").serialise(empty, 1) is None
    assert SenvSerialiser("x").serialise(empty, 1) is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (1.5, "not a table"),
        (np.arange(3), "not a table"),
        ("text", "not a table"),
        ({"value": np.arange(3)}, "found columns ['value']"),
        ({"x": np.arange(3), "timestamp": TS}, "found columns"),
        ({"value": np.zeros((2, 2)), "timestamp": TS}, "1-d"),
        ({"value": np.arange(3), "timestamp": np.arange(3.0)}, "integer 'timestamp'"),
        ({"value": np.array(["a", "b", "c"]), "timestamp": TS}, "cannot carry"),
    ],
)
@pytest.mark.parametrize("make", [Se00Serialiser, SenvSerialiser])
def test_not_such_a_table_is_unsupported(make: Any, value: Any, words: str) -> None:
    with pytest.raises(UnsupportedValue) as info:
        make("bad").serialise(value, 1)
    assert words in str(info.value)


@pytest.mark.parametrize("schema", ["no_op", "al00", "ep01"])
def test_value_less_schemas_never_produce_a_value_message(schema: str) -> None:
    ser = make_value_serialiser(schema, "pv")
    assert isinstance(ser, NoValueSerialiser)
    for value in (1.0, np.arange(3), "text", {"value": np.arange(2), "timestamp": TS[:2]}):
        assert ser.serialise(value, 1, 2, "HIHI") is None
