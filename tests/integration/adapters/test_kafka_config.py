"""`forwarder.adapters.kafka_config` against the real broker: config consumer, storage reader
and topic writer."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from forwarder.adapters.kafka_config import (
    ConfigTopicConsumer,
    StorageTopicReader,
    TopicWriter,
    end_offset,
    merge_partitions,
)
from forwarder.core.config_messages import (
    UpdateKind,
    decode_config_message,
    encode_config_message,
)
from forwarder.core.storage import StorageUnavailable
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.kafka import create_topic, free_port, produce, unique_topic

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


def test_message_produced_right_after_the_consumer_starts_is_read(kafka_bootstrap: str) -> None:
    """The first config message after start is read, however soon it follows, and one
    from before the start is not.

    A consumer assigned at the logical end of a partition learns where that end is only
    later, from its own request to the broker; a message written in between was skipped
    (on Apache Kafka, whose offsets-for-times answers "none" for a time past the end).
    The producer here is connected beforehand, so its message lands within that window.
    """
    topic = unique_topic("cfg_first")
    create_topic(kafka_bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0, "log_level": 0})
    producer.produce(topic, b"OLD", timestamp=int(time.time() * 1000) - 60_000)
    assert producer.flush(10.0) == 0
    consumer = ConfigTopicConsumer({"bootstrap.servers": kafka_bootstrap}, topic)
    try:
        producer.produce(topic, b"FIRST")
        assert producer.flush(10.0) == 0
        assert _poll_until(consumer, 1, timeout=5.0) == [b"FIRST"]
    finally:
        consumer.close()


def test_end_offset_is_concrete_so_a_message_right_after_it_is_read(kafka_bootstrap: str) -> None:
    topic = unique_topic("end_offset")
    create_topic(kafka_bootstrap, topic, partitions=1)
    for value in (b"a", b"b", b"c"):  # one batch each: Tansu's end counts batches
        produce(kafka_bootstrap, topic, [value])
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "t", "log_level": 0})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0, "log_level": 0})
    producer.list_topics(topic, timeout=10.0)  # connected before the race starts
    try:
        end = end_offset(consumer, topic, 0)
        assert end == 3
        consumer.assign([TopicPartition(topic, 0, end)])
        producer.produce(topic, b"next")
        assert producer.flush(10.0) == 0
        got: list[bytes | None] = []
        deadline = time.monotonic() + 10.0
        while not got and time.monotonic() < deadline:
            got = [m.value() for m in consumer.consume(10, 0.2) if m.error() is None]
        assert got == [b"next"]
        assert end_offset(consumer, unique_topic("absent"), 0, timeout_s=1.0) == OFFSET_END
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


# -- storage topic, read from the end -----------------------------------------------------
def _big_config(generation: int, streams: int = 10_000) -> bytes:
    """A stored configuration of `streams` streams (~0.9 MB); names
    differ per generation so each message is a distinct, checkable configuration."""
    specs = [
        StreamSpec(f"GEN{generation}:SECTOR{i // 100}:DEVICE{i}:VALUE", "f144", "data", Protocol.CA)
        for i in range(streams)
    ]
    return encode_config_message(UpdateKind.ADD, specs)


def _generation_of(raw: bytes) -> int:
    first = decode_config_message(raw, rf5k_periodic=False).streams[0].channel
    return int(first.split(":")[0][3:])


def _writer_produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    """As the forwarder stores configurations: its own TopicWriter, one message at a time."""
    writer = TopicWriter({"bootstrap.servers": bootstrap, "log_level": 0}, topic)
    for payload in payloads:
        writer.write(payload, key=b"svc")
        assert writer.flush(30.0) == 0


def test_restore_reads_only_the_newest_of_a_long_history_of_large_configurations(
    kafka_bootstrap: str,
) -> None:
    topic = unique_topic("storage_long")
    create_topic(kafka_bootstrap, topic, partitions=1)
    generations = 40
    payload_mb = len(_big_config(0)) / 1e6
    assert payload_mb > 0.8
    # Uncompressed, so that the broker really holds ~36 MB of history.
    produce(kafka_bootstrap, topic, [_big_config(g) for g in range(generations)], key=b"svc")
    reader = StorageTopicReader({"bootstrap.servers": kafka_bootstrap}, topic, timeout_s=20.0)
    started = time.monotonic()
    newest = next(iter(reader.newest_first()))
    elapsed = time.monotonic() - started
    assert _generation_of(newest) == generations - 1
    # From the end: a couple of messages, not the ~40 x payload_mb MB of history.
    assert reader.records_read <= 3, reader.records_read
    assert elapsed < 5.0, elapsed


def test_restore_goes_back_only_as_far_as_the_caller_reads(kafka_bootstrap: str) -> None:
    topic = unique_topic("storage_back")
    create_topic(kafka_bootstrap, topic, partitions=1)
    payloads = [encode_config_message(UpdateKind.ADD, [_spec(i)]) for i in range(30)]
    # Some one at a time, some in one batch (a broker may count batches in its watermark).
    _writer_produce(kafka_bootstrap, topic, payloads[:10])
    produce(kafka_bootstrap, topic, payloads[10:25])
    _writer_produce(kafka_bootstrap, topic, payloads[25:])
    reader = StorageTopicReader({"bootstrap.servers": kafka_bootstrap}, topic, settle_s=0.3)
    got = []
    for raw in reader.newest_first():
        got.append(raw)
        if len(got) == 7:
            break
    assert got == payloads[::-1][:7]
    assert reader.records_read < 30
    # Read to the very beginning when asked to.
    assert list(reader.newest_first()) == payloads[::-1]


def test_restore_orders_partitions_by_time(kafka_bootstrap: str) -> None:
    topic = unique_topic("storage_parts")
    create_topic(kafka_bootstrap, topic, partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "log_level": 0})
    base = int(time.time() * 1000) - 60_000
    order = [0, 2, 2, 1, 0, 0, 1, 2, 1, 1, 0, 2]  # partition of the i-th message
    for i, partition in enumerate(order):
        producer.produce(topic, f"m{i}".encode(), partition=partition, timestamp=base + i * 100)
    assert producer.flush(10.0) == 0
    reader = StorageTopicReader({"bootstrap.servers": kafka_bootstrap}, topic, settle_s=0.3)
    assert list(reader.newest_first()) == [f"m{i}".encode() for i in reversed(range(len(order)))]


def test_missing_storage_topic_is_an_empty_history(kafka_bootstrap: str) -> None:
    reader = StorageTopicReader({"bootstrap.servers": kafka_bootstrap}, unique_topic("none"))
    assert list(reader.newest_first()) == []


def test_unreachable_storage_broker_raises() -> None:
    closed = f"127.0.0.1:{free_port()}"
    reader = StorageTopicReader({"bootstrap.servers": closed, "log_level": 0}, "storage")
    with pytest.raises(StorageUnavailable, match="cannot read storage topic"):
        list(reader.newest_first())


def _spec(i: int) -> StreamSpec:
    return StreamSpec(f"PV:{i}", "f144", "data", Protocol.CA)
