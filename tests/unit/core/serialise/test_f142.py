"""f142 serialiser: every output decodes with the official deserialiser to the same value,
type, timestamp, alarm status and severity as the reference `serialise_f142` (a fresh
FlatBuffers build) gives for the same input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from streaming_data_types.fbschemas.logdata_f142 import LogData as fb
from streaming_data_types.fbschemas.logdata_f142.AlarmSeverity import AlarmSeverity
from streaming_data_types.fbschemas.logdata_f142.AlarmStatus import AlarmStatus
from streaming_data_types.fbschemas.logdata_f142.Value import Value
from streaming_data_types.logdata_f142 import deserialise_f142, serialise_f142

from forwarder.core.serialise import F142Serialiser, UnsupportedValue, make_value_serialiser
from forwarder.core.serialise.f142 import STATUS_TO_F142
from tests.support.kafka import allow_f142_with_numpy2

allow_f142_with_numpy2()

NUMERIC = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]
MEMBER_OF = {
    "i1": "Byte", "u1": "UByte", "i2": "Short", "u2": "UShort", "i4": "Int",
    "u4": "UInt", "i8": "Long", "u8": "ULong", "f4": "Float", "f8": "Double",
}  # fmt: skip
#: (EPICS severity, status text as the adapters give it) -> (f142 severity, f142 status)
ALARMS = [
    (0, "", AlarmSeverity.NO_ALARM, AlarmStatus.NO_ALARM),
    (1, "HIGH", AlarmSeverity.MINOR, AlarmStatus.HIGH),
    (2, "HIHI", AlarmSeverity.MAJOR, AlarmStatus.HIHI),
    (2, "LOLO_ALARM", AlarmSeverity.MAJOR, AlarmStatus.LOLO),
    (3, "UDF", AlarmSeverity.INVALID, AlarmStatus.UDF),
    (3, "TIMEOUT", AlarmSeverity.INVALID, AlarmStatus.TIMED),
    (1, "WRITE_ACCESS", AlarmSeverity.MINOR, AlarmStatus.WRITE_ACCESS),
    (2, "DRIVER", AlarmSeverity.MAJOR, AlarmStatus.UDF),  # no f142 name: UDF like ESS
    (7, "", AlarmSeverity.INVALID, AlarmStatus.NO_ALARM),  # unknown severity: INVALID
]


def value_type(buf: bytes) -> int:
    return int(fb.LogData.GetRootAsLogData(buf, 0).ValueType())


def extremes(code: str) -> list[Any]:
    dtype = np.dtype(code)
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return [0.0, -0.0, -1.5, info.min, info.max, info.tiny, np.inf, -np.inf, np.nan]
    iinfo = np.iinfo(dtype)
    return [0, 1, iinfo.min, iinfo.max, iinfo.min + 1, iinfo.max - 1] + ([-1] if iinfo.min else [])


def check(
    ser: F142Serialiser,
    value: Any,
    ts: int,
    reference: Any = None,
    severity: int = 0,
    status: str = "",
    f142_alarm: tuple[int, int] = (AlarmSeverity.NO_ALARM, AlarmStatus.NO_ALARM),
) -> None:
    out = ser.serialise(value, ts, severity, status)
    assert isinstance(out, bytes) and out[4:8] == b"f142"
    ref_value = np.asarray(value if reference is None else reference)
    ref = serialise_f142(
        ref_value, ser.source_name, ts, alarm_status=f142_alarm[1], alarm_severity=f142_alarm[0]
    )
    got, want = deserialise_f142(out), deserialise_f142(ref)
    assert got.source_name == want.source_name == ser.source_name
    assert got.timestamp_unix_ns == want.timestamp_unix_ns == ts
    assert (got.alarm_severity, got.alarm_status) == f142_alarm
    assert (want.alarm_severity, want.alarm_status) == f142_alarm
    assert value_type(out) == value_type(ref)
    got_arr, want_arr = np.asarray(got.value), np.asarray(want.value)
    assert got_arr.dtype == want_arr.dtype and got_arr.shape == want_arr.shape
    np.testing.assert_array_equal(got_arr, want_arr)


@pytest.mark.parametrize("code", NUMERIC)
def test_numpy_scalars_of_every_dtype(code: str) -> None:
    ser = F142Serialiser("pv:scalar")
    for i, x in enumerate(extremes(code)):
        scalar = np.dtype(code).type(x)
        check(ser, scalar, i * 1_000_000_007)
        assert value_type(ser.serialise(scalar, 0) or b"") == getattr(Value, MEMBER_OF[code])


@pytest.mark.parametrize("code", NUMERIC)
@pytest.mark.parametrize("length", [1, 2, 3, 8, 17, 1000])
def test_numpy_arrays_of_every_dtype_and_length(code: str, length: int) -> None:
    ser = F142Serialiser("pv:array")
    values = np.resize(np.array(extremes(code), dtype=code), length)
    np.random.default_rng(length).shuffle(values)
    check(ser, values, 1_700_000_000_123_456_789)
    out = ser.serialise(values, 5)
    assert out is not None and value_type(out) == getattr(Value, "Array" + MEMBER_OF[code])


@pytest.mark.parametrize("code", NUMERIC)
def test_vector_is_aligned(code: str) -> None:
    """Strict readers (C++ verifier) require vector data aligned to the element size."""
    ser = F142Serialiser("odd")
    for length in range(1, 20):
        out = ser.serialise(np.ones(length, dtype=code), 1)
        assert out is not None
        table = fb.LogData.GetRootAsLogData(out, 0).Value()
        data = table.Vector(4)
        assert data % np.dtype(code).itemsize == 0 and (data - 4) % 4 == 0


@pytest.mark.parametrize(("severity", "status", "f142_severity", "f142_status"), ALARMS)
def test_alarm_is_inside_every_message(
    severity: int, status: str, f142_severity: int, f142_status: int
) -> None:
    ser = F142Serialiser("alarm")
    alarm = (f142_severity, f142_status)
    check(ser, 2.5, 10, severity=severity, status=status, f142_alarm=alarm)
    check(ser, np.int16(-3), 11, severity=severity, status=status, f142_alarm=alarm)
    check(ser, np.arange(4.0), 12, severity=severity, status=status, f142_alarm=alarm)
    check(ser, 7, 13, severity=severity, status=status, f142_alarm=alarm)
    check(ser, True, 14, reference=np.uint8(1), severity=severity, status=status,
          f142_alarm=alarm)  # fmt: skip


def test_every_epics_status_name_maps_to_the_same_f142_name() -> None:
    names = {v: k for k, v in vars(AlarmStatus).items() if not k.startswith("_")}
    assert STATUS_TO_F142[""] == AlarmStatus.NO_ALARM
    for text, number in STATUS_TO_F142.items():
        if text:
            expected = text if text in ("NO_ALARM", "TIMED") else text.removesuffix("_ALARM")
            assert names[number] == {"TIMEOUT": "TIMED"}.get(expected, expected), text
    assert len({n for n in STATUS_TO_F142.values()}) == 22  # every f142 status but NO_CHANGE


def test_python_scalars_bool_and_enum_index() -> None:
    ser = F142Serialiser("py")
    for value in [0.0, -2.5, 1e308, float("nan")]:
        check(ser, value, 11)
    for value in [0, -1, 42, -(2**63), 2**63 - 1, 2**63, 2**64 - 1]:
        check(ser, value, 12)
    assert value_type(ser.serialise(3, 0) or b"") == Value.Long  # an enum index (CA, PVA)
    check(ser, np.array([True, False]), 5, reference=np.array([1, 0], np.uint8))
    with pytest.raises(UnsupportedValue, match="f142"):
        ser.serialise(2**64, 0)


def test_big_endian_strided_zero_dim_and_lists() -> None:
    ser = F142Serialiser("be")
    native = np.arange(12, dtype="<i4")
    check(ser, native.astype(">i4"), 21, reference=native)
    check(ser, native[::3], 22)
    check(ser, np.array(2.5), 23, reference=np.float64(2.5))
    check(ser, [1, 2, 3], 24)
    check(ser, np.float16(1.5), 25, reference=np.float32(1.5))


@pytest.mark.parametrize("value", [np.array([]), np.zeros(0, ">f4"), [], ()])
def test_empty_gives_none(value: Any) -> None:
    assert F142Serialiser("empty").serialise(value, 1, 2, "HIHI") is None


@pytest.mark.parametrize("value", ["text", None, np.array(["a"]), np.zeros((2, 2)), {"a": 1}])
def test_unsupported_values(value: Any) -> None:
    ser = F142Serialiser("bad")
    with pytest.raises(UnsupportedValue, match="f142"):
        ser.serialise(value, 1)
    check(ser, 1.0, 2)  # still usable afterwards


@pytest.mark.parametrize("name", ["pv:x", "", "ÄÖÜ:température", "ψ" * 300])
def test_source_names_and_factory(name: str) -> None:
    ser = make_value_serialiser("f142", name)
    assert isinstance(ser, F142Serialiser)
    check(ser, 3.25, 1, severity=1, status="LOW",
          f142_alarm=(AlarmSeverity.MINOR, AlarmStatus.LOW))  # fmt: skip
    check(ser, np.arange(5, dtype=np.int16), 2)


def test_successive_updates_do_not_leak_previous_values_or_alarms() -> None:
    rng = np.random.default_rng(4321)
    ser = F142Serialiser("stream")
    outputs = []
    for step in range(300):
        code = NUMERIC[rng.integers(len(NUMERIC))]
        array = rng.integers(0, 100, size=int(rng.integers(1, 20))).astype(code)
        value: Any = array if step % 2 else array[0]
        severity, status, f_sev, f_stat = ALARMS[rng.integers(len(ALARMS))]
        ts = int(rng.integers(0, 2**62))
        check(ser, value, ts, severity=severity, status=status, f142_alarm=(f_sev, f_stat))
        outputs.append((ser.serialise(value, ts, severity, status), value, ts, f_sev, f_stat))
    for out, value, ts, f_sev, f_stat in outputs:
        decoded = deserialise_f142(out)
        assert (decoded.timestamp_unix_ns, decoded.alarm_severity, decoded.alarm_status) == (
            ts, f_sev, f_stat)  # fmt: skip
        np.testing.assert_array_equal(np.asarray(decoded.value), np.asarray(value))
