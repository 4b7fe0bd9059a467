"""End to end over Channel Access: softioc IOC (and a caproto server) -> forwarder -> Kafka.

One IOC, one caproto server and one forwarder subprocess serve the whole module; every test
drives PVs from the server side (`put`, `set_alarm`, `stop`/`start`) and judges only what
arrives on the output topics, decoded with `streaming_data_types`.

Absence ("no second al00", "no empty f144") is judged without sleeping: all messages of a
PV share its Kafka key, hence one partition, and the forwarder sends an update's f144
before its al00.  Once a later message of the same PV has arrived, everything the
forwarder sent for that PV before it has arrived as well.

The helpers above the tests are shared with `test_e2e_pva.py` and `test_e2e_timestamps.py`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pytest
from streaming_data_types.alarm_al00 import Severity
from streaming_data_types.epics_connection_ep01 import ConnectionInfo
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import (
    UpdateType as Fc00UpdateType,
)
from streaming_data_types.fbschemas.logdata_f144.f144_LogData import f144_LogData
from streaming_data_types.fbschemas.logdata_f144.Value import Value as F144Value
from streaming_data_types.forwarder_config_update_fc00 import StreamInfo, serialise_fc00

from tests.support.epics_servers import (
    LOCALHOST,
    CaprotoServer,
    CaRepeater,
    Record,
    SoftIoc,
    epics_env,
    free_port,
)
from tests.support.forwarder_process import ForwarderProcess
from tests.support.kafka import Msg, TopicReader, decode, produce, unique_topic

pytestmark = pytest.mark.integration

WAIT = 20.0

# ======================================================================================
# Helpers (also used by test_e2e_pva.py and test_e2e_timestamps.py)
# ======================================================================================

#: f144 value union member names by type code.
F144_TYPES = {v: k for k, v in vars(F144Value).items() if not k.startswith("_")}


def f144_type(msg: Msg) -> str:
    """The f144 value union member ("Double", "ArrayShort", ...) of a message."""
    code = f144_LogData.GetRootAsf144_LogData(msg.value, 0).ValueType()
    return F144_TYPES[code]


_NAME_FIELD = {"f144": "source_name", "f142": "source_name", "tdct": "name", "se00": "name",
               "senv": "name", "al00": "source", "ep01": "source_name"}  # fmt: skip


def source_name(schema: str, obj: Any) -> str:
    """The PV name carried inside a decoded message."""
    name: str = getattr(obj, _NAME_FIELD[schema])
    return name


def fb_timestamp_ns(schema: str, obj: Any) -> int | None:
    """The FlatBuffer timestamp the Kafka timestamp must be derived from (None for tdct,
    se00 and senv, whose FlatBuffer timestamp is their first sample's)."""
    if schema in ("f144", "f142"):
        return int(obj.timestamp_unix_ns)
    if schema == "al00":
        return int(obj.timestamp_ns)
    if schema == "ep01":
        return int(obj.timestamp)
    return None


def fc00_config(streams: Iterable[tuple[str, str, str]], protocol: int) -> bytes:
    """An fc00 ADD message for (channel, schema, topic) streams, as a user's tool builds it."""
    infos = [StreamInfo(ch, schema, topic, protocol, 0) for ch, schema, topic in streams]
    return serialise_fc00(Fc00UpdateType.ADD, infos)


class OutputTopic:
    """All messages of one output topic, read from the start, decoded and checked once.

    Every decoded message is checked for the forwarder's envelope contract: Kafka key ==
    PV name == source name in the FlatBuffer, and Kafka timestamp (ms) == FlatBuffer
    timestamp // 10**6 (for ep01 at least that: see `ForwardingCore.send_connection`).
    """

    def __init__(self, bootstrap: str, name: str) -> None:
        self.name = name
        self.reader = TopicReader(bootstrap, name)
        self._decoded: list[tuple[Msg, str, Any]] = []

    def close(self) -> None:
        self.reader.close()

    def _decode_new(self) -> list[tuple[Msg, str, Any]]:
        for msg in self.reader.messages[len(self._decoded) :]:
            schema, obj = decode(msg)
            name = source_name(schema, obj)
            assert msg.key == name.encode(), f"{schema} key {msg.key!r} != source {name!r}"
            ts = fb_timestamp_ns(schema, obj)
            if schema == "ep01" and ts is not None:
                # A stream added to a PV that is already connected gets the PV's state with
                # the time it began inside and the send time as the Kafka timestamp.
                assert msg.timestamp_ms >= ts // 1_000_000, (name, msg.timestamp_ms, ts)
            elif ts is not None:
                assert msg.timestamp_ms == ts // 1_000_000, (schema, name, msg.timestamp_ms, ts)
            self._decoded.append((msg, schema, obj))
        return self._decoded

    def mark(self) -> int:
        """Position after everything received so far (for `since=`)."""
        self.reader.poll_messages(0.1)
        return len(self._decode_new())

    def of(self, pv: str, schema: str, since: int = 0) -> list[tuple[Msg, Any]]:
        """Decoded `schema` messages of `pv`, in the order they were produced."""
        key = pv.encode()
        return [(m, o) for m, s, o in self._decode_new()[since:] if m.key == key and s == schema]

    def values(self, pv: str, since: int = 0) -> list[Any]:
        return [o.value for _, o in self.of(pv, "f144", since)]

    def wait(
        self,
        pv: str,
        schema: str,
        match: Callable[[Any], bool] = lambda _o: True,
        since: int = 0,
        timeout: float = WAIT,
    ) -> tuple[Msg, Any]:
        """The first `schema` message of `pv` (from position `since`) matching `match`."""
        found: list[tuple[Msg, Any]] = []

        def check(_msgs: list[Msg]) -> bool:
            found[:] = [(m, o) for m, o in self.of(pv, schema, since) if match(o)][:1]
            return bool(found)

        try:
            self.reader.wait_for(check, timeout)
        except AssertionError as err:
            seen = [_brief(s, o) for m, s, o in self._decoded[since:] if m.key == pv.encode()]
            raise AssertionError(
                f"{err}\n{pv} {schema}: seen since {since}: {seen[-12:]}"
            ) from None
        return found[0]

    def wait_count(
        self, pv: str, schema: str, count: int, since: int = 0, timeout: float = WAIT
    ) -> list[tuple[Msg, Any]]:
        """Wait until at least `count` `schema` messages of `pv` arrived (from `since`)."""
        try:
            self.reader.wait_for(lambda _m: len(self.of(pv, schema, since)) >= count, timeout)
        except AssertionError as err:
            per_key: dict[str, int] = {}
            for m, s, _o in self._decoded[since:]:
                name = f"{m.key.decode(errors='replace') if m.key else None} {s}"
                per_key[name] = per_key.get(name, 0) + 1
            raise AssertionError(
                f"{err}\nwanted {count} {schema} of {pv}; per key: {per_key}"
            ) from None
        return self.of(pv, schema, since)

    def wait_value(self, pv: str, expected: Any, since: int = 0, timeout: float = WAIT) -> Any:
        """The first f144 of `pv` whose value equals `expected` (array or scalar)."""
        _, obj = self.wait(pv, "f144", lambda o: same_value(o.value, expected), since, timeout)
        return obj

    def wait_connection(
        self, pv: str, state: ConnectionInfo, since: int = 0, timeout: float = WAIT
    ) -> Any:
        _, obj = self.wait(pv, "ep01", lambda o: o.status == state, since, timeout)
        return obj


def has_value(expected: Any, obj: Any) -> bool:
    """Whether a decoded f144 carries `expected` (for `OutputTopic.wait`)."""
    return same_value(obj.value, expected)


def same_value(got: Any, expected: Any) -> bool:
    got_a, exp_a = np.asarray(got), np.asarray(expected)
    return got_a.shape == exp_a.shape and bool(np.array_equal(got_a, exp_a))


def _brief(schema: str, obj: Any) -> str:
    if schema == "f144":
        return f"f144 {np.asarray(obj.value).tolist()!r}"
    if schema == "al00":
        return f"al00 {obj.severity.name} {obj.message!r}"
    if schema == "ep01":
        return f"ep01 {obj.status.name}"
    return schema


class StatusWatch:
    """Reads a forwarder's status topic; `wait(pred)` returns the first newer status
    document matching `pred`."""

    def __init__(self, fw: ForwarderProcess) -> None:
        self.fw = fw
        self.reader = TopicReader(fw.bootstrap, fw.status_topic)

    def close(self) -> None:
        self.reader.close()

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        newest: dict[str, Any] = {}
        start = len(self.reader.messages)
        while time.monotonic() < deadline:
            self.reader.poll_messages(0.5)
            for msg in self.reader.messages[start:]:
                if msg.schema_id == "x5f2":
                    newest = json.loads(decode(msg)[1].status_json)
                    if pred(newest):
                        return newest
            start = len(self.reader.messages)
            assert self.fw.proc is not None and self.fw.proc.poll() is None, self.fw.log()[-3000:]
        raise AssertionError(f"no matching status within {timeout} s; newest: {newest}")


def stream_status(doc: dict[str, Any], channel: str, schema: str = "f144") -> dict[str, Any]:
    for s in doc["streams"]:
        if s["channel_name"] == channel and s["schema"] == schema:
            result: dict[str, Any] = s
            return result
    raise AssertionError(f"{channel} {schema} not in status streams")


_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) ")


