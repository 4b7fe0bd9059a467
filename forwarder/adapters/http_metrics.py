"""Prometheus `/metrics`, a `/healthz` probe and the operator page on `--http-port`.

Metrics are read from the core's plain counters at scrape time (a custom collector), so the
per-update path never touches a prometheus_client lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import CollectorRegistry

from forwarder.core.counters import ProcessCounters
from forwarder.core.events import ConnectionState
from forwarder.core.forwarding import ForwardingCore

if TYPE_CHECKING:
    from forwarder.adapters.web_ui import WebUi

log = logging.getLogger(__name__)


@dataclass
class HealthSources:
    """What the probe asks; each returns (ok, detail)."""

    checks: dict[str, Callable[[], tuple[bool, str]]]


class ForwarderCollector:
    """Exports the core's counters and state as Prometheus metrics."""

    def __init__(
        self,
        core: ForwardingCore,
        counters: ProcessCounters,
        queue_length: Callable[[], int],
        configured: Callable[[], int],
        cluster: Callable[[], dict[str, Any] | None] | None = None,
        restore_pending: Callable[[], bool] | None = None,
        subscribe_failed: Callable[[], int] | None = None,
    ) -> None:
        self.subscribe_failed = subscribe_failed
        self.cluster = cluster
        self.core = core
        self.counters = counters
        self.queue_length = queue_length
        self.configured = configured
        self.restore_pending = restore_pending

    def collect(self) -> Iterator[Any]:
        c = self.counters
        g = GaugeMetricFamily("forwarder_streams_configured", "Streams configured")
        g.add_metric([], self.configured())
        yield g
        if self.restore_pending is not None:
            g = GaugeMetricFamily(
                "forwarder_restore_pending",
                "1 while the configuration could not be restored from the storage topic",
            )
            g.add_metric([], 1 if self.restore_pending() else 0)
            yield g
        if self.subscribe_failed is not None:
            g = GaugeMetricFamily(
                "forwarder_streams_subscribe_failed",
                "Configured streams whose subscription failed (retried with back-off)",
            )
            g.add_metric([], self.subscribe_failed())
            yield g
        channels = list(self.core.channels.values())
        g = GaugeMetricFamily(
            "forwarder_pvs", "PVs monitored, by connection state", labels=["state"]
        )
        by_state: dict[str, int] = {s.name: 0 for s in ConnectionState}
        for ch in channels:
            by_state[ch.connection.name] += 1
        for state, n in by_state.items():
            g.add_metric([state.lower()], n)
        yield g
        g = GaugeMetricFamily("forwarder_pvs_connected", "PVs currently connected")
        g.add_metric([], by_state[ConnectionState.CONNECTED.name])
        yield g
        for name, value, doc in (
            ("forwarder_updates_received", c.updates_received, "EPICS updates received"),
            ("forwarder_updates_forwarded", c.updates_forwarded, "EPICS updates forwarded"),
            ("forwarder_empty_updates", c.empty_updates, "Empty array updates not forwarded"),
            ("forwarder_resends", c.resends, "Periodic re-sends of a stream's last value"),
            (
                "forwarder_monitor_stop_errors",
                c.monitor_stop_errors,
                "EPICS monitors that raised while being stopped",
            ),
            ("forwarder_messages_produced", c.messages_produced, "Messages handed to Kafka"),
        ):
            m = CounterMetricFamily(name, doc)
            m.add_metric([], value)
            yield m
        m = CounterMetricFamily(
            "forwarder_dropped", "Updates or messages dropped, by reason", labels=["reason"]
        )
        for reason, n in c.drops.items():
            m.add_metric([reason.value], n)
        yield m
        m = CounterMetricFamily("forwarder_delivery_errors", "Kafka delivery failures")
        from forwarder.core.counters import Drop

        m.add_metric([], c.drops[Drop.DELIVERY_FAILED])
        yield m
        g = GaugeMetricFamily("forwarder_producer_queue_length", "Messages waiting in the producer")
        g.add_metric([], self.queue_length())
        yield g
        h = HistogramMetricFamily(
            "forwarder_latency_seconds",
            "EPICS timestamp to produce, per protocol",
            labels=["protocol"],
        )
        for protocol, hist in list(self.core.latency.items()):
            h.add_metric([protocol.name.lower()], hist.cumulative(), hist.sum_ns / 1e9)
        yield h
        part = self.cluster() if self.cluster is not None else None
        if part is not None:
            yield from _cluster_metrics(part)


