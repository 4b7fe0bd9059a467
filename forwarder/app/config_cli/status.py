"""`status`: the newest x5f2 status of each forwarder, as a table or JSON.

The status topic is read with the service's topic reader (`read_topic`: every partition,
no consumer group), stopping once each partition reached its end or reports live
messages, or after a quiet period.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from forwarder.adapters.kafka_config import TopicUnreadable, read_topic
from forwarder.app.config_cli.connection import Connection, connection, unreachable_message
from forwarder.app.config_cli.errors import EXIT_OK, Failure, UsageError

#: Without end-of-partition events (some brokers), stop reading after this much silence.
DEFAULT_QUIET_S = 2.0


@dataclass
class ServiceStatus:
    """The newest x5f2 message of one service."""

    service_id: str
    host_name: str
    process_id: int
    software_name: str
    software_version: str
    update_interval_ms: int
    timestamp_ms: int
    status: dict[str, Any] | None
    status_json: str

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "service_id": self.service_id,
            "host_name": self.host_name,
            "process_id": self.process_id,
            "software_name": self.software_name,
            "software_version": self.software_version,
            "update_interval_ms": self.update_interval_ms,
            "timestamp_ms": self.timestamp_ms,
            "status": self.status,
        }
        if self.status is None:
            doc["status_json"] = self.status_json
        return doc


def decode_status(value: bytes, timestamp_ms: int) -> ServiceStatus | None:
    """None for anything that is not a readable x5f2 (status topics may be shared)."""
    if value[4:8] != b"x5f2":
        return None
    from streaming_data_types.status_x5f2 import deserialise_x5f2

    try:
        msg = deserialise_x5f2(value)
    except Exception:  # corrupt flatbuffers raise assorted errors; skipping is the point
        return None
    try:
        status = json.loads(msg.status_json)
    except ValueError:
        status = None
    return ServiceStatus(
        msg.service_id,
        msg.host_name,
        int(msg.process_id),
        msg.software_name,
        msg.software_version,
        int(msg.update_interval),
        timestamp_ms,
        status if isinstance(status, dict) else None,
        msg.status_json,
    )


def read_status(
    conn: Connection,
    max_age_s: float | None,
    quiet_s: float,
    accept: Callable[[str], bool],
) -> list[ServiceStatus]:
    """Newest status per service.

    A partition is read once it reports its end or yields a message stamped after we
    started (running forwarders publish every few seconds, so their partition never stays
    at its end for long, and some brokers report the end late).  Reading stops when every
    partition is read, after `quiet_s` without messages, or at the connection's timeout.
    """
    started_ms = int(time.time() * 1000)
    since_ms = int(time.time() * 1000 - max_age_s * 1000) if max_age_s else None
    try:
        contents = read_topic(
            {**conn.config(), "group.id": f"forwarder-config-{uuid.uuid4().hex[:12]}"},
            conn.topic,
            timeout_s=conn.timeout,
            settle_s=0.0,
            quiet_s=quiet_s,
            since_ms=since_ms,
            live_from_ms=started_ms,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except ConnectionError as exc:
        raise Failure(unreachable_message(conn, str(exc))) from None
    except TopicUnreadable as exc:
        raise Failure(f"cannot read {conn.endpoint.uri}: {exc}") from None
    if not contents.exists:
        raise Failure(
            f"no status messages: topic {conn.topic!r} does not exist on {conn.endpoint.uri}"
        )
    newest: dict[str, ServiceStatus] = {}
    for record in contents.records:
        found = decode_status(record.value, record.timestamp_ms)
        if found is None or not accept(found.service_id):
            continue
        known = newest.get(found.service_id)
        if known is None or found.timestamp_ms >= known.timestamp_ms:
            newest[found.service_id] = found
    return sorted(newest.values(), key=lambda s: s.service_id)


def _age(now_ms: float, then_ms: Any) -> str:
    if not isinstance(then_ms, int | float) or isinstance(then_ms, bool) or then_ms <= 0:
        return "never"
    seconds = max(0.0, (now_ms - then_ms) / 1000)
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


_COLUMNS = (
    ("CHANNEL", "channel_name"),
    ("PROTOCOL", "protocol"),
    ("TOPIC", "output_topic"),
    ("SCHEMA", "schema"),
    ("CONNECTION", "connection"),
    ("LAST UPDATE", "last_update_ms"),
    ("FORWARDED", "updates_forwarded"),
    ("DROPPED", "updates_dropped"),
)


def _table(rows: Sequence[Sequence[str]], right: Iterable[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = set(right)
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in align else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def format_status(services: Sequence[ServiceStatus], now_ms: float) -> list[str]:
    """Human-readable status: a header line per service, then one row per stream."""
    lines: list[str] = []
    for service in services:
        if lines:
            lines.append("")
        header = (
            f"SERVICE {service.service_id}  HOST {service.host_name}"
            f"  PID {service.process_id}"
            f"  {service.software_name} {service.software_version}"
            f"  reported {_age(now_ms, service.timestamp_ms)}"
        )
        lines.append(header)
        if service.status is None:
            lines.append("  (status JSON unreadable)")
            continue
        streams = service.status.get("streams")
        if not isinstance(streams, list) or not streams:
            lines.append("  (no streams)")
            continue
        rows = [[title for title, _ in _COLUMNS]]
        for stream in streams:
            stream = stream if isinstance(stream, dict) else {}
            row = []
            for _, key in _COLUMNS:
                value = stream.get(key)
                if key == "last_update_ms":
                    row.append(_age(now_ms, value))
                else:
                    row.append("-" if value is None else str(value))
            rows.append(row)
        lines += ["  " + line for line in _table(rows, right=(6, 7))]
    return lines


@dataclass
class ClusterView:
    """One `--group` cluster as its members' newest statuses show it."""

    group: str
    shard_count: int
    #: (service id, member id, shards, streams forwarded) of each live member.
    members: list[tuple[str, str, list[int], int]]
    #: Members whose newest status is too old: gone (killed, cut off) or stalled.
    stale: list[str]
    #: Shards no live member owns, and how many configured streams they hold.
    unowned_shards: list[int]
    unforwarded_streams: int
    #: Names of unforwarded streams, where a stale member's last status still lists them.
    unforwarded_names: list[str]
    #: Shards two live members claim (only for the moment of a hand-over).
    doubly_owned: list[int]
    streams_configured: int


