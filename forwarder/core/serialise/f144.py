"""f144 (LogData) serialiser built from patched templates.

`streaming_data_types.logdata_f144.serialise_f144` runs the pure Python FlatBuffers builder
on every call (~30 us).  Updates of one PV almost always have the same type, so each
serialiser builds one template per value type once and afterwards only splices the new
timestamp and value bytes into it with a precompiled `struct.Struct`.

Arrays use a layout in which the vector is the last thing in the buffer: everything before
it (tables, source name) does not depend on the length, so one template per dtype serves
every length and the message is just `header + array bytes` (one copy of the data).  The
cache is keyed by type only, so it is bounded by the dozen supported types however often
a PV's length changes.  The type mapping is described in `_logdata`.
"""

from __future__ import annotations

from typing import Any

import flatbuffers
from streaming_data_types.fbschemas.logdata_f144 import f144_LogData as fb
from streaming_data_types.fbschemas.logdata_f144.Value import Value

from ._common import field_position, root_table
from ._logdata import LogDataSerialiser, PatchedTemplates

_FILE_IDENTIFIER = b"f144"
_LOGDATA_TIMESTAMP_SLOT = 1
_LOGDATA_VALUE_SLOT = 3


def _finish(builder: flatbuffers.Builder, name: int, member: int, value: int) -> bytes:
    fb.f144_LogDataStart(builder)
    fb.f144_LogDataAddSourceName(builder, name)
    fb.f144_LogDataAddTimestamp(builder, 0)
    fb.f144_LogDataAddValueType(builder, member)
    fb.f144_LogDataAddValue(builder, value)
    builder.Finish(fb.f144_LogDataEnd(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _timestamp_position(buf: bytes) -> int:
    return field_position(buf, root_table(buf), _LOGDATA_TIMESTAMP_SLOT)


_TEMPLATES = PatchedTemplates("f144", Value, _finish, "q", _timestamp_position, _LOGDATA_VALUE_SLOT)


class F144Serialiser(LogDataSerialiser):
    """Turns one PV's updates into f144 messages for `source_name` (alarms go to al00)."""

    __slots__ = ()
    templates = _TEMPLATES

    def serialise(
        self, value: Any, timestamp_ns: int, severity: int = 0, status: str = ""
    ) -> bytes | None:
        """f144 message for `value` at `timestamp_ns` (unix ns), None for an empty array.

        The alarm arguments are accepted for a uniform interface and ignored: f144
        streams carry alarms in separate al00 messages.
        """
        encode = self._by_type.get(type(value))
        if encode is None:
            encode = self._resolve(value)
        return encode(value, timestamp_ns, 0)
