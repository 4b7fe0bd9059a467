"""The web page's stream table: filter, sort, paging, rates, previews (no servers)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from streaming_data_types.alarm_al00 import Severity as AlarmSeverity
from streaming_data_types.alarm_al00 import serialise_al00
from streaming_data_types.epics_connection_ep01 import ConnectionInfo, serialise_ep01

from forwarder.core.counters import Drop, ProcessCounters
from forwarder.core.events import ConnectionState
from forwarder.core.forwarding import Channel, ForwardingCore, Subscribers
from forwarder.core.serialise import (
    F142Serialiser,
    F144Serialiser,
    Se00Serialiser,
    SenvSerialiser,
    TdctSerialiser,
)
from forwarder.core.stream_table import (
    MAX_PAGE_SIZE,
    QueryError,
    StreamQuery,
    StreamTable,
    format_value,
    preview_payload,
)
from forwarder.core.streams import Protocol, StreamSpec
from forwarder.core.timestamps import TimestampPolicy


class Sink:
    """Accepts everything except messages to `refuse_topic`, which it counts as dropped
    (queue full), as the Kafka sink does."""

    def __init__(self, counters: ProcessCounters, refuse_topic: str = "") -> None:
        self.counters = counters
        self.refuse_topic = refuse_topic

    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        if topic == self.refuse_topic:
            self.counters.drop(Drop.QUEUE_FULL)
            return False
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(refuse_topic: str = "") -> tuple[ForwardingCore, dict[str, Channel], StreamTable, Clock]:
    channels: dict[str, Channel] = {}

    def subscribe(protocol: Protocol, name: str, channel: Channel) -> str:
        channels[name] = channel
        return name

    counters = ProcessCounters()
    core = ForwardingCore(
        sink=Sink(counters, refuse_topic),
        policy=TimestampPolicy(),
        service_id="web",
        subscribers=Subscribers(subscribe, lambda sub: None),
        counters=counters,
    )
    clock = Clock()
    return core, channels, StreamTable(core, core.counters, clock=clock), clock


def update(channel: Channel, value: Any, severity: int = 0, status: str = "") -> None:
    channel.on_update(value, time.time_ns(), severity, status)


def names(result: dict[str, Any]) -> list[str]:
    return [r["channel"] for r in result["rows"]]


def query(**params: str) -> StreamQuery:
    return StreamQuery.from_params(params)


def test_filter_uses_remove_wildcards_on_channel_and_topic() -> None:
    core, _, table, _ = make()
    for name, topic in [
        ("IOC:A:TEMP", "t1"),
        ("IOC:B:TEMP", "t2"),
        ("IOC:AB:TEMP", "t1"),
        ("MOTOR[1]", "t1"),
        ("OTHER", "t3"),
    ]:
        core.add_stream(StreamSpec(name, "f144", topic, Protocol.CA))
    assert names(table.streams(query(filter="IOC:?:TEMP"))) == ["IOC:A:TEMP", "IOC:B:TEMP"]
    assert names(table.streams(query(filter="IOC:*"))) == [
        "IOC:A:TEMP",
        "IOC:AB:TEMP",
        "IOC:B:TEMP",
    ]
    # Brackets are literal, as in REMOVE; no wildcard means the exact name.
    assert names(table.streams(query(filter="MOTOR[1]"))) == ["MOTOR[1]"]
    assert names(table.streams(query(filter="IOC"))) == []
    assert names(table.streams(query(filter="IOC:*", topic="t1"))) == ["IOC:A:TEMP", "IOC:AB:TEMP"]
    result = table.streams(query(topic="t?"))
    assert result["matched"] == 5 and result["total"] == 5


def test_paging_counts_pages_and_slices_in_sort_order() -> None:
    core, _, table, _ = make()
    for i in range(25):
        core.add_stream(StreamSpec(f"PV:{i:02d}", "f144", "t", Protocol.FAKE))
    first = table.streams(query(page_size="10"))
    assert (first["matched"], first["pages"], first["page"]) == (25, 3, 1)
    assert names(first) == [f"PV:{i:02d}" for i in range(10)]
    last = table.streams(query(page_size="10", page="3"))
    assert names(last) == [f"PV:{i:02d}" for i in range(20, 25)]
    beyond = table.streams(query(page_size="10", page="9"))
    assert beyond["rows"] == [] and beyond["pages"] == 3
    desc = table.streams(query(page_size="10", order="desc"))
    assert names(desc)[:2] == ["PV:24", "PV:23"]


def test_sort_by_every_column() -> None:
    core, channels, table, clock = make()
    core.add_stream(StreamSpec("C", "f144", "t-a", Protocol.CA))
    core.add_stream(StreamSpec("A", "tdct", "t-c", Protocol.PVA))
    core.add_stream(StreamSpec("B", "f144", "t-b", Protocol.FAKE))
    now = time.time_ns()
    channels["C"].on_connection(ConnectionState.CONNECTED, now)
    channels["B"].on_connection(ConnectionState.DISCONNECTED, now)
    table.streams(query())  # first sample
    update(channels["C"], np.float64(5.0), severity=2, status="HIHI")
    update(channels["C"], np.float64(7.5), severity=2, status="HIHI")
    update(channels["A"], np.array([1, 2], dtype=np.int64))
    clock.t += 1.0
    expect = {
        "channel": ["A", "B", "C"],
        "protocol": ["C", "B", "A"],  # CA, FAKE, PVA
        "schema": ["C", "B", "A"],  # f144 (config order C, B), tdct
        "topic": ["C", "B", "A"],
        "state": ["C", "B", "A"],  # CONNECTED, DISCONNECTED, NEVER_CONNECTED
        "age": ["A", "C", "B"],  # most recent first, never updated last
        "rate": ["B", "A", "C"],  # 0/s, 1/s, 2/s
        "forwarded": ["B", "A", "C"],
        "dropped": ["C", "A", "B"],
        "severity": ["B", "A", "C"],  # no alarm yet, NO_ALARM, MAJOR
        "preview": ["B", "C", "A"],  # "", "7.5", "[1, 2] (2)"
    }
    # Ties keep the configuration order in both directions.
    ties_desc = {"schema": ["A", "C", "B"], "dropped": ["C", "A", "B"]}
    for column, order in expect.items():
        assert names(table.streams(query(sort=column))) == order, column
        desc = ties_desc.get(column, order[::-1])
        assert names(table.streams(query(sort=column, order="desc"))) == desc, column


def test_rows_carry_state_rate_alarm_and_preview() -> None:
    core, channels, table, clock = make()
    core.add_stream(StreamSpec("PV", "f144", "t", Protocol.CA))
    channels["PV"].on_connection(ConnectionState.CONNECTED, time.time_ns())
    first = table.streams(query())["rows"][0]
    assert first["rate"] is None  # one sample only: no rate yet
    assert first["last_update_ms"] is None and first["age_s"] is None
    assert first["preview"] == "" and first["severity"] is None
    for i in range(4):
        update(channels["PV"], np.float64(i + 0.5), severity=1, status="HIGH")
    clock.t += 2.0
    row = table.streams(query())["rows"][0]
    assert row["state"] == "CONNECTED"
    assert row["rate"] == 2.0
    assert row["forwarded"] == 4 and row["dropped"] == 0
    assert (row["severity"], row["alarm_status"]) == ("MINOR", "HIGH")
    assert row["preview"] == "3.5"
    assert row["age_s"] is not None and 0 <= row["age_s"] < 5
    assert row["problem"] is None


def test_problem_rows_and_state_filter() -> None:
    core, channels, table, clock = make(refuse_topic="full")
    for name, topic in [("OK", "t"), ("DOWN", "t"), ("NEVER", "t"), ("DROPPING", "full")]:
        core.add_stream(StreamSpec(name, "f144", topic, Protocol.CA))
    now = time.time_ns()
    for name in ("OK", "DROPPING"):
        channels[name].on_connection(ConnectionState.CONNECTED, now)
    channels["DOWN"].on_connection(ConnectionState.CONNECTED, now)
    channels["DOWN"].on_connection(ConnectionState.DISCONNECTED, now)
    table.streams(query())
    update(channels["OK"], 1.0)
    update(channels["DROPPING"], 1.0)
    clock.t += 1.0
    rows = {r["channel"]: r["problem"] for r in table.streams(query())["rows"]}
    assert rows == {
        "OK": None,
        "DOWN": "disconnected",
        "NEVER": "never_connected",
        "DROPPING": "dropping",
    }
    assert names(table.streams(query(state="problem"))) == ["DOWN", "DROPPING", "NEVER"]
    assert names(table.streams(query(state="DISCONNECTED"))) == ["DOWN"]
    assert names(table.streams(query(state="connected"))) == ["DROPPING", "OK"]


def test_summary_counts_streams_by_state_and_rates() -> None:
    core, channels, table, clock = make()
    core.add_stream(StreamSpec("A", "f144", "t1", Protocol.CA))
    core.add_stream(StreamSpec("A", "f144", "t2", Protocol.CA))  # same PV, second stream
    core.add_stream(StreamSpec("B", "f144", "t", Protocol.CA))
    core.add_stream(StreamSpec("C", "f144", "t", Protocol.CA))
    now = time.time_ns()
    channels["A"].on_connection(ConnectionState.CONNECTED, now)
    channels["C"].on_connection(ConnectionState.CONNECTED, now)
    channels["C"].on_connection(ConnectionState.DISCONNECTED, now)
    first = table.summary()
    assert first["rates"] is None
    assert first["streams"]["configured"] == 4
    assert first["streams"]["connected"] == 2
    assert first["streams"]["never_connected"] == 1
    assert first["streams"]["disconnected"] == 1
    assert first["pvs"] == 3
    for _ in range(6):
        update(channels["A"], 1.0)
    clock.t += 2.0
    second = table.summary()
    received = second["counters"]["updates_received"]
    assert second["rates"]["updates_received"] == received / 2
    assert set(second["rates"]["dropped"]) == set(second["counters"]["dropped"])


def test_rate_needs_a_second_between_samples() -> None:
    core, channels, table, clock = make()
    core.add_stream(StreamSpec("A", "f144", "t", Protocol.CA))
    table.streams(query())
    clock.t += 0.5
    update(channels["A"], 1.0)
    table.streams(query())  # too soon: no new sample
    clock.t += 0.5
    assert table.streams(query())["rows"][0]["rate"] == 1.0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sort": "nope"}, "cannot sort by 'nope'"),
        ({"order": "up"}, "order must be asc or desc"),
        ({"page": "0"}, "page must be between 1"),
        ({"page": "x"}, "page must be a whole number"),
        ({"page_size": str(MAX_PAGE_SIZE + 1)}, "page_size must be between"),
        ({"state": "sleepy"}, "state must be one of"),
        ({"colour": "red"}, "unknown parameter 'colour'"),
    ],
)
def test_bad_queries_are_clear_errors(params: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        StreamQuery.from_params(params)


def test_preview_sort_is_refused_for_huge_matches() -> None:
    core, _, table, _ = make()
    import forwarder.core.stream_table as st

    old = st.MAX_PREVIEW_SORT
    st.MAX_PREVIEW_SORT = 2
    try:
        for i in range(3):
            core.add_stream(StreamSpec(f"P{i}", "f144", "t", Protocol.FAKE))
        with pytest.raises(QueryError, match="narrow the filter"):
            table.streams(query(sort="preview"))
        assert len(table.streams(query(sort="preview", filter="P1"))["rows"]) == 1
    finally:
        st.MAX_PREVIEW_SORT = old


def test_previews_are_short_and_say_the_length_of_arrays() -> None:
    assert format_value(np.float64(1 / 3)) == "0.333333"
    assert format_value(np.int32(-7)) == "-7"
    text = format_value(np.arange(1000, dtype=np.float32))
    assert text.startswith("[0, 1, 2") and text.endswith(", …] (1000)") and len(text) <= 60
    assert format_value(np.array([1, 2], dtype=np.uint8)) == "[1, 2] (2)"
    assert format_value("x" * 100).endswith("…") and len(format_value("x" * 100)) == 60
    assert preview_payload(b"\x00\x00\x00\x00zzzz" + bytes(8)) == "zzzz (16 bytes)"
    assert preview_payload(serialise_al00("X", 1, AlarmSeverity.MAJOR, "HIHI")) == "MAJOR HIHI"
    assert preview_payload(serialise_ep01(1, ConnectionInfo.CONNECTED, "X", "s")) == "CONNECTED"


@pytest.fixture
def numpy2_without_old_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tests.support.kafka.allow_f142_with_numpy2` may have given NumPy its removed
    `unicode_` / `string_` back in this process (for decoding in other tests): take them
    away again, so previews are checked as the forwarder runs, on a plain NumPy 2."""
    for name in ("unicode_", "string_"):
        monkeypatch.delattr(np, name, raising=False)


