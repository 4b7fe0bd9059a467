"""End to end: which EPICS timestamps are forwarded, with and without
`--stale-timestamps receive-time`.

Two forwarders watch the same PVs, one with the default policy (drop) and one with
`receive-time`, each writing to its own topic:

* a softioc record that was never processed (PINI=NO: UDF, EPICS time 0), served over CA
  and over PVA (QSRV) by a real IOC started from `IOC_SCRIPT` (the shared IOC helper
  always processes its records at start-up);
* p4p PVs served from this process, whose `timeStamp` the tests set explicitly: the unix
  epoch, two years ago, an hour ahead, two minutes ahead, and a sequence that goes back
  in time.

Absence is judged as in `test_e2e_ca.py`: all messages of a PV share one partition, so
once a later message of that PV has arrived, an earlier one would have too.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from p4p import Value
from p4p.nt import NTScalar
from p4p.server import Server, StaticProvider
from p4p.server.thread import SharedPV
from streaming_data_types.alarm_al00 import Severity
from streaming_data_types.epics_connection_ep01 import ConnectionInfo
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import (
    UpdateType as Fc00UpdateType,
)
from streaming_data_types.forwarder_config_update_fc00 import StreamInfo, serialise_fc00

from tests.integration.app.test_e2e_ca import OutputTopic, StatusWatch, stream_status
from tests.support.epics_servers import (
    LOCALHOST,
    REPO_ROOT,
    child_env,
    epics_env,
    free_port,
)
from tests.support.forwarder_process import ForwarderProcess
from tests.support.kafka import produce, unique_topic

pytestmark = pytest.mark.integration

WAIT = 20.0
NS = 1_000_000_000
EPICS_EPOCH_S = 631_152_000

NEVER = "E2E:TS:NEVER"  # never processed; served by the IOC over CA and PVA
FRESH = "E2E:TS:FRESH"  # processed at start-up (PINI=YES): a normal timestamp
IOC_SCRIPT = f"""
import sys
from softioc import asyncio_dispatcher, builder, softioc
builder.aIn("{NEVER}", PINI="NO")
builder.aIn("{FRESH}", initial_value=2.5)
builder.LoadDatabase()
softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher())
sys.stdin.read()  # serve until the test closes our stdin
"""

# p4p PVs and their initial timestamps, relative to now in seconds (None: the unix epoch).
ZERO = "E2E:TS:P:ZERO"
ANCIENT = "E2E:TS:P:ANCIENT"
FUTURE = "E2E:TS:P:FUTURE"
SOON = "E2E:TS:P:SOON"
ORDER = "E2E:TS:P:ORDER"
P4P_INITIAL: dict[str, float | None] = {
    ZERO: None,
    ANCIENT: -2 * 365 * 24 * 3600.0,
    FUTURE: 3600.0,
    SOON: 120.0,
    ORDER: 0.0,
}
NT_DOUBLE = NTScalar.buildType("d")


def stamp(ns: int) -> dict[str, int]:
    return {"secondsPastEpoch": ns // NS, "nanoseconds": ns % NS}


def nt_value(value: float, ts_ns: int) -> Value:
    return Value(NT_DOUBLE, {"value": value, "timeStamp": stamp(ts_ns)})


class Ioc:
    """A softioc subprocess running `IOC_SCRIPT` (exits when its stdin closes)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-c", IOC_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=child_env(env),
            cwd=str(REPO_ROOT),
        )
        deadline = time.monotonic() + WAIT
        for port in (env["EPICS_CA_SERVER_PORT"], env["EPICS_PVA_SERVER_PORT"]):
            while True:
                try:
                    socket.create_connection((LOCALHOST, int(port)), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.close()
                        raise RuntimeError(f"IOC not serving port {port}") from None
                    time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


@dataclass
class Setup:
    started_ns: int
    pvs: dict[str, SharedPV]
    #: The p4p PVs' initial timestamps.
    initial_ns: dict[str, int]
    #: Per policy ("drop", "receive-time"): forwarder, its output topic and status.
    fw: dict[str, ForwarderProcess]
    out: dict[str, OutputTopic]
    status: dict[str, StatusWatch]

    def post(self, name: str, value: float, ts_ns: int) -> None:
        self.pvs[name].post(nt_value(value, ts_ns))


@pytest.fixture(scope="module")
def ts(kafka_bootstrap: str) -> Iterator[Setup]:
    ioc_env = epics_env(free_port(), free_port())
    p4p_env = epics_env(free_port(), free_port())
    fw_env = {
        **ioc_env,
        "EPICS_PVA_ADDR_LIST": f"{LOCALHOST}:{ioc_env['EPICS_PVA_SERVER_PORT']} "
        f"{LOCALHOST}:{p4p_env['EPICS_PVA_SERVER_PORT']}",
    }
    started_ns = time.time_ns()
    with ExitStack() as stack:
        ioc = Ioc(ioc_env)
        stack.callback(ioc.close)
        provider = StaticProvider("e2e-timestamps")
        pvs: dict[str, SharedPV] = {}
        initial_ns: dict[str, int] = {}
        for name, offset_s in P4P_INITIAL.items():
            ts_ns = 0 if offset_s is None else time.time_ns() + int(offset_s * NS)
            initial_ns[name] = ts_ns
            pvs[name] = SharedPV(initial=nt_value(1.0, ts_ns))
            provider.add(name, pvs[name])
        server = Server(
            providers=[provider],
            conf={k: v for k, v in p4p_env.items() if k.startswith("EPICS_PVAS_")},
            useenv=False,
        )
        stack.callback(server.stop)
        fws: dict[str, ForwarderProcess] = {}
        outs: dict[str, OutputTopic] = {}
        statuses: dict[str, StatusWatch] = {}
        for policy in ("drop", "receive-time"):
            args = [] if policy == "drop" else ["--stale-timestamps", "receive-time"]
            fw = ForwarderProcess(kafka_bootstrap, epics=fw_env, args=args)
            stack.callback(fw.close)
            fws[policy] = fw
        for fw in fws.values():  # two start-ups at once, then wait for both
            fw.start(wait_ready=False)
        for policy, fw in fws.items():
            fw.wait_ready()
            outs[policy] = OutputTopic(kafka_bootstrap, unique_topic("ts_data"))
            stack.callback(outs[policy].close)
            statuses[policy] = StatusWatch(fw)
            stack.callback(statuses[policy].close)
            streams = [
                StreamInfo(NEVER, "f144", outs[policy].name, Fc00Protocol.CA, 0),
                StreamInfo(FRESH, "f144", outs[policy].name, Fc00Protocol.CA, 0),
                StreamInfo(NEVER, "f144", outs[policy].name, Fc00Protocol.PVA, 0),
                *(
                    StreamInfo(name, "f144", outs[policy].name, Fc00Protocol.PVA, 0)
                    for name in P4P_INITIAL
                ),
            ]
            produce(kafka_bootstrap, fw.config_topic, [serialise_fc00(Fc00UpdateType.ADD, streams)])
        n_streams = 3 + len(P4P_INITIAL)
        for status in statuses.values():
            status.wait(lambda d: d["summary"] == {"streams": n_streams, "connected": n_streams})
        yield Setup(started_ns, pvs, initial_ns, fws, outs, statuses)


def streams_of(doc: dict[str, Any], channel: str) -> list[dict[str, Any]]:
    return [s for s in doc["streams"] if s["channel_name"] == channel]


def test_fresh_timestamps_are_forwarded_unchanged_by_both_policies(ts: Setup) -> None:
    for out in ts.out.values():
        obj = out.wait_value(FRESH, 2.5)
        assert ts.started_ns - 60 * NS < obj.timestamp_unix_ns < time.time_ns()


def test_never_processed_record_is_dropped_by_default(ts: Setup) -> None:
    out, status = ts.out["drop"], ts.status["drop"]
    out.wait_connection(NEVER, ConnectionInfo.CONNECTED)
    doc = status.wait(
        lambda d: (
            all(s["updates_dropped"] >= 1 for s in streams_of(d, NEVER))
            and d["counters"]["dropped"]["too_old"] >= 4
        )  # CA + PVA NEVER, ZERO, ANCIENT
    )
    # Both protocols' streams were dropped, never forwarded.
    assert sorted(s["protocol"] for s in streams_of(doc, NEVER)) == ["CA", "PVA"]
    assert all(s["updates_forwarded"] == 0 for s in streams_of(doc, NEVER))
    assert stream_status(doc, FRESH)["updates_forwarded"] >= 1
    assert out.of(NEVER, "f144") == []
    # The connection is still reported for each protocol's stream.
    states = [o.status for _, o in out.of(NEVER, "ep01")]
    assert states.count(ConnectionInfo.CONNECTED) == 2, states


def test_never_processed_record_gets_receive_time(ts: Setup) -> None:
    out, status = ts.out["receive-time"], ts.status["receive-time"]
    for _, obj in out.wait_count(NEVER, "f144", 2):  # one from CA, one from PVA
        assert obj.value == 0.0
        # The forwarder's receive time: after the test started, not the EPICS epoch.
        assert ts.started_ns <= obj.timestamp_unix_ns <= time.time_ns()
    # The UDF alarm of a never-processed record is forwarded with the same timestamp.
    alarms = [o for _, o in out.of(NEVER, "al00")]
    assert alarms and all(a.severity == Severity.INVALID for a in alarms)
    doc = status.wait(lambda d: True)
    assert doc["counters"]["dropped"]["too_old"] == 0
    assert all(s["updates_forwarded"] >= 1 for s in streams_of(doc, NEVER))


def test_epoch_ancient_and_far_future_timestamps(ts: Setup) -> None:
    drop, receive = ts.out["drop"], ts.out["receive-time"]
    # Initial values: unix epoch and two years ago (too old), one hour ahead (future).
    for name in (ZERO, ANCIENT, FUTURE):
        drop.wait_connection(name, ConnectionInfo.CONNECTED)
        obj = receive.wait_value(name, 1.0)
        assert ts.started_ns <= obj.timestamp_unix_ns <= time.time_ns()
    doc = ts.status["drop"].wait(
        lambda d: (
            d["counters"]["dropped"]["too_far_in_future"] >= 1
            and all(stream_status(d, n)["updates_dropped"] >= 1 for n in (ZERO, ANCIENT, FUTURE))
        )
    )
    assert all(stream_status(doc, n)["updates_forwarded"] == 0 for n in (ZERO, ANCIENT, FUTURE))

    # A new far-future update: dropped, or forwarded with the receive time.
    before = time.time_ns()
    ts.post(FUTURE, 2.0, before + 3600 * NS)
    obj = receive.wait_value(FUTURE, 2.0)
    assert before <= obj.timestamp_unix_ns <= time.time_ns()
    # Then a good timestamp is forwarded as is by both (not older than the receive time).
    good_ns = time.time_ns()
    ts.post(FUTURE, 3.0, good_ns)
    for out in (drop, receive):
        assert out.wait_value(FUTURE, 3.0).timestamp_unix_ns == good_ns
    assert drop.values(FUTURE) == [3.0]  # neither 1.0 nor 2.0 made it
    assert receive.values(FUTURE) == [1.0, 2.0, 3.0]
    assert drop.values(ZERO) == [] and drop.values(ANCIENT) == []


def test_slightly_future_timestamp_is_kept(ts: Setup) -> None:
    """Two minutes ahead is within the ten-minute tolerance: forwarded unchanged."""
    for out in ts.out.values():
        assert out.wait_value(SOON, 1.0).timestamp_unix_ns == ts.initial_ns[SOON]


def test_timestamp_older_than_previous_is_dropped_by_both(ts: Setup) -> None:
    for out in ts.out.values():
        assert out.wait_value(ORDER, 1.0).timestamp_unix_ns == ts.initial_ns[ORDER]
    marks = {policy: out.mark() for policy, out in ts.out.items()}
    now = time.time_ns()
    # One post at a time, each seen before the next: a PVA server may squash quick posts
    # into the newest, and a squashed post would never reach the forwarder.
    ts.post(ORDER, 2.0, now)
    for policy, out in ts.out.items():
        out.wait_value(ORDER, 2.0, marks[policy])
    ts.post(ORDER, 3.0, now - 5 * NS)  # goes back in time: dropped
    for policy in ts.out:
        doc = ts.status[policy].wait(lambda d: stream_status(d, ORDER)["updates_dropped"] >= 1)
        assert doc["counters"]["dropped"]["older_than_previous"] >= 1, policy
    ts.post(ORDER, 4.0, now)  # the same timestamp again is fine
    for policy, out in ts.out.items():
        out.wait_value(ORDER, 4.0, marks[policy])
    ts.post(ORDER, 5.0, now + 1_000)
    for policy, out in ts.out.items():
        out.wait_value(ORDER, 5.0, marks[policy])
        got = [(o.value, o.timestamp_unix_ns) for _, o in out.of(ORDER, "f144", marks[policy])]
        assert got == [(2.0, now), (4.0, now), (5.0, now + 1_000)], policy