def _is_live(service: ServiceStatus, now_ms: float) -> bool:
    """Reported within three status intervals (at least 5 s)."""
    return now_ms - service.timestamp_ms <= max(3 * service.update_interval_ms, 5000)


def cluster_views(services: Sequence[ServiceStatus], now_ms: float) -> list[ClusterView]:
    """Group the statuses of cluster members (those with a `cluster` part) by group."""
    from forwarder.core.sharding import shard_of

    by_group: dict[str, list[ServiceStatus]] = {}
    for service in services:
        part = (service.status or {}).get("cluster")
        if isinstance(part, dict) and isinstance(part.get("group"), str):
            by_group.setdefault(part["group"], []).append(service)
    views = []
    for group, members in sorted(by_group.items()):
        live = [m for m in members if _is_live(m, now_ms)]
        stale = [m for m in members if not _is_live(m, now_ms)]
        parts = [(m, (m.status or {})["cluster"]) for m in live]
        shard_count = max(
            (
                int(p.get("shard_count") or 0)
                for _, p in parts + [(m, (m.status or {})["cluster"]) for m in stale]
            ),
            default=0,
        )
        seen: dict[int, int] = {}
        rows = []
        for m, p in parts:
            shards = [int(x) for x in p.get("shards", [])]
            for x in shards:
                seen[x] = seen.get(x, 0) + 1
            streams = (m.status or {}).get("summary", {}).get("streams", 0)
            rows.append((m.service_id, str(p.get("member_id", "")), sorted(shards), streams))
        unowned = [x for x in range(shard_count) if x not in seen]
        # The newest member's view of the configuration (all members hold the same one).
        per_shard: dict[str, int] = {}
        configured = 0
        if parts:
            newest = max(parts, key=lambda mp: mp[0].timestamp_ms)[1]
            per_shard = newest.get("streams_per_shard") or {}
            configured = int(newest.get("streams_configured") or 0)
        names = sorted(
            {
                str(stream.get("channel_name"))
                for m in stale
                for stream in (m.status or {}).get("streams", [])
                if isinstance(stream, dict)
                and shard_count
                and shard_of(str(stream.get("channel_name")), shard_count) in unowned
            }
        )
        views.append(
            ClusterView(
                group=group,
                shard_count=shard_count,
                members=sorted(rows),
                stale=sorted(m.service_id for m in stale),
                unowned_shards=unowned,
                unforwarded_streams=sum(int(per_shard.get(str(x), 0)) for x in unowned),
                unforwarded_names=names,
                doubly_owned=sorted(x for x, n in seen.items() if n > 1),
                streams_configured=configured,
            )
        )
    return views


def format_clusters(views: Sequence[ClusterView]) -> list[str]:
    """The cluster section of `forwarder-config status`."""
    lines: list[str] = []
    for v in views:
        lines += [
            "",
            f"CLUSTER {v.group}  {v.shard_count} shards  {v.streams_configured} streams configured",
        ]
        rows = [["MEMBER", "MEMBER ID", "SHARDS", "STREAMS"]]
        for service_id, member_id, shards, streams in v.members:
            rows.append(
                [service_id, member_id or "-", ",".join(map(str, shards)) or "-", str(streams)]
            )
        lines += ["  " + line for line in _table(rows, right=(3,))]
        if v.stale:
            lines.append(f"  no recent status from: {', '.join(v.stale)}")
        if v.doubly_owned:
            lines.append(f"  shards claimed by two members (hand-over): {v.doubly_owned}")
        if v.unowned_shards:
            lines.append(
                f"  NOT FORWARDED: {v.unforwarded_streams} streams in shards "
                f"{v.unowned_shards} (no live member owns them)"
            )
            if v.unforwarded_names:
                lines.append(
                    f"    last forwarded by a stale member: {', '.join(v.unforwarded_names)}"
                )
        else:
            lines.append("  every shard has a live member: no stream left unforwarded")
    return lines


def run_status(args: argparse.Namespace) -> int:
    conn = connection(args, "status")
    pattern = args.service_id

    def accept(service_id: str) -> bool:
        return pattern is None or fnmatch.fnmatchcase(service_id, pattern)

    services = read_status(conn, args.max_age, args.quiet, accept)
    if not services:
        where = f" in the last {args.max_age:g} s" if args.max_age else ""
        which = f" for service id {pattern!r}" if pattern else ""
        raise Failure(f"no status messages{which} found on {conn.endpoint.uri}{where}")
    if args.json:
        print(json.dumps([s.as_json() for s in services], indent=2))
    else:
        now_ms = time.time() * 1000
        for line in format_status(services, now_ms) + format_clusters(
            cluster_views(services, now_ms)
        ):
            print(line)
    return EXIT_OK
