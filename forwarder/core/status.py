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


#: Above this many streams the per-stream health fields are left out of status messages
#: and the stream list (then a function of the configuration alone) is encoded once per
#: configuration change instead of every few seconds.
DETAIL_LIMIT = 2000


class StatusBuilder:
    """Builds the status document and its JSON, cheaply for very large configurations."""

    def __init__(self, max_bytes: int = MAX_STATUS_BYTES) -> None:
        self.max_bytes = max_bytes
        self._version: object = object()
        self._streams: list[dict[str, Any]] = []
        self._fragment = "[]"
        self._omitted = 0

    def build(
        self,
        core: ForwardingCore,
        counters: ProcessCounters,
        producer_queue_length: int,
        config_version: object,
        extra: dict[str, Any] | None = None,
        failed: list[dict[str, Any]] | None = None,
    ) -> tuple[dict[str, Any], str]:
        """`extra`: further top-level fields (e.g. a pending restore); `failed`: entries of
        configured streams that are not running (their subscription failed), listed and
        counted with the others."""
        outputs = list(core.all_outputs())
        if len(outputs) <= DETAIL_LIMIT:
            doc = status_document(core, outputs, counters, producer_queue_length)
            if failed:
                doc["streams"].extend(failed)
                doc["summary"]["streams"] += len(failed)
                doc["summary"]["failed"] = len(failed)
            if extra:
                doc.update(extra)
            return doc, status_json(doc, self.max_bytes)
        if config_version != self._version:
            self._encode_streams(outputs)
            self._version = config_version
        connected = sum(
            len(ch.outputs)
            for ch in list(core.channels.values())
            if ch.connection == ConnectionState.CONNECTED
        )
        summary: dict[str, int] = {"streams": len(outputs), "connected": connected}
        if failed:
            summary["streams"] += len(failed)
            summary["failed"] = len(failed)
        rest = {
            "summary": summary,
            "counters": counters.as_dict(),
            "producer_queue_length": producer_queue_length,
            "streams_detail_omitted": True,
            "streams_omitted": self._omitted,
        }
        if extra:
            rest.update(extra)
        text = '{"streams":' + self._fragment + "," + json.dumps(rest, separators=(",", ":"))[1:]
        doc = dict(rest, streams=self._streams)
        return doc, text

    def _encode_streams(self, outputs: list[StreamOutput]) -> None:
        entries = [
            {
                "channel_name": o.spec.channel,
                "protocol": o.spec.protocol.name,
                "output_topic": o.spec.topic,
                "schema": o.spec.schema,
            }
            for o in outputs
        ]
        budget = self.max_bytes - 2000  # room for summary and counters
        pieces = [json.dumps(e, separators=(",", ":")) for e in entries]
        used = 2
        keep = 0
        for piece in pieces:
            if used + len(piece) + 1 > budget:
                break
            used += len(piece) + 1
            keep += 1
        self._streams = entries[:keep]
        self._fragment = "[" + ",".join(pieces[:keep]) + "]"
        self._omitted = len(entries) - keep
