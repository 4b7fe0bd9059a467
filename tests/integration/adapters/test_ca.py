"""CaMonitors against real CA servers: a softioc IOC and a caproto server (subprocesses).

caproto's client reads its configuration only from os.environ, so every test pins the
test process environment to its own ports (monkeypatch) before creating CaMonitors.  A CA
repeater runs as it would on a real host: it forwards IOC beacons, which is how the adapter
notices a (re)started IOC quickly.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import caproto as ca
import numpy as np
import pytest
from caproto._dbr import DBR_TYPES

from forwarder.adapters import _caproto_compat
from forwarder.adapters.ca import (
    EPICS_EPOCH_OFFSET_S,
    CaMonitors,
    make_converter,
    make_fast_decoder,
    status_text,
)
from forwarder.core.events import ConnectionState
from tests.support.ca_wire import BrokenCaServer, wire
from tests.support.epics_servers import (
    CaprotoServer,
    CaRepeater,
    Counters,
    Record,
    SoftIoc,
    epics_env,
    free_port,
)
from tests.support.recording import RecordingListener

SCALARS = [
    Record("T:AI", "ai", 1.5),
    Record("T:LO", "longout", 3),
    Record("T:MBB", "mbbi", 1, choices=("zero", "one", "two")),
    Record("T:S", "stringin", "hello"),
]
WAVEFORMS = [
    Record(f"T:WF:{dtype}", "waveform", [1, 2, 3], dtype, 8)
    for dtype in ("DOUBLE", "FLOAT", "LONG", "SHORT", "CHAR", "UCHAR")
]
#: Element types as seen over CA (DBR_CHAR is unsigned on the wire).
CA_DTYPES = {"DOUBLE": np.float64, "FLOAT": np.float32, "LONG": np.int32,
             "SHORT": np.int16, "CHAR": np.uint8, "UCHAR": np.uint8}  # fmt: skip


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = epics_env(free_port(), free_port())
    for key in list(os.environ):
        if key.startswith("EPICS_"):
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def monitors(env: dict[str, str]) -> Iterator[CaMonitors]:
    with CaRepeater(env):
        ca = CaMonitors()
        try:
            yield ca
        finally:
            ca.close()


def subscribe(monitors: CaMonitors, *names: str) -> dict[str, RecordingListener]:
    listeners = {name: RecordingListener() for name in names}
    for name, listener in listeners.items():
        monitors.subscribe(name, listener)
    return listeners


def assert_quiet(listener: RecordingListener, seconds: float = 0.5) -> None:
    before = listener.update_count()
    time.sleep(seconds)
    assert listener.update_count() == before, listener.updates[before:]


def test_scalars_enum_string_and_timestamps(env: dict[str, str], monitors: CaMonitors) -> None:
    with SoftIoc(SCALARS, env=env) as ioc:
        rec = subscribe(monitors, *(r.name for r in SCALARS))
        first = {name: listener.wait_update() for name, listener in rec.items()}
        assert first["T:AI"].value == 1.5 and type(first["T:AI"].value) is np.float64
        assert first["T:LO"].value == 3 and type(first["T:LO"].value) is np.int32
        assert first["T:MBB"].value == 1 and type(first["T:MBB"].value) is int
        assert first["T:S"].value == "hello"
        assert all(u.severity == 0 and u.status == "" for u in first.values())
        for listener in rec.values():
            assert listener.state_list()[-1] is ConnectionState.CONNECTED

        before = time.time_ns()
        for name, value in (("T:AI", -2.25), ("T:LO", 123456), ("T:MBB", 2), ("T:S", "bye")):
            ioc.put(name, value)
            update = rec[name].wait_value(value)
            # Same host, same clock: stamped by the IOC between our put and our receipt.
            assert before - 10_000_000 <= update.timestamp_ns <= time.time_ns() + 10_000_000
        assert type(rec["T:MBB"].wait_value(2).value) is int


def test_waveforms_keep_element_type(env: dict[str, str], monitors: CaMonitors) -> None:
    with SoftIoc(WAVEFORMS, env=env) as ioc:
        rec = subscribe(monitors, *(r.name for r in WAVEFORMS))
        for record in WAVEFORMS:
            value = rec[record.name].wait_update().value
            assert isinstance(value, np.ndarray) and value.ndim == 1
            assert value.dtype == CA_DTYPES[record.dtype] and value.dtype.isnative
            assert value.tolist() == [1, 2, 3]
        ioc.put("T:WF:DOUBLE", [0.5, 1.5, 2.5, 3.5, 4.5])
        assert rec["T:WF:DOUBLE"].wait_value(np.array([0.5, 1.5, 2.5, 3.5, 4.5])).value.size == 5
        ioc.put("T:WF:SHORT", [-7])
        assert rec["T:WF:SHORT"].wait_value(np.array([-7], np.int16)).value.dtype == np.int16


def test_alarm_severity_and_status_pass_through(env: dict[str, str], monitors: CaMonitors) -> None:
    with SoftIoc(SCALARS, env=env) as ioc:
        listener = subscribe(monitors, "T:AI")["T:AI"]
        listener.wait_update()
        ioc.set_alarm("T:AI", 2, "HIHI")
        update = listener.wait_update(lambda u: u.severity == 2)
        assert (update.status, update.value) == ("HIHI", 1.5)
        ioc.set_alarm("T:AI", 1, "LOW")
        assert listener.wait_update(lambda u: u.severity == 1).status == "LOW"
        ioc.set_alarm("T:AI", 0, "NO_ALARM")
        start = listener.update_count()
        assert listener.wait_update(lambda u: u.severity == 0, start=start).status == ""


def test_pv_appearing_later_is_forwarded(env: dict[str, str], monitors: CaMonitors) -> None:
    # A missing PV that is unsubscribed stops being searched for...
    abandoned = RecordingListener()
    monitors.subscribe("T:AI", abandoned).close()
    assert not monitors._broadcaster.unanswered_searches
    # ...and is searched for again when subscribed again.
    listener = subscribe(monitors, "T:AI")["T:AI"]
    assert_quiet(listener, 0.3)
    assert listener.state_list() == [ConnectionState.NEVER_CONNECTED]
    with SoftIoc(SCALARS, env=env) as ioc:
        assert listener.wait_update(timeout=15).value == 1.5
        assert listener.state_list() == [ConnectionState.NEVER_CONNECTED, ConnectionState.CONNECTED]
        ioc.put("T:AI", 4.0)
        listener.wait_value(4.0)
        assert not abandoned.updates


def test_ioc_restart_disconnects_then_resumes(env: dict[str, str], monitors: CaMonitors) -> None:
    with SoftIoc(SCALARS, env=env) as ioc:
        listener = subscribe(monitors, "T:AI")["T:AI"]
        listener.wait_update()
        ioc.stop()
        listener.wait_state(ConnectionState.DISCONNECTED, timeout=5)
        ioc.start()
        connected = listener.wait_state(ConnectionState.CONNECTED, timeout=15, start=2)
        ioc.put("T:AI", 8.5)
        listener.wait_value(8.5)
        assert connected == 3
        assert listener.state_list() == [
            ConnectionState.NEVER_CONNECTED,
            ConnectionState.CONNECTED,
            ConnectionState.DISCONNECTED,
            ConnectionState.CONNECTED,
        ]


def test_close_stops_callbacks(env: dict[str, str], monitors: CaMonitors) -> None:
    with SoftIoc(SCALARS, env=env) as ioc:
        kept, dropped, other = RecordingListener(), RecordingListener(), RecordingListener()
        monitors.subscribe("T:AI", kept)
        dropped_sub = monitors.subscribe("T:AI", dropped)  # same PV, second listener
        monitors.subscribe("T:LO", other)
        for listener in (kept, dropped, other):
            listener.wait_update()
        dropped_sub.close()
        ioc.put("T:AI", 5.5)
        kept.wait_value(5.5)
        assert_quiet(dropped, 0.2)
        assert all(u.value != 5.5 for u in dropped.updates)

        monitors.close()
        ioc.put("T:AI", 6.5)
        ioc.put("T:LO", 9)
        assert_quiet(kept, 0.3)
        assert_quiet(other, 0.0)
        with pytest.raises(RuntimeError):
            monitors.subscribe("T:AI", kept)


def test_failing_listener_does_not_break_the_channel(
    env: dict[str, str], monitors: CaMonitors
) -> None:
    with SoftIoc(SCALARS, env=env) as ioc:
        listener = RecordingListener(fail_first=1)
        monitors.subscribe("T:AI", listener)
        listener.wait_update()
        ioc.put("T:AI", 7.25)
        listener.wait_value(7.25)


def test_caproto_server_types_and_alarms(env: dict[str, str], monitors: CaMonitors) -> None:
    records = [*SCALARS, Record("T:WF:DOUBLE", "waveform", [1.0, 2.0], "DOUBLE", 4),
               Record("T:WF:SHORT", "waveform", [4, 5, 6], "SHORT", 4),
               Record("T:WF:CHAR", "waveform", [7, 8], "CHAR", 4)]  # fmt: skip
    with CaprotoServer(records, env=env) as server:
        rec = subscribe(monitors, *(r.name for r in records))
        first = {name: listener.wait_update() for name, listener in rec.items()}
        assert type(first["T:AI"].value) is np.float64 and first["T:AI"].value == 1.5
        assert type(first["T:LO"].value) is np.int32 and first["T:LO"].value == 3
        assert first["T:MBB"].value == 1 and first["T:S"].value == "hello"
        assert first["T:WF:DOUBLE"].value.tolist() == [1.0, 2.0]
        assert first["T:WF:SHORT"].value.dtype == np.int16
        assert first["T:WF:CHAR"].value.tolist() == [7, 8]
        server.put("T:MBB", 2)
        rec["T:MBB"].wait_value(2)
        server.put("T:WF:SHORT", [1, 2, 3, 4])
        rec["T:WF:SHORT"].wait_value(np.array([1, 2, 3, 4]))
        server.set_alarm("T:LO", 3, "COMM")
        update = rec["T:LO"].wait_update(lambda u: u.severity == 3)
        assert update.status == "COMM" and update.value == 3
        server.stop()
        rec["T:AI"].wait_state(ConnectionState.DISCONNECTED, timeout=5)


def test_status_text_and_converters() -> None:
    assert status_text(0) == "" and status_text(3) == "HIHI" and status_text(999) == "STATUS_999"
    # The wire field is signed: a negative status is a number, not a name from the table's end.
    assert status_text(-1) == "STATUS_-1"
    big_endian = np.array([1.0, 2.0], ">f8")
    converted = make_converter(20, big_endian, scalar=False)(big_endian)
    assert converted.dtype == np.float64 and converted.dtype.isnative
    assert converted.tolist() == [1.0, 2.0]


# -- the fast path for updates -------------------------------------------------------------
FAST_CASES = [  # (DBR_TIME type, big-endian values as caproto carries them)
    (ca.ChannelType.TIME_DOUBLE, np.array([-2.5, 1e300, 7.0], ">f8")),
    (ca.ChannelType.TIME_FLOAT, np.array([1.25, -3.5, 1e30], ">f4")),
    (ca.ChannelType.TIME_LONG, np.array([-(2**31), 2**31 - 1, 5], ">i4")),
    (ca.ChannelType.TIME_INT, np.array([-(2**15), 2**15 - 1, 9], ">i2")),
    (ca.ChannelType.TIME_ENUM, np.array([3, 0, 65535], ">u2")),
    (ca.ChannelType.TIME_CHAR, np.array([0, 255, 7], "u1")),
]


def _slow_and_fast(
    data_type: int, values: np.ndarray, scalar: bool, status: int
) -> tuple[Any, Any]:
    """(value, ts, severity, status) via caproto + make_converter, and via the fast decoder."""
    metadata = DBR_TYPES[data_type](status=status, severity=2)
    metadata.secondsSinceEpoch = 1_000_000_007
    metadata.nanoSeconds = 123_456_789
    response = ca.EventAddResponse(values, data_type, len(values), 1, 3, metadata=metadata)
    data = wire([response])
    circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 5064), 0)
    circuit._data = bytearray()
    (parsed,), _ = _caproto_compat._linear_recv(circuit, data)
    md = parsed.metadata
    slow = (
        make_converter(data_type, parsed.data, scalar)(parsed.data),
        (md.secondsSinceEpoch + EPICS_EPOCH_OFFSET_S) * 1_000_000_000 + md.nanoSeconds,
        md.severity,
        md.status,
    )
    decode = make_fast_decoder(data_type, scalar)
    assert decode is not None
    return slow, decode(memoryview(data)[16:], len(values))


@pytest.mark.parametrize(("data_type", "values"), FAST_CASES)
def test_fast_decoder_gives_what_caproto_gives(data_type: int, values: np.ndarray) -> None:
    for value in values:  # scalars, every extreme
        slow, fast = _slow_and_fast(data_type, values[:1] * 0 + value, True, 3)
        assert type(fast[0]) is type(slow[0]) and fast[0] == slow[0]
        assert fast[1:] == slow[1:] == (1_631_152_007_123_456_789, 2, 3)
    slow, fast = _slow_and_fast(data_type, values, False, 0)
    assert fast[0].dtype == slow[0].dtype and fast[0].dtype.isnative
    assert fast[0].tolist() == slow[0].tolist() and fast[1:] == slow[1:]


def test_no_fast_decoder_for_strings() -> None:
    assert make_fast_decoder(ca.ChannelType.TIME_STRING, True) is None


def test_updates_after_the_first_bypass_caproto(
    env: dict[str, str], monitors: CaMonitors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real IOC: values, types and order are the same on the fast path."""
    fast_calls: dict[str, int] = {}
    register = _caproto_compat.set_fast_handler

    def counting(circuit: Any, sub_id: int, data_type: int, scalar: bool, handler: Any) -> None:
        name = handler.__self__.name

        def counted(payload: memoryview, count: int) -> None:
            fast_calls[name] = fast_calls.get(name, 0) + 1
            handler(payload, count)

        register(circuit, sub_id, data_type, scalar, counted)

    monkeypatch.setattr(_caproto_compat, "set_fast_handler", counting)
    records = [*SCALARS, WAVEFORMS[0], WAVEFORMS[3]]
    with SoftIoc(records, env=env) as ioc:
        rec = subscribe(monitors, *(r.name for r in records))
        for listener in rec.values():
            listener.wait_update()
        for i in range(1, 6):
            ioc.put("T:AI", i + 0.5)
            ioc.put("T:LO", -i)
            ioc.put("T:MBB", i % 3)
            ioc.put("T:S", f"s{i}")
            ioc.put("T:WF:DOUBLE", [float(i)] * i)
            ioc.put("T:WF:SHORT", [i, -i])
            rec["T:AI"].wait_value(i + 0.5)
            rec["T:LO"].wait_value(-i)
            rec["T:WF:DOUBLE"].wait_value(np.full(i, float(i)))
            rec["T:WF:SHORT"].wait_value(np.array([i, -i], np.int16))
        rec["T:MBB"].wait_value(5 % 3)
        rec["T:S"].wait_value("s5")
        assert [u.value for u in rec["T:AI"].updates] == [1.5, 2.5, 3.5, 4.5, 5.5]
        assert all(type(u.value) is np.float64 for u in rec["T:AI"].updates)
        assert all(type(u.value) is np.int32 for u in rec["T:LO"].updates)
        assert all(type(u.value) is int for u in rec["T:MBB"].updates)
        assert all(u.value.dtype == np.int16 for u in rec["T:WF:SHORT"].updates)
        stamps = [u.timestamp_ns for u in rec["T:AI"].updates]
        assert stamps == sorted(stamps)
        for name in ("T:AI", "T:LO", "T:WF:DOUBLE", "T:WF:SHORT"):
            assert fast_calls.get(name, 0) >= 4, fast_calls
        assert "T:S" not in fast_calls  # strings stay on caproto's path

        # A second consumer of the same PV: both get every later update, via caproto.
        second = subscribe(monitors, "T:AI")["T:AI"]
        fast_before = fast_calls["T:AI"]
        ioc.put("T:AI", 9.5)
        rec["T:AI"].wait_value(9.5)
        second.wait_value(9.5)
        assert all(u.value != 5.5 for u in second.updates)  # no stale replay
        assert fast_calls["T:AI"] == fast_before


