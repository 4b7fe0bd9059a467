"""Reading the config topic and the storage topic.

The config consumer assigns partitions itself instead of joining a consumer group: a group
join costs tens of seconds on some brokers, and the forwarder must take configuration within
two seconds of starting.  It starts at the first message produced after the process
started (offsets-for-times), so a config message sent while the forwarder was still
connecting is not missed, and it picks up partitions (or the whole topic) that appear later.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from forwarder.adapters.kafka_logging import with_kafka_logger
from forwarder.core.storage import StorageUnavailable

log = logging.getLogger(__name__)

_CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 100,
    "topic.metadata.refresh.interval.ms": 5000,
    "allow.auto.create.topics": False,
}


#: How far a config message's timestamp may lag the forwarder's start (producer clocks on
#: other hosts) and still count as sent after the start.
_CLOCK_SKEW_MS = 1000


def _consumer(config: Mapping[str, Any]) -> Consumer:
    conf: dict[str, Any] = dict(_CONSUMER_DEFAULTS)
    conf["group.id"] = f"forwarder-{uuid.uuid4()}"  # never joined; required by librdkafka
    conf.update(config)
    return Consumer(with_kafka_logger(conf))


def merge_partitions(fetched: list[tuple[int, int, bytes]]) -> list[bytes]:
    """Values of `(partition, timestamp_ms, value)` records (each partition's in offset
    order), merged across partitions by timestamp without reordering any partition."""
    by_partition: dict[int, list[tuple[int, bytes]]] = {}
    for partition, ts, value in fetched:
        by_partition.setdefault(partition, []).append((ts, value))
    if len(by_partition) == 1:
        return [value for _, _, value in fetched]
    # heapq.merge only ever takes the head of each input, so each partition's order stays.
    merged = heapq.merge(*by_partition.values(), key=lambda record: record[0])
    return [value for _, value in merged]


class ConfigTopicConsumer:
    """Yields raw config messages from every partition of the config topic."""

    def __init__(self, config: Mapping[str, Any], topic: str, start_ms: int | None = None) -> None:
        self.topic = topic
        self._consumer = _consumer(config)
        self._probe_config = dict(config)
        self._probe: AdminClient | None = None
        self._probe_lock = threading.Lock()
        self._start_ms = int(time.time() * 1000) if start_ms is None else start_ms
        self._assigned: set[int] = set()
        self._next_refresh = 0.0
        self._last_warning = -1e9
        self.alive = True
        self.last_error = ""
        self._topic_missing = False
        self.refresh_assignment()
        if self._topic_missing:
            self._create_topic()

    def _create_topic(self) -> None:
        """Create a missing config topic with ONE partition, so that config messages keep
        their order; otherwise the first producer's broker default (often several
        partitions) would decide.  Failure (no permission, auto-created meanwhile) is
        fine: the topic is then whatever the cluster made it."""
        admin = AdminClient(with_kafka_logger(self._probe_config))
        try:
            futures = admin.create_topics(
                [NewTopic(self.topic, num_partitions=1, replication_factor=-1)],
                request_timeout=5.0,
            )
            futures[self.topic].result(timeout=5.0)
            log.info("config topic %r did not exist: created it with one partition", self.topic)
        except Exception as err:  # noqa: BLE001 - creation is a courtesy, not a requirement
            log.debug("config topic %r not created: %s", self.topic, err)
        self.refresh_assignment()

    def refresh_assignment(self) -> None:
        """Assign partitions not yet assigned (topic created or grown after start)."""
        try:
            # Short: this runs on the control loop, which also drives re-sends and status.
            md = self._consumer.list_topics(self.topic, timeout=0.5)
        except KafkaException as err:
            self.last_error = str(err)
            now = time.monotonic()
            if now - self._last_warning >= 30.0:
                self._last_warning = now
                log.warning("config topic %r: metadata not available yet: %s", self.topic, err)
            return
        topic_md = md.topics.get(self.topic)
        if topic_md is None or topic_md.error is not None or not topic_md.partitions:
            self._topic_missing = True  # the broker answered: there is no such topic
            return
        self._topic_missing = False
        new = sorted(set(topic_md.partitions) - self._assigned)
        if not new:
            return
        tps = [TopicPartition(self.topic, p, self._start_ms) for p in new]
        try:
            found = self._consumer.offsets_for_times(tps, timeout=5.0)
        except KafkaException as err:
            log.warning(
                "config topic %r: offsets-for-times failed (%s); reading new messages only",
                self.topic,
                err,
            )
            found = [TopicPartition(self.topic, p, OFFSET_END) for p in new]
        start: list[TopicPartition] = []
        for tp in found:
            offset = tp.offset
            if offset < 0:
                offset = OFFSET_END  # nothing produced since we started
            start.append(TopicPartition(self.topic, tp.partition, offset))
        self._consumer.incremental_assign(start)
        self._assigned.update(new)
        log.info("config topic %r: reading partitions %s", self.topic, new)

    def reachable(self, timeout_s: float) -> bool:
        """Whether the config topic's broker answers a metadata request now.

        Called from other threads (the health probe), so it asks through a client of its
        own: a metadata request on the consumer while the control loop sits in `poll()`
        can block for tens of seconds, far beyond its timeout (librdkafka 2.x).  It asks
        for all topics, because naming a missing topic makes some brokers create it.
        """
        with self._probe_lock:
            if self._probe is None:
                self._probe = AdminClient(with_kafka_logger(self._probe_config))
            probe = self._probe
        try:
            probe.list_topics(timeout=timeout_s)
        except (KafkaException, RuntimeError) as err:
            self.last_error = str(err)
            return False
        return True

    def poll(self, timeout_s: float) -> list[bytes]:
        """The config messages that arrived, in the order to apply them; never raises on
        broker trouble.

        Within a partition that is offset order, whatever the timestamps say: they come
        from the producers' clocks, and a REMOVE sent right after an ADD from a host whose
        clock is behind must still come second.  A config topic should have one partition;
        messages fetched together from several (a topic auto-created by a broker) are
        merged by timestamp, each partition's own order kept (`merge_partitions`).
        """
        now = time.monotonic()
        if now >= self._next_refresh:
            # Look often while the topic is missing: the first config message may be what
            # creates it, and it must be applied within a couple of seconds.
            self._next_refresh = now + (5.0 if self._assigned else 0.5)
            self.refresh_assignment()
        try:
            msgs = self._consumer.consume(100, timeout_s)
        except (KafkaException, RuntimeError) as err:
            self.last_error = str(err)
            log.error("config consumer failed: %s", err)
            return []
        found: list[tuple[int, int, bytes]] = []
        for msg in msgs:
            problem = msg.error()
            if problem is not None:
                if problem.code() != KafkaError._PARTITION_EOF:
                    self.last_error = problem.str()
                    log.warning("config topic %r: %s", self.topic, problem.str())
                continue
            ts = msg.timestamp()[1]
            if ts < self._start_ms - _CLOCK_SKEW_MS:
                # Some brokers answer offsets-for-times past the end with offset 0, which
                # would replay old configuration after a restart; the storage topic, not
                # the config topic's history, is what restores configuration.
                log.debug("config topic %r: skipping message from before start", self.topic)
                continue
            value = msg.value()
            found.append((msg.partition() or 0, ts, bytes(value) if value is not None else b""))
        if len(found) == 1:
            return [found[0][2]]
        return merge_partitions(found)

    def close(self) -> None:
        self.alive = False
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError):
            pass


def read_topic_to_end(
    config: Mapping[str, Any], topic: str, timeout_s: float = 10.0, settle_s: float = 1.0
) -> list[bytes]:
    """Every message value of `topic`, oldest first within each partition, ordered by
    broker timestamp across partitions.

    The end is found by partition EOF *and* a quiet period of `settle_s`: some brokers
    report a high watermark below the real end of the log, so EOF alone is not trusted.
    A missing topic yields an empty list.
    """
    conf: dict[str, Any] = dict(config)
    conf["enable.partition.eof"] = True
    consumer = _consumer(conf)
    try:
        try:
            md = consumer.list_topics(topic, timeout=5.0)
        except KafkaException as err:
            raise ConnectionError(f"cannot read storage topic {topic!r}: {err}") from err
        topic_md = md.topics.get(topic)
        if topic_md is None or topic_md.error is not None or not topic_md.partitions:
            return []
        parts = sorted(topic_md.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        found: list[tuple[int, int, int, bytes]] = []
        eof: set[int] = set()
        deadline = time.monotonic() + timeout_s
        last_activity = time.monotonic()
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            now = time.monotonic()
            if msg is None:
                if len(eof) == len(parts) and now - last_activity >= settle_s:
                    break
                continue
            problem = msg.error()
            if problem is not None:
                if problem.code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition() or 0)
                else:
                    log.warning("storage topic %r: %s", topic, problem.str())
                continue
            last_activity = now
            partition = msg.partition() or 0
            eof.discard(partition)
            _, ts = msg.timestamp()
            found.append((ts, partition, msg.offset() or 0, bytes(msg.value() or b"")))
        else:
            log.warning("storage topic %r: not read to its end within %.0f s", topic, timeout_s)
        found.sort(key=lambda m: (m[0], m[1], m[2]))
        return [m[3] for m in found]
    finally:
        consumer.close()


class TopicWriter:
    """A small producer for low-rate messages (status, storage)."""

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        # Compressed: a stored configuration or status of 100,000 PVs is several MB of
        # JSON or FlatBuffers with very repetitive names, and brokers limit message size
        # (1 MB by default) after compression.
        conf: dict[str, Any] = {
            "linger.ms": 0,
            "message.max.bytes": 64 * 1024 * 1024,
            "compression.type": "lz4",
        }
        conf.update(config)
        conf["error_cb"] = self._on_error
        self.topic = topic
        self._producer = Producer(with_kafka_logger(conf))

    def _on_error(self, err: KafkaError) -> None:
        log.debug("writer for %r: %s", self.topic, err.str())

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            log.warning("message to %r not delivered: %s", self.topic, err.str())

    def write(self, payload: bytes, key: bytes | None = None) -> None:
        try:
            self._producer.produce(self.topic, payload, key, on_delivery=self._on_delivery)
        except (BufferError, KafkaException) as err:
            log.warning("cannot write to %r: %s", self.topic, err)
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        return int(self._producer.flush(timeout_s))


class StorageTopicReader:
    """Implements `forwarder.app.ports.StorageReader` on the storage topic."""

    def __init__(self, config: Mapping[str, Any], topic: str, timeout_s: float = 10.0) -> None:
        self._config = dict(config)
        self.topic = topic
        self.timeout_s = timeout_s

    def newest_first(self) -> Iterator[bytes]:
        try:
            messages = read_topic_to_end(self._config, self.topic, self.timeout_s)
        except ConnectionError as err:
            raise StorageUnavailable(str(err)) from err
        yield from reversed(messages)
