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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
#: The end-of-partition event code (confluent-kafka's documented name starts with "_").
PARTITION_EOF = KafkaError._PARTITION_EOF  # noqa: SLF001

T = TypeVar("T")

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
    try:
        return Consumer(with_kafka_logger(conf))
    except KafkaException as err:
        raise ValueError(f"invalid Kafka settings: {err}") from None


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


def end_offset(consumer: Consumer, topic: str, partition: int, timeout_s: float = 5.0) -> int:
    """The partition's end now, as a concrete offset (OFFSET_END if the broker does not say).

    Assigning at the logical OFFSET_END is not the same: the consumer asks the broker
    where the end is later, on its own thread, and skips whatever was produced in
    between, such as the first config message sent to a forwarder that just said it was
    ready.  Some brokers (Tansu) count batches here, which can put this end below the
    real one; the config consumer then re-reads a few messages, which it skips by their
    timestamps.
    """
    try:
        _low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout_s, cached=False
        )
    except (KafkaException, RuntimeError) as err:
        log.warning("topic %r [%d]: end offset not known (%s)", topic, partition, err)
        return OFFSET_END
    return int(high) if high is not None and high >= 0 else OFFSET_END


def start_offsets(
    consumer: Consumer, found: list[TopicPartition], timeout_s: float = 5.0
) -> list[TopicPartition]:
    """Where to start reading each partition: the offset that offsets-for-times `found`,
    or, where it found none (nothing produced since), the partition's end as it is now."""
    return [
        TopicPartition(
            tp.topic,
            tp.partition,
            tp.offset
            if tp.offset >= 0
            else end_offset(consumer, tp.topic, tp.partition, timeout_s),
        )
        for tp in found
    ]


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
        self._consumer.incremental_assign(start_offsets(self._consumer, found))
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
                if problem.code() != PARTITION_EOF:
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


class KafkaErrorLog:
    """An ``error_cb`` that keeps librdkafka's last specific error, so that "unreachable"
    can say why (connection refused, TLS, authentication) rather than "all brokers down"."""

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, error: Any) -> None:
        text = str(error.str() if hasattr(error, "str") else error)
        # "1/1 brokers are down" follows the specific reason; keep the specific one.
        if self.last is None or "brokers are down" not in text:
            self.last = text

    def reason(self, exc: BaseException, client: Any) -> str:
        """librdkafka's own words (e.g. "Connection refused"), else the exception's."""
        try:
            client.poll(0)  # error callbacks are only served while polling
        except Exception:  # noqa: BLE001 - a failing poll must not hide the original problem
            pass
        if self.last:
            return self.last
        error: Any = exc.args[0] if exc.args else None
        if hasattr(error, "str"):
            return str(error.str())
        return str(exc) or type(exc).__name__


class TopicUnreadable(Exception):
    """The topic's metadata names an error other than "does not exist"."""


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes


@dataclass(frozen=True)
class TopicContents:
    """What `read_topic` found; `exists` False for a topic the broker does not know."""

    exists: bool
    records: list[Record]
    complete: bool = True


def read_topic(
    config: Mapping[str, Any],
    topic: str,
    *,
    timeout_s: float = 10.0,
    settle_s: float = 1.0,
    quiet_s: float | None = None,
    since_ms: int | None = None,
    live_from_ms: int | None = None,
) -> TopicContents:
    """Every record of `topic` (stamped from `since_ms` on, if given), read from
    all partitions without joining a consumer group, sorted by (timestamp, partition,
    offset).

    A partition counts as read at its EOF, or, with `live_from_ms`, once it yields a record
    stamped at or after that time (topics that running services keep writing to never stay
    at their end).  Reading stops when every partition is read and nothing arrived for
    `settle_s` (some brokers report a high watermark below the real end of the log, so EOF
    alone is not trusted), after `quiet_s` without any record, or at `timeout_s`
    (`complete` False).  Raises ConnectionError (with librdkafka's reason) when the broker
    cannot be reached and TopicUnreadable for other metadata errors.
    """
    errors = KafkaErrorLog()
    conf: dict[str, Any] = dict(config)
    conf["enable.partition.eof"] = True
    conf.setdefault("error_cb", errors)
    consumer = _consumer(conf)
    deadline = time.monotonic() + timeout_s
    try:
        try:
            md = consumer.list_topics(topic, timeout=min(timeout_s, 5.0))
        except KafkaException as err:
            raise ConnectionError(errors.reason(err, consumer)) from err
        topic_md = md.topics.get(topic)
        if topic_md is not None and topic_md.error is not None:
            if topic_md.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise TopicUnreadable(topic_md.error.str())
            return TopicContents(False, [])
        if topic_md is None or not topic_md.partitions:
            return TopicContents(False, [])
        parts = sorted(topic_md.partitions)
        starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
        if since_ms is not None:
            try:
                found_at = consumer.offsets_for_times(
                    [TopicPartition(topic, p, since_ms) for p in parts],
                    timeout=max(0.1, deadline - time.monotonic()),
                )
                starts = start_offsets(consumer, found_at, max(0.1, deadline - time.monotonic()))
            except KafkaException:
                pass  # read from the start, skipping what is older
        consumer.assign(starts)
        found: list[Record] = []
        done: set[int] = set()
        last_activity = time.monotonic()
        complete = False
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if quiet_s is not None and now - last_activity >= quiet_s:
                complete = True
                break
            if len(done) == len(parts) and now - last_activity >= settle_s:
                complete = True
                break
            msg = consumer.poll(min(0.1, max(0.0, deadline - now)))
            if msg is None:
                continue
            last_activity = time.monotonic()
            problem = msg.error()
            partition = msg.partition() or 0
            if problem is not None:
                if problem.code() == PARTITION_EOF:
                    done.add(partition)
                else:
                    log.warning("topic %r: %s", topic, problem.str())
                continue
            _, ts = msg.timestamp()
            if live_from_ms is not None and ts >= live_from_ms:
                done.add(partition)
            else:
                done.discard(partition)
            if since_ms is not None and ts < since_ms:
                continue  # offsets-for-times unsupported or approximate: filter here too
            found.append(Record(partition, msg.offset() or 0, ts, bytes(msg.value() or b"")))
        if not complete:
            log.warning("topic %r: not read to its end within %.0f s", topic, timeout_s)
        found.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset))
        return TopicContents(True, found, complete)
    finally:
        consumer.close()


