"""End to end: the x5f2 status messages a running forwarder publishes.

The forwarder runs as a subprocess against a real broker; the test reads its status topic
with an independent consumer and decodes with streaming_data_types.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from forwarder import __version__
from forwarder.core.config_messages import UpdateKind
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.epics_servers import CaRepeater, Record, SoftIoc, epics_env, free_port
from tests.support.forwarder_process import ForwarderProcess, send_config
from tests.support.kafka import Msg, TopicReader, create_topic, decode, unique_topic

pytestmark = pytest.mark.integration

Status = dict[str, Any]


def _statuses(messages: list[Msg]) -> list[tuple[Msg, Status]]:
    found = []
    for m in messages:
        if m.schema_id == "x5f2":
            _, status = decode(m)
            found.append((m, json.loads(status.status_json)))
    return found


def _wait_status(
    reader: TopicReader,
    predicate: Callable[[Status], bool],
    timeout: float,
    since_ms: float = 0,
) -> tuple[Msg, Status]:
    """The first status message (oldest first) produced at or after `since_ms` that
    matches `predicate`."""
    result: list[tuple[Msg, Status]] = []

    def check(messages: list[Msg]) -> bool:
        result[:] = [
            (m, s) for m, s in _statuses(messages) if m.timestamp_ms >= since_ms and predicate(s)
        ][:1]
        return bool(result)

    reader.wait_for(check, timeout)
    return result[0]


def _wait_newest_status(
    reader: TopicReader, predicate: Callable[[Status], bool], timeout: float
) -> Status:
    """Poll until the *newest* status message matches (state as it is now)."""
    deadline = time.monotonic() + timeout
    newest: Status | None = None
    while time.monotonic() < deadline:
        reader.poll_messages(0.5)
        found = _statuses(reader.messages[-20:])
        if found:
            newest = found[-1][1]
            if predicate(newest):
                return newest
    raise AssertionError(f"newest status never matched within {timeout} s: {newest}")


def _stream(status: Status, channel: str) -> Status | None:
    return next((s for s in status["streams"] if s["channel_name"] == channel), None)


def test_status_fields_periodic_publication_and_stream_details(
    kafka_bootstrap: str,
    make_reader: Callable[[str, str], TopicReader],
    forwarders: list[ForwarderProcess],
) -> None:
    service_id = unique_topic("svc")
    fp = ForwarderProcess(
        kafka_bootstrap,
        args=["--service-id", service_id, "--fake-pv-period", "100"],
        status_interval_ms=500,
    )
    forwarders.append(fp)
    fp.start()
    assert fp.proc is not None
    data_topic = unique_topic("data")
    spec = StreamSpec("FAKE:STATUS:1", "f144", data_topic, Protocol.FAKE)
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, [spec])

    reader = make_reader(kafka_bootstrap, fp.status_topic)
    _, first = _wait_status(
        reader,
        lambda s: (_stream(s, spec.channel) or {}).get("updates_forwarded", 0) > 0,
        timeout=20,
    )
    # A later status must show the counts still rising (the fake PV ticks every 100 ms).
    before = _stream(first, spec.channel)
    assert before is not None
    later = _wait_newest_status(
        reader,
        lambda s: (
            (_stream(s, spec.channel) or {}).get("updates_forwarded", 0)
            >= before["updates_forwarded"] + 5
        ),
        timeout=20,
    )

    # -- the x5f2 envelope ------------------------------------------------------------
    msgs = [m for m in reader.messages if m.schema_id == "x5f2"]
    for m in msgs:
        _, env = decode(m)
        assert env.software_name == "forwarder"
        assert env.software_version == __version__ and env.software_version
        assert env.service_id == service_id
        assert env.host_name == socket.gethostname()
        assert env.process_id == fp.proc.pid
        assert env.update_interval == 500

    # -- published every interval: the typical gap is the interval, not several ----------
    now_ms = time.time() * 1000
    reader.wait_for(
        lambda ms: sum(1 for m in ms if m.schema_id == "x5f2" and m.timestamp_ms > now_ms) >= 6,
        timeout=20,
    )
    recent = sorted(m.timestamp_ms for m in reader.messages if m.schema_id == "x5f2")[-6:]
    gaps = [b - a for a, b in zip(recent, recent[1:], strict=False)]
    assert 250 <= statistics.median(gaps) <= 1500, gaps

    # -- the JSON: streams with identity and health, plus process counters -------------
    stream = _stream(later, spec.channel)
    assert stream is not None
    assert stream["protocol"] == "FAKE"
    assert stream["output_topic"] == data_topic
    assert stream["schema"] == "f144"
    assert stream["connection"] == "CONNECTED"
    assert stream["updates_dropped"] == 0
    assert stream["updates_forwarded"] > before["updates_forwarded"]
    # last update: a wall-clock time in ms, recent
    assert abs(stream["last_update_ms"] - time.time() * 1000) < 60_000
    assert stream["last_update_ms"] >= before["last_update_ms"]
    counters = later["counters"]
    assert counters["updates_received"] >= counters["updates_forwarded"]
    assert counters["updates_forwarded"] >= stream["updates_forwarded"]
    assert counters["messages_produced"] >= counters["updates_forwarded"]
    assert set(counters["dropped"]) >= {"queue_full", "unsupported_type", "bad_config"}
    assert later["summary"] == {"streams": 1, "connected": 1}
    assert isinstance(later["producer_queue_length"], int)


def test_status_counts_messages_waiting_in_the_producer(
    kafka_bootstrap: str,
    make_reader: Callable[[str, str], TopicReader],
    forwarders: list[ForwarderProcess],
) -> None:
    """`producer_queue_length` is the producer's real queue: with a 3 s linger a fake PV
    ticking at 50 Hz keeps well over 20 messages waiting, which the status must show."""
    fp = ForwarderProcess(
        kafka_bootstrap,
        args=["--fake-pv-period", "20", "-X", "linger.ms=3000"],
        status_interval_ms=500,
    )
    forwarders.append(fp)
    fp.start()
    send_config(
        kafka_bootstrap,
        fp.config_topic,
        UpdateKind.ADD,
        [StreamSpec("FAKE:QUEUE:1", "f144", unique_topic("data"), Protocol.FAKE)],
    )
    reader = make_reader(kafka_bootstrap, fp.status_topic)
    _, status = _wait_status(reader, lambda s: s["producer_queue_length"] >= 20, timeout=30)
    assert status["producer_queue_length"] <= status["counters"]["messages_produced"]


def test_status_sent_right_after_each_config_change(
    kafka_bootstrap: str,
    make_reader: Callable[[str, str], TopicReader],
    forwarders: list[ForwarderProcess],
) -> None:
    """With a 5 s interval, each change is reported within ~2 s, between periodic ones."""
    config_topic = unique_topic("config")
    create_topic(kafka_bootstrap, config_topic, partitions=1)
    fp = ForwarderProcess(
        kafka_bootstrap,
        config_topic=config_topic,
        args=["--fake-pv-period", "100"],
        status_interval_ms=5000,
    )
    forwarders.append(fp)
    fp.start()
    reader = make_reader(kafka_bootstrap, fp.status_topic)
    data_topic = unique_topic("data")
    a = StreamSpec("FAKE:CHG:A", "f144", data_topic, Protocol.FAKE)
    b = StreamSpec("FAKE:CHG:B", "f144", data_topic, Protocol.FAKE)

    def channels(s: Status) -> set[str]:
        return {x["channel_name"] for x in s["streams"]}

    steps: list[tuple[UpdateKind, list[StreamSpec], set[str]]] = [
        (UpdateKind.ADD, [a, b], {a.channel, b.channel}),
        (UpdateKind.REMOVEALL, [], set()),
    ]
    for kind, streams, expected in steps:
        # Start right after a status message, so the next periodic one is ~5 s away.
        reader.poll_messages(0.2)
        seen = len(reader.messages)

        def status_since(ms: list[Any], n: int = seen) -> bool:
            return any(m.schema_id == "x5f2" for m in ms[n:])

        reader.wait_for(status_since, 15)
        previous = max(m.timestamp_ms for m in reader.messages if m.schema_id == "x5f2")
        sent_ms = time.time() * 1000
        send_config(kafka_bootstrap, config_topic, kind, streams)

        # Broker timestamps and our clock are the same host's clock; allow a little skew.
        def has_expected(s: Any, e: Any = expected) -> bool:
            return bool(channels(s) == e)

        msg, _ = _wait_status(reader, has_expected, timeout=15, since_ms=sent_ms - 50)
        assert msg.timestamp_ms - sent_ms < 2500, "status not sent right after the change"
        assert msg.timestamp_ms - previous < 4000, "only the periodic status showed the change"


@pytest.mark.parametrize("protocol", [Protocol.PVA, Protocol.CA], ids=["pva", "ca"])
def test_connection_state_follows_the_ioc(
    kafka_bootstrap: str,
    make_reader: Callable[[str, str], TopicReader],
    forwarders: list[ForwarderProcess],
    protocol: Protocol,
) -> None:
    env = epics_env(free_port(), free_port())
    prefix = f"ST{free_port()}:"
    value_pv, text_pv = f"{prefix}AI", f"{prefix}SI"
    ioc = SoftIoc([Record(value_pv, "ai", 1.5), Record(text_pv, "stringin", "hello")], env=env)
    # A CA repeater, as on every real host: it relays beacons so CA clients notice the
    # restarted IOC promptly.
    repeater = CaRepeater(env) if protocol == Protocol.CA else None
    try:
        if repeater is not None:
            repeater.start()
        ioc.start()
        fp = ForwarderProcess(kafka_bootstrap, epics=env, status_interval_ms=500)
        forwarders.append(fp)
        fp.start()
        data_topic = unique_topic("data")
        streams = [
            StreamSpec(value_pv, "f144", data_topic, protocol),
            StreamSpec(text_pv, "f144", data_topic, protocol),  # strings: f144 cannot
        ]
        send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, streams)
        reader = make_reader(kafka_bootstrap, fp.status_topic)

        def state(s: Status, pv: str = value_pv) -> str | None:
            found = _stream(s, pv)
            return None if found is None else found["connection"]

        status = _wait_newest_status(
            reader,
            lambda s: (
                state(s) == "CONNECTED"
                and (_stream(s, value_pv) or {}).get("updates_forwarded", 0) >= 1
                and (_stream(s, text_pv) or {}).get("updates_dropped", 0) >= 1
            ),
            timeout=30,
        )
        assert status["summary"]["connected"] == 2
        assert status["counters"]["dropped"]["unsupported_type"] >= 1
        text_stream = _stream(status, text_pv)
        assert text_stream is not None and text_stream["updates_forwarded"] == 0
        value_stream = _stream(status, value_pv)
        assert value_stream is not None and value_stream["last_update_ms"] is not None

        ioc.put(value_pv, 2.5)
        _wait_newest_status(
            reader,
            lambda s: (
                (_stream(s, value_pv) or {}).get("updates_forwarded", 0)
                > value_stream["updates_forwarded"]
            ),
            timeout=30,
        )

        ioc.stop()
        status = _wait_newest_status(
            reader,
            lambda s: state(s) == "DISCONNECTED" and state(s, text_pv) == "DISCONNECTED",
            timeout=45,
        )
        assert status["summary"]["connected"] == 0

        ioc.start()
        status = _wait_newest_status(
            reader,
            lambda s: state(s) == "CONNECTED" and state(s, text_pv) == "CONNECTED",
            timeout=60,
        )
        assert status["summary"]["connected"] == 2
    finally:
        ioc.stop()
        if repeater is not None:
            repeater.stop()
