"""Carbon pushes against a real TCP Carbon listener: line format, prefix, restarts."""

from __future__ import annotations

import logging
import re
import time

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import CollectorRegistry

from forwarder.adapters.carbon import CarbonReporter, carbon_prefix, format_lines, samples_of
from tests.support.carbon import CarbonListener

LINE = re.compile(r"^(?P<path>[A-Za-z0-9_.-]+) (?P<value>-?[0-9.e+-]+) (?P<ts>[0-9]+)$")


class _Collector:
    def __init__(self) -> None:
        self.forwarded = 0

    def collect(self):  # type: ignore[no-untyped-def]
        m = CounterMetricFamily("forwarder_updates_forwarded", "forwarded")
        m.add_metric([], self.forwarded)
        yield m
        d = CounterMetricFamily("forwarder_dropped", "dropped", labels=["reason"])
        d.add_metric(["queue_full"], 3)
        yield d
        g = GaugeMetricFamily("forwarder_pvs", "pvs", labels=["state"])
        g.add_metric(["connected"], 2)
        g.add_metric(["disconnected"], 1)
        yield g
        h = HistogramMetricFamily("forwarder_latency_seconds", "lat", labels=["protocol"])
        h.add_metric(["ca"], [("0.1", 1.0), ("+Inf", 2.0)], 0.25)
        yield h


def _registry(collector: _Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return registry


def test_prefix_is_the_ess_one() -> None:
    assert carbon_prefix("host.example.org", "My Forwarder") == (
        "forwarder.host_example_org.myforwarder"
    )
    assert carbon_prefix("h", "a.b/c") == "forwarder.h.a_b_c"


def test_samples_and_lines() -> None:
    samples = dict(samples_of(_registry(_Collector())))
    assert samples["updates_forwarded_total"] == 0
    assert samples["dropped_total.queue_full"] == 3
    assert samples["pvs.connected"] == 2 and samples["pvs_subscribed"] == 3
    assert samples["send_buffer_errors_total"] == 3
    assert samples["latency_seconds_sum.ca"] == 0.25
    assert samples["latency_seconds_count.ca"] == 2
    assert not any("bucket" in k for k in samples)
    text = format_lines("forwarder.h.s", [("a", 1.0), ("b", 0.5)], 1700000000).decode()
    assert text == "forwarder.h.s.a 1 1700000000\nforwarder.h.s.b 0.5 1700000000\n"


def test_pushes_to_a_real_listener_and_survives_its_restart() -> None:
    collector = _Collector()
    registry = _registry(collector)
    listener = CarbonListener().start()
    reporter = CarbonReporter(
        "127.0.0.1",
        listener.port,
        "forwarder.testhost.svc",
        lambda: samples_of(registry),
        interval_s=0.1,
        timeout_s=1.0,
    )
    reporter.start()
    try:
        lines = listener.wait_for(lambda ls: len(ls) >= 20, 10.0)
        now = time.time()
        for line in lines:
            m = LINE.match(line)
            assert m, line
            assert m["path"].startswith("forwarder.testhost.svc.")
            assert abs(int(m["ts"]) - now) < 60
        assert any(line.startswith("forwarder.testhost.svc.pvs_subscribed 3 ") for line in lines)

        listener.stop()  # the Carbon server goes away: sends fail (counted, not raised) ...
        deadline = time.monotonic() + 10.0
        while reporter.failed_batches < 2:
            assert time.monotonic() < deadline, "sends to a stopped listener did not fail"
            time.sleep(0.05)
        collector.forwarded = 42
        listener.clear()
        listener.start()  # ... and comes back on the same port
        listener.wait_for(
            lambda ls: any(
                line.startswith("forwarder.testhost.svc.updates_forwarded_total 42 ") for line in ls
            ),
            10.0,
        )
        assert reporter.connects >= 2
    finally:
        started = time.monotonic()
        reporter.close()
        assert time.monotonic() - started < 3.0
        listener.stop()


def test_unreachable_server_is_counted_not_raised() -> None:
    listener = CarbonListener().start()
    port = listener.port
    listener.stop()  # nothing listens there now
    reporter = CarbonReporter("127.0.0.1", port, "p", lambda: [("x", 1.0)], timeout_s=0.5)
    assert reporter.send_once() is False
    assert reporter.send_once() is False
    assert reporter.failed_batches == 2 and reporter.sent_batches == 0


def test_failures_are_logged_once_a_minute_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = CarbonListener().start()
    port = listener.port
    listener.stop()
    reporter = CarbonReporter("127.0.0.1", port, "p", lambda: [("x", 1.0)], timeout_s=0.5)
    caplog.set_level(logging.WARNING, logger="forwarder.adapters.carbon")
    for _ in range(5):
        assert reporter.send_once() is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "(1 snapshots not sent so far)" in warnings[0], warnings


def test_a_server_that_stops_reading_costs_one_timeout_not_a_hang() -> None:
    """Carbon accepts but never reads: the kernel buffers fill and the send times out; the
    snapshot is dropped and counted instead of the thread hanging."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    big = [(f"metric_{i:06d}.with.a.long.name", float(i)) for i in range(200_000)]  # ~10 MB
    reporter = CarbonReporter("127.0.0.1", port, "p", lambda: big, timeout_s=0.5)
    accepted: list[socket.socket] = []
    try:
        started = time.monotonic()
        ok = reporter.send_once()
        accepted.append(server.accept()[0])  # connected, but nobody reads
        assert ok is False
        assert time.monotonic() - started < 5.0
        assert reporter.failed_batches == 1
    finally:
        reporter.close()
        for s in accepted:
            s.close()
        server.close()