class DeliveryFailed(Exception):
    """A message was not acknowledged by the broker (the reason is the message)."""


class TopicWriter:
    """A small producer for low-rate messages (status, storage, the operator CLI)."""

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
        self.errors = KafkaErrorLog()
        conf["error_cb"] = self._on_error
        self.topic = topic
        try:
            self._producer = Producer(with_kafka_logger(conf))
        except KafkaException as err:
            raise ValueError(f"invalid Kafka settings: {err}") from None

    def _on_error(self, err: KafkaError) -> None:
        self.errors(err)
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

    def probe(self, timeout_s: float) -> None:
        """Raise ConnectionError (with librdkafka's reason) unless the broker answers a
        metadata request: producing to an unreachable broker fails only after
        message.timeout.ms, with a vaguer error."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException as err:
            raise ConnectionError(self.errors.reason(err, self._producer)) from None

    def write_and_wait(
        self, payload: bytes, key: bytes | None, timeout_s: float
    ) -> tuple[int, int]:
        """Produce one message and wait for the broker's ack; (partition, offset).

        Raises DeliveryFailed when it is refused or not acknowledged within `timeout_s`.
        """
        result: dict[str, Any] = {}

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            result["error"] = err
            result["where"] = (msg.partition(), msg.offset())

        deadline = time.monotonic() + timeout_s
        try:
            self._producer.produce(self.topic, payload, key, on_delivery=on_delivery)
        except (BufferError, KafkaException) as err:
            raise DeliveryFailed(str(err)) from None
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        if "error" not in result:
            why = f" ({self.errors.last})" if self.errors.last else ""
            raise DeliveryFailed(f"not acknowledged within {timeout_s:g} s{why}")
        if result["error"] is not None:
            raise DeliveryFailed(f"not delivered: {result['error'].str()}")
        partition, offset = result["where"]
        return int(partition), int(offset)

    def flush(self, timeout_s: float) -> int:
        return int(self._producer.flush(timeout_s))


@dataclass
class _Tail:
    """What has been read of one storage partition: the records of offsets
    [`start`, end of log) not yet handed out, oldest first."""

    partition: int
    low: int
    start: int
    records: list[tuple[int, int, bytes]] = field(default_factory=list)  # (ts, offset, value)
    #: Oldest timestamp read so far; everything not yet read is older (None: nothing read).
    oldest_ts: int | None = None
    window: int = 0

    @property
    def exhausted(self) -> bool:
        return self.start <= self.low


class StorageTopicReader:
    """Implements `forwarder.app.ports.StorageReader`: the storage topic from its end back.

    Each partition is read from a little before its high watermark to the end of the log;
    only when the caller wants older messages (every newer one was unusable) is the
    window widened backwards, four times as far each time.  A long history of large
    configurations therefore costs one or two messages, not the whole topic.

    The watermark is only a starting point: some brokers count batches there, not
    records, so the first window is read up to the real end (partition EOF and a quiet
    `settle_s`), and a window that turns out empty is widened like any other.  Across
    partitions, messages come newest timestamp first, and a message is only handed out
    once no partition can still hold a newer one.  Raises `StorageUnavailable` when the
    broker cannot be asked or `timeout_s` runs out, and stops early when `cancel` is set.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        timeout_s: float = 20.0,
        settle_s: float = 1.0,
        first_window: int = 2,
        cancel: threading.Event | None = None,
    ) -> None:
        self._config = dict(config)
        self.topic = topic
        self.timeout_s = timeout_s
        self.settle_s = settle_s
        self.first_window = first_window
        self.cancel = cancel or threading.Event()
        #: Records fetched by the last `newest_first` (how much history it had to read).
        self.records_read = 0

    def newest_first(self) -> Iterator[bytes]:
        conf: dict[str, Any] = dict(self._config)
        conf["enable.partition.eof"] = True
        consumer = _consumer(conf)
        self.records_read = 0
        deadline = time.monotonic() + self.timeout_s
        try:
            tails = self._tails(consumer)
            if tails:
                self._read(consumer, tails, None, deadline)
            while True:
                ready = [t for t in tails if t.records]
                best = max(ready, key=lambda t: t.records[-1][0]) if ready else None
                best_ts = best.records[-1][0] if best is not None else None
                behind = [
                    t
                    for t in tails
                    if not t.exhausted
                    and (best_ts is None or t.oldest_ts is None or t.oldest_ts > best_ts)
                ]
                if behind:
                    for tail in behind:
                        self._widen(consumer, tail, deadline)
                    continue
                if best is None:
                    return
                yield best.records.pop()[2]
        finally:
            consumer.close()
            log.info("storage topic %r: %d messages read", self.topic, self.records_read)

    def _ask(self, request: Callable[[float], T], patience_s: float = 5.0) -> T:
        """A metadata request, in one-second tries so that `cancel` is noticed (a signal
        must end the forwarder within seconds even while the broker is unreachable)."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return request(1.0)
            except KafkaException as err:
                if self.cancel.is_set():
                    raise StorageUnavailable("restore cancelled") from err
                if time.monotonic() >= deadline:
                    raise StorageUnavailable(
                        f"cannot read storage topic {self.topic!r}: {err}"
                    ) from err

    def _tails(self, consumer: Consumer) -> list[_Tail]:
        md = self._ask(lambda t: consumer.list_topics(self.topic, timeout=t))
        topic_md = md.topics.get(self.topic)
        if topic_md is None or topic_md.error is not None or not topic_md.partitions:
            return []
        tails = []
        for p in sorted(topic_md.partitions):
            tp = TopicPartition(self.topic, p)

            def watermarks(timeout: float, tp: TopicPartition = tp) -> tuple[int, int]:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                return int(low), int(high)

            low, high = self._ask(watermarks)
            low = max(0, low)
            start = max(low, high - self.first_window)
            tails.append(_Tail(p, low, start, window=self.first_window))
        return tails

    def _widen(self, consumer: Consumer, tail: _Tail, deadline: float) -> None:
        tail.window *= 4
        end = tail.start
        tail.start = max(tail.low, end - tail.window)
        self._read(consumer, [tail], end, deadline)

    def _read(
        self, consumer: Consumer, tails: list[_Tail], end: int | None, deadline: float
    ) -> None:
        """Prepend to each tail the records from its `start`: up to offset `end` (one
        tail), or with `end` None to the end of the log (all tails at once)."""
        by_partition = {t.partition: t for t in tails}
        consumer.assign([TopicPartition(self.topic, t.partition, t.start) for t in tails])
        found: dict[int, list[tuple[int, int, bytes]]] = {t.partition: [] for t in tails}
        at_eof: set[int] = set()
        last_activity = time.monotonic()
        while True:
            if self.cancel.is_set():
                raise StorageUnavailable("restore cancelled")
            if time.monotonic() > deadline:
                raise StorageUnavailable(
                    f"storage topic {self.topic!r}: newest configuration not found within "
                    f"{self.timeout_s:.0f} s ({self.records_read} messages read)"
                )
            msg = consumer.poll(0.1)
            if msg is None:
                quiet = time.monotonic() - last_activity
                # The end of the log: EOF on every partition and (the watermark may lag the
                # log) a quiet spell; a broker that answers a position past the end with
                # silence instead of EOF ends it too.
                if (len(at_eof) == len(tails) and quiet >= self.settle_s) or quiet >= 3.0:
                    break
                continue
            partition = msg.partition() or 0
            problem = msg.error()
            if problem is not None:
                if problem.code() == PARTITION_EOF:
                    at_eof.add(partition)
                    if end is not None:
                        break
                else:
                    log.warning("storage topic %r: %s", self.topic, problem.str())
                continue
            tail = by_partition.get(partition)
            offset = msg.offset() or 0
            if tail is None or offset < tail.start:
                continue
            if end is not None and offset >= end:
                break  # the rest was read before
            last_activity = time.monotonic()
            at_eof.discard(partition)
            self.records_read += 1
            found[partition].append((msg.timestamp()[1], offset, bytes(msg.value() or b"")))
        for partition, records in found.items():
            if not records:
                continue
            tail = by_partition[partition]
            oldest = min(r[0] for r in records)
            tail.oldest_ts = oldest if tail.oldest_ts is None else min(tail.oldest_ts, oldest)
            tail.records[:0] = records
