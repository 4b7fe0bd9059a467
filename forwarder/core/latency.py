"""A lock-free latency histogram cheap enough for every update.

`prometheus_client.Histogram.observe` takes a lock and costs about a microsecond; this one
is a bisect and an integer increment, and is exported to Prometheus at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left

#: Upper bounds in seconds (Prometheus convention), from 0.5 ms to 10 s.
DEFAULT_BOUNDS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


class LatencyHistogram:
    """Counts of EPICS-timestamp-to-produce latencies per bucket (last bucket = +Inf)."""

    __slots__ = ("bounds_ns", "bounds_s", "counts", "sum_ns")

    def __init__(self, bounds_s: tuple[float, ...] = DEFAULT_BOUNDS_S) -> None:
        self.bounds_s = bounds_s
        self.bounds_ns = [int(b * 1e9) for b in bounds_s]
        self.counts = [0] * (len(bounds_s) + 1)
        self.sum_ns = 0

    def observe_ns(self, latency_ns: int) -> None:
        if latency_ns < 0:
            latency_ns = 0  # clocks of IOC and forwarder disagree; count as immediate
        self.counts[bisect_left(self.bounds_ns, latency_ns)] += 1
        self.sum_ns += latency_ns

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs as Prometheus expects, ending with +Inf."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip(self.bounds_s, self.counts[:-1], strict=True):
            total += count
            out.append((repr(bound), total))
        total += self.counts[-1]
        out.append(("+Inf", total))
        return out

    @property
    def total(self) -> int:
        return sum(self.counts)
