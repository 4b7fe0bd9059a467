"""tdct (timestamps) serialiser: relative nanosecond arrays become absolute unix ns.

Same technique as f144 arrays: one template per serialiser with the uint64 vector placed
last, so a message is `patched header + vector bytes` for any length.  No sequence counter
is written (readers see 0), as the forwarder has no meaningful one to give.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

import flatbuffers
import numpy as np
from streaming_data_types.fbschemas.timestamps_tdct import timestamp as fb

from ._common import field_position, follow, root_table, unsupported

_FILE_IDENTIFIER = b"tdct"
_TIMESTAMPS_SLOT = 1
_UINT64 = np.dtype("<u8")
_U64_MASK = 2**64 - 1


def _template(source_name: str) -> tuple[bytes, int]:
    """Header bytes (up to and including the vector length word) and the length position."""
    builder = flatbuffers.Builder(128)
    builder.ForceDefaults(True)
    vector = builder.CreateNumpyVector(np.zeros(1, _UINT64))  # first built = last in buffer
    name = builder.CreateString(source_name)
    fb.timestampStart(builder)
    fb.timestampAddName(builder, name)
    fb.timestampAddTimestamps(builder, vector)
    builder.Finish(fb.timestampEnd(builder), file_identifier=_FILE_IDENTIFIER)
    buf = bytes(builder.Output())
    length_pos = follow(buf, field_position(buf, root_table(buf), _TIMESTAMPS_SLOT))
    if length_pos + 4 + 8 != len(buf):
        raise RuntimeError("unexpected tdct template layout")
    return buf[:length_pos], length_pos


class TdctSerialiser:
    """Turns one PV's arrays of relative ns offsets into tdct messages for `source_name`."""

    __slots__ = ("source_name", "_head", "_pack")

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self._head, length_pos = _template(source_name)
        self._pack = struct.Struct(f"<{length_pos}sI").pack

    def serialise(
        self, value: Any, timestamp_ns: int, severity: int = 0, status: str = ""
    ) -> bytes | None:
        """Message with `timestamp_ns + value` (wrapping uint64), None when value is empty."""
        if isinstance(value, str | bytes):
            raise unsupported("tdct", value)
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):
            raise unsupported("tdct", value) from None
        if array.ndim > 1:
            raise unsupported("tdct", array)
        kind = array.dtype.kind
        if kind in "iub":
            absolute = array.astype(_UINT64).reshape(-1)  # negative offsets wrap, then add
        elif kind == "f":
            if not np.isfinite(array).all():
                raise unsupported("tdct", array)  # NaN/inf offsets have no timestamp
            absolute = np.rint(array).astype(np.int64).astype(_UINT64).reshape(-1)
        else:
            raise unsupported("tdct", array)
        count = absolute.shape[0]
        if not count:
            return None
        absolute += np.uint64(timestamp_ns & _U64_MASK)
        join: Callable[[Iterable[Any]], bytes] = b"".join
        return join((self._pack(self._head, count), absolute))
