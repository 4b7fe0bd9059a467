"""End to end for the other ESS stream schemas: f142 (CA, PVA, fake), nttable_se00 and
nttable_senv (PVA), no_op, and the ESS forwarder README's Python example.

One softioc IOC (CA), one p4p server (PVA, including NTTables) and one forwarder (with
re-sends and fake PVs) serve the module.  Streams whose messages are re-sent go to their
own topic, read raw: a re-send carries the send time as its Kafka timestamp, which the
envelope check of `OutputTopic` (Kafka timestamp == FlatBuffer timestamp) would refuse.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pytest
from streaming_data_types.epics_connection_ep01 import ConnectionInfo
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import (
    UpdateType as Fc00UpdateType,
)
from streaming_data_types.fbschemas.logdata_f142.AlarmSeverity import AlarmSeverity
from streaming_data_types.fbschemas.logdata_f142.AlarmStatus import AlarmStatus
from streaming_data_types.fbschemas.logdata_f142.LogData import LogData
from streaming_data_types.fbschemas.logdata_f142.Value import Value as F142Value
from streaming_data_types.forwarder_config_update_fc00 import StreamInfo, serialise_fc00

from tests.integration.app.test_e2e_ca import (
    CA_WAVEFORM_F144,
    WAIT,
    WAVEFORM_TYPES,
    WAVEFORM_VALUES,
    OutputTopic,
    StatusWatch,
    has_value,
    problem_lines,
    stream_status,
)
from tests.support.epics_servers import (
    LOCALHOST,
    CaRepeater,
    P4pServer,
    Record,
    SoftIoc,
    epics_env,
    free_port,
)
from tests.support.forwarder_process import ForwarderProcess
from tests.support.kafka import Msg, TopicReader, decode, produce, unique_topic

pytestmark = pytest.mark.integration

F142_TYPES = {v: k for k, v in vars(F142Value).items() if not k.startswith("_")}
NO_ALARM = (AlarmSeverity.NO_ALARM, AlarmStatus.NO_ALARM)

C = "E2E:S:CA:"
IOC_RECORDS = [
    Record(f"{C}AI", "ai", 1.5),
    Record(f"{C}LO", "longout", 7),
    Record(f"{C}MBB", "mbbo", 1, choices=("zero", "one", "two")),
    *(Record(f"{C}WF:{t}", "waveform", [1, 2], t, 8) for t in WAVEFORM_TYPES),
    Record(f"{C}EMPTY", "waveform", [1.0], "DOUBLE", 8),
    Record(f"{C}ALARM", "waveform", [0.0], "DOUBLE", 4),
    Record(f"{C}RESEND", "ai", 4.5),
    Record("IOC:PV2", "ai", 2.0),  # the ESS README example's CA PV
]
Q = "E2E:S:PVA:"
P4P_RECORDS = [
    Record(f"{Q}AI", "ai", 0.5),
    Record(f"{Q}WF", "waveform", [1.0, 2.0], "FLOAT", 6),
    Record(f"{Q}WF:I64", "waveform", [1, 2], "INT64", 6),
    Record(f"{Q}MBB", "mbbi", 0, choices=("off", "on", "fault")),
    Record(f"{Q}ALARM", "waveform", [0.0], "DOUBLE", 4),
    Record(f"{Q}RESEND", "ai", 6.5),
    Record(f"{Q}TABLE", "nttable", dtype="DOUBLE"),
    Record(f"{Q}TABLE:I", "nttable", dtype="LONG"),
    Record(f"{Q}NOTTABLE", "ai", 1.0),
    Record("IOC:PV1", "ai", 1.0),  # the ESS README example's PVA PVs
    Record("IOC:PV3", "ai", 3.0),
]
FAKE = "E2E:S:FAKE:F142"
SERVICE_ID = "e2e-schemas-forwarder"


@dataclass
class Setup:
    ioc: SoftIoc
    p4p: P4pServer
    fw: ForwarderProcess
    out: OutputTopic
    tables: OutputTopic
    noop: OutputTopic
    resend: TopicReader
    status: StatusWatch


def fc00(streams: list[tuple[str, str, str, int, bool]]) -> bytes:
    infos = [StreamInfo(ch, schema, topic, proto, int(per)) for ch, schema, topic, proto, per
             in streams]  # fmt: skip
    return serialise_fc00(Fc00UpdateType.ADD, infos)


@pytest.fixture(scope="module")
def setup(kafka_bootstrap: str) -> Iterator[Setup]:
    env = epics_env(free_port(), free_port())
    p4p_env = epics_env(free_port(), free_port())
    fw_env = {**env, "EPICS_PVA_ADDR_LIST": f"{LOCALHOST}:{p4p_env['EPICS_PVA_SERVER_PORT']}"}
    with ExitStack() as stack:
        stack.enter_context(CaRepeater(env))
        ioc = stack.enter_context(SoftIoc(IOC_RECORDS, env=env))
        p4p = stack.enter_context(P4pServer(P4P_RECORDS, env=p4p_env))
        fw = ForwarderProcess(
            kafka_bootstrap,
            epics=fw_env,
            args=["--service-id", SERVICE_ID, "--pv-update-period", "700",
                  "--fake-pv-period", "200"],
        )  # fmt: skip
        stack.callback(fw.close)
        fw.start()
        topics = [OutputTopic(kafka_bootstrap, unique_topic(n)) for n in ("f142", "tab", "noop")]
        for topic in topics:
            stack.callback(topic.close)
        out, tables, noop = topics
        resend = TopicReader(kafka_bootstrap, unique_topic("resend"))
        stack.callback(resend.close)
        status = StatusWatch(fw)
        stack.callback(status.close)
        ca, pva, fake = Fc00Protocol.CA, Fc00Protocol.PVA, Fc00Protocol.FAKE
        streams = [(r.name, "f142", out.name, ca, False) for r in IOC_RECORDS[:-2]]
        streams += [(r.name, "f142", out.name, pva, False) for r in P4P_RECORDS[:5]]
        streams += [
            (FAKE, "f142", out.name, fake, False),
            (f"{C}RESEND", "f142", resend.topic, ca, True),
            (f"{Q}RESEND", "f142", resend.topic, pva, True),
            (f"{Q}TABLE", "nttable_se00", tables.name, pva, False),
            (f"{Q}TABLE:I", "nttable_senv", tables.name, pva, False),
            (f"{Q}NOTTABLE", "nttable_se00", tables.name, pva, False),
        ]
        # Added once the others forward: a stream added to a PV already monitored gets
        # its current value with now as the Kafka timestamp, which OutputTopic refuses.
        late = [
            (f"{C}AI", "no_op", noop.name, ca, False),
            (f"{Q}AI", "no_op", noop.name, pva, False),
        ]
        rejected = [
            (f"{C}AI", "nttable_se00", tables.name, ca, False),
            (FAKE, "nttable_senv", tables.name, fake, False),
        ]
        produce(kafka_bootstrap, fw.config_topic, [fc00(streams + rejected)])
        status.wait(lambda d: d["summary"] == {"streams": len(streams), "connected": len(streams)})
        produce(kafka_bootstrap, fw.config_topic, [fc00(late)])
        streams += late
        status.wait(lambda d: d["summary"] == {"streams": len(streams), "connected": len(streams)})
        yield Setup(ioc, p4p, fw, out, tables, noop, resend, status)


def f142_type(msg: Msg) -> str:
    return F142_TYPES[LogData.GetRootAsLogData(msg.value, 0).ValueType()]


def alarm_of(obj: Any) -> tuple[int, int]:
    return int(obj.alarm_severity), int(obj.alarm_status)


def has_alarm(alarm: tuple[int, int], obj: Any) -> bool:
    return alarm_of(obj) == alarm


# -- f142 -------------------------------------------------------------------------------
def test_f142_from_ca_scalars_enum_and_every_waveform_type(setup: Setup) -> None:
    out, ioc = setup.out, setup.ioc
    for pv, value, kinds in [(f"{C}AI", 3.25, ("Double",)), (f"{C}LO", -123456, ("Int",)),
                             (f"{C}MBB", 2, ("UShort", "Int", "Long"))]:  # fmt: skip
        since = out.mark()
        before = time.time_ns()
        ioc.put(pv, value)
        msg, obj = out.wait(pv, "f142", partial(has_value, value), since)
        assert f142_type(msg) in kinds, (pv, f142_type(msg))
        assert before - 1_000_000_000 <= obj.timestamp_unix_ns <= time.time_ns()
        assert alarm_of(obj) == NO_ALARM
    for dtype in WAVEFORM_TYPES:
        pv, values = f"{C}WF:{dtype}", WAVEFORM_VALUES[dtype]
        since = out.mark()
        ioc.put(pv, values)
        msg, _ = out.wait(pv, "f142", partial(has_value, np.asarray(values)), since)
        assert f142_type(msg) == CA_WAVEFORM_F144[dtype], dtype
    for pv in [r.name for r in IOC_RECORDS[:-2]]:
        assert out.of(pv, "al00") == [], f"{pv}: f142 streams carry alarms themselves"
        assert [o.status for _, o in out.of(pv, "ep01")][:1] == [ConnectionInfo.CONNECTED]


def check_alarm_inside(out: OutputTopic, server: Any, pv: str) -> None:
    """Raised, changed and cleared alarms travel inside the f142 messages; no al00."""
    for severity, status, expected in [
        (2, "HIHI", (AlarmSeverity.MAJOR, AlarmStatus.HIHI)),
        (1, "LOW", (AlarmSeverity.MINOR, AlarmStatus.LOW)),
        (3, "UDF", (AlarmSeverity.INVALID, AlarmStatus.UDF)),
    ]:
        since = out.mark()
        server.set_alarm(pv, severity, status)
        out.wait(pv, "f142", partial(has_alarm, expected), since)
    since = out.mark()
    server.set_alarm(pv, 0, "NO_ALARM")
    out.wait(pv, "f142", partial(has_alarm, NO_ALARM), since)
    assert out.of(pv, "al00") == []


def test_f142_from_ca_carries_the_alarm(setup: Setup) -> None:
    check_alarm_inside(setup.out, setup.ioc, f"{C}ALARM")


def test_f142_from_ca_empty_array_is_not_forwarded(setup: Setup) -> None:
    out, pv = setup.out, f"{C}EMPTY"
    since = out.mark()
    setup.ioc.put(pv, [])
    setup.ioc.put(pv, [5.0, 6.0])
    out.wait(pv, "f142", partial(has_value, [5.0, 6.0]), since)
    # Same key, same partition: everything sent before the last value has arrived.
    assert all(np.asarray(o.value).size for _, o in out.of(pv, "f142", since))


def test_f142_from_pva_scalar_arrays_enum_and_alarm(setup: Setup) -> None:
    out, p4p = setup.out, setup.p4p
    for pv, value, kind in [(f"{Q}AI", 0.75, "Double"), (f"{Q}WF", [1.5, -2.5], "ArrayFloat"),
                            (f"{Q}WF:I64", [-(2**40), 3], "ArrayLong"),
                            (f"{Q}MBB", 2, None)]:  # fmt: skip
        since = out.mark()
        p4p.put(pv, value)
        msg, obj = out.wait(pv, "f142", partial(has_value, value), since)
        assert alarm_of(obj) == NO_ALARM
        if kind is None:  # an NTEnum is forwarded as its index
            assert f142_type(msg) in ("Int", "Long")
        else:
            assert f142_type(msg) == kind
    check_alarm_inside(out, p4p, f"{Q}ALARM")
    assert out.of(f"{Q}AI", "al00") == []


def test_f142_from_fake_pvs(setup: Setup) -> None:
    out = setup.out
    found = out.wait_count(FAKE, "f142", 3)
    for msg, obj in found[:3]:
        assert f142_type(msg) == "Double" and 0.0 <= obj.value < 1.0
        assert alarm_of(obj) == NO_ALARM
    assert [o.status for _, o in out.of(FAKE, "ep01")][:1] == [ConnectionInfo.CONNECTED]
    assert out.of(FAKE, "al00") == []


def test_f142_periodic_resend_keeps_the_flatbuffer_timestamp(setup: Setup) -> None:
    reader = setup.resend

    def resent(pv: str) -> list[tuple[Msg, Any]]:
        seen = [(m, decode(m)[1]) for m in reader.messages if m.key == pv.encode()]
        return [(m, o) for m, o in seen if m.schema_id == "f142"]

    for pv, server, value in ((f"{C}RESEND", setup.ioc, 4.25), (f"{Q}RESEND", setup.p4p, 6.25)):
        server.put(pv, value)

        def after_put(pv: str = pv, value: float = value) -> list[tuple[Msg, Any]]:
            found = resent(pv)
            starts = [i for i, (_, o) in enumerate(found) if o.value == value]
            return found[starts[0] :] if starts else []

        reader.wait_for(lambda _m: len(after_put()) >= 3, WAIT)
        messages = after_put()
        first_ts = messages[0][1].timestamp_unix_ns
        assert {o.timestamp_unix_ns for _, o in messages} == {first_ts}, pv  # nothing new
        assert messages[-1][0].timestamp_ms > first_ts // 1_000_000, pv  # sent later
        assert {(alarm_of(o), float(o.value)) for _, o in messages} == {(NO_ALARM, value)}
        schemas = {m.schema_id for m in reader.messages if m.key == pv.encode()}
        assert schemas == {"f142", "ep01"}, pv  # the connection is re-sent too, no al00


# -- NTTable ----------------------------------------------------------------------------
def test_nttable_to_se00_and_senv(setup: Setup) -> None:
    tables, p4p = setup.tables, setup.p4p
    t0 = time.time_ns()
    stamps = [t0, t0 + 1_000_000, t0 + 2_000_000]
    since = tables.mark()
    p4p.put(f"{Q}TABLE", {"value": [1.5, 2.5, -3.5], "timestamp": stamps})
    _, se00 = tables.wait(f"{Q}TABLE", "se00", lambda o: o.values.size == 3, since)
    assert se00.values.tolist() == [1.5, 2.5, -3.5] and se00.values.dtype == np.float64
    assert se00.value_ts.tolist() == stamps
    assert se00.timestamp_unix_ns == t0 and se00.sample_ts_delta == 1_000_000
    assert se00.channel == 0
    p4p.put(f"{Q}TABLE:I", {"value": [10, -20], "timestamp": stamps[:2]})
    _, senv = tables.wait(f"{Q}TABLE:I", "senv", lambda o: o.values.size == 2, since)
    assert senv.values.tolist() == [10, -20] and senv.value_ts.tolist() == stamps[:2]
    assert abs(senv.timestamp.timestamp() * 1e9 - t0) < 10_000
    for pv in (f"{Q}TABLE", f"{Q}TABLE:I"):  # like every stream but f142: al00 and ep01
        assert tables.of(pv, "al00") and tables.of(pv, "ep01")


def test_empty_nttable_is_not_forwarded(setup: Setup) -> None:
    tables, p4p, pv = setup.tables, setup.p4p, f"{Q}TABLE"
    empty_before = setup.status.wait(lambda d: True)["counters"]["empty_updates"]
    since = tables.mark()
    p4p.put(pv, {"value": [], "timestamp": []})
    # Wait until the forwarder saw it (so the next put cannot be coalesced with it).
    doc = setup.status.wait(lambda d: d["counters"]["empty_updates"] > empty_before)
    assert stream_status(doc, pv, "nttable_se00")["updates_dropped"] == 0  # empty: not a drop
    p4p.put(pv, {"value": [7.0], "timestamp": [time.time_ns()]})
    tables.wait(pv, "se00", lambda o: o.values.tolist() == [7.0], since)
    assert all(o.values.size for _, o in tables.of(pv, "se00", since))
    counters = [o.message_counter for _, o in tables.of(pv, "se00")]
    assert counters == list(range(len(counters)))  # an empty table takes no number


def test_pv_that_is_not_a_table_is_dropped_reported_once_and_ep01_flows(setup: Setup) -> None:
    tables, p4p, pv = setup.tables, setup.p4p, f"{Q}NOTTABLE"
    for value in (2.0, 3.0):
        p4p.put(pv, value)
    # The first update and at least one put (a PVA server may coalesce quick puts).
    doc = setup.status.wait(lambda d: stream_status(d, pv, "nttable_se00")["updates_dropped"] >= 2)
    assert doc["counters"]["dropped"]["unsupported_type"] >= 2
    assert stream_status(doc, pv, "nttable_se00")["connection"] == "CONNECTED"
    tables.wait_connection(pv, ConnectionInfo.CONNECTED)
    assert tables.of(pv, "se00") == []
    reports = [line for line in problem_lines(setup.fw.log(), pv) if "not a table" in line]
    assert len(reports) == 1, reports


def test_nttable_over_ca_or_fake_is_rejected_at_add(setup: Setup) -> None:
    log = setup.fw.log()
    for channel, protocol in ((f"{C}AI", "ca"), (FAKE, "fake")):
        lines = [line for line in log.splitlines() if repr(channel) in line and "nttable" in line]
        assert any(f"protocol={protocol}" in ln and "needs protocol pva" in ln for ln in lines), (
            lines
        )
    doc = setup.status.wait(lambda d: True)
    assert {s["schema"] for s in doc["streams"] if s["protocol"] != "PVA"} == {"f142", "no_op"}


# -- no_op ------------------------------------------------------------------------------
def test_no_op_streams_send_connection_messages_only(setup: Setup) -> None:
    noop, out = setup.noop, setup.out
    for pv, server in ((f"{C}AI", setup.ioc), (f"{Q}AI", setup.p4p)):
        noop.wait_connection(pv, ConnectionInfo.CONNECTED)
        since = out.mark()
        server.put(pv, 11.5)
        out.wait(pv, "f142", partial(has_value, 11.5), since)  # the PV did update
    noop.reader.poll_messages(1.0)
    assert {m.schema_id for m in noop.reader.messages} == {"ep01"}
    doc = setup.status.wait(lambda d: True)
    assert stream_status(doc, f"{C}AI", "no_op")["updates_dropped"] == 0


# -- the ESS forwarder README's Python example ---------------------------------------------
#: Quoted exactly from the ESS forwarder's README ("A Python example"), to prove that what
#: its users copy works here unchanged; only the two placeholders are filled in below.
ESS_README_EXAMPLE = """\
from confluent_kafka import Producer
from streaming_data_types.forwarder_config_update_rf5k import (
    serialise_rf5k,
    StreamInfo,
    Protocol,
)
from streaming_data_types.fbschemas.forwarder_config_update_rf5k.UpdateType import (
    UpdateType,
)

