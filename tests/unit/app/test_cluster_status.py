"""`forwarder-config status`'s cluster view, from members' status documents (pure)."""

from __future__ import annotations

from typing import Any

from forwarder.app.config_cli.status import ServiceStatus, cluster_views, format_clusters
from forwarder.core.sharding import shard_of

NOW = 1_000_000_000


def member(
    name: str, shards: list[int], pvs: list[str], age_ms: int = 0, per_shard: Any = None
) -> ServiceStatus:
    status = {
        "streams": [{"channel_name": p} for p in pvs],
        "summary": {"streams": len(pvs)},
        "cluster": {
            "group": "g",
            "member_id": f"id-{name}",
            "shard_count": 4,
            "shards": shards,
            "streams_per_shard": per_shard or {},
            "streams_configured": sum((per_shard or {}).values()),
        },
    }
    return ServiceStatus(name, "host", 1, "forwarder", "1", 500, NOW - age_ms, status, "")


def pvs_in(shards: list[int]) -> list[str]:
    return [f"PV{i}" for i in range(40) if shard_of(f"PV{i}", 4) in shards]


PER_SHARD = {str(s): len(pvs_in([s])) for s in range(4)}


def test_healthy_cluster_has_no_unforwarded_streams() -> None:
    services = [
        member("a", [0, 1], pvs_in([0, 1]), per_shard=PER_SHARD),
        member("b", [2, 3], pvs_in([2, 3]), per_shard=PER_SHARD),
    ]
    [view] = cluster_views(services, NOW)
    assert view.members[0][:3] == ("a", "id-a", [0, 1])
    assert view.unowned_shards == [] and view.unforwarded_streams == 0
    assert view.streams_configured == 40
    assert "no stream left unforwarded" in "\n".join(format_clusters([view]))


def test_dead_member_shards_are_reported_with_stream_names() -> None:
    services = [
        member("a", [0, 1], pvs_in([0, 1]), per_shard=PER_SHARD),
        member("dead", [2, 3], pvs_in([2, 3]), age_ms=60_000, per_shard=PER_SHARD),
    ]
    [view] = cluster_views(services, NOW)
    assert view.stale == ["dead"]
    assert view.unowned_shards == [2, 3]
    assert view.unforwarded_streams == len(pvs_in([2, 3]))
    assert view.unforwarded_names == sorted(pvs_in([2, 3]))
    text = "\n".join(format_clusters([view]))
    assert "NOT FORWARDED" in text and "dead" in text


def test_shard_claimed_twice_is_flagged_and_standalone_services_ignored() -> None:
    standalone = ServiceStatus("solo", "h", 1, "forwarder", "1", 500, NOW, {"streams": []}, "")
    services = [member("a", [0, 1, 2], []), member("b", [2, 3], []), standalone]
    [view] = cluster_views(services, NOW)
    assert view.doubly_owned == [2]
    assert [m[0] for m in view.members] == ["a", "b"]
