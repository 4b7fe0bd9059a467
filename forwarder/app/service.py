"""Wiring: builds the real adapters (Kafka, CA, PVA, fake) and hands them to the controller.

What the forwarder decides (configuration, restore, re-sends, status timing, shutdown
order) lives in `forwarder.app.controller`; this module only constructs clients from the
settings, and adds the metrics server and its health checks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from forwarder.adapters.kafka_config import ConfigTopicConsumer, StorageTopicReader, TopicWriter
from forwarder.adapters.kafka_endpoint import KafkaEndpoint
from forwarder.adapters.kafka_producer import KafkaSink
from forwarder.app.cluster import ClusterMember
from forwarder.app.controller import Controller, ControllerSettings
from forwarder.app.ports import TimerHook
from forwarder.app.reporting import LogReporter
from forwarder.app.settings import Settings
from forwarder.core.counters import ProcessCounters
from forwarder.core.events import Monitors
from forwarder.core.streams import Protocol

if TYPE_CHECKING:  # imported where used, only when --http-port or Carbon is configured
    from forwarder.adapters.carbon import CarbonReporter
    from forwarder.adapters.http_metrics import ForwarderCollector, MetricsServer

log = logging.getLogger("forwarder")


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


def make_monitors(protocol: Protocol, timer_hook: TimerHook, fake_period_ms: int) -> Monitors:
    """Import adapters lazily: a forwarder with only CA streams never starts a PVA context."""
    if protocol == Protocol.CA:
        from forwarder.adapters.ca import CaMonitors

        return CaMonitors()
    if protocol == Protocol.PVA:
        from forwarder.adapters.pva import PvaMonitors

        return PvaMonitors()
    from forwarder.adapters.fake import FakeMonitors

    return FakeMonitors(fake_period_ms, scheduler_hook=timer_hook)


def _writer(endpoint: KafkaEndpoint | None) -> TopicWriter | None:
    if endpoint is None or endpoint.topic is None:
        return None
    return TopicWriter(endpoint.librdkafka_config(), endpoint.topic)


def controller_settings(settings: Settings, version: str) -> ControllerSettings:
    """The part of the settings the controller acts on."""
    return ControllerSettings(
        service_id=settings.service_id,
        version=version,
        status_interval_ms=settings.status_interval,
        pv_update_period_ms=settings.pv_update_period,
        use_receive_time=settings.use_receive_time,
    )


class ForwarderService:
    """The controller built from real adapters, plus the metrics server."""

    def __init__(
        self,
        settings: Settings,
        version: str = "0+unknown",
        stop_event: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.counters = ProcessCounters()
        self.reporter = LogReporter(log)
        self.stop_event = stop_event or threading.Event()
        self.sink = KafkaSink(
            settings.output_endpoint.librdkafka_config(),
            self.counters,
            self.reporter,
            queue_max_messages=settings.producer_queue_max_messages,
        )
        storage = settings.storage_endpoint
        storage_reader = (
            StorageTopicReader(storage.librdkafka_config(), storage.topic, cancel=self.stop_event)
            if storage is not None and storage.topic and not settings.skip_retrieval
            else None
        )
        # Built before the restore: it starts at the process start time anyway, and a
        # missing config topic is created (with one partition) as early as possible.
        config = settings.config_endpoint
        start_ms = process_start_ms()
        if settings.group and storage_reader is None:
            # A member joining a running cluster needs the whole configuration; without a
            # storage topic only the config topic's history has it: replay all of it.
            start_ms = 0
            log.info("group %r without storage: replaying the config topic", settings.group)
        self.config_consumer = ConfigTopicConsumer(
            config.librdkafka_config(), config.topic or "", start_ms=start_ms
        )
        self.cluster = self._make_cluster(settings) if settings.group else None
        fake_period_ms = settings.fake_pv_period
        self.controller = Controller(
            controller_settings(settings, version),
            sink=self.sink,
            config_source=self.config_consumer,
            monitor_factory=lambda p, hook: make_monitors(p, hook, fake_period_ms),
            storage_reader=storage_reader,
            storage_writer=_writer(storage),
            status_writer=_writer(settings.status_endpoint),
            counters=self.counters,
            reporter=self.reporter,
            cluster=self.cluster,
        )
        self.metrics_server: MetricsServer | None = None
        self.carbon: CarbonReporter | None = None

    @staticmethod
    def _make_cluster(settings: Settings) -> ClusterMember:
        """This process as a member of `--group` (joined by the controller after the
        restore)."""
        from forwarder.adapters.kafka_group import GroupMembership

        assert settings.group is not None
        membership = GroupMembership(
            settings.config_endpoint.librdkafka_config(),
            settings.group,
            session_timeout_ms=settings.group_session_timeout_ms,
            shard_count=settings.group_shards,
        )
        return ClusterMember(membership)

    def run(self) -> None:
        """Serve until `stop_event` is set."""
        if self.settings.http_port is not None:
            self.start_metrics_server(self.settings.http_port)
        if self.settings.grafana_carbon_address is not None:
            self.start_carbon_reporter(self.settings.grafana_carbon_address)
        self.controller.run(self.stop_event)

    def _collector(self) -> ForwarderCollector:
        from forwarder.adapters.http_metrics import ForwarderCollector

        controller = self.controller
        return ForwarderCollector(
            controller.core,
            self.counters,
            self.sink.queue_length,
            lambda: len(controller.registry),
            cluster=self.cluster.status if self.cluster is not None else None,
            restore_pending=lambda: controller.restore.pending,
            subscribe_failed=lambda: len(controller.failed),
        )

    def start_carbon_reporter(self, address: str) -> None:
        """The /metrics samples, pushed every --statistics-update-interval seconds."""
        import socket

        from prometheus_client.registry import CollectorRegistry

        from forwarder.adapters.carbon import CarbonReporter, carbon_prefix, samples_of
        from forwarder.adapters.kafka_uri import parse_host_port

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._collector())
        host, port = parse_host_port(address)
        self.carbon = CarbonReporter(
            host,
            port,
            carbon_prefix(socket.gethostname(), self.settings.service_id),
            lambda: samples_of(registry),
            interval_s=self.settings.statistics_update_interval,
        )
        self.carbon.start()
        log.info(
            "Pushing metrics to Carbon at %s every %d s",
            address,
            self.settings.statistics_update_interval,
        )

    def start_metrics_server(self, port: int) -> None:
        from forwarder.adapters.http_metrics import HealthSources, MetricsServer

        collector = self._collector()
        health = HealthSources(
            checks={
                "kafka_producer": self._check_producer,
                "config_consumer": self._check_control_loop,
            }
        )
        from forwarder.app.web_wiring import make_web_ui

        web = make_web_ui(self)
        self.metrics_server = MetricsServer(port, collector, health, web=web)
        self.metrics_server.start()
        log.info(
            "Serving /metrics, /healthz and the %s web page on port %d",
            "read-write" if web.writable else "read-only",
            self.metrics_server.port,
        )

    def _check_producer(self) -> tuple[bool, str]:
        if self.sink.broker_reachable(timeout_s=2.0):
            return True, "output broker reachable"
        return False, f"output broker unreachable: {self.sink.last_error or 'no metadata'}"

    def _check_control_loop(self) -> tuple[bool, str]:
        consumer = self.config_consumer
        if not consumer.alive:
            return False, "config consumer not running"
        restore = self.controller.restore
        if restore.pending and restore.attempts:
            return False, f"configuration not restored from the storage topic: {restore.error}"
        age = (time.monotonic_ns() - self.controller.heartbeat_ns) / 1e9
        if age > 10.0:
            return False, f"control loop stalled for {age:.0f} s"
        if not consumer.reachable(timeout_s=2.0):
            return False, f"config topic broker unreachable: {consumer.last_error}"
        return True, "config consumer polling"

    def undelivered(self) -> int:
        """Messages lost at shutdown so far: what the flush left, or (while it is still
        running) what is queued."""
        left = self.controller.undelivered
        return self.sink.queue_length() if left is None else left

    def shutdown(self, flush_timeout_s: float = 3.0) -> int:
        """Stop serving; returns how many messages could not be delivered."""
        if self.metrics_server is not None:
            self.metrics_server.close()
        if self.carbon is not None:
            self.carbon.close(timeout_s=0.5)  # a daemon thread; never delays the exit
        return self.controller.shutdown(flush_timeout_s)
