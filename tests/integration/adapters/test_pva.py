"""PvaMonitors against real PVA servers: a softioc IOC (pvxs QSRV) and p4p.server.

The client gets each test's ports explicitly (`PvaMonitors(conf=..., use_env=False)`),
so the test process environment is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from forwarder.adapters.pva import PvaMonitors
from forwarder.core.events import ConnectionState
from tests.support.epics_servers import P4pServer, Record, SoftIoc, epics_env, free_port
from tests.support.recording import RecordingListener

SCALARS = [
    Record("T:AI", "ai", 1.5),
    Record("T:LO", "longout", 3),
    Record("T:MBB", "mbbi", 1, choices=("zero", "one", "two")),
    Record("T:S", "stringin", "hello"),
]
PVA_DTYPES = {"DOUBLE": np.float64, "FLOAT": np.float32, "LONG": np.int32,
              "SHORT": np.int16, "CHAR": np.int8, "UCHAR": np.uint8}  # fmt: skip
WAVEFORMS = [Record(f"T:WF:{dtype}", "waveform", [1, 2, 3], dtype, 8) for dtype in PVA_DTYPES]
CONNECTED_ONCE = [ConnectionState.NEVER_CONNECTED, ConnectionState.CONNECTED]


@pytest.fixture
def env() -> dict[str, str]:
    return epics_env(free_port(), free_port())


@pytest.fixture
def monitors(env: dict[str, str]) -> Iterator[PvaMonitors]:
    pva = PvaMonitors(env, use_env=False)
    try:
        yield pva
    finally:
        pva.close()


def subscribe(monitors: PvaMonitors, *names: str) -> dict[str, RecordingListener]:
    listeners = {name: RecordingListener() for name in names}
    for name, listener in listeners.items():
        monitors.subscribe(name, listener)
    return listeners


def assert_quiet(listener: RecordingListener, seconds: float = 0.5) -> None:
    before = listener.update_count()
    time.sleep(seconds)
    assert listener.update_count() == before, listener.updates[before:]


@pytest.mark.parametrize("server", [SoftIoc, P4pServer])
def test_scalars_enum_string_and_timestamps(
    server: type[SoftIoc], env: dict[str, str], monitors: PvaMonitors
) -> None:
    with server(SCALARS, env=env) as srv:
        rec = subscribe(monitors, *(r.name for r in SCALARS))
        first = {name: listener.wait_update() for name, listener in rec.items()}
        assert first["T:AI"].value == 1.5 and type(first["T:AI"].value) is np.float64
        assert first["T:LO"].value == 3 and type(first["T:LO"].value) is np.int32
        assert first["T:MBB"].value == 1 and type(first["T:MBB"].value) is int
        assert first["T:S"].value == "hello"
        assert all(u.severity == 0 and u.status == "" for u in first.values())
        assert all(listener.state_list() == CONNECTED_ONCE for listener in rec.values())

        before = time.time_ns()
        for name, value in (("T:AI", -2.25), ("T:LO", 123456), ("T:MBB", 2), ("T:S", "bye")):
            srv.put(name, value)
            update = rec[name].wait_value(value)
            assert before - 10_000_000 <= update.timestamp_ns <= time.time_ns() + 10_000_000


@pytest.mark.parametrize("server", [SoftIoc, P4pServer])
def test_waveforms_keep_element_type(
    server: type[SoftIoc], env: dict[str, str], monitors: PvaMonitors
) -> None:
    with server(WAVEFORMS, env=env) as srv:
        rec = subscribe(monitors, *(r.name for r in WAVEFORMS))
        for record in WAVEFORMS:
            value = rec[record.name].wait_update().value
            assert isinstance(value, np.ndarray) and value.ndim == 1
            assert value.dtype == PVA_DTYPES[record.dtype] and value.dtype.isnative
            assert value.tolist() == [1, 2, 3]
        srv.put("T:WF:DOUBLE", [0.5, 1.5, 2.5, 3.5, 4.5])
        rec["T:WF:DOUBLE"].wait_value(np.array([0.5, 1.5, 2.5, 3.5, 4.5]))
        srv.put("T:WF:CHAR", [-7])
        assert rec["T:WF:CHAR"].wait_value(np.array([-7], np.int8)).value.dtype == np.int8


@pytest.mark.parametrize("server", [SoftIoc, P4pServer])
def test_alarm_severity_and_status_pass_through(
    server: type[SoftIoc], env: dict[str, str], monitors: PvaMonitors
) -> None:
    with server(SCALARS, env=env) as srv:
        listener = subscribe(monitors, "T:AI")["T:AI"]
        listener.wait_update()
        srv.set_alarm("T:AI", 2, "HIHI")
        update = listener.wait_update(lambda u: u.severity == 2)
        assert (update.status, update.value) == ("HIHI", 1.5)
        srv.set_alarm("T:AI", 1, "LOW")
        assert listener.wait_update(lambda u: u.severity == 1).status == "LOW"
        start = listener.update_count()
        srv.set_alarm("T:AI", 0, "NO_ALARM")
        assert listener.wait_update(lambda u: u.severity == 0, start=start).status == ""


def test_pv_appearing_later_is_forwarded(env: dict[str, str], monitors: PvaMonitors) -> None:
    """Both ways a PV appears: its server starts later, or a running server adds it."""
    early = subscribe(monitors, "T:AI")["T:AI"]
    time.sleep(0.3)
    assert early.state_list() == [ConnectionState.NEVER_CONNECTED] and not early.updates
    with P4pServer(SCALARS, env=env) as srv:
        assert early.wait_update(timeout=15).value == 1.5
        late = subscribe(monitors, "T:NEW")["T:NEW"]
        assert_quiet(late, 0.3)
        srv.add(Record("T:NEW", "ai", 42.0))
        assert late.wait_update(timeout=15).value == 42.0
        assert late.state_list() == CONNECTED_ONCE


def test_ioc_restart_disconnects_then_resumes(env: dict[str, str], monitors: PvaMonitors) -> None:
    """Slow by nature: pvxs re-searches with backoff (a restarted server's beacon does not
    trigger a new search, only a new server's does), so this takes several seconds."""
    with SoftIoc(SCALARS, env=env) as srv:
        listener = subscribe(monitors, "T:AI")["T:AI"]
        listener.wait_update()
        srv.stop()
        listener.wait_state(ConnectionState.DISCONNECTED, timeout=5)
        srv.start()
        listener.wait_state(ConnectionState.CONNECTED, timeout=20, start=2)
        srv.put("T:AI", 8.5)
        listener.wait_value(8.5)
        assert listener.state_list() == [*CONNECTED_ONCE, ConnectionState.DISCONNECTED,
                                         ConnectionState.CONNECTED]  # fmt: skip


def test_close_stops_callbacks(env: dict[str, str], monitors: PvaMonitors) -> None:
    with P4pServer(SCALARS, env=env) as srv:
        kept, dropped, other = RecordingListener(), RecordingListener(), RecordingListener()
        monitors.subscribe("T:AI", kept)
        dropped_sub = monitors.subscribe("T:AI", dropped)
        monitors.subscribe("T:LO", other)
        for listener in (kept, dropped, other):
            listener.wait_update()
        dropped_sub.close()
        srv.put("T:AI", 5.5)
        kept.wait_value(5.5)
        assert_quiet(dropped, 0.2)
        assert all(u.value != 5.5 for u in dropped.updates)
        assert monitors.channel_count() == 2

        monitors.close()
        srv.put("T:AI", 6.5)
        srv.put("T:LO", 9)
        assert_quiet(kept, 0.3)
        assert_quiet(other, 0.0)
        with pytest.raises(RuntimeError):
            monitors.subscribe("T:AI", kept)


def test_failing_listener_does_not_break_the_channel(
    env: dict[str, str], monitors: PvaMonitors
) -> None:
    with P4pServer(SCALARS, env=env) as srv:
        listener = RecordingListener(fail_first=1)
        monitors.subscribe("T:AI", listener)
        listener.wait_update()
        srv.put("T:AI", 7.25)
        listener.wait_value(7.25)


def test_pv_closed_and_reopened_by_the_server(env: dict[str, str]) -> None:
    """A server that closes a PV (p4p reports it to clients as a disconnect, or Finished
    on some versions, where the adapter re-opens its monitor from inside its own drain)
    and serves it again: values flow again."""
    from p4p.nt import NTScalar
    from p4p.server import Server, StaticProvider
    from p4p.server.thread import SharedPV

    pv = SharedPV(nt=NTScalar("d"), initial=1.0)
    provider = StaticProvider("finished-test")
    provider.add("T:FIN", pv)
    server_conf = {k: v for k, v in env.items() if k.startswith("EPICS_PVA")}
    with Server(providers=[provider], conf=server_conf, useenv=False):
        monitors = PvaMonitors(conf=env, use_env=False)
        try:
            listener = RecordingListener()
            monitors.subscribe("T:FIN", listener)
            assert listener.wait_update().value == 1.0
            pv.close(destroy=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and listener.state_list()[-1] not in (
                ConnectionState.DISCONNECTED,
                ConnectionState.FINISHED,
            ):
                time.sleep(0.05)
            assert listener.state_list()[-1] in (
                ConnectionState.DISCONNECTED,
                ConnectionState.FINISHED,
            )
            pv.open(2.5)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(u.value == 2.5 for u in listener.updates):
                time.sleep(0.1)
            assert any(u.value == 2.5 for u in listener.updates), listener.state_list()
        finally:
            monitors.close()


def test_nttable_arrives_as_its_columns(env: dict[str, str], monitors: PvaMonitors) -> None:
    """What the nttable_* serialisers take: a dict of column name -> 1-d array."""
    table = Record("T:TABLE", "nttable", dtype="LONG")
    with P4pServer([table], env=env) as srv:
        listener = subscribe(monitors, "T:TABLE")["T:TABLE"]
        first = listener.wait_update()
        assert type(first.value) is dict and sorted(first.value) == ["timestamp", "value"]
        assert all(len(column) == 0 for column in first.value.values())  # no rows yet
        stamps = [time.time_ns(), time.time_ns() + 5]
        srv.put("T:TABLE", {"value": [4, -5], "timestamp": stamps})
        update = listener.wait_update(lambda u: len(u.value["value"]) == 2)
        assert update.value["value"].tolist() == [4, -5]
        assert update.value["value"].dtype == np.int32
        assert update.value["timestamp"].tolist() == stamps
        assert update.severity == 0 and update.timestamp_ns > 0
