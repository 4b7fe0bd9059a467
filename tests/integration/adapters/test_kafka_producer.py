"""`forwarder.adapters.kafka_producer.KafkaSink` against the real broker."""

from __future__ import annotations

import time

import pytest

from forwarder.adapters.kafka_producer import KafkaSink
from forwarder.core.counters import Drop, ProcessCounters
from tests.support.kafka import TopicReader, free_port, unique_topic

pytestmark = pytest.mark.integration

QUIET = {"log_level": 0}


def test_sent_messages_arrive_with_key_and_timestamp(kafka_bootstrap: str) -> None:
    topic = unique_topic("sink")
    counters = ProcessCounters()
    sink = KafkaSink(
        {"bootstrap.servers": kafka_bootstrap, **QUIET}, counters, queue_max_messages=1000
    )
    base_ms = int(time.time() * 1000) - 5000
    try:
        for i in range(50):
            assert sink.send(topic, b"PV:%d" % (i % 3), b"payload-%d" % i, base_ms + i)
        assert counters.messages_produced == 50
    finally:
        assert sink.close(10.0) == 0
    with TopicReader(kafka_bootstrap, topic) as reader:
        msgs = reader.wait_for(lambda ms: len(ms) >= 50, timeout=15)
    got = sorted((m.timestamp_ms - base_ms, m.key, m.value) for m in msgs)
    assert got == [(i, b"PV:%d" % (i % 3), b"payload-%d" % i) for i in range(50)]
    assert counters.drops[Drop.DELIVERY_FAILED] == 0


def test_full_queue_drops_and_counts_without_blocking() -> None:
    """Broker unreachable: the queue fills, later sends are refused at once (EPICS
    threads must never wait), and what is queued at close is counted as lost."""
    closed = f"127.0.0.1:{free_port()}"
    counters = ProcessCounters()
    sink = KafkaSink({"bootstrap.servers": closed, **QUIET}, counters, queue_max_messages=10)
    started = time.monotonic()
    accepted = [sink.send("t", b"k", b"v", 1) for _ in range(40)]
    assert time.monotonic() - started < 0.5
    assert accepted == [True] * 10 + [False] * 30
    assert counters.drops[Drop.QUEUE_FULL] == 30
    # The gauge is librdkafka's out-queue: the 10 messages plus any pending error events
    # of the refused connection attempts (12 was seen), never fewer than the messages.
    assert sink.queue_length() >= 10
    assert not sink.broker_reachable(timeout_s=0.5)
    # What is lost at close is counted per message, not per out-queue entry.
    assert sink.close(0.5) == 10
    assert counters.drops[Drop.DELIVERY_FAILED] == 10


def test_message_too_large_is_refused_and_counted(kafka_bootstrap: str) -> None:
    counters = ProcessCounters()
    sink = KafkaSink(
        {"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 10_000, **QUIET},
        counters,
        queue_max_messages=1000,
    )
    try:
        assert not sink.send(unique_topic("big"), b"k", b"x" * 20_000, 1)
        assert counters.drops[Drop.DELIVERY_FAILED] == 1
        assert sink.broker_reachable(timeout_s=5.0)
    finally:
        sink.close(5.0)
