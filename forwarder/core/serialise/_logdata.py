"""Value dispatch shared by the two LogData schemas (f144 and its predecessor f142).

Both schemas carry one numeric scalar or 1-d array in a union with one member per width and
signedness.  `LogDataSerialiser` maps a Python or numpy value to the member's dtype and
caches one encoder per type; a `Templates` object (one per schema) builds the encoders from
prebuilt FlatBuffers templates, so the per-update cost is one dict lookup and one
`struct.pack` (scalars) or `pack + join` (arrays), whatever the schema.

Encoders take `(value, timestamp_ns, extra)`: `extra` is a 32-bit word the schema's
template patches in as well (f142's alarm status and severity; f144 ignores it), so the
dispatch code is the same for both and passes the word through without allocating.

Type mapping: Python float -> Double, Python int -> Long (ULong above int64 max), bool
(Python or numpy) -> UByte 0/1, numpy scalars and arrays to the member of the same width
and signedness (float16 is widened to Float losslessly).  A 1-element array stays an array.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import flatbuffers
import numpy as np
from flatbuffers import number_types as nt

from ._common import UnsupportedValue, field_position, follow, root_table, unsupported

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

Encoder = Callable[[Any, int, int], "bytes | None"]
ScalarEncoder = Callable[[Any, int, int], bytes]

#: Little-endian dtype -> (union member suffix, struct code, flatbuffers number flags).
MEMBERS: dict[np.dtype[Any], tuple[str, str, type]] = {
    np.dtype("<i1"): ("Byte", "b", nt.Int8Flags),
    np.dtype("<u1"): ("UByte", "B", nt.Uint8Flags),
    np.dtype("<i2"): ("Short", "h", nt.Int16Flags),
    np.dtype("<u2"): ("UShort", "H", nt.Uint16Flags),
    np.dtype("<i4"): ("Int", "i", nt.Int32Flags),
    np.dtype("<u4"): ("UInt", "I", nt.Uint32Flags),
    np.dtype("<i8"): ("Long", "q", nt.Int64Flags),
    np.dtype("<u8"): ("ULong", "Q", nt.Uint64Flags),
    np.dtype("<f4"): ("Float", "f", nt.Float32Flags),
    np.dtype("<f8"): ("Double", "d", nt.Float64Flags),
}
_BOOL = np.dtype(bool)
_UBYTE = np.dtype("<u1")
_LONG = np.dtype("<i8")
_ULONG = np.dtype("<u8")
_DOUBLE = np.dtype("<f8")
_FLOAT = np.dtype("<f4")


#: `finish(builder, name, union member, value table) -> bytes`: a schema's root table.
Finish = Callable[[flatbuffers.Builder, int, int, int], bytes]
_join: Callable[[Iterable[Any]], bytes] = b"".join  # takes ndarrays (buffer protocol)


def template_buffer(
    source_name: str, dtype: np.dtype[Any], members: Any, finish: Finish, *, array: bool
) -> bytes:
    """One message of `dtype` built by the official builder, for a schema to patch.

    Every field is present (ForceDefaults), so a zero value still has a slot.  For arrays
    the vector (8 bytes of data: no end padding) is built first so that it lands last in
    the buffer, and everything before it does not depend on the length.  `members` is the
    schema's `Value` union enum; `finish` adds its root table.
    """
    suffix, _, flags = MEMBERS[dtype]
    builder = flatbuffers.Builder(128)
    builder.ForceDefaults(True)
    vector = builder.CreateNumpyVector(np.zeros(8 // dtype.itemsize, dtype)) if array else 0
    name = builder.CreateString(source_name)
    builder.StartObject(1)
    if array:
        builder.PrependUOffsetTRelativeSlot(0, vector, 0)
    else:
        builder.PrependSlot(flags, 0, 0, 0)
    value = builder.EndObject()
    return finish(builder, name, getattr(members, ("Array" if array else "") + suffix), value)


def with_array_data(header: bytes, array: np.ndarray) -> bytes:
    """An array message: the patched template header followed by the array's bytes."""
    try:
        return _join((header, array))
    except TypeError:  # not C-contiguous, so no flat buffer view
        return _join((header, np.ascontiguousarray(array)))


class Templates(Protocol):
    """Builds a schema's encoders for one source name (called once per dtype)."""

    schema: str

    def scalar(self, source_name: str, dtype: np.dtype[Any]) -> ScalarEncoder: ...

    def array(self, source_name: str, dtype: np.dtype[Any]) -> Encoder: ...


