"""Serialisers turning EPICS updates into ESS FlatBuffers messages (pure Python, no I/O)."""

from __future__ import annotations

from typing import Any, Protocol

from ._common import UnsupportedValue
from .al00 import serialise_alarm
from .ep01 import serialise_connection
from .f144 import F144Serialiser
from .tdct import TdctSerialiser

__all__ = [
    "F144Serialiser",
    "TdctSerialiser",
    "UnsupportedValue",
    "ValueSerialiser",
    "make_value_serialiser",
    "serialise_alarm",
    "serialise_connection",
]


class ValueSerialiser(Protocol):
    """What forwarding needs from a value schema: one message per update, None to skip."""

    def serialise(self, value: Any, timestamp_ns: int) -> bytes | None: ...


def make_value_serialiser(schema: str, source_name: str) -> ValueSerialiser:
    """Serialiser for a stream's value schema ("f144" or "tdct")."""
    if schema == "f144":
        return F144Serialiser(source_name)
    if schema == "tdct":
        return TdctSerialiser(source_name)
    raise ValueError(f"no value serialiser for schema {schema!r} (expected f144 or tdct)")
