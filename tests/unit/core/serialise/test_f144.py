"""f144 serialiser: every output must decode with the official deserialiser to the same
value, type and timestamp as the reference `serialise_f144` would give."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
import pytest
from streaming_data_types.fbschemas.logdata_f144 import f144_LogData as fb
from streaming_data_types.fbschemas.logdata_f144.Value import Value
from streaming_data_types.logdata_f144 import deserialise_f144, serialise_f144

from forwarder.core.serialise import F144Serialiser, UnsupportedValue

NUMERIC = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]
MEMBER_OF = {
    "i1": "Byte", "u1": "UByte", "i2": "Short", "u2": "UShort", "i4": "Int",
    "u4": "UInt", "i8": "Long", "u8": "ULong", "f4": "Float", "f8": "Double",
}  # fmt: skip
NAMES = ["pv:x", "", "ÄÖÜ:température", "ψ" * 300]


def value_type(buf: bytes) -> int:
    return int(fb.f144_LogData.GetRootAsf144_LogData(buf, 0).ValueType())


def extremes(code: str) -> list[Any]:
    dtype = np.dtype(code)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return [0.0, -0.0, -1.5, info.min, info.max, info.tiny, np.inf, -np.inf, np.nan]
    iinfo = np.iinfo(dtype)
    return [0, 1, iinfo.min, iinfo.max, iinfo.min + 1, iinfo.max - 1] + ([-1] if iinfo.min else [])


def assert_same(actual: Any, expected: Any) -> None:
    """Exact equality including dtype; NaN equals NaN."""
    actual_arr, expected_arr = np.asarray(actual), np.asarray(expected)
    assert actual_arr.dtype == expected_arr.dtype
    assert actual_arr.shape == expected_arr.shape
    np.testing.assert_array_equal(actual_arr, expected_arr)


def check(ser: F144Serialiser, value: Any, ts: int, reference: Any = None) -> None:
    """Serialise `value` and compare the decoded result with the reference serialiser's."""
    out = ser.serialise(value, ts)
    assert isinstance(out, bytes)
    assert out[4:8] == b"f144"
    ref = serialise_f144(ser.source_name, value if reference is None else reference, ts)
    got, want = deserialise_f144(out), deserialise_f144(ref)
    assert got.source_name == want.source_name == ser.source_name
    assert got.timestamp_unix_ns == want.timestamp_unix_ns == ts
    assert value_type(out) == value_type(ref)
    assert_same(got.value, want.value)


@pytest.mark.parametrize("code", NUMERIC)
def test_numpy_scalars_of_every_dtype(code: str) -> None:
    ser = F144Serialiser("pv:scalar")
    for i, x in enumerate(extremes(code)):
        scalar = np.dtype(code).type(x)
        check(ser, scalar, i * 1_000_000_007)
        assert value_type(ser.serialise(scalar, 0) or b"") == getattr(Value, MEMBER_OF[code])


@pytest.mark.parametrize("code", NUMERIC)
@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 17, 1000])
def test_numpy_arrays_of_every_dtype_and_length(code: str, length: int) -> None:
    ser = F144Serialiser("pv:array")
    rng = np.random.default_rng(length)
    values = np.resize(np.array(extremes(code), dtype=code), length)
    rng.shuffle(values)
    check(ser, values, 1_700_000_000_123_456_789)
    out = ser.serialise(values, 5)
    assert out is not None and value_type(out) == getattr(Value, "Array" + MEMBER_OF[code])


@pytest.mark.parametrize("code", NUMERIC)
def test_vector_is_aligned(code: str) -> None:
    """Strict readers (C++ verifier) require vector data aligned to the element size."""
    ser = F144Serialiser("odd")
    for length in range(1, 20):
        out = ser.serialise(np.ones(length, dtype=code), 1)
        assert out is not None
        log = fb.f144_LogData.GetRootAsf144_LogData(out, 0)
        table = log.Value()
        data = table.Vector(4)
        assert data % np.dtype(code).itemsize == 0 and (data - 4) % 4 == 0
        assert int.from_bytes(out[data - 4 : data], "little") == length