def problem_lines(log: str, pv: str) -> list[str]:
    """Log lines at WARNING or above that mention `pv`."""
    lines = []
    for line in log.splitlines():
        m = _LOG_LINE.match(line)
        if m and m["level"] in ("WARNING", "ERROR", "CRITICAL") and pv in line:
            lines.append(line)
    return lines


def check_alarm_sequence(
    out: OutputTopic,
    server: Any,
    pv: str,
    put_values: Sequence[Any],
) -> None:
    """al00 on first update, on each change, never repeated while unchanged, back to OK.

    `pv` is a DOUBLE waveform: re-processing it (`set_alarm` with the same alarm) posts a
    value update, so repeated updates with the same alarm can be produced on demand.
    Every al00 must carry the timestamp of the f144 of the same update.
    """
    first = out.wait(pv, "al00")[1]
    assert (first.severity, first.message) == (Severity.OK, "")

    def alarms() -> list[tuple[Severity, str]]:
        return [(o.severity, o.message) for _, o in out.of(pv, "al00")]

    def put_and_wait(value: Any) -> None:
        since = out.mark()
        server.put(pv, value)
        out.wait_value(pv, value, since)

    # Value updates without an alarm change: no new al00.
    for value in put_values[:2]:
        put_and_wait(value)
    assert alarms() == [(Severity.OK, "")]

    # Alarm raised, then the same alarm on three more updates: exactly one al00.
    since = out.mark()
    server.set_alarm(pv, 2, "HIHI")
    out.wait(pv, "al00", lambda o: o.severity == Severity.MAJOR, since)
    for _ in range(3):
        since = out.mark()
        server.set_alarm(pv, 2, "HIHI")
        out.wait(pv, "f144", since=since)  # the update itself was forwarded
    assert alarms() == [(Severity.OK, ""), (Severity.MAJOR, "HIHI")]

    since = out.mark()
    server.set_alarm(pv, 1, "LOW")
    out.wait(pv, "al00", lambda o: o.severity == Severity.MINOR, since)

    # A value put clears the alarm (the IOC's default): back to OK, then quiet again.
    since = out.mark()
    server.put(pv, put_values[2])
    out.wait(pv, "al00", lambda o: o.severity == Severity.OK, since)
    put_and_wait(put_values[3])
    assert alarms() == [
        (Severity.OK, ""),
        (Severity.MAJOR, "HIHI"),
        (Severity.MINOR, "LOW"),
        (Severity.OK, ""),
    ]
    # Each al00 is stamped with its update's EPICS time: an f144 with the same timestamp.
    f144_times = {o.timestamp_unix_ns for _, o in out.of(pv, "f144")}
    assert all(o.timestamp_ns in f144_times for _, o in out.of(pv, "al00")[1:])