def _cluster_metrics(part: dict[str, Any]) -> Iterator[Any]:
    """A cluster member's share (`--group`): shards, rebalances, hand-overs."""
    g = GaugeMetricFamily("forwarder_group_shards_owned", "Shards this member owns")
    g.add_metric([], len(part["shards"]))
    yield g
    g = GaugeMetricFamily("forwarder_group_shards", "Shards of the cluster")
    g.add_metric([], part["shard_count"])
    yield g
    for name, key, doc in (
        ("forwarder_group_rebalances", "rebalances", "Changes of this member's shard set"),
        ("forwarder_group_sessions_lost", "sessions_lost", "Group sessions lost (cut off)"),
        (
            "forwarder_group_join_retries",
            "join_retries",
            "Joins without any assignment for max(20 s, 2 sessions), retried",
        ),
        ("forwarder_group_handovers", "handovers", "Shard hand-overs to this member"),
        (
            "forwarder_group_handover_seconds",
            "handover_seconds_sum",
            "Assignment to first message of every newly owned stream, summed",
        ),
    ):
        m = CounterMetricFamily(name, doc)
        m.add_metric([], part[key])
        yield m
    g = GaugeMetricFamily(
        "forwarder_group_last_handover_seconds", "Duration of the last hand-over to this member"
    )
    g.add_metric([], part["last_handover_s"] or 0.0)
    yield g


class MetricsServer:
    """A small threaded HTTP server: GET /metrics, GET /healthz, and the page (`web`)."""

    def __init__(
        self,
        port: int,
        collector: ForwarderCollector,
        health: HealthSources,
        host: str = "",
        web: WebUi | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.health = health
        self.web = web
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _web(self, method: str) -> bool:
                """Hand page and API requests to the web UI; False when not one of its."""
                path = self.path.split("?", 1)[0]
                if web is None or not web.handles(path):
                    return False
                body = b""
                if method == "POST":
                    try:
                        length = int(self.headers.get("Content-Length") or 0)
                    except ValueError:
                        length = -1
                    from forwarder.adapters.web_ui import MAX_BODY_BYTES

                    if not 0 <= length <= MAX_BODY_BYTES:
                        self._reply(413, b'{"error":"bad or too large body"}', "application/json")
                        return True
                    body = self.rfile.read(length)
                reply = web.handle(
                    method, self.path, dict(self.headers.items()), body, self.client_address[0]
                )
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(reply.body)
                return True

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                if not self._web("POST"):
                    self._reply(404, b"not found\n", "text/plain")

            def do_HEAD(self) -> None:  # noqa: N802 - http.server API
                if not self._web("HEAD"):
                    self._reply(404, b"", "text/plain")

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self._web("GET"):
                    return
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(server.registry)
                    self._reply(200, body, CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/health"):
                    ok, detail = server.check_health()
                    self._reply(200 if ok else 503, json.dumps(detail).encode(), "application/json")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("http: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="http-metrics", daemon=True
        )

    def check_health(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {}
        ok = True
        for name, check in self.health.checks.items():
            try:
                good, why = check()
            except Exception as err:  # noqa: BLE001 - a failing check means unhealthy
                good, why = False, repr(err)
            detail[name] = {"ok": good, "detail": why}
            ok = ok and good
        detail["status"] = "ok" if ok else "unhealthy"
        detail["time"] = time.time()
        return ok, detail

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self.web is not None:
            self.web.close()