class PatchedTemplates:
    """A schema's `Templates`: every encoder is one prebuilt message with a run of header
    fields and the value patched in by one precompiled `struct.pack`.

    `header` is that run's struct format: ``"q"`` (the timestamp: f144) or ``"Iq"`` (the
    32-bit extra word, then the timestamp: f142's severity, status and timestamp);
    `header_position(template)` finds where it starts and checks the schema's layout;
    `value_slot` is the root table's slot of the value union.  The builder puts the value
    table after the root table, and an array's vector last of all, which both checks
    below rely on.
    """

    def __init__(
        self,
        schema: str,
        members: Any,
        finish: Finish,
        header: str,
        header_position: Callable[[bytes], int],
        value_slot: int,
    ) -> None:
        if header not in ("q", "Iq"):
            raise ValueError(f"unsupported template header {header!r}")
        self.schema = schema
        self._members = members
        self._finish = finish
        self._header = header
        self._header_size = struct.calcsize("<" + header)
        self._header_position = header_position
        self._value_slot = value_slot

    def _value_table(self, buf: bytes) -> int:
        return follow(buf, field_position(buf, root_table(buf), self._value_slot))

    def scalar(self, source_name: str, dtype: np.dtype[Any]) -> ScalarEncoder:
        """Build the scalar template for `dtype` and return a function patching it."""
        code = MEMBERS[dtype][1]
        buf = template_buffer(source_name, dtype, self._members, self._finish, array=False)
        pos, hsize = self._header_position(buf), self._header_size
        val_pos = field_position(buf, self._value_table(buf), 0)
        size = struct.calcsize("<" + code)
        if not pos + hsize <= val_pos:
            raise RuntimeError(f"unexpected {self.schema} template layout")
        pack = struct.Struct(
            f"<{pos}s{self._header}{val_pos - pos - hsize}s{code}{len(buf) - val_pos - size}s"
        ).pack
        head, middle, tail = buf[:pos], buf[pos + hsize : val_pos], buf[val_pos + size :]
        if self._header == "q":

            def encode(value: Any, timestamp_ns: int, _extra: int) -> bytes:
                return pack(head, timestamp_ns, middle, value, tail)

            return encode

        def encode_extra(value: Any, timestamp_ns: int, extra: int) -> bytes:
            return pack(head, extra, timestamp_ns, middle, value, tail)

        return encode_extra

    def array(self, source_name: str, dtype: np.dtype[Any]) -> Encoder:
        """Build the array template for little-endian `dtype`; the result takes 1-d arrays."""
        buf = template_buffer(source_name, dtype, self._members, self._finish, array=True)
        pos, hsize = self._header_position(buf), self._header_size
        length_pos = follow(buf, field_position(buf, self._value_table(buf), 0))
        if length_pos + 4 + 8 != len(buf) or not pos + hsize <= length_pos:
            raise RuntimeError(f"unexpected {self.schema} array template layout")
        pack = struct.Struct(f"<{pos}s{self._header}{length_pos - pos - hsize}sI").pack
        head, middle = buf[:pos], buf[pos + hsize : length_pos]
        if self._header == "q":

            def encode(array: np.ndarray, timestamp_ns: int, _extra: int) -> bytes | None:
                count = array.shape[0]
                if not count:
                    return None
                return with_array_data(pack(head, timestamp_ns, middle, count), array)

            return encode

        def encode_extra(array: np.ndarray, timestamp_ns: int, extra: int) -> bytes | None:
            count = array.shape[0]
            if not count:
                return None
            return with_array_data(pack(head, extra, timestamp_ns, middle, count), array)

        return encode_extra