def check_value_order(out: OutputTopic, server: Any, pv: str, count: int = 30) -> None:
    """A burst of puts arrives in order (EPICS may coalesce a burst, never reorder it)."""
    server.put(pv, -1.0)
    out.wait_value(pv, -1.0)
    since = out.mark()
    for i in range(1, count + 1):
        server.put(pv, float(i))
    out.wait_value(pv, float(count), since)
    got = [o for _, o in out.of(pv, "f144", since)]
    values = [float(o.value) for o in got]
    # How many of the burst arrive is the server's choice (CA and PVA servers may squash
    # queued updates of a subscription down to the newest); their order is not.
    assert values == sorted(set(values)) and values[-1] == count, values
    stamps = [o.timestamp_unix_ns for o in got]
    assert stamps == sorted(stamps)


def check_tdct(
    out: OutputTopic, tdct: OutputTopic, server: Any, pv: str, offsets: list[int]
) -> None:
    """tdct = EPICS timestamp + relative offsets; the f144 of the same PV (same update)
    supplies the EPICS timestamp independently."""
    since_f, since_t = out.mark(), tdct.mark()
    before = time.time_ns()
    server.put(pv, offsets)
    ref = out.wait_value(pv, offsets, since_f)
    msg, obj = tdct.wait(pv, "tdct", lambda o: len(o.timestamps) == len(offsets), since_t)
    base = ref.timestamp_unix_ns
    assert before - 1_000_000_000 <= base <= time.time_ns() + 1_000_000_000
    assert obj.timestamps.dtype == np.uint64
    assert obj.timestamps.tolist() == [base + off for off in offsets]
    assert msg.timestamp_ms == base // 1_000_000
    # tdct streams get alarms too.
    alarm = tdct.wait(pv, "al00")[1]
    assert alarm.severity == Severity.OK