T0 = 1_700_000_000_123_456_789
TABLE_TIMES = np.array([T0, T0 + 1_000], dtype=np.int64)


@pytest.mark.usefixtures("numpy2_without_old_names")
@pytest.mark.parametrize(
    ("serialiser", "value", "preview"),
    [
        (F144Serialiser, 3.5, "3.5"),
        (F144Serialiser, -7, "-7"),
        (F144Serialiser, True, "1"),
        (F144Serialiser, np.float32(0.1), "0.1"),
        (F144Serialiser, np.array([1, 2, 3], dtype=np.int16), "[1, 2, 3] (3)"),
        (F142Serialiser, 3.5, "3.5"),
        (F142Serialiser, -7, "-7"),
        (F142Serialiser, 2**64 - 1, "18446744073709551615"),  # ULong
        (F142Serialiser, True, "1"),
        (F142Serialiser, np.float32(0.1), "0.1"),
        (F142Serialiser, np.uint8(200), "200"),
        (F142Serialiser, np.array([1.5, -2.5]), "[1.5, -2.5] (2)"),
        (F142Serialiser, np.array([True, False]), "[1, 0] (2)"),
        (
            F142Serialiser,
            np.arange(1000, dtype=np.int32),
            "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, …] (1000)",
        ),
        (TdctSerialiser, np.array([0, 5], dtype=np.uint64), f"[{T0}, {T0 + 5}] (2)"),
        (
            Se00Serialiser,
            {"value": np.array([1.5, 2.5]), "timestamp": TABLE_TIMES},
            "[1.5, 2.5] (2)",
        ),
        (
            Se00Serialiser,
            {"value": np.array([4, 5], dtype=np.int32), "timestamp": TABLE_TIMES},
            "[4, 5] (2)",
        ),
        (
            SenvSerialiser,
            {"value": np.array([1, -2], dtype=np.int64), "timestamp": TABLE_TIMES},
            "[1, -2] (2)",
        ),
    ],
)
def test_previews_of_every_value_schema_the_forwarder_produces(
    serialiser: Any, value: Any, preview: str
) -> None:
    payload = serialiser("IOC:PV").serialise(value, T0, 2, "HIHI")
    assert payload is not None
    assert preview_payload(payload) == preview


