"""Serialisers turning EPICS updates into ESS FlatBuffers messages (pure Python, no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ._common import UnsupportedValue
from .al00 import serialise_alarm
from .ep01 import serialise_connection
from .f142 import F142Serialiser
from .f144 import F144Serialiser
from .no_value import NoValueSerialiser
from .nttable import Se00Serialiser, SenvSerialiser
from .tdct import TdctSerialiser

__all__ = [
    "F142Serialiser",
    "F144Serialiser",
    "NoValueSerialiser",
    "Se00Serialiser",
    "SenvSerialiser",
    "TdctSerialiser",
    "UnsupportedValue",
    "ValueSerialiser",
    "make_value_serialiser",
    "serialise_alarm",
    "serialise_connection",
]


class ValueSerialiser(Protocol):
    """What forwarding needs from a value schema: one message per update, None to skip.

    Every update's alarm (EPICS severity 0..3 and status text) is passed along; only
    schemas that carry it in the value message (f142) use it.
    """

    def serialise(
        self, value: Any, timestamp_ns: int, severity: int = 0, status: str = ""
    ) -> bytes | None: ...


#: Schema -> constructor taking the source name (a Callable: the Protocol has no __init__).
_SERIALISERS: dict[str, Callable[[str], ValueSerialiser]] = {
    "f142": F142Serialiser,
    "f144": F144Serialiser,
    "tdct": TdctSerialiser,
    "nttable_se00": Se00Serialiser,
    "nttable_senv": SenvSerialiser,
    "no_op": NoValueSerialiser,
    "al00": NoValueSerialiser,
    "ep01": NoValueSerialiser,
}


def make_value_serialiser(schema: str, source_name: str) -> ValueSerialiser:
    """Serialiser for a stream's schema (one of `forwarder.core.streams.STREAM_SCHEMAS`)."""
    try:
        make = _SERIALISERS[schema]
    except KeyError:
        raise ValueError(
            f"no serialiser for schema {schema!r} (expected one of {', '.join(_SERIALISERS)})"
        ) from None
    return make(source_name)
