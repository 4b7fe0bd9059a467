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

import struct
from typing import Any

import flatbuffers
import numpy as np
from streaming_data_types.fbschemas.logdata_f144 import f144_LogData as fb
from streaming_data_types.fbschemas.logdata_f144.Value import Value

from ._common import field_position, follow, root_table
from ._logdata import (
    MEMBERS,
    Encoder,
    LogDataSerialiser,
    ScalarEncoder,
    template_buffer,
    with_array_data,
)

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


class _F144Templates:
    schema = "f144"

    @staticmethod
    def scalar(source_name: str, dtype: np.dtype[Any]) -> ScalarEncoder:
        """Build the scalar template for `dtype` and return a function patching it."""
        code = MEMBERS[dtype][1]
        buf = template_buffer(source_name, dtype, Value, _finish, array=False)

        root = root_table(buf)
        ts_pos = field_position(buf, root, _LOGDATA_TIMESTAMP_SLOT)
        value_table = follow(buf, field_position(buf, root, _LOGDATA_VALUE_SLOT))
        val_pos = field_position(buf, value_table, 0)
        size = struct.calcsize("<" + code)
        if not ts_pos + 8 <= val_pos:  # builder puts the value table after the root table
            raise RuntimeError("unexpected f144 template layout")
        pack = struct.Struct(
            f"<{ts_pos}sq{val_pos - ts_pos - 8}s{code}{len(buf) - val_pos - size}s"
        ).pack
        head, middle, tail = buf[:ts_pos], buf[ts_pos + 8 : val_pos], buf[val_pos + size :]

        def encode(value: Any, timestamp_ns: int, _extra: int) -> bytes:
            return pack(head, timestamp_ns, middle, value, tail)

        return encode

    @staticmethod
    def array(source_name: str, dtype: np.dtype[Any]) -> Encoder:
        """Build the array template for little-endian `dtype`; the result takes 1-d arrays."""
        buf = template_buffer(source_name, dtype, Value, _finish, array=True)

        root = root_table(buf)
        ts_pos = field_position(buf, root, _LOGDATA_TIMESTAMP_SLOT)
        value_table = follow(buf, field_position(buf, root, _LOGDATA_VALUE_SLOT))
        length_pos = follow(buf, field_position(buf, value_table, 0))
        if length_pos + 4 + 8 != len(buf) or not ts_pos + 8 <= length_pos:
            raise RuntimeError("unexpected f144 array template layout")
        pack = struct.Struct(f"<{ts_pos}sq{length_pos - ts_pos - 8}sI").pack
        head, middle = buf[:ts_pos], buf[ts_pos + 8 : length_pos]

        def encode(array: np.ndarray, timestamp_ns: int, _extra: int) -> bytes | None:
            count = array.shape[0]
            if not count:
                return None
            return with_array_data(pack(head, timestamp_ns, middle, count), array)

        return encode


_TEMPLATES = _F144Templates()


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