@pytest.mark.usefixtures("numpy2_without_old_names")
def test_an_f142_row_shows_its_value_and_a_broken_one_its_size() -> None:
    core, channels, table, _ = make()
    core.add_stream(StreamSpec("PV", "f142", "t", Protocol.CA))
    channels["PV"].on_connection(ConnectionState.CONNECTED, time.time_ns())
    update(channels["PV"], np.float64(21.5), severity=1, status="HIGH")
    (row,) = table.streams(query())["rows"]
    assert row["preview"] == "21.5"
    # f142 sends no al00: the alarm shown is the one inside the value message.
    assert (row["severity"], row["alarm_status"]) == ("MINOR", "HIGH")
    payload = F142Serialiser("PV").serialise(np.arange(100.0), T0)
    assert payload is not None
    assert preview_payload(payload[:60]) == "f142 (60 bytes)"  # cut short: never an error
    assert preview_payload(payload[:8]) == "f142 (8 bytes)"


def test_severity_sort_takes_f142_alarms_from_their_value_messages() -> None:
    core, channels, table, _ = make()
    for name, schema in [("F142:MAJOR", "f142"), ("F144:MINOR", "f144"), ("F142:NONE", "f142")]:
        core.add_stream(StreamSpec(name, schema, "t", Protocol.CA))
    update(channels["F142:MAJOR"], 1.0, severity=2, status="HIHI")
    update(channels["F144:MINOR"], 1.0, severity=1, status="HIGH")
    update(channels["F142:NONE"], 1.0)
    result = table.streams(query(sort="severity"))
    assert names(result) == ["F142:NONE", "F144:MINOR", "F142:MAJOR"]
    alarms = [(r["severity"], r["alarm_status"]) for r in result["rows"]]
    assert alarms == [("NO_ALARM", "NO_ALARM"), ("MINOR", "HIGH"), ("MAJOR", "HIHI")]
    update(channels["F142:MAJOR"], 2.0, severity=3, status="something new")
    row = table.streams(query(filter="F142:MAJOR"))["rows"][0]
    assert (row["severity"], row["alarm_status"]) == ("INVALID", "UDF")  # f142 has no name