class _StallingCounterListener:
    """Keeps every counter value; when `stall` is set, the next update sleeps on the
    receive thread, as a forwarder whose process is descheduled would."""

    def __init__(self, stall: threading.Event | None, stall_s: float) -> None:
        self.values: list[int] = []
        self._stall, self._stall_s = stall, stall_s

    def on_update(self, value: Any, timestamp_ns: int, severity: int, status_message: str) -> None:
        self.values.append(int(value))
        if self._stall is not None and self._stall.is_set():
            self._stall.clear()
            time.sleep(self._stall_s)

    def on_connection(self, state: ConnectionState, timestamp_ns: int) -> None:
        pass


@pytest.mark.timeout(120)
def test_receive_thread_stalls_lose_no_update(
    env: dict[str, str], monitors: CaMonitors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the receive thread sleeps, the IOC's updates wait in the socket; afterwards
    they are read in a burst and the fast path must parse every one of them.  Reads are
    capped at an odd size so that most of them end inside a message."""
    monkeypatch.setattr(_caproto_compat, "MAX_TCP_READ", 997)
    counters = Counters(20, 100.0, "STALL:", "DOUBLE")
    stall = threading.Event()
    with SoftIoc(counters=counters, env=env):
        listeners = {
            name: _StallingCounterListener(stall if i == 0 else None, 0.25)
            for i, name in enumerate(counters.names())
        }
        for name, listener in listeners.items():
            monitors.subscribe(name, listener)
        deadline = time.monotonic() + 30
        while not all(len(lst.values) > 10 for lst in listeners.values()):
            assert time.monotonic() < deadline, "counters never arrived"
            time.sleep(0.1)
        for _ in range(8):
            stall.set()
            time.sleep(0.6)
        time.sleep(0.5)
    for name, listener in listeners.items():
        values = listener.values[2:]  # the value at subscription time may come twice
        missing = [(a, b) for a, b in zip(values, values[1:], strict=False) if b != a + 1]
        assert not missing, (name, missing[:5])
        assert len(values) > 300, (name, len(values))


# -- one bad PV or one failing socket must not stop the others ---------------------------
def test_name_too_long_to_search_for_is_refused_and_others_still_connect(
    env: dict[str, str], monitors: CaMonitors
) -> None:
    """caproto refuses record names over 59 characters in a search request, on its
    search-retry thread: such a name used to end that thread, so no PV subscribed after
    it ever connected."""
    too_long = "T:" + "L" * 58
    with pytest.raises(ValueError, match="59-character limit"):
        monitors.subscribe(too_long, RecordingListener())
    # Had it been queued anyway (the adapter's check bypassed), the search-retry loop
    # drops it and goes on.
    with monitors._broadcaster._search_lock:
        monitors._broadcaster.unanswered_searches[10**9] = [too_long, None, 0, time.monotonic()]
    monitors._broadcaster.search_now()
    time.sleep(0.3)  # the retry loop builds its requests (and failed on this one)
    with SoftIoc(SCALARS, env=env) as ioc:
        listener = subscribe(monitors, "T:AI")["T:AI"]
        assert listener.wait_update(timeout=15).value == 1.5
        ioc.put("T:AI", 2.5)
        listener.wait_value(2.5)
    retry = monitors._broadcaster._retry_unanswered_searches_thread
    assert retry is not None and retry.is_alive()
    assert all(item[0] != too_long for item in monitors._broadcaster.unanswered_searches.values())


def fill_socket(sock: Any) -> None:
    """Fill a CA circuit's socket to a stopped IOC (zero bytes: CA version requests) until
    it takes no more byte, also after a pause (the kernel may still make room)."""
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    accepted = 1
    while accepted:
        accepted = 0
        for chunk in (bytes(4096), bytes(16), b"\0"):
            try:
                while True:
                    accepted += sock.send(chunk)
            except BlockingIOError:
                pass
        time.sleep(0.05)


def test_close_goes_on_when_a_monitor_cannot_be_stopped(
    env: dict[str, str], monitors: CaMonitors
) -> None:
    """Shutdown with a stalled IOC: cancelling its subscription raises on the full socket;
    the other monitors are still stopped and the context is closed."""
    import signal

    with SoftIoc(SCALARS, env=env) as ioc:
        rec = subscribe(monitors, "T:AI", "T:LO")
        for listener in rec.values():
            listener.wait_update()
        (channel,) = monitors._channels["T:AI"]
        assert ioc._proc is not None
        os.kill(ioc._proc.pid, signal.SIGSTOP)
        try:
            fill_socket(channel.pv.circuit_manager.socket)
            monitors.close()  # used to raise BlockingIOError, leaving the context open
        finally:
            os.kill(ioc._proc.pid, signal.SIGCONT)
        assert monitors.channel_count() == 0
        with pytest.raises(RuntimeError):
            monitors.subscribe("T:AI", RecordingListener())


def test_stopping_a_monitor_of_a_stalled_ioc_is_counted_and_the_remove_goes_on(
    env: dict[str, str], monitors: CaMonitors
) -> None:
    """Cancelling a subscription writes to the circuit's (non-blocking) socket; an IOC
    that stopped reading fills it and the write raises BlockingIOError.  The core counts
    and reports that; the REMOVE itself completes, and the other PV keeps forwarding."""
    import signal

    from forwarder.core.forwarding import ForwardingCore, Subscribers
    from forwarder.core.streams import Protocol, StreamSpec
    from forwarder.core.timestamps import TimestampPolicy
    from tests.unit.core.test_forwarding import RecordingReporter, RecordingSink

    sink, reporter = RecordingSink(), RecordingReporter()
    core = ForwardingCore(
        sink,
        TimestampPolicy(),
        "svc",
        Subscribers(lambda _p, name, ch: monitors.subscribe(name, ch), lambda sub: sub.close()),
        reporter=reporter,
    )
    stalled = StreamSpec("T:AI", "f144", "t", Protocol.CA)
    with SoftIoc(SCALARS, env=env) as ioc:
        core.add_stream(stalled)
        deadline = time.monotonic() + 15
        while not sink.of(b"f144") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.of(b"f144")
        (ca_channel,) = monitors._channels["T:AI"]
        sock = ca_channel.pv.circuit_manager.socket
        assert ioc._proc is not None
        os.kill(ioc._proc.pid, signal.SIGSTOP)
        try:
            fill_socket(sock)
            core.remove_stream(stalled)  # used to raise BlockingIOError
        finally:
            os.kill(ioc._proc.pid, signal.SIGCONT)
    assert core.counters.monitor_stop_errors == 1
    assert core.channels == {} and monitors.channel_count() == 0
    assert any("T:AI" in m and "BlockingIOError" in m for _, m in reporter.problems)


def test_large_waveform_spanning_many_reads_arrives_intact(
    env: dict[str, str], monitors: CaMonitors
) -> None:
    """4 MiB of doubles: sixteen bounded reads collected into one command, values exact."""
    n = 1 << 19
    env = {**env, "EPICS_CA_MAX_ARRAY_BYTES": str(n * 8 + 65536)}
    with SoftIoc([Record("T:BIG", "waveform", None, "DOUBLE", n)], env=env) as ioc:
        listener = subscribe(monitors, "T:BIG")["T:BIG"]
        listener.wait_update()  # empty at first
        for start in (1, 2):
            ioc.command("fill", name="T:BIG", start=start)

            def filled(u: Any, first: int = start) -> bool:
                return len(u.value) > 0 and bool(u.value[0] == first)

            value = listener.wait_update(filled).value
            assert value.dtype == np.float64 and len(value) == n
            assert np.array_equal(value, np.arange(n) + start)


@pytest.mark.parametrize("refuse", [True, False], ids=["refused", "hung"])
def test_a_server_that_fails_the_circuit_does_not_stop_other_pvs_connecting(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, refuse: bool
) -> None:
    """A server answers the search, then refuses the connection (it died meanwhile) or
    never completes the handshake (hung).  caproto let that error end the thread that
    connects every searched PV, so no CA PV of the process connected after it."""
    broken = BrokenCaServer(["BROKEN:PV"], refuse=refuse)
    monkeypatch.setenv("EPICS_CA_ADDR_LIST", f"127.0.0.1 127.0.0.1:{broken.udp_port}")
    try:
        with CaRepeater(env):
            monitors = CaMonitors()
            try:
                broken_listener = subscribe(monitors, "BROKEN:PV")["BROKEN:PV"]
                deadline = time.monotonic() + 15
                while not broken.answered:
                    assert time.monotonic() < deadline, "the client never searched"
                    time.sleep(0.05)
                with SoftIoc(SCALARS, env=env) as ioc:
                    listener = subscribe(monitors, "T:AI")["T:AI"]
                    assert listener.wait_update(timeout=20).value == 1.5
                    ioc.put("T:AI", 2.5)
                    listener.wait_value(2.5)
                assert ConnectionState.CONNECTED not in broken_listener.state_list()
            finally:
                monitors.close()
    finally:
        broken.close()


def test_failed_circuits_do_not_multiply_searches(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed circuit only PVs nobody searches for any more are searched again: a
    server failing every attempt must not add a search per waiting PV each time."""
    broken = BrokenCaServer(["BROKEN:PV"], refuse=True)
    monkeypatch.setenv("EPICS_CA_ADDR_LIST", f"127.0.0.1:{broken.udp_port}")
    monitors = CaMonitors()
    try:
        waiting = [f"ABSENT:{i}" for i in range(50)]
        subscribe(monitors, "BROKEN:PV", *waiting)
        deadline = time.monotonic() + 15
        while not broken.answered:
            assert time.monotonic() < deadline, "the client never searched"
            time.sleep(0.05)
        context = monitors._context
        for _ in range(3):
            time.sleep(context.RESEARCH_PAUSE_S + 0.3)  # the re-search after the failure
            context._search_again_without_circuit()
        with monitors._broadcaster._search_lock:
            names = [item[0] for item in monitors._broadcaster.unanswered_searches.values()]
        assert sorted(names) == sorted(["BROKEN:PV", *waiting])
    finally:
        monitors.close()
        broken.close()
