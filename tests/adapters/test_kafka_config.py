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


# -- the topic reader and writer shared by the service and forwarder-config -------------


def test_writer_waits_for_the_ack_and_reader_reads_every_partition(kafka_bootstrap: str) -> None:
    from forwarder.adapters.kafka_config import TopicWriter, read_topic

    topic = unique_topic("rw")
    create_topic(kafka_bootstrap, topic, partitions=3)
    writer = TopicWriter({"bootstrap.servers": kafka_bootstrap}, topic)
    writer.probe(5.0)
    where = [writer.write_and_wait(f"m{i}".encode(), f"k{i}".encode(), 10.0) for i in range(6)]
    assert all(0 <= p < 3 and o >= 0 for p, o in where)
    contents = read_topic({"bootstrap.servers": kafka_bootstrap}, topic, settle_s=0.3)
    assert contents.exists and contents.complete
    assert sorted(r.value for r in contents.records) == [f"m{i}".encode() for i in range(6)]
    assert {(r.partition, r.offset) for r in contents.records} == set(where)
    # from a point in time: nothing was written after now
    later = read_topic(
        {"bootstrap.servers": kafka_bootstrap},
        topic,
        settle_s=0.3,
        since_ms=int(time.time() * 1000) + 60_000,
    )
    assert later.exists and later.records == []


def test_reader_reports_a_missing_topic_and_an_unreachable_broker() -> None:
    from forwarder.adapters.kafka_config import TopicWriter, read_topic
    from tests.support.kafka import free_port

    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match="Connection refused"):
        read_topic({"bootstrap.servers": closed, "log_level": 0}, "t", timeout_s=2.0)
    writer = TopicWriter({"bootstrap.servers": closed, "log_level": 0}, "t")
    with pytest.raises(ConnectionError, match="Connection refused"):
        writer.probe(2.0)
    with pytest.raises(ValueError, match="invalid Kafka settings"):
        TopicWriter({"bootstrap.servers": closed, "no.such.setting": 1}, "t")


def test_reader_says_a_topic_does_not_exist(kafka_bootstrap: str) -> None:
    from forwarder.adapters.kafka_config import read_topic

    contents = read_topic({"bootstrap.servers": kafka_bootstrap}, unique_topic("none"))
    assert not contents.exists and contents.records == []


def test_live_topic_is_read_without_waiting_for_a_quiet_end(kafka_bootstrap: str) -> None:
    """A topic someone keeps writing to (status) never stays at its end: a record stamped
    after the read began counts as reaching it."""
    import threading

    from forwarder.adapters.kafka_config import TopicWriter, read_topic

    topic = unique_topic("live")
    create_topic(kafka_bootstrap, topic, partitions=1)
    writer = TopicWriter({"bootstrap.servers": kafka_bootstrap}, topic)
    writer.write_and_wait(b"old", None, 10.0)
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.wait(0.05):
            writer.write(b"new")

    thread = threading.Thread(target=keep_writing, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        contents = read_topic(
            {"bootstrap.servers": kafka_bootstrap},
            topic,
            timeout_s=15.0,
            settle_s=0.0,
            live_from_ms=int(time.time() * 1000),
        )
        assert contents.complete
        assert time.monotonic() - started < 10.0
        assert contents.records[0].value == b"old"
    finally:
        stop.set()
        thread.join(2.0)
        writer.flush(2.0)
