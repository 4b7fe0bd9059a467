"""The forwarding core: EPICS events in, decoded Kafka messages out.

Driven through the core's own ports only: a recording `Sink`, a fake `Subscribers` and a
recording `Reporter`.  Every produced payload is decoded with `streaming_data_types`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from streaming_data_types.alarm_al00 import Severity, deserialise_al00
from streaming_data_types.epics_connection_ep01 import ConnectionInfo, deserialise_ep01
from streaming_data_types.logdata_f144 import deserialise_f144
from streaming_data_types.timestamps_tdct import deserialise_tdct

from forwarder.core.counters import Drop
from forwarder.core.events import ConnectionState
from forwarder.core.forwarding import Channel, ForwardingCore, StreamOutput, Subscribers
from forwarder.core.streams import Protocol, StreamSpec
from forwarder.core.timestamps import EPICS_EPOCH_NS, NS_PER_S, TimestampPolicy

SERVICE_ID = "fwd-test"


# -- test doubles of the core's ports ---------------------------------------------------
@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes
    payload: bytes
    timestamp_ms: int

    @property
    def schema(self) -> bytes:
        return self.payload[4:8]


class RecordingSink:
    """Records accepted messages; `accept = False` simulates a full producer queue."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.refused: list[Sent] = []
        self.accept = True

    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        msg = Sent(topic, key, payload, timestamp_ms)
        if not self.accept:
            self.refused.append(msg)
            return False
        self.sent.append(msg)
        return True

    def of(self, schema: bytes, topic: str | None = None) -> list[Sent]:
        return [m for m in self.sent if m.schema == schema and topic in (None, m.topic)]

    def clear(self) -> None:
        self.sent.clear()
        self.refused.clear()


@dataclass(frozen=True)
class FakeSubscription:
    protocol: Protocol
    name: str
    serial: int


class FakeSubscribers:
    def __init__(self, fail_for: set[str] | None = None) -> None:
        self.subscribed: list[tuple[Protocol, str, Channel]] = []
        self.unsubscribed: list[Any] = []
        self.fail_for = fail_for or set()
        self.fail_unsubscribe = False

    def subscribe(self, protocol: Protocol, name: str, channel: Channel) -> FakeSubscription:
        if name in self.fail_for:
            raise ValueError(f"cannot monitor {name}")
        self.subscribed.append((protocol, name, channel))
        return FakeSubscription(protocol, name, len(self.subscribed))

    def unsubscribe(self, subscription: Any) -> None:
        self.unsubscribed.append(subscription)
        if self.fail_unsubscribe:
            raise RuntimeError("context already gone")

    def port(self) -> Subscribers:
        return Subscribers(self.subscribe, self.unsubscribe)

    def listener(self, name: str, protocol: Protocol = Protocol.CA) -> Channel:
        """The listener the adapter got for the newest subscription of `name`."""
        matches = [c for p, n, c in self.subscribed if n == name and p == protocol]
        assert matches, f"{name} was never subscribed"
        return matches[-1]


