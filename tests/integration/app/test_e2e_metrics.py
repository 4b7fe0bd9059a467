"""End to end: `--http-port` serves Prometheus `/metrics` and a `/healthz` probe.

Scraped over real HTTP with urllib and parsed with prometheus_client's own text parser;
the numbers are cross-checked with what actually reached Kafka.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forwarder.core.config_messages import UpdateKind, encode_config_message
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.forwarder_process import ForwarderProcess
from tests.support.kafka import TansuBroker, TopicReader, free_port, produce, unique_topic

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _get(port: int, path: str, timeout: float = 15) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def _scrape(port: int) -> Samples:
    code, body = _get(port, "/metrics")
    assert code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not exported; have {sorted({k[0] for k in samples})}"
    return samples[key]


def _wait_metrics(port: int, check: Callable[[Samples], bool], timeout: float) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape(port)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched within {timeout} s: {samples}")
        time.sleep(0.3)


def test_queue_length_gauge_counts_messages_waiting_in_the_producer(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    """With a 3 s linger, a fake PV at 50 Hz keeps well over 20 messages in the producer's
    queue; the gauge must show them, and no more than were handed to Kafka."""
    port = free_port()
    fp = ForwarderProcess(
        kafka_bootstrap,
        args=["--http-port", str(port), "--fake-pv-period", "20", "-X", "linger.ms=3000"],
    )
    forwarders.append(fp)
    fp.start()
    assert _value(_scrape(port), "forwarder_producer_queue_length") == 0
    spec = StreamSpec("FAKE:MET:QUEUE", "f144", unique_topic("data"), Protocol.FAKE)
    produce(kafka_bootstrap, fp.config_topic, [encode_config_message(UpdateKind.ADD, [spec])])
    queued = _wait_metrics(
        port, lambda s: _value(s, "forwarder_producer_queue_length") >= 20, timeout=30
    )
    produced = _value(queued, "forwarder_messages_produced_total")
    assert _value(queued, "forwarder_producer_queue_length") <= produced


def _wait_health(port: int, code: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: list[tuple[int, bytes]] = []
    while True:
        got, body = _get(port, "/healthz")
        seen.append((got, body))
        if got == code:
            detail: dict[str, Any] = json.loads(body)
            return detail
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz never returned {code} within {timeout} s: {seen[-3:]}")
        time.sleep(0.5)


def test_metrics_follow_a_forwarded_fake_pv(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    port = free_port()
    fp = ForwarderProcess(
        kafka_bootstrap, args=["--http-port", str(port), "--fake-pv-period", "100"]
    )
    forwarders.append(fp)
    fp.start()

    idle = _scrape(port)
    assert _value(idle, "forwarder_streams_configured") == 0
    assert _value(idle, "forwarder_pvs_connected") == 0
    assert _value(idle, "forwarder_updates_received_total") == 0
    assert _value(idle, "forwarder_updates_forwarded_total") == 0

    data = unique_topic("data")
    streams = [
        StreamSpec("FAKE:MET:1", "f144", data, Protocol.FAKE),
        StreamSpec("FAKE:MET:2", "f144", data, Protocol.FAKE),
    ]
    produce(kafka_bootstrap, fp.config_topic, [encode_config_message(UpdateKind.ADD, streams)])
    produce(kafka_bootstrap, fp.config_topic, [b"this is not a config message"])

    first = _wait_metrics(
        port,
        lambda s: (
            _value(s, "forwarder_updates_forwarded_total") >= 10
            and _value(s, "forwarder_dropped_total", reason="bad_config") >= 1
        ),
        timeout=20,
    )
    assert _value(first, "forwarder_streams_configured") == 2
    assert _value(first, "forwarder_pvs_connected") == 2
    assert _value(first, "forwarder_dropped_total", reason="bad_config") == 1
    for reason in ("queue_full", "unsupported_type", "too_old", "delivery_failed"):
        assert _value(first, "forwarder_dropped_total", reason=reason) == 0

    # Counts keep increasing while the fake PVs tick.
    forwarded = _value(first, "forwarder_updates_forwarded_total")
    second = _wait_metrics(
        port,
        lambda s: _value(s, "forwarder_updates_forwarded_total") >= forwarded + 10,
        timeout=20,
    )
    received = _value(second, "forwarder_updates_received_total")
    assert received >= _value(second, "forwarder_updates_forwarded_total")
    assert received > _value(first, "forwarder_updates_received_total")

    # Latency histogram, labelled by protocol: one observation per forwarded update.
    count = _value(second, "forwarder_latency_seconds_count", protocol="fake")
    assert count >= forwarded
    assert _value(second, "forwarder_latency_seconds_bucket", protocol="fake", le="+Inf") == count
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in second.items()
        if name == "forwarder_latency_seconds_bucket" and dict(labels)["protocol"] == "fake"
    )
    assert len(buckets) > 3
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert 0 <= _value(second, "forwarder_latency_seconds_sum", protocol="fake") < count * 10

    # What the metrics claim was forwarded did reach Kafka.
    with TopicReader(kafka_bootstrap, data) as reader:
        reader.wait_for(
            lambda ms: sum(1 for m in ms if m.schema_id == "f144") >= forwarded, timeout=20
        )

    assert _get(port, "/nothing-here")[0] == 404


def test_healthz_follows_the_broker(
    private_broker: TansuBroker, forwarders: list[ForwarderProcess]
) -> None:
    port = free_port()
    fp = ForwarderProcess(private_broker.bootstrap, args=["--http-port", str(port)])
    forwarders.append(fp)
    fp.start()

    healthy = _wait_health(port, 200, timeout=20)
    assert healthy["status"] == "ok"

    private_broker.stop()
    sick = _wait_health(port, 503, timeout=45)
    assert sick["status"] == "unhealthy"
    assert not sick["kafka_producer"]["ok"]

    private_broker.start()
    again = _wait_health(port, 200, timeout=90)
    assert again["status"] == "ok"
    assert fp.proc is not None and fp.proc.poll() is None