def test_order_is_reused_until_the_configuration_or_the_sample_changes() -> None:
    core, channels, _, clock = make()
    version = [0]
    table = StreamTable(core, core.counters, clock=clock, config_version=lambda: version[0])
    core.add_stream(StreamSpec("B", "f144", "t", Protocol.CA))
    core.add_stream(StreamSpec("A", "f144", "t", Protocol.CA))
    assert names(table.streams(query(sort="forwarded", order="desc"))) == ["B", "A"]
    update(channels["A"], 1.0)
    # Same sample, same configuration: the order is reused, the values are fresh.
    result = table.streams(query(sort="forwarded", order="desc"))
    assert names(result) == ["B", "A"] and result["rows"][1]["forwarded"] == 1
    clock.t += 1.0  # a new sample: sorted again
    assert names(table.streams(query(sort="forwarded", order="desc"))) == ["A", "B"]
    core.add_stream(StreamSpec("C", "f144", "t", Protocol.CA))
    version[0] += 1  # a configuration change shows at once, whatever the sample
    assert names(table.streams(query(sort="forwarded", order="desc"))) == ["A", "B", "C"]
    core.remove_stream(StreamSpec("A", "f144", "t", Protocol.CA))
    version[0] += 1
    assert names(table.streams(query(sort="channel"))) == ["B", "C"]


def test_shard_column_of_clustered_forwarders() -> None:
    core, _, plain, clock = make()
    for name in ("A", "B", "C"):
        core.add_stream(StreamSpec(name, "f144", "t", Protocol.CA))
    shards = {"A": 2, "B": 0, "C": 1}
    table = StreamTable(core, core.counters, clock=clock, shard_of=shards.__getitem__)
    result = table.streams(query(sort="shard"))
    assert [(r["channel"], r["shard"]) for r in result["rows"]] == [("B", 0), ("C", 1), ("A", 2)]
    assert plain.streams(query())["rows"][0]["shard"] is None
    with pytest.raises(QueryError, match="clustered forwarder"):
        plain.streams(query(sort="shard"))
