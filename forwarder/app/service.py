"""Wires the pure core to the adapters and runs the one control loop.

The control loop (the main thread) does everything that is not an EPICS callback: it polls
the config topic, applies changes, and runs the timers (periodic re-sends, fake PV ticks,
status messages).  EPICS callbacks go straight from the adapter's threads through the core
into the producer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from forwarder.adapters.kafka_config import ConfigTopicConsumer, TopicWriter, read_topic_to_end
from forwarder.adapters.kafka_endpoint import KafkaEndpoint
from forwarder.adapters.kafka_producer import KafkaSink
from forwarder.app.logging_setup import TRACE
from forwarder.app.reporting import LogReporter
from forwarder.app.settings import Settings
from forwarder.core.config_messages import (
    ConfigCommand,
    ConfigMessageError,
    UpdateKind,
    decode_config_message,
    encode_config_message,
)
from forwarder.core.counters import Drop, ProcessCounters
from forwarder.core.events import Monitors
from forwarder.core.forwarding import Channel, ForwardingCore, StreamOutput, Subscribers
from forwarder.core.registry import Change, StreamRegistry
from forwarder.core.scheduler import ResendSchedule, Timers
from forwarder.core.status import StatusBuilder
from forwarder.core.streams import Protocol, StreamSpec
from forwarder.core.timestamps import TimestampPolicy

log = logging.getLogger("forwarder")

SOFTWARE_NAME = "forwarder"
#: Control loop wake-ups: at least every _MAX_WAIT_S (config polling, health heartbeat),
#: at most every _MIN_WAIT_S when timers are pending.
_MAX_WAIT_S = 0.1
_MIN_WAIT_S = 0.02


def process_start_ms() -> int:
    """When this process was created (not when the config consumer got going): a config
    message sent right after launching the forwarder, while it was still importing its
    libraries, must still be applied.

    Computed from the start time in `/proc/self/stat` (clock ticks since boot) and
    `/proc/uptime`.  Not the ctime of `/proc/<pid>`: that is when the kernel first built the
    inode, i.e. whenever someone first looked there, often hundreds of ms after the start.
    Both sources have 10 ms resolution, hence the small margin (earlier is the safe side).
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", encoding="ascii") as f:
            uptime_s = float(f.read().split()[0])
        age_s = uptime_s - start_ticks / os.sysconf("SC_CLK_TCK")
        return int((time.time() - max(0.0, age_s)) * 1000) - 50
    except (OSError, ValueError, IndexError):
        return int(time.time() * 1000)


def _make_monitors(protocol: Protocol, fake_period_ms: int) -> Monitors:
    """Import adapters lazily: a forwarder with only CA streams never starts a PVA context."""
    if protocol == Protocol.CA:
        from forwarder.adapters.ca import CaMonitors

        return CaMonitors()
    if protocol == Protocol.PVA:
        from forwarder.adapters.pva import PvaMonitors

        return PvaMonitors()
    from forwarder.adapters.fake import FakeMonitors

    return FakeMonitors(fake_period_ms)


def _writer(endpoint: KafkaEndpoint | None) -> TopicWriter | None:
    if endpoint is None or endpoint.topic is None:
        return None
    return TopicWriter(endpoint.librdkafka_config(), endpoint.topic)