def test_python_scalars() -> None:
    ser = F144Serialiser("py")
    for value in [0.0, -2.5, 1e308, float("nan"), float("inf"), -float("inf")]:
        check(ser, value, 11)
    for value in [0, -1, 42, -(2**63), 2**63 - 1]:
        check(ser, value, 12)
        assert value_type(ser.serialise(value, 0) or b"") == Value.Long
    # above int64 the reference (via numpy) picks uint64, and so do we
    check(ser, 2**63, 13)
    check(ser, 2**64 - 1, 13)
    assert value_type(ser.serialise(2**64 - 1, 0) or b"") == Value.ULong


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_ints_outside_64_bits_are_unsupported(value: int) -> None:
    with pytest.raises(UnsupportedValue, match="int"):
        F144Serialiser("big").serialise(value, 0)


def test_bool_is_ubyte() -> None:
    ser = F144Serialiser("bool")
    for value in [True, False, np.True_, np.False_, np.array(True)]:
        out = ser.serialise(value, 3)
        assert out is not None and value_type(out) == Value.UByte
        assert deserialise_f144(out).value == int(bool(value))
    out = ser.serialise(np.array([True, False, True]), 4)
    assert out is not None and value_type(out) == Value.ArrayUByte
    assert_same(deserialise_f144(out).value, np.array([1, 0, 1], dtype=np.uint8))
    check(ser, [True, False], 5, reference=np.array([1, 0], dtype=np.uint8))


def test_int_enum_counts_as_int() -> None:
    class Mode(enum.IntEnum):
        OFF = 0
        ON = 7

    ser = F144Serialiser("enum")
    for _ in range(2):  # second call must not have cached the enum type wrongly
        out = ser.serialise(Mode.ON, 9)
        assert out is not None and deserialise_f144(out).value == 7
        assert value_type(out) == Value.Long


def test_zero_dim_arrays_become_scalars() -> None:
    ser = F144Serialiser("0d")
    for code in NUMERIC:
        value = np.array(extremes(code)[-1], dtype=code)
        check(ser, value, 77)
        big = value.astype(np.dtype(code).newbyteorder(">"))
        check(ser, big, 78, reference=value)


def test_one_element_array_stays_array() -> None:
    out = F144Serialiser("one").serialise(np.array([4.5]), 1)
    assert out is not None and value_type(out) == Value.ArrayDouble
    assert_same(deserialise_f144(out).value, np.array([4.5]))


@pytest.mark.parametrize("code", NUMERIC)
def test_big_endian_and_strided_arrays(code: str) -> None:
    ser = F144Serialiser("be")
    native = np.resize(np.array(extremes(code), dtype=code), 12)
    big = native.astype(native.dtype.newbyteorder(">"))
    before = big.copy()
    check(ser, big, 21, reference=native)
    assert big.tobytes() == before.tobytes()  # caller's array untouched
    check(ser, native[::3], 22)
    check(ser, big[::-2], 23, reference=native[::-2])
    check(ser, native.reshape(3, 4)[:, 1], 24)


def test_lists_and_tuples() -> None:
    ser = F144Serialiser("list")
    check(ser, [1, 2, 3], 1)
    check(ser, (1.5, -2.0), 2)
    check(ser, [1, 2.5], 3)
    check(ser, [7], 4)


def test_float16_widened_to_float() -> None:
    ser = F144Serialiser("half")
    out = ser.serialise(np.float16(1.5), 1)
    assert out is not None and value_type(out) == Value.Float
    assert deserialise_f144(out).value == 1.5
    out = ser.serialise(np.array([0.5, -2.0], dtype=np.float16), 1)
    assert out is not None and value_type(out) == Value.ArrayFloat
    assert_same(deserialise_f144(out).value, np.array([0.5, -2.0], dtype=np.float32))