def check_empty_not_forwarded(
    out: OutputTopic,
    tdct: OutputTopic,
    server: Any,
    status: StatusWatch,
    f144_pv: str,
    tdct_pv: str,
) -> None:
    """Both PVs start empty (NORD 0) and are emptied again: neither an f144 nor a tdct
    message with no elements is ever sent; the next non-empty value is."""
    # The empty first updates reached the forwarder (ep01 + al00 arrived, counter rose).
    out.wait(f144_pv, "al00")
    tdct.wait(tdct_pv, "al00")
    server.put(f144_pv, [])
    server.put(tdct_pv, [])
    status.wait(lambda d: d["counters"]["empty_updates"] >= 4)
    server.put(f144_pv, [4.5])
    server.put(tdct_pv, [5])
    out.wait_value(f144_pv, [4.5])
    tdct.wait(tdct_pv, "tdct")
    assert [np.asarray(v).tolist() for v in out.values(f144_pv)] == [[4.5]]
    assert [len(o.timestamps) for _, o in tdct.of(tdct_pv, "tdct")] == [1]
    doc = status.wait(lambda d: stream_status(d, f144_pv)["updates_forwarded"] >= 1)
    assert stream_status(doc, f144_pv)["updates_forwarded"] == 1


# ======================================================================================
# The CA setup
# ======================================================================================

WAVEFORM_TYPES = ("DOUBLE", "FLOAT", "LONG", "SHORT", "CHAR")
#: f144 value types of what the IOC serves over CA (DBR_CHAR is unsigned on the wire).
CA_WAVEFORM_F144 = {"DOUBLE": "ArrayDouble", "FLOAT": "ArrayFloat", "LONG": "ArrayInt",
                    "SHORT": "ArrayShort", "CHAR": "ArrayUByte"}  # fmt: skip
WAVEFORM_VALUES: dict[str, list[Any]] = {
    "DOUBLE": [0.5, -1.25, 1e300, 7.0, -0.0],
    "FLOAT": [1.5, -2.5, 1024.25],
    "LONG": [-(2**31), 2**31 - 1, 0, 17],
    "SHORT": [-32768, 32767, 5],
    "CHAR": [0, 1, 127],
}
TDCT_OFFSETS = [0, 1_500, 1_000_000, 2_000_000_000]
ALARM_VALUES = [[1.0], [2.0], [3.0], [4.0]]

