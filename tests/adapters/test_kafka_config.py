"""`forwarder.adapters.kafka_config` against the real broker: config consumer, storage reader
and topic writer."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from forwarder.adapters.kafka_config import ConfigTopicConsumer, merge_partitions
from tests.support.kafka import create_topic, unique_topic

pytestmark = pytest.mark.integration


def _poll_until(consumer: ConfigTopicConsumer, count: int, timeout: float = 15.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got.extend(consumer.poll(0.2))
    return got


def test_config_messages_of_one_partition_keep_offset_order_whatever_their_timestamps(
    kafka_bootstrap: str,
) -> None:
    """A REMOVE produced after an ADD, by a host whose clock is a second behind, is still
    applied after it: within a partition, offset order is the order."""
    topic = unique_topic("cfg_order")
    create_topic(kafka_bootstrap, topic, partitions=1)
    now_ms = int(time.time() * 1000)
    # Two producers (two hosts), the second one's clock a second behind.
    for value, ts in ((b"ADD", now_ms), (b"REMOVE", now_ms - 1000)):
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
        producer.produce(topic, value, b"config", timestamp=ts)
        assert producer.flush(10.0) == 0
    consumer = ConfigTopicConsumer({"bootstrap.servers": kafka_bootstrap}, topic, now_ms - 500)
    try:
        assert _poll_until(consumer, 2) == [b"ADD", b"REMOVE"]
    finally:
        consumer.close()


def test_messages_from_several_partitions_merge_by_time_but_keep_each_partitions_order() -> None:
    fetched = [(0, 100, b"a1"), (1, 50, b"b1"), (0, 40, b"a2"), (1, 120, b"b2"), (0, 130, b"a3")]
    # a2 stays after a1 (same partition) although its timestamp is older.
    assert merge_partitions(fetched) == [b"b1", b"a1", b"a2", b"b2", b"a3"]
