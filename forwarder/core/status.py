"""The JSON carried in x5f2 status messages.

The `streams` list keeps the fields older consumers read (channel_name, protocol,
output_topic, schema) and adds per-stream health, so an operator sees at a glance which PVs
are connected and flowing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from forwarder.core.counters import ProcessCounters
from forwarder.core.events import ConnectionState
from forwarder.core.forwarding import ForwardingCore, StreamOutput


def stream_status(out: StreamOutput, connection: ConnectionState) -> dict[str, Any]:
    spec = out.spec
    return {
        "channel_name": spec.channel,
        "protocol": spec.protocol.name,
        "output_topic": spec.topic,
        "schema": spec.schema,
        "periodic": spec.periodic,
        "connection": connection.name,
        "last_update_ms": out.last_update_ns // 1_000_000 if out.last_update_ns else None,
        "updates_forwarded": out.forwarded,
        "updates_dropped": out.dropped,
    }


def status_document(
    core: ForwardingCore,
    outputs: Iterable[StreamOutput],
    counters: ProcessCounters,
    producer_queue_length: int,
) -> dict[str, Any]:
    streams = []
    for out in outputs:
        channel = core.channel_of(out)
        state = channel.connection if channel is not None else ConnectionState.UNKNOWN
        streams.append(stream_status(out, state))
    connected = sum(1 for s in streams if s["connection"] == "CONNECTED")
    return {
        "streams": streams,
        "summary": {"streams": len(streams), "connected": connected},
        "counters": counters.as_dict(),
        "producer_queue_length": producer_queue_length,
    }


#: Status messages stay below Kafka's default 1 MB message limit, whatever the number of
#: streams: first the per-stream health fields go, then streams beyond what fits (the
#: summary and counters always stay, and say how many streams were left out).
MAX_STATUS_BYTES = 900_000
_COMPATIBLE_FIELDS = ("channel_name", "protocol", "output_topic", "schema")


def status_json(doc: dict[str, Any], max_bytes: int = MAX_STATUS_BYTES) -> str:
    text = json.dumps(doc, separators=(",", ":"))
    if len(text) <= max_bytes:
        return text
    streams = doc.get("streams", [])
    slim = [{k: s[k] for k in _COMPATIBLE_FIELDS} for s in streams]
    smaller = dict(doc, streams=slim, streams_detail_omitted=True)
    text = json.dumps(smaller, separators=(",", ":"))
    if len(text) <= max_bytes:
        return text
    # Keep the first streams that fit (about 100 bytes each), and say how many are missing.
    per_stream = max(1, (len(text) - 2) // max(1, len(slim)))
    keep = max(0, (max_bytes - 1000) // per_stream)
    while True:
        trimmed = dict(smaller, streams=slim[:keep], streams_omitted=len(slim) - keep)
        text = json.dumps(trimmed, separators=(",", ":"))
        if len(text) <= max_bytes or keep == 0:
            return text
        keep = keep * 9 // 10
