"""The status document published in x5f2 messages."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from forwarder.core.counters import Drop, ProcessCounters
from forwarder.core.events import ConnectionState
from forwarder.core.forwarding import ForwardingCore, Subscribers
from forwarder.core.status import status_document, status_json
from forwarder.core.streams import Protocol, StreamSpec
from forwarder.core.timestamps import NS_PER_S, TimestampPolicy

COMPATIBLE_FIELDS = ("channel_name", "protocol", "output_topic", "schema")


class NullSink:
    def __init__(self) -> None:
        self.count = 0

    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        self.count += 1
        return True


def make_core() -> tuple[ForwardingCore, dict[tuple[Protocol, str], Any]]:
    listeners: dict[tuple[Protocol, str], Any] = {}

    def subscribe(protocol: Protocol, name: str, channel: Any) -> str:
        listeners[(protocol, name)] = channel
        return f"sub:{name}"

    core = ForwardingCore(
        sink=NullSink(),
        policy=TimestampPolicy(),
        service_id="fwd-status",
        subscribers=Subscribers(subscribe, lambda sub: None),
    )
    return core, listeners


def by_key(doc: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(s["channel_name"], s["schema"], s["output_topic"]): s for s in doc["streams"]}


def test_empty_configuration() -> None:
    core, _ = make_core()
    doc = status_document(core, core.all_outputs(), core.counters, 0)
    assert doc["streams"] == []
    assert doc["summary"] == {"streams": 0, "connected": 0}
    assert doc["producer_queue_length"] == 0
    assert json.loads(status_json(doc)) == doc


def test_streams_carry_compatible_fields_connection_and_counters() -> None:
    core, listeners = make_core()
    core.add_stream(StreamSpec("SIM:A", "f144", "motion", Protocol.CA, periodic=True))
    core.add_stream(StreamSpec("SIM:A", "tdct", "chopper", Protocol.CA))
    core.add_stream(StreamSpec("SIM:B", "f144", "motion", Protocol.PVA))
    core.add_stream(StreamSpec("FAKE:C", "f144", "fake", Protocol.FAKE))

    ts = time.time_ns() - NS_PER_S
    a = listeners[(Protocol.CA, "SIM:A")]
    a.on_connection(ConnectionState.CONNECTED, ts)
    before = time.time_ns()
    a.on_update(np.array([1, 2], dtype=np.int64), ts, 0, "")
    after = time.time_ns()
    a.on_update(np.array([3], dtype=np.int64), ts - 1, 0, "")  # older: dropped
    listeners[(Protocol.PVA, "SIM:B")].on_connection(ConnectionState.DISCONNECTED, ts)
    listeners[(Protocol.FAKE, "FAKE:C")].on_update("text", ts, 0, "")  # unsupported

    doc = status_document(core, core.all_outputs(), core.counters, 42)
    streams = by_key(doc)
    assert set(streams) == {
        ("SIM:A", "f144", "motion"),
        ("SIM:A", "tdct", "chopper"),
        ("SIM:B", "f144", "motion"),
        ("FAKE:C", "f144", "fake"),
    }
    for s in doc["streams"]:
        assert all(isinstance(s[f], str) for f in COMPATIBLE_FIELDS)

    a_f144 = streams[("SIM:A", "f144", "motion")]
    assert a_f144["protocol"] == "CA"
    assert a_f144["periodic"] is True
    assert a_f144["connection"] == "CONNECTED"
    assert a_f144["updates_forwarded"] == 1
    assert a_f144["updates_dropped"] == 1
    assert before // 1_000_000 <= a_f144["last_update_ms"] <= after // 1_000_000

    a_tdct = streams[("SIM:A", "tdct", "chopper")]
    assert (a_tdct["protocol"], a_tdct["periodic"], a_tdct["connection"]) == (
        "CA",
        False,
        "CONNECTED",
    )
    assert a_tdct["updates_forwarded"] == 1

    b = streams[("SIM:B", "f144", "motion")]
    assert (b["protocol"], b["connection"], b["last_update_ms"]) == ("PVA", "DISCONNECTED", None)
    assert (b["updates_forwarded"], b["updates_dropped"]) == (0, 0)

    c = streams[("FAKE:C", "f144", "fake")]
    assert (c["protocol"], c["connection"], c["updates_dropped"]) == ("FAKE", "NEVER_CONNECTED", 1)

    assert doc["summary"] == {"streams": 4, "connected": 2}
    assert doc["producer_queue_length"] == 42
    counters = doc["counters"]
    assert counters["updates_received"] == 3
    assert counters["updates_forwarded"] == 1
    assert counters["dropped"][Drop.OLDER_THAN_PREVIOUS.value] == 1
    assert counters["dropped"][Drop.UNSUPPORTED_TYPE.value] == 1

    text = status_json(doc)
    assert json.loads(text) == doc
    assert "\n" not in text


def test_stream_of_a_removed_channel_reports_unknown() -> None:
    core, listeners = make_core()
    spec = StreamSpec("GONE", "f144", "t", Protocol.CA)
    out = core.add_stream(spec)
    listeners[(Protocol.CA, "GONE")].on_connection(ConnectionState.CONNECTED, time.time_ns())
    core.remove_stream(spec)
    doc = status_document(core, [out], core.counters, 0)
    assert doc["streams"][0]["connection"] == "UNKNOWN"
    assert doc["summary"] == {"streams": 1, "connected": 0}


def test_counters_come_from_the_argument() -> None:
    core, _ = make_core()
    counters = ProcessCounters(updates_received=7, resends=3)
    counters.drop(Drop.QUEUE_FULL, 5)
    doc = status_document(core, [], counters, 1)
    assert doc["counters"]["updates_received"] == 7
    assert doc["counters"]["resends"] == 3
    assert doc["counters"]["dropped"]["queue_full"] == 5
    assert set(doc["counters"]["dropped"]) == {d.value for d in Drop}


def test_status_json_handles_unicode_channel_names() -> None:
    core, _ = make_core()
    core.add_stream(StreamSpec("ψ:température", "f144", "t", Protocol.PVA))
    text = status_json(status_document(core, core.all_outputs(), core.counters, 0))
    assert json.loads(text)["streams"][0]["channel_name"] == "ψ:température"


def test_status_json_carries_hostile_names_verbatim() -> None:
    hostile = '<img src=x onerror=alert(1)> "quoted" \\ back'
    core, _ = make_core()
    core.add_stream(StreamSpec(hostile, "f144", "t", Protocol.FAKE))
    text = status_json(status_document(core, core.all_outputs(), core.counters, 0))
    assert json.loads(text)["streams"][0]["channel_name"] == hostile


def test_status_json_stays_under_the_size_limit_for_many_streams() -> None:
    import json as _json

    streams = [
        {
            "channel_name": f"PV:{i:06d}",
            "protocol": "PVA",
            "output_topic": "topic",
            "schema": "f144",
            "connection": "CONNECTED",
            "last_update_ms": 1,
            "updates_forwarded": 5,
            "updates_dropped": 0,
        }
        for i in range(8_000)
    ]
    doc = {"streams": streams, "summary": {"streams": 8_000, "connected": 8_000}}
    small = _json.loads(status_json(doc, max_bytes=1_000_000))
    assert small["streams_detail_omitted"] is True
    assert len(small["streams"]) == 8_000
    assert set(small["streams"][0]) == {"channel_name", "protocol", "output_topic", "schema"}
    tiny_text = status_json(doc, max_bytes=100_000)
    assert len(tiny_text) <= 100_000
    tiny = _json.loads(tiny_text)
    assert tiny["streams_omitted"] == 8_000 - len(tiny["streams"]) > 0
    assert tiny["summary"]["streams"] == 8_000
    assert tiny["streams"][0]["channel_name"] == "PV:000000"
    full = _json.loads(status_json({"streams": streams[:10]}, max_bytes=1_000_000))
    assert full["streams"] == streams[:10]


def test_status_builder_for_large_configurations() -> None:
    from forwarder.core.status import DETAIL_LIMIT, StatusBuilder

    core, listeners = make_core()
    n = DETAIL_LIMIT + 500
    for i in range(n):
        core.add_stream(StreamSpec(f"BIG:{i:05d}", "f144", "t", Protocol.PVA))
    for i in range(10):
        listeners[(Protocol.PVA, f"BIG:{i:05d}")].on_connection(
            ConnectionState.CONNECTED, time.time_ns()
        )
    builder = StatusBuilder(max_bytes=60_000)
    doc, text = builder.build(core, ProcessCounters(), 7, config_version=1)
    parsed = json.loads(text)
    assert len(text) <= 60_000
    assert parsed["summary"] == {"streams": n, "connected": 10}
    assert parsed["streams_detail_omitted"] is True
    kept = len(parsed["streams"])
    assert 0 < kept < n and parsed["streams_omitted"] == n - kept
    assert parsed["streams"][0] == {
        "channel_name": "BIG:00000", "protocol": "PVA", "output_topic": "t", "schema": "f144"
    }  # fmt: skip
    assert parsed["producer_queue_length"] == 7
    assert doc["summary"]["connected"] == 10
    # Same configuration version: the cached list is reused, live numbers are fresh.
    listeners[(Protocol.PVA, "BIG:00010")].on_connection(ConnectionState.CONNECTED, 1)
    _, text2 = builder.build(core, ProcessCounters(), 0, config_version=1)
    again = json.loads(text2)
    assert again["streams"] == parsed["streams"]
    assert again["summary"]["connected"] == 11
    # Small configurations keep the full per-stream detail.
    small_core, _ = make_core()
    small_core.add_stream(StreamSpec("S:1", "f144", "t", Protocol.CA))
    small, small_text = StatusBuilder().build(small_core, ProcessCounters(), 0, config_version=1)
    assert json.loads(small_text)["streams"][0]["connection"] == "NEVER_CONNECTED"
    assert "streams_detail_omitted" not in small