CONFIG_BROKER = "some_kafka_broker:9092"

CONFIG_TOPIC = "TEST_forwarderConfig"

STREAMS = [
    StreamInfo("IOC:PV1", "f142", "some_topic", Protocol.Protocol.PVA),
    StreamInfo("IOC:PV2", "f142", "some_other_topic", Protocol.Protocol.CA),
    StreamInfo("IOC:PV3", "f142", "some_other_topic", Protocol.Protocol.PVA),
]

producer = Producer({"bootstrap.servers": CONFIG_BROKER})

# Add new streams
producer.produce(CONFIG_TOPIC, serialise_rf5k(UpdateType.ADD, STREAMS))

# Remove one stream (note that you need to pass the argument as a list)
# producer.produce(CONFIG_TOPIC, serialise_rf5k(UpdateType.REMOVE, [STREAMS[0]]))

# Remove all the streams at once
#   USE WITH CAUTION!!
# producer.produce(CONFIG_TOPIC, serialise_rf5k(UpdateType.REMOVEALL, []))

producer.flush()
"""


def test_ess_readme_python_example_forwards_all_three_f142_streams(
    setup: Setup, kafka_bootstrap: str
) -> None:
    script = ESS_README_EXAMPLE.replace('"some_kafka_broker:9092"', repr(kafka_bootstrap)).replace(
        '"TEST_forwarderConfig"', repr(setup.fw.config_topic)
    )
    assert script.count(repr(kafka_bootstrap)) == 1
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The topics have fixed names (they may hold messages of earlier runs on an external
    # broker): each PV gets a value unique to this run, read with the library decoder.
    run = uuid.uuid4().int % 10_000 + 0.5
    readers = {t: TopicReader(kafka_bootstrap, t) for t in ("some_topic", "some_other_topic")}
    try:
        setup.status.wait(
            lambda d: any(
                s["channel_name"] == "IOC:PV3" and s["connection"] == "CONNECTED"
                for s in d["streams"]
            )
        )
        cases = [("IOC:PV1", setup.p4p, "some_topic", run + 1),
                 ("IOC:PV2", setup.ioc, "some_other_topic", run + 2),
                 ("IOC:PV3", setup.p4p, "some_other_topic", run + 3)]  # fmt: skip
        for pv, server, topic, value in cases:
            deadline = time.monotonic() + WAIT
            while True:  # a PV not connected yet misses a put: put again until it arrives
                server.put(pv, value)
                try:
                    readers[topic].wait_for(partial(_has_f142, pv, value), 2.0)
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, f"no f142 {value} of {pv} on {topic}"
    finally:
        for reader in readers.values():
            reader.close()


def _has_f142(pv: str, value: float, messages: list[Msg]) -> bool:
    for msg in messages:
        if msg.key == pv.encode() and msg.schema_id == "f142":
            obj = decode(msg)[1]
            if obj.source_name == pv and obj.value == value and alarm_of(obj) == NO_ALARM:
                return True
    return False
