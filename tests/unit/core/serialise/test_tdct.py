"""tdct serialiser: relative ns offsets become absolute uint64 unix ns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from streaming_data_types.timestamps_tdct import deserialise_tdct, serialise_tdct

from forwarder.core.serialise import TdctSerialiser, UnsupportedValue

BASE = 1_700_000_000_000_000_000


def decode(out: bytes | None) -> Any:
    assert out is not None
    assert out[4:8] == b"tdct"
    return deserialise_tdct(out)


def expected(ts: int, relative: Any) -> np.ndarray:
    """Absolute stamps computed with Python ints, independently of the implementation."""
    flat = np.atleast_1d(np.asarray(relative)).tolist()
    return np.array([(ts + round(x)) % 2**64 for x in flat], dtype=np.uint64)


@pytest.mark.parametrize("code", ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", ">i8", "f8"])
def test_arrays_of_every_dtype(code: str) -> None:
    ser = TdctSerialiser("chopper:ts")
    relative = np.array([0, 1, 2, 100, 127], dtype=code)
    got = decode(ser.serialise(relative, BASE))
    assert got.name == "chopper:ts"
    np.testing.assert_array_equal(got.timestamps, expected(BASE, relative))
    assert got.timestamps.dtype == np.uint64
    ref = deserialise_tdct(serialise_tdct("chopper:ts", expected(BASE, relative)))
    np.testing.assert_array_equal(got.timestamps, ref.timestamps)


def test_negative_offsets_and_large_values() -> None:
    ser = TdctSerialiser("t")
    relative = np.array([-5, -(10**9), 0, 2**40], dtype=np.int64)
    got = decode(ser.serialise(relative, BASE))
    np.testing.assert_array_equal(got.timestamps, expected(BASE, relative))
    top = np.array([2**64 - 1 - BASE], dtype=np.uint64)
    assert decode(ser.serialise(top, BASE)).timestamps.tolist() == [2**64 - 1]


def test_float_offsets_are_rounded() -> None:
    got = decode(TdctSerialiser("f").serialise(np.array([0.4, 1.6, -2.6]), 1000))
    assert got.timestamps.tolist() == [1000, 1002, 997]


def test_scalars_lists_and_zero_timestamp() -> None:
    ser = TdctSerialiser("s")
    assert decode(ser.serialise(5, 0)).timestamps.tolist() == [5]
    assert decode(ser.serialise(np.int32(7), 10)).timestamps.tolist() == [17]
    assert decode(ser.serialise([1, 2, 3], 10)).timestamps.tolist() == [11, 12, 13]


def test_input_not_modified() -> None:
    relative = np.arange(4, dtype=np.uint64)
    TdctSerialiser("n").serialise(relative, BASE)
    assert relative.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("value", [np.array([], dtype=np.int64), [], np.zeros(0)])
def test_empty_gives_none(value: Any) -> None:
    assert TdctSerialiser("e").serialise(value, BASE) is None


@pytest.mark.parametrize(
    "value", ["abc", b"abc", np.array(["a"]), np.zeros((2, 2)), [1j], np.array([np.nan]), None]
)
def test_unsupported(value: Any) -> None:
    with pytest.raises(UnsupportedValue, match="tdct"):
        TdctSerialiser("u").serialise(value, BASE)


@pytest.mark.parametrize("name", ["", "ÄÖÜ:température", "ψ" * 200])
def test_names(name: str) -> None:
    assert decode(TdctSerialiser(name).serialise([1], 1)).name == name


def test_successive_updates_with_changing_lengths() -> None:
    rng = np.random.default_rng(99)
    ser = TdctSerialiser("seq")
    outputs = []
    for _ in range(300):
        relative = rng.integers(-(10**12), 10**12, size=int(rng.integers(1, 500)))
        ts = int(rng.integers(10**12, 2**63 - 10**12))
        out = ser.serialise(relative, ts)
        got = decode(out)
        np.testing.assert_array_equal(got.timestamps, expected(ts, relative))
        outputs.append((out, ts, relative))
    for out, ts, relative in outputs:
        np.testing.assert_array_equal(decode(out).timestamps, expected(ts, relative))