@pytest.mark.parametrize(
    "value", [np.array([]), np.array([], dtype=np.int8), np.zeros(0, ">f4"), [], ()]
)
def test_empty_gives_none(value: Any) -> None:
    assert F144Serialiser("empty").serialise(value, 1) is None


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        ("text", "str"),
        (b"raw", "bytes"),
        (np.str_("x"), "str_"),
        (None, "NoneType"),
        ({"a": 1}, "dict"),
        (1 + 2j, "complex"),
        (np.complex128(1j), "complex128"),
        (np.array([1j, 2j]), "complex128"),
        (np.zeros((2, 2)), "2 dimensions"),
        (np.array(["a", "b"]), "<U1"),
        (np.array([object()]), "object"),
        ([[1, 2], [3, 4]], "2 dimensions"),
        ([[1], [2, 3]], "list"),
        (["a", "b"], "<U1"),
        (np.longdouble(1), "longdouble"),
        (np.datetime64(1, "s"), "datetime64"),
    ],
)
def test_unsupported_values_name_their_type(value: Any, type_name: str) -> None:
    ser = F144Serialiser("bad")
    with pytest.raises(UnsupportedValue) as info:
        ser.serialise(value, 1)
    assert type_name in str(info.value)
    assert isinstance(info.value, TypeError)
    check(ser, 1.0, 2)  # still usable afterwards


@pytest.mark.parametrize("name", NAMES)
def test_source_names(name: str) -> None:
    ser = F144Serialiser(name)
    check(ser, 3.25, 1)
    check(ser, np.arange(5, dtype=np.int16), 2)


@pytest.mark.parametrize("ts", [0, 1, 631152000 * 10**9, 2**62 + 12345, 2**63 - 1, -5])
def test_timestamps(ts: int) -> None:
    ser = F144Serialiser("ts")
    check(ser, 1.0, ts)
    check(ser, np.int32(-7), ts)
    check(ser, np.arange(3.0), ts)


def test_successive_updates_do_not_leak_previous_values() -> None:
    """Random sequence of types, values and lengths through one serialiser (seeded)."""
    rng = np.random.default_rng(1234)
    ser = F144Serialiser("stream")
    previous: list[tuple[bytes, Any, int]] = []
    for step in range(600):
        code = NUMERIC[rng.integers(len(NUMERIC))]
        dtype = np.dtype(code)
        raw = rng.integers(0, 256, size=int(rng.integers(1, 40)) * dtype.itemsize, dtype=np.uint8)
        array = raw.view(dtype)
        if dtype.kind == "f":
            array = array[np.isfinite(array)] if step % 2 else array
        shape = rng.integers(3)
        value: Any = array if shape == 0 else (array[0] if shape == 1 else array[0].item())
        if isinstance(value, np.ndarray) and not value.size:
            assert ser.serialise(value, step) is None
            continue
        ts = int(rng.integers(0, 2**63 - 1, dtype=np.int64))
        check(ser, value, ts)
        out = ser.serialise(value, ts)
        assert out is not None
        previous.append((out, value, ts))
    for out, value, ts in previous:  # earlier outputs are unaffected by later updates
        decoded = deserialise_f144(out)
        assert decoded.timestamp_unix_ns == ts
        np.testing.assert_array_equal(np.asarray(decoded.value), np.asarray(value))


def test_value_sequence_same_type_changes_every_time() -> None:
    ser = F144Serialiser("seq")
    rng = np.random.default_rng(7)
    for value in rng.normal(size=200):
        out = ser.serialise(float(value), 5)
        assert out is not None and deserialise_f144(out).value == float(value)
    for length in rng.integers(1, 3000, size=50):
        array = rng.normal(size=int(length))
        out = ser.serialise(array, int(length))
        assert out is not None
        decoded = deserialise_f144(out)
        assert decoded.timestamp_unix_ns == length
        assert_same(decoded.value, array)