P = "E2E:CA:"
RECORDS = [
    Record(f"{P}AI", "ai", 1.5),
    Record(f"{P}AO", "ao", 2.5),
    Record(f"{P}LO", "longout", 7),
    Record(f"{P}MBB", "mbbo", 1, choices=("zero", "one", "two")),
    *(Record(f"{P}WF:{t}", "waveform", [1, 2], t, 8) for t in WAVEFORM_TYPES),
    Record(f"{P}TDCT", "waveform", [0, 10], "LONG", 8),
    Record(f"{P}EMPTY", "waveform", None, "DOUBLE", 8),
    Record(f"{P}TDCT:EMPTY", "waveform", None, "LONG", 8),
    Record(f"{P}ALARM", "waveform", [0.0], "DOUBLE", 4),
    Record(f"{P}STR", "stringin", "hello"),
]
LATE = f"{P}LATE"
CP = "E2E:CP:"
CAPROTO_RECORDS = [
    Record(f"{CP}AI", "ai", 0.5),
    Record(f"{CP}LO", "longout", 1),
    Record(f"{CP}MBB", "mbbi", 0, choices=("off", "on", "fault")),
    Record(f"{CP}WF", "waveform", [1, 2], "SHORT", 6),
]
SERVICE_ID = "e2e-ca-forwarder"