class ForwarderService:
    def __init__(self, settings: Settings, version: str = "0+unknown") -> None:
        self.settings = settings
        self.version = version
        self.counters = ProcessCounters()
        self.reporter = LogReporter(log)
        self.stop_event = threading.Event()
        self.sink = KafkaSink(
            settings.output_endpoint.librdkafka_config(),
            self.counters,
            self.reporter,
            queue_max_messages=settings.producer_queue_max_messages,
        )
        self.monitors: dict[Protocol, Monitors] = {}
        self.core = ForwardingCore(
            sink=self.sink,
            policy=TimestampPolicy(use_receive_time=settings.use_receive_time),
            service_id=settings.service_id,
            subscribers=Subscribers(self._subscribe, self._unsubscribe),
            reporter=self.reporter,
            counters=self.counters,
        )
        self.registry = StreamRegistry()
        self.timers = Timers()
        period = settings.pv_update_period
        self.resends: ResendSchedule[StreamOutput] | None = (
            ResendSchedule(period * 1_000_000, self._last_sent_of) if period else None
        )
        self.status_writer = _writer(settings.status_endpoint)
        self.storage_writer = _writer(settings.storage_endpoint)
        self.config_consumer: ConfigTopicConsumer | None = None
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        self.status_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._periodic_warned = False
        self.status_builder = StatusBuilder()
        #: Bumped on every configuration change (the status builder caches by it).
        self.config_version = 0
        #: Monotonic time of the control loop's last pass (the health probe checks it).
        self.heartbeat = time.monotonic()
        self.metrics_server: Any = None

    # -- monitors -----------------------------------------------------------------------
    def _subscribe(self, protocol: Protocol, name: str, channel: Channel) -> Any:
        monitors = self.monitors.get(protocol)
        if monitors is None:
            monitors = _make_monitors(protocol, self.settings.fake_pv_period)
            self.monitors[protocol] = monitors
            if protocol == Protocol.FAKE:
                period_ns = self.settings.fake_pv_period * 1_000_000
                tick: Callable[[int], None] = monitors.tick  # type: ignore[attr-defined]
                self.timers.every(period_ns, lambda _now: tick(time.time_ns()), time.monotonic_ns())
        return monitors.subscribe(name, channel)

    @staticmethod
    def _unsubscribe(subscription: Any) -> None:
        subscription.close()

    # -- re-send schedule ---------------------------------------------------------------
    def _last_sent_of(self, out: StreamOutput) -> int | None:
        if out.active and out.spec.periodic:
            return out.last_sent_ns
        out.scheduled = False
        return None

    def _run_resends(self, now_mono: int) -> None:
        if self.resends is None:
            return
        due = self.resends.pop_due(now_mono, limit=20_000)
        if not due:
            return
        now_ms = time.time_ns() // 1_000_000
        for out in due:
            self.core.resend(out, now_ms)
            out.last_sent_ns = now_mono

    # -- configuration ------------------------------------------------------------------
    def handle_config_message(self, raw: bytes) -> Change | None:
        """Decode and apply one config message; never raises on bad input."""
        try:
            command = decode_config_message(raw, rf5k_periodic=self.resends is not None)
        except ConfigMessageError as err:
            self.counters.drop(Drop.BAD_CONFIG)
            log.error("Ignored config message: %s", err)
            return None
        return self.apply(command, persist=True)

    def apply(self, command: ConfigCommand, persist: bool) -> Change:
        for reason in command.rejected:
            self.counters.drop(Drop.BAD_CONFIG)
            log.error(
                "Ignored stream in %s %s message: %s", command.schema_id, command.kind.name, reason
            )
        change = self.registry.apply(command)
        # One line per stream for ordinary changes; a change of thousands of streams gets
        # its summary line only (the per-stream lines at debug level).
        level = logging.INFO if len(change.added) + len(change.removed) <= 100 else logging.DEBUG
        for spec in change.removed:
            self.core.remove_stream(spec)
            log.log(level, "Removed stream %s", spec.describe())
        for spec in change.added + change.updated:
            self._start_stream(spec, level)
        if change:
            self.config_version += 1
            log.info(
                "%s %s: %d added, %d removed, %d updated; %d streams configured",
                command.schema_id,
                command.kind.name,
                len(change.added),
                len(change.removed),
                len(change.updated),
                len(self.registry),
            )
            if persist:
                self.store_configuration()
            self.publish_status()
        return change

    def _start_stream(self, spec: StreamSpec, level: int = logging.INFO) -> None:
        try:
            out = self.core.add_stream(spec)
        except Exception as err:  # noqa: BLE001 - one bad PV must not stop the others
            log.error("Cannot start stream %s: %s", spec.describe(), err)
            return
        if log.isEnabledFor(level):
            log.log(
                level, "Forwarding %s%s", spec.describe(), " (periodic)" if spec.periodic else ""
            )
        if spec.periodic:
            if self.resends is None:
                if not self._periodic_warned:
                    self._periodic_warned = True
                    log.warning(
                        "Stream %s asks for periodic updates but --pv-update-period is not set; "
                        "no re-sends will happen",
                        spec.describe(),
                    )
            elif not out.scheduled:
                out.scheduled = True
                self.resends.add(out, time.monotonic_ns())

    def store_configuration(self) -> None:
        if self.storage_writer is None:
            return
        streams = self.registry.streams()
        if streams:
            payload = encode_config_message(UpdateKind.ADD, streams, "fc00")
        else:
            payload = encode_config_message(UpdateKind.REMOVEALL, [], "fc00")
        self.storage_writer.write(payload, key=self.settings.service_id.encode())

    def restore_configuration(self) -> None:
        """Apply the last valid configuration in the storage topic (newest first)."""
        if self.storage_topic_unusable():
            return
        storage = self.settings.storage_endpoint
        assert storage is not None and storage.topic is not None
        try:
            messages = read_topic_to_end(storage.librdkafka_config(), storage.topic)
        except ConnectionError as err:
            log.error("Configuration not restored: %s", err)
            return
        for raw in reversed(messages):
            try:
                command = decode_config_message(raw, rf5k_periodic=self.resends is not None)
            except ConfigMessageError as err:
                log.warning("Skipping unusable stored configuration: %s", err)
                continue
            if command.kind == UpdateKind.REMOVEALL:
                log.info("Stored configuration is empty")
                return
            if command.kind not in (UpdateKind.ADD, UpdateKind.REPLACE):
                log.warning(
                    "Skipping stored %s message: not a full configuration", command.kind.name
                )
                continue
            replace = ConfigCommand(
                kind=UpdateKind.REPLACE,
                streams=command.streams,
                filters=[],
                schema_id=command.schema_id,
                rejected=command.rejected,
            )
            self.apply(replace, persist=False)
            log.info("Restored %d streams from storage topic", len(self.registry))
            return
        log.info("No stored configuration found")

    def storage_topic_unusable(self) -> bool:
        return self.settings.skip_retrieval or not self.settings.storage_topic

    # -- status -------------------------------------------------------------------------
    def status(self) -> tuple[dict[str, Any], str]:
        """The status document and its JSON text."""
        return self.status_builder.build(
            self.core, self.counters, self.sink.queue_length(), self.config_version
        )

    def publish_status(self) -> None:
        doc, text = self.status()
        if log.isEnabledFor(TRACE):
            summary = doc["summary"]
            log.log(
                TRACE,
                "Status: %d streams, %d connected, producer queue %d",
                summary["streams"],
                summary["connected"],
                doc["producer_queue_length"],
            )
        for listener in self.status_listeners:
            listener(doc)
        if self.status_writer is None:
            return
        from streaming_data_types.status_x5f2 import serialise_x5f2

        payload = serialise_x5f2(
            SOFTWARE_NAME,
            self.version,
            self.settings.service_id,
            self.host,
            self.pid,
            self.settings.status_interval,
            text,
        )
        self.status_writer.write(payload, key=self.settings.service_id.encode())

    # -- main loop ----------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        config = s.config_endpoint
        self.config_consumer = ConfigTopicConsumer(
            config.librdkafka_config(), config.topic or "", start_ms=process_start_ms()
        )
        if not s.skip_retrieval and s.storage_topic:
            self.restore_configuration()
        self.timers.every(
            s.status_interval * 1_000_000, lambda _n: self.publish_status(), time.monotonic_ns()
        )
        if s.http_port is not None:
            self.start_metrics_server(s.http_port)

    def start_metrics_server(self, port: int) -> None:
        from forwarder.adapters.http_metrics import (
            ForwarderCollector,
            HealthSources,
            MetricsServer,
        )

        collector = ForwarderCollector(
            self.core, self.counters, self.sink.queue_length, lambda: len(self.registry)
        )
        health = HealthSources(
            checks={
                "kafka_producer": self._check_producer,
                "config_consumer": self._check_control_loop,
            }
        )
        self.metrics_server = MetricsServer(port, collector, health)
        self.metrics_server.start()
        log.info("Serving /metrics and /healthz on port %d", self.metrics_server.port)

    def _check_producer(self) -> tuple[bool, str]:
        if self.sink.broker_reachable(timeout_s=2.0):
            return True, "output broker reachable"
        return False, f"output broker unreachable: {self.sink.last_error or 'no metadata'}"

    def _check_control_loop(self) -> tuple[bool, str]:
        consumer = self.config_consumer
        if consumer is None or not consumer.alive:
            return False, "config consumer not running"
        age = time.monotonic() - self.heartbeat
        if age > 10.0:
            return False, f"control loop stalled for {age:.0f} s"
        if not consumer.reachable(timeout_s=2.0):
            return False, f"config topic broker unreachable: {consumer.last_error}"
        return True, "config consumer polling"

    def run(self) -> None:
        """Serve until `stop_event` is set."""
        self.start()
        consumer = self.config_consumer
        assert consumer is not None
        while not self.stop_event.is_set():
            self.heartbeat = time.monotonic()
            now = time.monotonic_ns()
            next_due = self.timers.next_due_ns()
            if self.resends is not None:
                r = self.resends.next_due_ns()
                if r is not None and (next_due is None or r < next_due):
                    next_due = r
            if next_due is None:
                wait = _MAX_WAIT_S
            elif next_due <= now:
                wait = 0.0  # a backlog (more re-sends due than one pass handles)
            else:
                # Re-sends of many streams come due a fraction of a millisecond apart;
                # waking for each would spin.  Waking at most every _MIN_WAIT_S serves
                # them in batches, at most that late.
                wait = min(_MAX_WAIT_S, max(_MIN_WAIT_S, (next_due - now) / 1e9))
            for raw in consumer.poll(wait):
                self.handle_config_message(raw)
            now = time.monotonic_ns()
            self.timers.run_due(now)
            self._run_resends(now)

    def shutdown(self, flush_timeout_s: float = 3.0) -> None:
        """Stop monitors, flush queued messages (bounded) and close Kafka clients."""
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.core.close()
        for monitors in self.monitors.values():
            try:
                monitors.close()
            except Exception as err:  # noqa: BLE001 - shutdown must go on
                log.warning("closing monitors: %s", err)
        if self.config_consumer is not None:
            self.config_consumer.close()
        left = self.sink.close(flush_timeout_s)
        for writer in (self.status_writer, self.storage_writer):
            if writer is not None:
                writer.flush(0.5)
        log.info("Stopped (%d messages not delivered)", left)
