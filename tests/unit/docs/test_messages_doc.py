"""The status example in docs/reference/messages.md has exactly the fields the forwarder
writes: the same keys at every level as `status_document` produces for one stream."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from forwarder.core.forwarding import ForwardingCore, Subscribers
from forwarder.core.status import status_document
from forwarder.core.streams import Protocol, StreamSpec
from forwarder.core.timestamps import TimestampPolicy

PAGE = Path(__file__).resolve().parents[3] / "docs" / "reference" / "messages.md"


class _Sink:
    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        return True


def _shape(value: Any) -> Any:
    """Keys (recursively) of dicts; lists reduced to the shape of their first element."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return None


def _documented_example() -> dict[str, Any]:
    section = PAGE.read_text(encoding="utf-8").split("## Status", 1)[1]
    match = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no JSON example in the Status section"
    example: dict[str, Any] = json.loads(match.group(1))
    return example


def test_status_example_has_the_written_fields() -> None:
    core = ForwardingCore(
        sink=_Sink(),
        policy=TimestampPolicy(),
        service_id="svc",
        subscribers=Subscribers(lambda _p, _n, _c: None, lambda _s: None),
    )
    core.add_stream(StreamSpec("IOC:TEMP", "f144", "sample_env", Protocol.CA, True))
    written = status_document(core, core.all_outputs(), core.counters, 0)
    assert _shape(_documented_example()) == _shape(written)