class LogDataSerialiser:
    """One PV's values -> one schema's messages, through per-type cached encoders.

    Safe to call from several threads: the per-update path shares no mutable buffer, and
    a race while filling the caches only builds the same template twice.
    """

    __slots__ = ("source_name", "_templates", "_schema", "_by_type", "_arrays", "_scalars")
    #: The schema's template builder (set by each subclass).
    templates: Templates

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self._templates = templates = type(self).templates
        self._schema = templates.schema
        self._scalars: dict[np.dtype[Any], ScalarEncoder] = {}
        self._arrays: dict[np.dtype[Any], Encoder] = {}
        # Dispatch on the exact Python type; scalar entries are added for the types seen,
        # so building templates for types a PV never uses costs nothing.
        self._by_type: dict[type, Encoder] = {
            np.ndarray: self._encode_ndarray,
            list: self._encode_sequence,
            tuple: self._encode_sequence,
        }

    def encode(self, value: Any, timestamp_ns: int, extra: int) -> bytes | None:
        """Message for `value` at `timestamp_ns` (unix ns), None for an empty array."""
        encode = self._by_type.get(type(value))
        if encode is None:
            encode = self._resolve(value)
        return encode(value, timestamp_ns, extra)

    # -- dispatch ---------------------------------------------------------------------

    def _resolve(self, value: Any) -> Encoder:
        """Find the encoder for a type not seen yet; cache it when the type is exact."""
        kind = type(value)
        encoder: Encoder
        if isinstance(value, bool | np.bool_):
            encoder = self._bool_encoder()
        elif isinstance(value, np.generic):
            if value.dtype.kind not in "iuf":
                raise unsupported(self._schema, value)
            encoder = self._scalar(self._member_dtype(value.dtype, value))
        elif isinstance(value, int):
            encoder = self._int_encoder()
        elif isinstance(value, float):
            encoder = self._scalar(_DOUBLE)
        elif isinstance(value, np.ndarray):
            return self._encode_ndarray
        elif isinstance(value, list | tuple):
            return self._encode_sequence
        else:
            raise unsupported(self._schema, value)
        if kind in (bool, int, float) or issubclass(kind, np.generic):
            self._by_type[kind] = encoder  # not for subclasses such as IntEnum
        return encoder

    def _scalar(self, dtype: np.dtype[Any]) -> ScalarEncoder:
        encoder = self._scalars.get(dtype)
        if encoder is None:
            encoder = self._scalars[dtype] = self._templates.scalar(self.source_name, dtype)
        return encoder

    def _bool_encoder(self) -> Encoder:
        ubyte = self._scalar(_UBYTE)

        def encode(value: Any, timestamp_ns: int, extra: int) -> bytes:
            return ubyte(1 if value else 0, timestamp_ns, extra)

        return encode

    def _int_encoder(self) -> Encoder:
        """Python ints go to Long; only values that overflow it take the slower checks."""
        long = self._scalar(_LONG)
        schema = self._schema

        def encode(value: int, timestamp_ns: int, extra: int) -> bytes:
            try:
                return long(value, timestamp_ns, extra)
            except struct.error:
                if _INT64_MIN <= value <= _INT64_MAX:
                    raise  # the timestamp, not the value, is out of range
                if 0 <= value <= _UINT64_MAX:
                    return self._scalar(_ULONG)(value, timestamp_ns, extra)
                raise UnsupportedValue(
                    f"{schema} cannot carry int {value}: outside the int64 and uint64 ranges"
                ) from None

        return encode

    def _array_for(self, array: np.ndarray) -> Encoder:
        """Encoder for arrays of `array.dtype`, converting dtypes the schema lacks."""
        dtype = array.dtype
        if dtype == _BOOL:
            target = _UBYTE
        elif dtype.kind in "iuf":
            target = self._member_dtype(dtype, array)
        else:
            raise unsupported(self._schema, array)
        encoder = self._arrays.get(target)
        if encoder is None:
            encoder = self._arrays[target] = self._templates.array(self.source_name, target)
        if dtype == target:
            return encoder
        direct = encoder
        if dtype == _BOOL:

            def convert(array: np.ndarray, timestamp_ns: int, extra: int) -> bytes | None:
                return direct(array.view(_UBYTE), timestamp_ns, extra)

        else:  # big-endian or float16

            def convert(array: np.ndarray, timestamp_ns: int, extra: int) -> bytes | None:
                return direct(array.astype(target), timestamp_ns, extra)

        self._arrays[dtype] = convert
        return convert

    def _member_dtype(self, dtype: np.dtype[Any], value: Any) -> np.dtype[Any]:
        """Little-endian dtype with a union member for numeric `dtype`, else raise."""
        little = dtype.newbyteorder("<")
        if little in MEMBERS:
            return little
        if little == np.dtype("<f2"):
            return _FLOAT  # lossless widening
        raise unsupported(self._schema, value)

    # -- per-kind encoders ------------------------------------------------------------

    def _encode_ndarray(self, array: np.ndarray, timestamp_ns: int, extra: int) -> bytes | None:
        if array.ndim != 1:
            if array.ndim == 0:
                return self.encode(array[()], timestamp_ns, extra)
            raise unsupported(self._schema, array)
        encoder = self._arrays.get(array.dtype)
        if encoder is None:
            encoder = self._array_for(array)
        return encoder(array, timestamp_ns, extra)

    def _encode_sequence(
        self, value: list[Any] | tuple[Any, ...], timestamp_ns: int, extra: int
    ) -> bytes | None:
        if not value:
            return None
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):  # ragged or otherwise not array-like
            raise unsupported(self._schema, value) from None
        if array.ndim != 1:
            raise unsupported(self._schema, array)
        return self._encode_ndarray(array, timestamp_ns, extra)
