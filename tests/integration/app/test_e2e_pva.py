"""End to end over PV Access: softioc IOC (pvxs QSRV) and p4p.server -> forwarder -> Kafka.

The same checks as `test_e2e_ca.py` (whose helpers this module uses), with PVA streams.
One IOC, one p4p server and one forwarder subprocess serve the whole module; the forwarder
searches both servers (an address list with both ports).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from streaming_data_types.alarm_al00 import Severity
from streaming_data_types.epics_connection_ep01 import ConnectionInfo
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)

from tests.integration.app.test_e2e_ca import (
    ALARM_VALUES,
    TDCT_OFFSETS,
    WAVEFORM_TYPES,
    OutputTopic,
    StatusWatch,
    check_alarm_sequence,
    check_empty_not_forwarded,
    check_server_types_and_alarm,
    check_string_pv,
    check_tdct,
    check_value_order,
    check_waveforms,
    f144_type,
    fc00_config,
    has_value,
    stream_status,
)
from tests.support.epics_servers import LOCALHOST, P4pServer, Record, SoftIoc, epics_env, free_port
from tests.support.forwarder_process import ForwarderProcess
from tests.support.kafka import produce, unique_topic

pytestmark = pytest.mark.integration

#: f144 value types of what the IOC serves over PVA (CHAR is signed here, unlike CA).
PVA_WAVEFORM_F144 = {"DOUBLE": "ArrayDouble", "FLOAT": "ArrayFloat", "LONG": "ArrayInt",
                     "SHORT": "ArrayShort", "CHAR": "ArrayByte"}  # fmt: skip
WAVEFORM_VALUES: dict[str, list[Any]] = {
    "DOUBLE": [0.5, -1.25, 1e300, 7.0, -0.0],
    "FLOAT": [1.5, -2.5, 1024.25],
    "LONG": [-(2**31), 2**31 - 1, 0, 17],
    "SHORT": [-32768, 32767, 5],
    "CHAR": [-128, 127, 0, -1],
}

P = "E2E:PVA:"
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
Q = "E2E:P4P:"
P4P_RECORDS = [
    Record(f"{Q}AI", "ai", 0.5),
    Record(f"{Q}LO", "longout", 1),
    Record(f"{Q}MBB", "mbbi", 0, choices=("off", "on", "fault")),
    Record(f"{Q}WF", "waveform", [1.0, 2.0], "FLOAT", 6),
]
LATE = f"{Q}LATE"
SERVICE_ID = "e2e-pva-forwarder"


@dataclass
class PvaSetup:
    ioc: SoftIoc
    p4p: P4pServer
    fw: ForwarderProcess
    out: OutputTopic
    tdct: OutputTopic
    status: StatusWatch


@pytest.fixture(scope="module")
def pva(kafka_bootstrap: str) -> Iterator[PvaSetup]:
    env = epics_env(free_port(), free_port())
    p4p_env = epics_env(free_port(), free_port())
    fw_env = {
        **env,
        "EPICS_PVA_ADDR_LIST": f"{LOCALHOST}:{env['EPICS_PVA_SERVER_PORT']} "
        f"{LOCALHOST}:{p4p_env['EPICS_PVA_SERVER_PORT']}",
    }
    with ExitStack() as stack:
        ioc = stack.enter_context(SoftIoc(RECORDS, env=env))
        p4p = stack.enter_context(P4pServer(P4P_RECORDS, env=p4p_env))
        fw = ForwarderProcess(kafka_bootstrap, epics=fw_env, args=["--service-id", SERVICE_ID])
        stack.callback(fw.close)
        fw.start()
        out = OutputTopic(kafka_bootstrap, unique_topic("pva_data"))
        stack.callback(out.close)
        tdct = OutputTopic(kafka_bootstrap, unique_topic("pva_tdct"))
        stack.callback(tdct.close)
        status = StatusWatch(fw)
        stack.callback(status.close)
        streams = [(r.name, "f144", out.name) for r in RECORDS if r.name != f"{P}TDCT:EMPTY"]
        streams += [(r.name, "f144", out.name) for r in P4P_RECORDS]
        streams += [(LATE, "f144", out.name)]
        streams += [(f"{P}TDCT", "tdct", tdct.name), (f"{P}TDCT:EMPTY", "tdct", tdct.name)]
        produce(kafka_bootstrap, fw.config_topic, [fc00_config(streams, Fc00Protocol.PVA)])
        # Everything but the late PV connects.
        status.wait(
            lambda d: d["summary"] == {"streams": len(streams), "connected": len(streams) - 1}
        )
        yield PvaSetup(ioc, p4p, fw, out, tdct, status)


def test_scalars_double_int_enum(pva: PvaSetup) -> None:
    cases = [(f"{P}AI", 3.25, "Double"), (f"{P}AO", -7.5, "Double"),
             (f"{P}LO", -123456, "Int"), (f"{P}MBB", 2, None)]  # fmt: skip
    for pv, value, f144_kind in cases:
        since = pva.out.mark()
        before = time.time_ns()
        pva.ioc.put(pv, value)
        msg, obj = pva.out.wait(pv, "f144", partial(has_value, value), since)
        after = time.time_ns()
        assert obj.source_name == pv and msg.key == pv.encode()
        assert before - 1_000_000_000 <= obj.timestamp_unix_ns <= after
        assert msg.timestamp_ms == obj.timestamp_unix_ns // 1_000_000
        if f144_kind is not None:
            assert f144_type(msg) == f144_kind
        else:  # an NTEnum is forwarded as its index, an integer
            assert isinstance(obj.value, int) and f144_type(msg) in ("Int", "Long")


def test_waveforms_keep_values_and_element_type(pva: PvaSetup) -> None:
    check_waveforms(pva.out, pva.ioc, P, WAVEFORM_VALUES, PVA_WAVEFORM_F144)


def test_value_order_is_preserved(pva: PvaSetup) -> None:
    check_value_order(pva.out, pva.ioc, f"{P}AO")


def test_tdct_is_epics_timestamp_plus_offsets(pva: PvaSetup) -> None:
    check_tdct(pva.out, pva.tdct, pva.ioc, f"{P}TDCT", TDCT_OFFSETS)


def test_empty_arrays_are_not_forwarded(pva: PvaSetup) -> None:
    check_empty_not_forwarded(pva.out, pva.tdct, pva.ioc, pva.status, f"{P}EMPTY", f"{P}TDCT:EMPTY")


def test_alarms_on_first_update_and_on_change_only(pva: PvaSetup) -> None:
    check_alarm_sequence(pva.out, pva.ioc, f"{P}ALARM", ALARM_VALUES)


def test_string_pv_gives_connection_and_alarms_but_no_f144(pva: PvaSetup) -> None:
    check_string_pv(pva.out, pva.status, pva.ioc, pva.fw.log, f"{P}STR", f"{P}AI", SERVICE_ID)


def test_p4p_server_types_and_alarm(pva: PvaSetup) -> None:
    cases = [(f"{Q}AI", -0.75, "Double"), (f"{Q}LO", 99, "Int"),
             (f"{Q}MBB", 2, None), (f"{Q}WF", [3.5, -4.0, 5.25], "ArrayFloat")]  # fmt: skip
    check_server_types_and_alarm(pva.out, pva.p4p, cases, f"{Q}LO", SERVICE_ID)
    since = pva.out.mark()
    pva.p4p.set_alarm(f"{Q}LO", 0, "NO_ALARM")
    alarm = pva.out.wait(f"{Q}LO", "al00", lambda o: o.severity == Severity.OK, since)[1]
    assert alarm.message == ""


def test_pv_added_to_a_running_server_later(pva: PvaSetup) -> None:
    doc = pva.status.wait(lambda d: True)
    assert stream_status(doc, LATE)["connection"] != "CONNECTED"
    assert pva.out.of(LATE, "f144") == []
    assert all(o.status == ConnectionInfo.NEVER_CONNECTED for _, o in pva.out.of(LATE, "ep01"))
    pva.p4p.add(Record(LATE, "ai", 3.25))
    pva.out.wait_connection(LATE, ConnectionInfo.CONNECTED)
    pva.out.wait_value(LATE, 3.25)
    pva.p4p.put(LATE, 4.5)
    pva.out.wait_value(LATE, 4.5)


def test_ioc_restart_disconnects_then_reconnects(pva: PvaSetup) -> None:
    """Last in the module: it kills the module IOC (and starts it again)."""
    pvs = [f"{P}AI", f"{P}STR", f"{P}WF:LONG"]
    for pv in pvs:
        pva.out.wait_connection(pv, ConnectionInfo.CONNECTED)
    since = pva.out.mark()
    pva.ioc.stop()
    for pv in pvs:
        pva.out.wait_connection(pv, ConnectionInfo.DISCONNECTED, since)
    # The p4p server's PVs are unaffected.
    p4p_since = pva.out.mark()
    pva.p4p.put(f"{Q}AI", 8.0)
    pva.out.wait_value(f"{Q}AI", 8.0, p4p_since)
    since = pva.out.mark()
    pva.ioc.start()
    for pv in pvs:
        pva.out.wait_connection(pv, ConnectionInfo.CONNECTED, since, timeout=30)
    pva.ioc.put(f"{P}AI", 42.0)
    pva.out.wait_value(f"{P}AI", 42.0, since)
    states = [o.status for _, o in pva.out.of(f"{P}AI", "ep01")]
    assert states == [ConnectionInfo.CONNECTED, ConnectionInfo.DISCONNECTED,
                      ConnectionInfo.CONNECTED]  # fmt: skip
    assert [o.status for _, o in pva.out.of(f"{Q}AI", "ep01")] == [ConnectionInfo.CONNECTED]
    since = pva.out.mark()
    pva.ioc.put(f"{P}WF:LONG", [6, 7])
    pva.out.wait_value(f"{P}WF:LONG", [6, 7], since)
