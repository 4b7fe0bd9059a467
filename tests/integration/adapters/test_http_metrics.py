"""`forwarder.adapters.http_metrics` over real HTTP: /metrics from the core's counters at
scrape time, /healthz from the health checks."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from forwarder.adapters.http_metrics import ForwarderCollector, HealthSources, MetricsServer
from forwarder.core.counters import Drop, ProcessCounters
from forwarder.core.events import ConnectionState
from forwarder.core.forwarding import ForwardingCore, Subscribers
from forwarder.core.streams import Protocol, StreamSpec
from forwarder.core.timestamps import TimestampPolicy


class _Sink:
    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        return True


class _Sub:
    def close(self) -> None:
        pass


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, ForwardingCore, dict[str, Any]]]:
    counters = ProcessCounters()
    core = ForwardingCore(
        _Sink(),
        TimestampPolicy(),
        "svc",
        Subscribers(lambda _p, _n, _c: _Sub(), lambda s: s.close()),
        counters=counters,
    )
    state: dict[str, Any] = {"healthy": True, "restore_pending": False}
    collector = ForwarderCollector(
        core,
        counters,
        lambda: 7,
        lambda: len(core.outputs),
        restore_pending=lambda: bool(state["restore_pending"]),
        subscribe_failed=lambda: int(state.get("failed", 0)),
    )

    def broken() -> tuple[bool, str]:
        if not state["healthy"]:
            raise ZeroDivisionError("a check that fails")
        return True, "ok"

    health = HealthSources(
        checks={
            "producer": lambda: (state["healthy"], "fine" if state["healthy"] else "down"),
            "broken": broken,
        }
    )
    server = MetricsServer(0, collector, health, host="127.0.0.1")
    server.start()
    try:
        yield server, core, state
    finally:
        server.close()


def _get(server: MetricsServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in\n{text}")


def test_metrics_are_read_at_scrape_time(
    served: tuple[MetricsServer, ForwardingCore, dict[str, Any]],
) -> None:
    server, core, state = served
    code, text = _get(server, "/metrics")
    assert code == 200
    assert _sample(text, "forwarder_streams_configured") == 0
    assert _sample(text, "forwarder_producer_queue_length") == 7
    assert _sample(text, "forwarder_restore_pending") == 0
    core.add_stream(StreamSpec("PV:1", "f144", "t", Protocol.CA))
    channel = core.channels[(Protocol.CA, "PV:1")]
    channel.on_connection(ConnectionState.CONNECTED, 1)
    core.counters.drop(Drop.QUEUE_FULL, 3)
    state["restore_pending"] = True
    _, text = _get(server, "/metrics")
    assert _sample(text, "forwarder_streams_configured") == 1
    assert _sample(text, "forwarder_pvs_connected") == 1
    assert 'reason="queue_full"} 3.0' in text
    assert _sample(text, "forwarder_restore_pending") == 1
    state["failed"] = 2
    _, text = _get(server, "/metrics")
    assert _sample(text, "forwarder_streams_subscribe_failed") == 2


def test_healthz_is_503_with_the_failing_checks_named(
    served: tuple[MetricsServer, ForwardingCore, dict[str, Any]],
) -> None:
    server, _, state = served
    code, body = _get(server, "/healthz")
    assert code == 200
    assert json.loads(body)["status"] == "ok"
    state["healthy"] = False
    code, body = _get(server, "/healthz")
    doc = json.loads(body)
    assert code == 503
    assert doc["status"] == "unhealthy"
    assert doc["producer"] == {"ok": False, "detail": "down"}
    assert doc["broken"]["ok"] is False and "ZeroDivisionError" in doc["broken"]["detail"]
    assert _get(server, "/nothing")[0] == 404