def check_waveforms(
    out: OutputTopic, server: Any, prefix: str, values: dict[str, list[Any]], kinds: dict[str, str]
) -> None:
    """Each waveform type keeps its values and element type; a shrinking or growing array
    forwards only its valid elements (NORD)."""
    for dtype in WAVEFORM_TYPES:
        pv, value = f"{prefix}WF:{dtype}", values[dtype]
        since = out.mark()
        server.put(pv, value)
        obj = out.wait_value(pv, np.asarray(value), since)
        msg = out.of(pv, "f144", since)[-1][0]
        assert f144_type(msg) == kinds[dtype], dtype
        assert obj.source_name == pv
    pv = f"{prefix}WF:DOUBLE"
    for value in ([9.0, 8.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [0.25]):
        since = out.mark()
        server.put(pv, value)
        out.wait_value(pv, value, since)


def check_string_pv(
    out: OutputTopic,
    status: StatusWatch,
    server: Any,
    log: Any,
    pv: str,
    other_pv: str,
    service_id: str,
) -> None:
    """A string PV on an f144 stream: ep01 and al00 flow, no f144, counted as dropped,
    reported once in the log, and another PV of the same configuration still forwards."""
    connected = out.wait_connection(pv, ConnectionInfo.CONNECTED)
    assert connected.service_id == service_id
    assert out.wait(pv, "al00")[1].severity == Severity.OK
    for text in ("one", "two", "three"):
        server.put(pv, text)
    # An alarm change after the puts: once its al00 is here, any f144 would be too.
    server.set_alarm(pv, 1, "STATE")
    out.wait(pv, "al00", lambda o: o.severity == Severity.MINOR)
    assert out.of(pv, "f144") == []
    # Dropped: the first update (its al00 came first) and the MINOR one (its al00 came
    # last).  The puts in between may be squashed into fewer updates, even into the
    # MINOR one (a PVA server may coalesce quick puts), so only these two are certain.
    doc = status.wait(lambda d: stream_status(d, pv)["updates_dropped"] >= 2)
    assert stream_status(doc, pv)["updates_forwarded"] == 0
    assert doc["counters"]["dropped"]["unsupported_type"] >= 2
    since = out.mark()
    server.put(other_pv, 11.5)
    out.wait_value(other_pv, 11.5, since)
    lines = problem_lines(log(), pv)
    assert len(lines) == 1, lines
    assert "f144" in lines[0]


def check_server_types_and_alarm(
    out: OutputTopic,
    server: Any,
    cases: list[tuple[str, Any, str | None]],
    alarm_pv: str,
    service_id: str,
) -> None:
    """Values of each (pv, value, f144 kind) arrive with the right type; `alarm_pv` is
    connected (with our service id) and its HIHI/MAJOR alarm arrives as al00."""
    for pv, value, kind in cases:
        since = out.mark()
        server.put(pv, value)
        obj = out.wait_value(pv, value, since)
        msg = out.of(pv, "f144", since)[-1][0]
        assert obj.source_name == pv
        if kind is not None:
            assert f144_type(msg) == kind
    assert out.wait_connection(alarm_pv, ConnectionInfo.CONNECTED).service_id == service_id
    since = out.mark()
    server.set_alarm(alarm_pv, 2, "HIHI")
    alarm = out.wait(alarm_pv, "al00", lambda o: o.severity == Severity.MAJOR, since)[1]
    assert alarm.message == "HIHI"


@dataclass
class CaSetup:
    env: dict[str, str]
    late_env: dict[str, str]
    ioc: SoftIoc
    caproto: CaprotoServer
    fw: ForwarderProcess
    out: OutputTopic
    tdct: OutputTopic
    status: StatusWatch


@pytest.fixture(scope="module")
def ca(kafka_bootstrap: str) -> Iterator[CaSetup]:
    env = epics_env(free_port(), free_port())
    late_port, caproto_port = free_port(), free_port()
    # The forwarder searches the module IOC, the caproto server and the late IOC's port.
    fw_env = {
        **env,
        "EPICS_CA_ADDR_LIST": f"{LOCALHOST} {LOCALHOST}:{late_port} {LOCALHOST}:{caproto_port}",
    }
    # The late IOC beacons to this host's repeater, so the forwarder notices it at once.
    late_env = {
        **epics_env(late_port, free_port()),
        "EPICS_CAS_BEACON_PORT": env["EPICS_CA_REPEATER_PORT"],
    }
    with ExitStack() as stack:
        stack.enter_context(CaRepeater(env))
        ioc = stack.enter_context(SoftIoc(RECORDS, env=env))
        caproto = stack.enter_context(
            CaprotoServer(CAPROTO_RECORDS, env=epics_env(caproto_port, free_port()))
        )
        fw = ForwarderProcess(kafka_bootstrap, epics=fw_env, args=["--service-id", SERVICE_ID])
        stack.callback(fw.close)
        fw.start()
        out = OutputTopic(kafka_bootstrap, unique_topic("ca_data"))
        stack.callback(out.close)
        tdct = OutputTopic(kafka_bootstrap, unique_topic("ca_tdct"))
        stack.callback(tdct.close)
        status = StatusWatch(fw)
        stack.callback(status.close)
        streams = [(r.name, "f144", out.name) for r in RECORDS if r.name != f"{P}TDCT:EMPTY"]
        streams += [(r.name, "f144", out.name) for r in CAPROTO_RECORDS]
        streams += [(LATE, "f144", out.name)]
        streams += [(f"{P}TDCT", "tdct", tdct.name), (f"{P}TDCT:EMPTY", "tdct", tdct.name)]
        produce(kafka_bootstrap, fw.config_topic, [fc00_config(streams, Fc00Protocol.CA)])
        # Everything but the late PV connects.
        status.wait(
            lambda d: d["summary"] == {"streams": len(streams), "connected": len(streams) - 1}
        )
        yield CaSetup(env, late_env, ioc, caproto, fw, out, tdct, status)


# ======================================================================================
# Tests
# ======================================================================================


def test_scalars_double_int_enum(ca: CaSetup) -> None:
    cases = [(f"{P}AI", 3.25, "Double"), (f"{P}AO", -7.5, "Double"),
             (f"{P}LO", -123456, "Int"), (f"{P}MBB", 2, None)]  # fmt: skip
    for pv, value, f144_kind in cases:
        since = ca.out.mark()
        before = time.time_ns()
        ca.ioc.put(pv, value)
        msg, obj = ca.out.wait(pv, "f144", partial(has_value, value), since)
        after = time.time_ns()
        assert obj.source_name == pv and msg.key == pv.encode()
        # Stamped by the IOC (same host clock) between our put and our receipt.
        assert before - 1_000_000_000 <= obj.timestamp_unix_ns <= after
        assert msg.timestamp_ms == obj.timestamp_unix_ns // 1_000_000
        if f144_kind is not None:
            assert f144_type(msg) == f144_kind
        else:  # an enum is forwarded as its index, an integer
            assert f144_type(msg) in ("Int", "Long", "UShort", "Short") and isinstance(
                obj.value, int
            )


def test_waveforms_keep_values_and_element_type(ca: CaSetup) -> None:
    check_waveforms(ca.out, ca.ioc, P, WAVEFORM_VALUES, CA_WAVEFORM_F144)


def test_value_order_is_preserved(ca: CaSetup) -> None:
    check_value_order(ca.out, ca.ioc, f"{P}AO")


def test_tdct_is_epics_timestamp_plus_offsets(ca: CaSetup) -> None:
    check_tdct(ca.out, ca.tdct, ca.ioc, f"{P}TDCT", TDCT_OFFSETS)


def test_empty_arrays_are_not_forwarded(ca: CaSetup) -> None:
    check_empty_not_forwarded(ca.out, ca.tdct, ca.ioc, ca.status, f"{P}EMPTY", f"{P}TDCT:EMPTY")


def test_alarms_on_first_update_and_on_change_only(ca: CaSetup) -> None:
    check_alarm_sequence(ca.out, ca.ioc, f"{P}ALARM", ALARM_VALUES)


def test_string_pv_gives_connection_and_alarms_but_no_f144(ca: CaSetup) -> None:
    check_string_pv(ca.out, ca.status, ca.ioc, ca.fw.log, f"{P}STR", f"{P}AI", SERVICE_ID)


def test_caproto_server_types_and_alarm(ca: CaSetup) -> None:
    cases = [(f"{CP}AI", -0.75, "Double"), (f"{CP}LO", 99, "Int"),
             (f"{CP}MBB", 2, None), (f"{CP}WF", [3, -4, 5], "ArrayShort")]  # fmt: skip
    check_server_types_and_alarm(ca.out, ca.caproto, cases, f"{CP}LO", SERVICE_ID)


def test_pv_served_by_an_ioc_started_later(ca: CaSetup) -> None:
    # Configured since the start, nothing served: not connected, nothing forwarded.
    doc = ca.status.wait(lambda d: True)
    assert stream_status(doc, LATE)["connection"] != "CONNECTED"
    assert ca.out.of(LATE, "f144") == []
    assert all(o.status == ConnectionInfo.NEVER_CONNECTED for _, o in ca.out.of(LATE, "ep01"))
    with SoftIoc([Record(LATE, "ai", 3.25)], env=ca.late_env) as late_ioc:
        ca.out.wait_connection(LATE, ConnectionInfo.CONNECTED)
        ca.out.wait_value(LATE, 3.25)
        late_ioc.put(LATE, 4.5)
        ca.out.wait_value(LATE, 4.5)
    ca.out.wait_connection(LATE, ConnectionInfo.DISCONNECTED)


def test_ioc_restart_disconnects_then_reconnects(ca: CaSetup) -> None:
    """Last in the module: it kills the module IOC (and starts it again)."""
    pvs = [f"{P}AI", f"{P}STR", f"{P}WF:LONG"]
    for pv in pvs:
        ca.out.wait_connection(pv, ConnectionInfo.CONNECTED)
    since = ca.out.mark()
    ca.ioc.stop()
    for pv in pvs:
        ca.out.wait_connection(pv, ConnectionInfo.DISCONNECTED, since)
    since = ca.out.mark()
    ca.ioc.start()
    for pv in pvs:
        ca.out.wait_connection(pv, ConnectionInfo.CONNECTED, since)
    ca.out.wait_value(f"{P}AI", 1.5, since)  # the restarted IOC's initial value
    ca.ioc.put(f"{P}AI", 42.0)
    ca.out.wait_value(f"{P}AI", 42.0, since)
    states = [o.status for _, o in ca.out.of(f"{P}AI", "ep01")]
    assert states == [ConnectionInfo.CONNECTED, ConnectionInfo.DISCONNECTED,
                      ConnectionInfo.CONNECTED]  # fmt: skip
    # Monitors of the other PVs resumed too.
    since = ca.out.mark()
    ca.ioc.put(f"{P}WF:LONG", [6, 7])
    ca.out.wait_value(f"{P}WF:LONG", [6, 7], since)
