"""The cluster series of `ForwarderCollector` (pure: collected in-process, no HTTP; the
served /metrics is tested in tests/integration/adapters/test_http_metrics.py)."""

from __future__ import annotations

from typing import Any

from forwarder.adapters.http_metrics import ForwarderCollector
from forwarder.core.counters import ProcessCounters
from forwarder.core.forwarding import ForwardingCore, Subscribers
from forwarder.core.timestamps import TimestampPolicy


class _Sink:
    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        return True


def _collected(cluster: dict[str, Any]) -> dict[str, float]:
    counters = ProcessCounters()
    core = ForwardingCore(
        _Sink(),
        TimestampPolicy(),
        "svc",
        Subscribers(lambda _p, _n, _c: None, lambda _s: None),
        counters=counters,
    )
    collector = ForwarderCollector(core, counters, lambda: 0, lambda: 0, cluster=lambda: cluster)
    return {s.name: s.value for family in collector.collect() for s in family.samples}


def test_cluster_part_becomes_group_series() -> None:
    part = {
        "shards": [0, 3],
        "shard_count": 6,
        "rebalances": 2,
        "sessions_lost": 1,
        "join_retries": 4,
        "handovers": 1,
        "handover_seconds_sum": 2.5,
        "last_handover_s": 2.5,
    }
    got = _collected(part)
    assert got["forwarder_group_shards_owned"] == 2
    assert got["forwarder_group_shards"] == 6
    assert got["forwarder_group_sessions_lost_total"] == 1
    assert got["forwarder_group_join_retries_total"] == 4
    assert got["forwarder_group_last_handover_seconds"] == 2.5