@dataclass
class RecordingReporter:
    problems: list[tuple[str, str]] = field(default_factory=list)

    def problem(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def keys(self) -> list[str]:
        return [k for k, _ in self.problems]


class Harness:
    def __init__(self, policy: TimestampPolicy | None = None, fail_for: set[str] | None = None):
        self.sink = RecordingSink()
        self.subs = FakeSubscribers(fail_for)
        self.reporter = RecordingReporter()
        self.core = ForwardingCore(
            sink=self.sink,
            policy=policy or TimestampPolicy(),
            service_id=SERVICE_ID,
            subscribers=self.subs.port(),
            reporter=self.reporter,
        )

    def add(
        self,
        channel: str,
        schema: str = "f144",
        topic: str = "data",
        protocol: Protocol = Protocol.CA,
        periodic: bool = False,
    ) -> StreamOutput:
        return self.core.add_stream(StreamSpec(channel, schema, topic, protocol, periodic))


def recent_ns(seconds_ago: float = 1.0) -> int:
    """A plausible EPICS timestamp with a sub-millisecond part."""
    return (time.time_ns() - int(seconds_ago * NS_PER_S)) // NS_PER_S * NS_PER_S + 123_456_789


def f144s(sink: RecordingSink, topic: str | None = None) -> list[Any]:
    return [deserialise_f144(m.payload) for m in sink.of(b"f144", topic)]


def al00s(sink: RecordingSink, topic: str | None = None) -> list[Any]:
    return [deserialise_al00(m.payload) for m in sink.of(b"al00", topic)]


def ep01s(sink: RecordingSink, topic: str | None = None) -> list[Any]:
    return [deserialise_ep01(m.payload) for m in sink.of(b"ep01", topic)]


# -- f144 values ------------------------------------------------------------------------
def test_f144_scalar_update_is_forwarded_with_source_value_key_topic_and_timestamps() -> None:
    h = Harness()
    out = h.add("SIM:TEMP", topic="motion")
    ts = recent_ns()
    h.subs.listener("SIM:TEMP").on_update(np.float64(21.5), ts, 0, "")

    [msg] = h.sink.of(b"f144")
    assert msg.topic == "motion"
    assert msg.key == b"SIM:TEMP"
    assert msg.timestamp_ms == ts // 1_000_000
    data = deserialise_f144(msg.payload)
    assert data.source_name == "SIM:TEMP"
    assert data.value == 21.5
    assert data.timestamp_unix_ns == ts
    assert out.forwarded == 1 and out.dropped == 0
    assert out.last_value == msg.payload
    assert out.last_update_ns > 0
    assert h.core.counters.updates_received == 1
    assert h.core.counters.updates_forwarded == 1


def test_f144_successive_updates_keep_order_values_and_types() -> None:
    h = Harness()
    h.add("SIM:ARR")
    listener = h.subs.listener("SIM:ARR")
    ts = recent_ns(5)
    listener.on_update(np.arange(4, dtype=np.int32), ts, 0, "")
    listener.on_update(7, ts + 1_000, 0, "")
    listener.on_update(np.array([1.5, -2.5]), ts + 2_000_000, 0, "")

    decoded = f144s(h.sink)
    assert [d.timestamp_unix_ns for d in decoded] == [ts, ts + 1_000, ts + 2_000_000]
    assert [m.timestamp_ms for m in h.sink.of(b"f144")] == [
        ts // 1_000_000,
        (ts + 1_000) // 1_000_000,
        (ts + 2_000_000) // 1_000_000,
    ]
    np.testing.assert_array_equal(decoded[0].value, np.arange(4, dtype=np.int32))
    assert decoded[0].value.dtype == np.int32
    assert decoded[1].value == 7
    np.testing.assert_array_equal(decoded[2].value, [1.5, -2.5])
    assert h.core.counters.updates_forwarded == 3


# -- streams sharing a PV ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "second"),
    [(("f144", "topic_a"), ("f144", "topic_b")), (("f144", "topic_a"), ("tdct", "topic_a"))],
)
def test_two_streams_of_one_pv_share_one_subscription(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    h = Harness()
    a = h.add("PV:SHARED", schema=first[0], topic=first[1])
    b = h.add("PV:SHARED", schema=second[0], topic=second[1])
    assert a is not b
    assert len(h.subs.subscribed) == 1

    listener = h.subs.listener("PV:SHARED")
    ts = recent_ns()
    listener.on_update(np.array([1, 2, 3], dtype=np.int64), ts, 0, "")
    value_msgs = [m for m in h.sink.sent if m.schema in (b"f144", b"tdct")]
    assert sorted((m.topic, m.schema) for m in value_msgs) == sorted(
        [(first[1], first[0].encode()), (second[1], second[0].encode())]
    )
    assert a.forwarded == 1 and b.forwarded == 1
    assert h.core.counters.updates_forwarded == 1  # one update, however many streams

    # Removing one leaves the other forwarding and the PV subscribed.
    h.core.remove_stream(a.spec)
    assert a.active is False and b.active is True
    assert h.subs.unsubscribed == []
    h.sink.clear()
    listener.on_update(np.array([4, 5], dtype=np.int64), ts + 1, 0, "")
    assert [(m.topic, m.schema) for m in h.sink.sent if m.schema != b"al00"] == [
        (second[1], second[0].encode())
    ]
    assert a.forwarded == 1 and b.forwarded == 2

    # Removing the last stream unsubscribes exactly the subscription returned.
    h.core.remove_stream(b.spec)
    assert h.subs.unsubscribed == [FakeSubscription(Protocol.CA, "PV:SHARED", 1)]
    assert h.core.channels == {}
    assert list(h.core.all_outputs()) == []


def test_same_pv_over_two_protocols_is_two_subscriptions() -> None:
    h = Harness()
    h.add("PV:X", protocol=Protocol.CA)
    h.add("PV:X", protocol=Protocol.PVA)
    assert [(p, n) for p, n, _ in h.subs.subscribed] == [
        (Protocol.CA, "PV:X"),
        (Protocol.PVA, "PV:X"),
    ]
    h.subs.listener("PV:X", Protocol.PVA).on_update(1.0, recent_ns(), 0, "")
    outs = {o.spec.protocol: o for o in h.core.all_outputs()}
    assert outs[Protocol.PVA].forwarded == 1
    assert outs[Protocol.CA].forwarded == 0


def test_adding_the_same_stream_again_updates_periodic_without_second_output() -> None:
    h = Harness()
    first = h.add("PV:P", periodic=False)
    again = h.add("PV:P", periodic=True)
    assert again is first
    assert first.spec.periodic is True
    assert len(list(h.core.all_outputs())) == 1
    assert len(h.subs.subscribed) == 1


def test_removing_an_unknown_stream_is_a_no_op() -> None:
    h = Harness()
    h.add("PV:KEEP")
    h.core.remove_stream(StreamSpec("PV:KEEP", "f144", "other_topic", Protocol.CA))
    h.core.remove_stream(StreamSpec("PV:NONE", "f144", "data", Protocol.CA))
    assert h.subs.unsubscribed == []
    assert len(list(h.core.all_outputs())) == 1


def test_stream_readded_after_removal_subscribes_again_and_forwards() -> None:
    h = Harness()
    out = h.add("PV:R")
    h.core.remove_stream(out.spec)
    again = h.add("PV:R")
    assert again is not out
    assert len(h.subs.subscribed) == 2
    old_listener = h.subs.subscribed[0][2]
    new_listener = h.subs.listener("PV:R")
    assert old_listener is not new_listener
    ts = recent_ns()
    old_listener.on_update(1.0, ts, 0, "")  # late callback of the closed subscription
    assert h.sink.of(b"f144") == []
    new_listener.on_update(2.0, ts, 0, "")
    assert [d.value for d in f144s(h.sink)] == [2.0]


def test_failed_subscribe_leaves_no_half_registered_stream() -> None:
    h = Harness(fail_for={"BAD:PV"})
    with pytest.raises(ValueError):
        h.add("BAD:PV")
    assert list(h.core.all_outputs()) == []
    assert h.core.channels == {}
    # Once the PV can be monitored, adding it again really subscribes.
    h.subs.fail_for.clear()
    h.add("BAD:PV")
    assert [n for _, n, _ in h.subs.subscribed] == ["BAD:PV"]


def test_close_unsubscribes_everything_even_if_one_unsubscribe_fails() -> None:
    h = Harness()
    a = h.add("PV:A")
    h.add("PV:A", topic="t2")
    h.add("PV:B")
    listener = h.subs.listener("PV:A")
    h.subs.fail_unsubscribe = True
    h.core.close()
    assert sorted(s.name for s in h.subs.unsubscribed) == ["PV:A", "PV:B"]
    assert h.core.channels == {} and list(h.core.all_outputs()) == []
    assert a.active is False
    listener.on_update(1.0, recent_ns(), 0, "")  # late callback during shutdown
    assert h.sink.sent == []


# -- alarms -----------------------------------------------------------------------------
@pytest.mark.parametrize("schema", ["f144", "tdct"])
def test_al00_on_first_update_and_only_on_alarm_changes(schema: str) -> None:
    h = Harness()
    h.add("PV:ALARM", schema=schema, topic="alarms")
    listener = h.subs.listener("PV:ALARM")
    ts = recent_ns(10)
    sequence = [
        (0, ""),  # first update: sent
        (0, ""),
        (2, "HIHI"),  # severity change: sent
        (2, "HIHI"),
        (2, "HIGH"),  # message change only: sent
        (1, "HIGH"),  # severity change only: sent
        (0, ""),  # back to OK: sent
        (0, ""),
    ]
    for i, (severity, message) in enumerate(sequence):
        listener.on_update(
            np.array([i, i + 1], dtype=np.int64), ts + i * 1_000_000, severity, message
        )

    alarm_msgs = h.sink.of(b"al00")
    alarms = [deserialise_al00(m.payload) for m in alarm_msgs]
    assert [(a.severity, a.message) for a in alarms] == [
        (Severity.OK, ""),
        (Severity.MAJOR, "HIHI"),
        (Severity.MAJOR, "HIGH"),
        (Severity.MINOR, "HIGH"),
        (Severity.OK, ""),
    ]
    assert [a.timestamp_ns for a in alarms] == [ts + i * 1_000_000 for i in (0, 2, 4, 5, 6)]
    assert [m.timestamp_ms for m in alarm_msgs] == [
        (ts + i * 1_000_000) // 1_000_000 for i in (0, 2, 4, 5, 6)
    ]
    assert {a.source for a in alarms} == {"PV:ALARM"}
    assert {(m.topic, m.key) for m in alarm_msgs} == {("alarms", b"PV:ALARM")}
    assert len(h.sink.of(schema.encode())) == len(sequence)
    assert (
        h.core.outputs[("PV:ALARM", schema, "alarms", Protocol.CA)].last_alarm
        == alarm_msgs[-1].payload
    )


def test_stream_added_later_gets_the_current_alarm_at_once() -> None:
    h = Harness()
    h.add("PV:AL", topic="a")
    listener = h.subs.listener("PV:AL")
    ts = recent_ns(5)
    listener.on_update(1.0, ts, 1, "LOW")
    h.add("PV:AL", topic="b")
    assert [(a.severity, a.message, a.timestamp_ns) for a in al00s(h.sink, "b")] == [
        (Severity.MINOR, "LOW", ts)
    ]
    listener.on_update(2.0, ts + 1, 1, "LOW")  # unchanged for both
    listener.on_update(3.0, ts + 2, 2, "HIHI")
    for topic in ("a", "b"):
        assert [(a.severity, a.message) for a in al00s(h.sink, topic)] == [
            (Severity.MINOR, "LOW"),
            (Severity.MAJOR, "HIHI"),
        ]


def test_stream_added_to_a_monitored_pv_gets_its_current_value_at_once() -> None:
    """A second stream of a PV (a second file writer) must not wait for the PV to change:
    a set-point may never change.  The value keeps its EPICS time; the Kafka timestamp
    is the send time, as for any repeat; periodic re-sends then carry it."""
    h = Harness()
    h.add("PV:SP", topic="a")
    listener = h.subs.listener("PV:SP")
    ts = recent_ns(5)
    listener.on_update(np.float64(4.5), ts, 0, "")
    before_ms = time.time_ns() // 1_000_000
    out_b = h.add("PV:SP", topic="b", periodic=True)
    (sent,) = h.sink.of(b"f144", "b")
    value = deserialise_f144(sent.payload)
    assert value.value == 4.5 and value.timestamp_unix_ns == ts
    assert sent.timestamp_ms >= before_ms
    assert out_b.forwarded == 1 and out_b.last_value == sent.payload
    h.sink.clear()
    assert h.core.resend(out_b, before_ms + 1000) == 2  # value and alarm (never connected)
    assert [deserialise_f144(m.payload).value for m in h.sink.of(b"f144", "b")] == [4.5]
    # Nothing to give before the PV's first update; the update then reaches both.
    h.sink.clear()
    h.add("PV:NEW", topic="a")
    h.add("PV:NEW", topic="b")
    assert h.sink.of(b"f144", "b") == []
    h.subs.listener("PV:NEW").on_update(np.float64(1.0), ts, 0, "")
    assert len(h.sink.of(b"f144", "a")) == len(h.sink.of(b"f144", "b")) == 1


# -- unsupported values, serialisation errors, empty arrays -----------------------------
def test_string_on_f144_is_dropped_but_alarms_and_connection_still_flow() -> None:
    h = Harness()
    bad = h.add("PV:STR", topic="t")
    good = h.add("PV:NUM", topic="t")
    str_listener = h.subs.listener("PV:STR")
    num_listener = h.subs.listener("PV:NUM")
    ts = recent_ns(5)

    str_listener.on_connection(ConnectionState.CONNECTED, ts - 1)
    str_listener.on_update("hello", ts, 0, "")
    num_listener.on_update(3, ts, 0, "")
    str_listener.on_update("world", ts + 1, 2, "STATE")
    str_listener.on_update("again", ts + 2, 2, "STATE")

    assert [d.source_name for d in f144s(h.sink)] == ["PV:NUM"]
    assert bad.last_value is None and bad.forwarded == 0 and bad.dropped == 3
    assert good.forwarded == 1 and good.dropped == 0
    counters = h.core.counters
    assert counters.drops[Drop.UNSUPPORTED_TYPE] == 3
    assert counters.empty_updates == 0
    unsupported = [k for k in h.reporter.keys() if "unsupported" in k]
    assert len(unsupported) == 1 and "PV:STR" in unsupported[0]
    assert [(a.source, a.severity, a.message) for a in al00s(h.sink) if a.source == "PV:STR"] == [
        ("PV:STR", Severity.OK, ""),
        ("PV:STR", Severity.MAJOR, "STATE"),
    ]
    assert [(e.source_name, e.status) for e in ep01s(h.sink)] == [
        ("PV:STR", ConnectionInfo.CONNECTED)
    ]
    str_listener.on_connection(ConnectionState.DISCONNECTED, ts + 3)
    assert [e.status for e in ep01s(h.sink)] == [
        ConnectionInfo.CONNECTED,
        ConnectionInfo.DISCONNECTED,
    ]


def test_string_on_tdct_is_dropped_as_unsupported() -> None:
    h = Harness()
    out = h.add("PV:S", schema="tdct")
    h.subs.listener("PV:S").on_update("text", recent_ns(), 0, "")
    assert h.sink.of(b"tdct") == []
    assert out.dropped == 1
    assert h.core.counters.drops[Drop.UNSUPPORTED_TYPE] == 1


def test_serialiser_exception_is_counted_and_does_not_stop_other_streams() -> None:
    class Exploding:
        def serialise(
            self, value: Any, timestamp_ns: int, severity: int = 0, status: str = ""
        ) -> bytes | None:
            raise ZeroDivisionError("boom")

    h = Harness()
    broken = h.add("PV:E", topic="a")
    fine = h.add("PV:E", topic="b")
    broken.serialiser = Exploding()
    h.subs.listener("PV:E").on_update(1.0, recent_ns(), 0, "")
    assert broken.dropped == 1 and broken.last_value is None
    assert fine.forwarded == 1
    assert [m.topic for m in h.sink.of(b"f144")] == ["b"]
    assert h.core.counters.drops[Drop.SERIALISE_ERROR] == 1
    assert any(k.startswith("serialise:") for k in h.reporter.keys())


@pytest.mark.parametrize(
    "empty", [np.array([], dtype=np.float64), np.array([], dtype=np.int32), []]
)
@pytest.mark.parametrize("schema", ["f144", "tdct"])
def test_empty_array_is_not_forwarded_and_ends_value_resends(schema: str, empty: Any) -> None:
    h = Harness()
    out = h.add("PV:EMPTY", schema=schema)
    listener = h.subs.listener("PV:EMPTY")
    ts = recent_ns(5)
    listener.on_update(np.array([5, 6], dtype=np.int64), ts, 0, "")
    cached = out.last_value
    assert cached is not None
    listener.on_update(empty, ts + 1, 0, "")
    assert len(h.sink.of(schema.encode())) == 1
    # The PV is empty now: a re-send must not present the old array as its value.
    assert out.last_value is None
    assert h.core.resend(out, time.time_ns() // 1_000_000) == 1  # the alarm only
    assert h.sink.of(schema.encode())[1:] == []
    assert out.forwarded == 1
    assert h.core.counters.empty_updates == 1
    assert h.core.counters.updates_forwarded == 1
    assert sum(h.core.counters.drops.values()) == 0


def test_empty_first_update_leaves_nothing_to_resend() -> None:
    h = Harness()
    out = h.add("PV:E0")
    out2 = h.add("PV:E0", topic="other")
    h.subs.listener("PV:E0").on_update(np.array([]), recent_ns(), 0, "")
    assert out.last_value is None and out2.last_value is None
    assert h.sink.of(b"f144") == []
    assert h.core.counters.empty_updates == 1  # one update, counted once for two streams


# -- timestamp policy -------------------------------------------------------------------
def test_update_older_than_previous_is_dropped_and_counted() -> None:
    h = Harness()
    out = h.add("PV:T")
    listener = h.subs.listener("PV:T")
    ts = recent_ns(5)
    listener.on_update(1.0, ts, 0, "")
    listener.on_update(2.0, ts - 1, 2, "HIHI")  # older: dropped, alarm change included
    listener.on_update(3.0, ts, 0, "")  # equal to previous: accepted
    assert [d.value for d in f144s(h.sink)] == [1.0, 3.0]
    assert len(h.sink.of(b"al00")) == 1
    assert out.dropped == 1 and out.forwarded == 2
    assert h.core.counters.drops[Drop.OLDER_THAN_PREVIOUS] == 1
    assert h.core.counters.updates_received == 3
    assert any("older_than_previous" in k and "PV:T" in k for k in h.reporter.keys())


@pytest.mark.parametrize("bad_ts", [0, EPICS_EPOCH_NS, 631_152_000 * NS_PER_S])
def test_never_processed_timestamps_are_dropped_as_too_old(bad_ts: int) -> None:
    h = Harness()
    a = h.add("PV:OLD", topic="a")
    b = h.add("PV:OLD", topic="b")
    h.subs.listener("PV:OLD").on_update(1.0, bad_ts, 0, "")
    assert h.sink.sent == []
    assert a.dropped == 1 and b.dropped == 1
    assert h.core.counters.drops[Drop.TOO_OLD] == 1
    assert h.core.counters.updates_forwarded == 0


def test_far_future_timestamp_is_dropped() -> None:
    h = Harness()
    h.add("PV:FUT")
    h.subs.listener("PV:FUT").on_update(1.0, time.time_ns() + 3600 * NS_PER_S, 0, "")
    assert h.sink.sent == []
    assert h.core.counters.drops[Drop.TOO_FAR_IN_FUTURE] == 1


@pytest.mark.parametrize("case", ["zero", "epics_epoch", "two_years_ago", "an_hour_ahead"])
def test_use_receive_time_forwards_with_now(case: str) -> None:
    h = Harness(TimestampPolicy(use_receive_time=True))
    h.add("PV:RT")
    before = time.time_ns()
    bad_ts = {
        "zero": 0,
        "epics_epoch": EPICS_EPOCH_NS,
        "two_years_ago": before - 2 * 365 * 24 * 3600 * NS_PER_S,
        "an_hour_ahead": before + 3600 * NS_PER_S,
    }[case]
    h.subs.listener("PV:RT").on_update(4.0, bad_ts, 0, "")
    after = time.time_ns()
    [msg] = h.sink.of(b"f144")
    data = deserialise_f144(msg.payload)
    assert data.value == 4.0
    assert before <= data.timestamp_unix_ns <= after
    assert msg.timestamp_ms == data.timestamp_unix_ns // 1_000_000
    [alarm] = al00s(h.sink)
    assert alarm.timestamp_ns == data.timestamp_unix_ns
    assert sum(h.core.counters.drops.values()) == 0


# -- connection -------------------------------------------------------------------------
def test_connection_changes_go_to_every_stream_once() -> None:
    h = Harness()
    a = h.add("PV:C", topic="a")
    b = h.add("PV:C", schema="tdct", topic="b")
    listener = h.subs.listener("PV:C")
    t1 = recent_ns(3)
    listener.on_connection(ConnectionState.CONNECTED, t1)
    listener.on_connection(ConnectionState.CONNECTED, t1 + 5)  # same state: nothing
    t2 = t1 + 2 * NS_PER_S
    listener.on_connection(ConnectionState.DISCONNECTED, t2)
    listener.on_connection(ConnectionState.DISCONNECTED, t2 + 5)

    for topic in ("a", "b"):
        msgs = h.sink.of(b"ep01", topic)
        infos = [deserialise_ep01(m.payload) for m in msgs]
        assert [(i.status, i.timestamp, i.source_name, i.service_id) for i in infos] == [
            (ConnectionInfo.CONNECTED, t1, "PV:C", SERVICE_ID),
            (ConnectionInfo.DISCONNECTED, t2, "PV:C", SERVICE_ID),
        ]
        assert [m.timestamp_ms for m in msgs] == [t1 // 1_000_000, t2 // 1_000_000]
        assert {m.key for m in msgs} == {b"PV:C"}
    assert a.last_connection == h.sink.of(b"ep01", "a")[-1].payload
    assert b.last_connection == h.sink.of(b"ep01", "b")[-1].payload


def test_stream_added_to_connected_pv_gets_connected_immediately() -> None:
    h = Harness()
    h.add("PV:LATE", topic="a")
    listener = h.subs.listener("PV:LATE")
    t1 = recent_ns(3)
    listener.on_connection(ConnectionState.CONNECTED, t1)
    h.sink.clear()
    late = h.add("PV:LATE", topic="b")
    [info] = ep01s(h.sink)
    assert h.sink.sent[0].topic == "b"
    assert (info.status, info.timestamp, info.source_name) == (
        ConnectionInfo.CONNECTED,
        t1,
        "PV:LATE",
    )
    assert late.last_connection == h.sink.sent[0].payload


def test_stream_added_to_never_connected_pv_gets_no_connection_message() -> None:
    h = Harness()
    h.add("PV:N", topic="a")
    h.add("PV:N", topic="b")
    assert h.sink.sent == []


def test_connection_without_timestamp_uses_now() -> None:
    h = Harness()
    h.add("PV:NOW")
    before = time.time_ns()
    h.subs.listener("PV:NOW").on_connection(ConnectionState.CONNECTED, 0)
    after = time.time_ns()
    [msg] = h.sink.of(b"ep01")
    info = deserialise_ep01(msg.payload)
    assert before <= info.timestamp <= after
    assert before // 1_000_000 <= msg.timestamp_ms <= after // 1_000_000


# -- tdct -------------------------------------------------------------------------------
def test_tdct_relative_offsets_become_absolute_ns() -> None:
    h = Harness()
    h.add("PV:TDC", schema="tdct", topic="chopper")
    ts = recent_ns(2)
    offsets = np.array([0, 1_000, 2_500_000, 999_999_999], dtype=np.int64)
    h.subs.listener("PV:TDC").on_update(offsets, ts, 0, "")
    [msg] = h.sink.of(b"tdct")
    decoded = deserialise_tdct(msg.payload)
    assert decoded.name == "PV:TDC"
    np.testing.assert_array_equal(decoded.timestamps, (ts + offsets).astype(np.uint64))
    assert (msg.topic, msg.key, msg.timestamp_ms) == ("chopper", b"PV:TDC", ts // 1_000_000)


# -- re-sends ---------------------------------------------------------------------------
def test_resend_repeats_last_payloads_with_new_kafka_timestamp() -> None:
    h = Harness()
    out = h.add("PV:RS", topic="rs")
    listener = h.subs.listener("PV:RS")
    t_conn = recent_ns(10)
    t_val = recent_ns(5)
    listener.on_connection(ConnectionState.CONNECTED, t_conn)
    listener.on_update(np.float32(1.25), t_val, 1, "LOW")
    original = list(h.sink.sent)
    h.sink.clear()

    now_ms = time.time_ns() // 1_000_000
    assert h.core.resend(out, now_ms) == 3
    assert h.core.counters.resends == 1
    assert [m.payload for m in h.sink.sent] == [out.last_value, out.last_alarm, out.last_connection]
    assert {m.payload for m in h.sink.sent} == {m.payload for m in original}
    assert {(m.topic, m.key, m.timestamp_ms) for m in h.sink.sent} == {("rs", b"PV:RS", now_ms)}
    value, alarm, conn = h.sink.sent
    assert deserialise_f144(value.payload).timestamp_unix_ns == t_val
    assert deserialise_f144(value.payload).value == pytest.approx(1.25)
    assert deserialise_al00(alarm.payload).timestamp_ns == t_val
    assert deserialise_ep01(conn.payload).timestamp == t_conn


def test_resend_with_nothing_cached_sends_nothing() -> None:
    h = Harness()
    out = h.add("PV:NOTHING")
    assert h.core.resend(out, 123) == 0
    assert h.sink.sent == []
    assert h.core.counters.resends == 0


def test_resend_after_string_values_repeats_alarm_and_connection_only() -> None:
    h = Harness()
    out = h.add("PV:STR")
    listener = h.subs.listener("PV:STR")
    listener.on_connection(ConnectionState.CONNECTED, recent_ns(3))
    listener.on_update("text", recent_ns(), 0, "")
    h.sink.clear()
    assert h.core.resend(out, 1) == 2
    assert sorted(m.schema for m in h.sink.sent) == [b"al00", b"ep01"]


# -- full sink --------------------------------------------------------------------------
def test_refused_send_counts_as_dropped_not_forwarded() -> None:
    h = Harness()
    out = h.add("PV:FULL")
    listener = h.subs.listener("PV:FULL")
    ts = recent_ns(5)
    h.sink.accept = False
    listener.on_update(1.0, ts, 0, "")
    assert h.sink.of(b"f144") == []
    assert [m.schema for m in h.sink.refused].count(b"f144") == 1
    assert out.dropped == 1 and out.forwarded == 0
    assert h.core.counters.updates_forwarded == 0
    h.sink.accept = True
    listener.on_update(2.0, ts + 1, 0, "")
    assert [d.value for d in f144s(h.sink)] == [2.0]
    assert out.dropped == 1 and out.forwarded == 1
    assert h.core.counters.updates_forwarded == 1


def test_failing_unsubscribe_is_counted_and_reported_and_the_remove_completes() -> None:
    h = Harness()
    h.add("PV:A")
    h.add("PV:B")
    h.subs.fail_unsubscribe = True
    h.core.remove_stream(StreamSpec("PV:A", "f144", "data", Protocol.CA))  # must not raise
    assert list(h.core.channels) == [(Protocol.CA, "PV:B")]
    assert h.core.counters.monitor_stop_errors == 1
    assert h.reporter.keys() == ["unsubscribe:PV:A"]


# -- other ESS schemas: f142, NTTable, streams without values ----------------------------
def test_f142_carries_the_alarm_itself_and_gets_no_al00() -> None:
    from streaming_data_types.fbschemas.logdata_f142.AlarmSeverity import AlarmSeverity
    from streaming_data_types.fbschemas.logdata_f142.AlarmStatus import AlarmStatus
    from streaming_data_types.logdata_f142 import deserialise_f142

    from tests.support.kafka import allow_f142_with_numpy2

    allow_f142_with_numpy2()
    h = Harness()
    out = h.add("PV:142", schema="f142", topic="t", periodic=True)
    listener = h.subs.listener("PV:142")
    ts = recent_ns(5)
    listener.on_connection(ConnectionState.CONNECTED, ts - 1)
    listener.on_update(np.int32(4), ts, 0, "")
    listener.on_update(np.array([1.5, 2.5]), ts + 1, 2, "HIHI")
    decoded = [deserialise_f142(m.payload) for m in h.sink.of(b"f142")]
    assert [(d.alarm_severity, d.alarm_status) for d in decoded] == [
        (AlarmSeverity.NO_ALARM, AlarmStatus.NO_ALARM),
        (AlarmSeverity.MAJOR, AlarmStatus.HIHI),
    ]
    assert decoded[0].value == 4 and decoded[1].value.tolist() == [1.5, 2.5]
    assert h.sink.of(b"al00") == []
    assert [e.status for e in ep01s(h.sink)] == [ConnectionInfo.CONNECTED]
    h.sink.clear()
    assert h.core.resend(out, 123) == 2  # value (alarm inside) and connection
    assert [m.schema for m in h.sink.sent] == [b"f142", b"ep01"]


@pytest.mark.parametrize("schema", ["no_op", "ep01"])
def test_connection_only_schemas(schema: str) -> None:
    h = Harness()
    out = h.add("PV:NOOP", schema=schema, topic="t")
    listener = h.subs.listener("PV:NOOP")
    ts = recent_ns(5)
    listener.on_connection(ConnectionState.CONNECTED, ts - 1)
    listener.on_update(1.0, ts, 2, "HIHI")
    listener.on_connection(ConnectionState.DISCONNECTED, ts + 1)
    assert [m.schema for m in h.sink.sent] == [b"ep01", b"ep01"]
    assert out.dropped == 0 and h.core.counters.drops[Drop.UNSUPPORTED_TYPE] == 0


def test_al00_schema_sends_alarms_and_connection_but_no_values() -> None:
    h = Harness()
    h.add("PV:AL", schema="al00", topic="t")
    listener = h.subs.listener("PV:AL")
    ts = recent_ns(5)
    listener.on_connection(ConnectionState.CONNECTED, ts - 1)
    listener.on_update(1.0, ts, 0, "")
    listener.on_update(2.0, ts + 1, 1, "LOW")
    assert [m.schema for m in h.sink.sent] == [b"ep01", b"al00", b"al00"]


def test_nttable_stream_forwards_tables_and_drops_non_tables_once_reported() -> None:
    from streaming_data_types.array_1d_se00 import deserialise_se00

    h = Harness()
    out = h.add("PV:TAB", schema="nttable_se00", topic="t", protocol=Protocol.PVA)
    listener = h.subs.listener("PV:TAB", Protocol.PVA)
    ts = recent_ns(5)
    listener.on_connection(ConnectionState.CONNECTED, ts - 1)
    table = {"value": np.array([1.0, 2.0]), "timestamp": np.array([ts, ts + 10])}
    listener.on_update(table, ts, 0, "")
    listener.on_update({"value": np.zeros(0), "timestamp": np.zeros(0, np.int64)}, ts + 1, 0, "")
    [se00] = [deserialise_se00(m.payload) for m in h.sink.of(b"se00")]
    assert se00.values.tolist() == [1.0, 2.0] and se00.timestamp_unix_ns == ts
    listener.on_update(3.0, ts + 2, 1, "LOW")
    listener.on_update(4.0, ts + 3, 1, "LOW")
    assert out.dropped == 2 and h.core.counters.drops[Drop.UNSUPPORTED_TYPE] == 2
    assert len([k for k in h.reporter.keys() if k.startswith("unsupported:")]) == 1
    assert [a.severity for a in al00s(h.sink)] == [Severity.OK, Severity.MINOR]
    assert len(ep01s(h.sink)) == 1


def test_empty_nttable_counts_as_an_empty_update() -> None:
    h = Harness()
    h.add("PV:T", schema="nttable_senv", topic="t", protocol=Protocol.PVA)
    empty = {"value": np.zeros(0), "timestamp": np.zeros(0, np.int64)}
    h.subs.listener("PV:T", Protocol.PVA).on_update(empty, recent_ns(), 0, "")
    assert h.sink.of(b"senv") == [] and h.core.counters.empty_updates == 1
    assert h.core.counters.drops[Drop.UNSUPPORTED_TYPE] == 0


def test_f142_stream_added_to_a_monitored_pv_gets_its_current_alarm_inside() -> None:
    from streaming_data_types.fbschemas.logdata_f142.AlarmSeverity import AlarmSeverity
    from streaming_data_types.fbschemas.logdata_f142.AlarmStatus import AlarmStatus
    from streaming_data_types.logdata_f142 import deserialise_f142

    from tests.support.kafka import allow_f142_with_numpy2

    allow_f142_with_numpy2()
    h = Harness()
    h.add("PV:LATE", topic="a")
    ts = recent_ns(5)
    h.subs.listener("PV:LATE").on_update(2.5, ts, 1, "LOW")
    h.add("PV:LATE", schema="f142", topic="b")
    [msg] = h.sink.of(b"f142", "b")
    decoded = deserialise_f142(msg.payload)
    assert (decoded.value, decoded.timestamp_unix_ns) == (2.5, ts)
    assert (decoded.alarm_severity, decoded.alarm_status) == (AlarmSeverity.MINOR, AlarmStatus.LOW)
    assert h.sink.of(b"al00", "b") == []
