"""The one librdkafka producer that carries all forwarded data.

`send` is called from EPICS callback threads and must never block: when librdkafka's queue
is full the message is dropped and counted instead of waiting.  Delivery reports are
requested for failures only (`delivery.report.only.error`), so a healthy stream costs no
Python callback per message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from forwarder.adapters.kafka_logging import with_kafka_logger
from forwarder.core.counters import Drop, ProcessCounters
from forwarder.core.forwarding import NullReporter, Reporter

log = logging.getLogger(__name__)

#: Throughput-oriented defaults with bounded latency; every key can be overridden by -X.
#: linger.ms 15 rather than librdkafka's 5: librdkafka sends one produce request per
#: partition whose linger has expired, and EPICS updates reach the forwarder spread over a
#: few ms (not in one burst like a synthetic producer's), so a short linger means many
#: small requests.  Measured on a 2-core host against the test broker (100 PVs x 100 Hz,
#: 4 partitions): the broker spent 0.53 cores at 5 ms, 0.42 at 10, 0.27 at 15 and 0.25 at
#: 20; p99 end-to-end latency was lowest at 15 and p50 no higher than at 10 (that broker's
#: own delivery delay, 7-18 ms for a lone message, dominates p50).  On a broker with idle
#: cores that hands data to consumers at once, the linger shows in p50 instead: see the
#: docs/explanation/design-decisions.md for -X linger.ms=5.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 15,
    "batch.num.messages": 10000,
    "batch.size": 4 * 1024 * 1024,
    "compression.type": "lz4",
    "message.max.bytes": 64 * 1024 * 1024,
    "queue.buffering.max.kbytes": 1024 * 1024,
    "message.timeout.ms": 300_000,
    "delivery.report.only.error": True,
    "statistics.interval.ms": 0,
}


class KafkaSink:
    """Implements `forwarder.core.forwarding.Sink` on confluent-kafka."""

    def __init__(
        self,
        config: Mapping[str, Any],
        counters: ProcessCounters,
        reporter: Reporter | None = None,
        *,
        queue_max_messages: int,  # the one default: Settings.producer_queue_max_messages
    ) -> None:
        conf: dict[str, Any] = dict(PRODUCER_DEFAULTS)
        conf["queue.buffering.max.messages"] = queue_max_messages
        conf.update(config)
        conf["on_delivery"] = self._on_delivery
        conf["error_cb"] = self._on_error
        self.counters = counters
        self.reporter: Reporter = reporter or NullReporter()
        self._producer = Producer(with_kafka_logger(conf))
        self._produce = self._producer.produce
        self._stop = threading.Event()
        self._last_error = ""
        self._poller = threading.Thread(
            target=self._poll_loop, name="kafka-producer-poll", daemon=True
        )
        self._poller.start()

    # -- hot path ---------------------------------------------------------------------
    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        try:
            self._produce(topic, payload, key, timestamp=timestamp_ms)
        except BufferError:
            self.counters.drop(Drop.QUEUE_FULL)
            self.reporter.problem(
                "queue_full",
                f"producer queue full ({len(self._producer)} messages waiting): "
                "dropping updates until the broker catches up",
            )
            return False
        except (KafkaException, TypeError, ValueError) as err:
            self.counters.drop(Drop.DELIVERY_FAILED)
            self.reporter.problem(f"produce:{topic}", f"cannot produce to {topic!r}: {err}")
            return False
        self.counters.messages_produced += 1
        return True

    # -- callbacks (producer poll thread) ---------------------------------------------
    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            return
        self.counters.drop(Drop.DELIVERY_FAILED)
        topic = msg.topic() if msg is not None else "?"
        self.reporter.problem(f"delivery:{topic}", f"delivery to {topic!r} failed: {err.str()}")

    def _on_error(self, err: KafkaError) -> None:
        self._last_error = err.str()
        self.reporter.problem("producer_error", f"Kafka producer: {err.str()}")

    def _poll_loop(self) -> None:
        poll = self._producer.poll
        while not self._stop.is_set():
            try:
                poll(0.1)
            except Exception as err:  # noqa: BLE001 - keep serving delivery reports
                log.error("producer poll failed: %s", err)

    # -- introspection ----------------------------------------------------------------
    def queue_length(self) -> int:
        """librdkafka's out-queue: messages not yet delivered *plus* its pending events
        (delivery reports, error events such as a refused connection), so it may exceed
        the messages queued by a few; a gauge for operators, not a message count."""
        return len(self._producer)

    def broker_reachable(self, timeout_s: float = 2.0) -> bool:
        """Ask the cluster for metadata; used by the health check."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException:
            return False
        return True

    @property
    def last_error(self) -> str:
        return self._last_error

    def flush(self, timeout_s: float) -> int:
        """Deliver what is queued, waiting at most `timeout_s`; returns what is left."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float = 3.0) -> int:
        """Deliver what is queued within `timeout_s`, then give up on the rest; returns the
        messages given up, each counted as a delivery failure.

        What `flush` leaves is librdkafka's out-queue length, which also counts pending
        events (a refused connection adds some), so it is not the number of lost messages.
        Purging the queue gives every message still undelivered its own (failed) delivery
        report, counted by `_on_delivery`; the difference in that counter is exact.  A
        message already sent but not acknowledged is purged too: it may have reached the
        broker, but nothing confirmed it."""
        lost = 0
        if self.flush(timeout_s):
            failed = self.counters.drops[Drop.DELIVERY_FAILED]
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.flush(1.0)  # serves the purged messages' delivery reports
            lost = self.counters.drops[Drop.DELIVERY_FAILED] - failed
        self._stop.set()
        self._poller.join(timeout=1.0)
        if lost:
            log.warning("%d messages were still queued at shutdown and are lost", lost)
        return lost
