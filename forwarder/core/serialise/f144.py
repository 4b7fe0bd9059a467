"""f144 (LogData) serialiser built from patched templates.

`streaming_data_types.logdata_f144.serialise_f144` runs the pure Python FlatBuffers builder
on every call (~30 us).  Updates of one PV almost always have the same type, so each
serialiser builds one template per value type once and afterwards only splices the new
timestamp and value bytes into it with a precompiled `struct.Struct`.

Arrays use a layout in which the vector is the last thing in the buffer: everything before
it (tables, source name) does not depend on the length, so one template per dtype serves
every length and the message is just `header + array bytes` (one copy of the data).  The
cache is keyed by type only, so it is bounded by the dozen supported types however often
a PV's length changes.

Type mapping: Python float -> Double, Python int -> Long (ULong above int64 max), bool
(Python or numpy) -> UByte 0/1, numpy scalars and arrays to the member of the same width
and signedness (float16 is widened to Float losslessly).  A 1-element array stays an array.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

import flatbuffers
import numpy as np
from flatbuffers import number_types as nt
from streaming_data_types.fbschemas.logdata_f144 import f144_LogData as fb
from streaming_data_types.fbschemas.logdata_f144.Value import Value

from ._common import UnsupportedValue, field_position, follow, root_table, unsupported

_FILE_IDENTIFIER = b"f144"
_LOGDATA_TIMESTAMP_SLOT = 1
_LOGDATA_VALUE_SLOT = 3
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

Encoder = Callable[[Any, int], "bytes | None"]

# Little-endian dtype -> (union member suffix, struct code, flatbuffers number flags).
_MEMBERS: dict[np.dtype[Any], tuple[str, str, type]] = {
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


def _finish(builder: flatbuffers.Builder, name: int, member: int, value: int) -> bytes:
    fb.f144_LogDataStart(builder)
    fb.f144_LogDataAddSourceName(builder, name)
    fb.f144_LogDataAddTimestamp(builder, 0)
    fb.f144_LogDataAddValueType(builder, member)
    fb.f144_LogDataAddValue(builder, value)
    builder.Finish(fb.f144_LogDataEnd(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _scalar_encoder(source_name: str, dtype: np.dtype[Any]) -> Callable[[Any, int], bytes]:
    """Build the scalar template for `dtype` and return a function patching it."""
    suffix, code, flags = _MEMBERS[dtype]
    builder = flatbuffers.Builder(128)
    builder.ForceDefaults(True)  # zero values must still occupy a slot we can patch
    name = builder.CreateString(source_name)
    builder.StartObject(1)
    builder.PrependSlot(flags, 0, 0, 0)
    value = builder.EndObject()
    buf = _finish(builder, name, getattr(Value, suffix), value)

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

    def encode(value: Any, timestamp_ns: int) -> bytes:
        return pack(head, timestamp_ns, middle, value, tail)

    return encode


def _array_encoder(source_name: str, dtype: np.dtype[Any]) -> Encoder:
    """Build the array template for little-endian `dtype`; the result takes 1-d arrays."""
    suffix, _, _ = _MEMBERS[dtype]
    builder = flatbuffers.Builder(128)
    builder.ForceDefaults(True)
    # Built first, so it lands last in the buffer; 8 bytes of data leave no end padding.
    vector = builder.CreateNumpyVector(np.zeros(8 // dtype.itemsize, dtype))
    name = builder.CreateString(source_name)
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, vector, 0)
    value = builder.EndObject()
    buf = _finish(builder, name, getattr(Value, "Array" + suffix), value)

    root = root_table(buf)
    ts_pos = field_position(buf, root, _LOGDATA_TIMESTAMP_SLOT)
    value_table = follow(buf, field_position(buf, root, _LOGDATA_VALUE_SLOT))
    length_pos = follow(buf, field_position(buf, value_table, 0))
    if length_pos + 4 + 8 != len(buf) or not ts_pos + 8 <= length_pos:
        raise RuntimeError("unexpected f144 array template layout")
    pack = struct.Struct(f"<{ts_pos}sq{length_pos - ts_pos - 8}sI").pack
    head, middle = buf[:ts_pos], buf[ts_pos + 8 : length_pos]
    join: Callable[[Iterable[Any]], bytes] = b"".join  # takes ndarrays via the buffer protocol

    def encode(array: np.ndarray, timestamp_ns: int) -> bytes | None:
        count = array.shape[0]
        if not count:
            return None
        header = pack(head, timestamp_ns, middle, count)
        try:
            return join((header, array))
        except TypeError:  # not C-contiguous, so no flat buffer view
            return join((header, np.ascontiguousarray(array)))

    return encode


class F144Serialiser:
    """Turns one PV's updates into f144 messages for `source_name`.

    Safe to call from several threads: the per-update path shares no mutable buffer, and
    a race while filling the caches only builds the same template twice.
    """

    __slots__ = ("source_name", "_by_type", "_arrays", "_scalars")

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self._scalars: dict[np.dtype[Any], Callable[[Any, int], bytes]] = {}
        self._arrays: dict[np.dtype[Any], Encoder] = {}
        # Dispatch on the exact Python type; scalar entries are added for the types seen,
        # so building templates for types a PV never uses costs nothing.
        self._by_type: dict[type, Encoder] = {
            np.ndarray: self._encode_ndarray,
            list: self._encode_sequence,
            tuple: self._encode_sequence,
        }

    def serialise(self, value: Any, timestamp_ns: int) -> bytes | None:
        """f144 message for `value` at `timestamp_ns` (unix ns), None for an empty array."""
        encode = self._by_type.get(type(value))
        if encode is None:
            encode = self._resolve(value)
        return encode(value, timestamp_ns)

    # -- dispatch ---------------------------------------------------------------------

    def _resolve(self, value: Any) -> Encoder:
        """Find the encoder for a type not seen yet; cache it when the type is exact."""
        kind = type(value)
        encoder: Encoder
        if isinstance(value, bool | np.bool_):
            encoder = self._bool_encoder()
        elif isinstance(value, np.generic):
            if value.dtype.kind not in "iuf":
                raise unsupported("f144", value)
            encoder = self._scalar(_member_dtype(value.dtype, value))
        elif isinstance(value, int):
            encoder = self._int_encoder()
        elif isinstance(value, float):
            encoder = self._scalar(_DOUBLE)
        elif isinstance(value, np.ndarray):
            return self._encode_ndarray
        elif isinstance(value, list | tuple):
            return self._encode_sequence
        else:
            raise unsupported("f144", value)
        if kind in (bool, int, float) or issubclass(kind, np.generic):
            self._by_type[kind] = encoder  # not for subclasses such as IntEnum
        return encoder

    def _scalar(self, dtype: np.dtype[Any]) -> Callable[[Any, int], bytes]:
        encoder = self._scalars.get(dtype)
        if encoder is None:
            encoder = self._scalars[dtype] = _scalar_encoder(self.source_name, dtype)
        return encoder

    def _bool_encoder(self) -> Encoder:
        ubyte = self._scalar(_UBYTE)

        def encode(value: Any, timestamp_ns: int) -> bytes:
            return ubyte(1 if value else 0, timestamp_ns)

        return encode

    def _int_encoder(self) -> Encoder:
        """Python ints go to Long; only values that overflow it take the slower checks."""
        long = self._scalar(_LONG)

        def encode(value: int, timestamp_ns: int) -> bytes:
            try:
                return long(value, timestamp_ns)
            except struct.error:
                if _INT64_MIN <= value <= _INT64_MAX:
                    raise  # the timestamp, not the value, is out of range
                if 0 <= value <= _UINT64_MAX:
                    return self._scalar(_ULONG)(value, timestamp_ns)
                raise UnsupportedValue(
                    f"f144 cannot carry int {value}: outside the int64 and uint64 ranges"
                ) from None

        return encode

    def _array_for(self, array: np.ndarray) -> Encoder:
        """Encoder for arrays of `array.dtype`, converting dtypes f144 lacks on the way."""
        dtype = array.dtype
        if dtype == _BOOL:
            target = _UBYTE
        elif dtype.kind in "iuf":
            target = _member_dtype(dtype, array)
        else:
            raise unsupported("f144", array)
        encoder = self._arrays.get(target)
        if encoder is None:
            encoder = self._arrays[target] = _array_encoder(self.source_name, target)
        if dtype == target:
            return encoder
        direct = encoder
        if dtype == _BOOL:

            def convert(array: np.ndarray, timestamp_ns: int) -> bytes | None:
                return direct(array.view(_UBYTE), timestamp_ns)

        else:  # big-endian or float16

            def convert(array: np.ndarray, timestamp_ns: int) -> bytes | None:
                return direct(array.astype(target), timestamp_ns)

        self._arrays[dtype] = convert
        return convert

    # -- per-kind encoders ------------------------------------------------------------

    def _encode_ndarray(self, array: np.ndarray, timestamp_ns: int) -> bytes | None:
        if array.ndim != 1:
            if array.ndim == 0:
                return self.serialise(array[()], timestamp_ns)
            raise unsupported("f144", array)
        encoder = self._arrays.get(array.dtype)
        if encoder is None:
            encoder = self._array_for(array)
        return encoder(array, timestamp_ns)

    def _encode_sequence(
        self, value: list[Any] | tuple[Any, ...], timestamp_ns: int
    ) -> bytes | None:
        if not value:
            return None
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):  # ragged or otherwise not array-like
            raise unsupported("f144", value) from None
        if array.ndim != 1:
            raise unsupported("f144", array)
        return self._encode_ndarray(array, timestamp_ns)


def _member_dtype(dtype: np.dtype[Any], value: Any) -> np.dtype[Any]:
    """Little-endian dtype with an f144 member for numeric `dtype`, else raise."""
    little = dtype.newbyteorder("<")
    if little in _MEMBERS:
        return little
    if little == np.dtype("<f2"):
        return _FLOAT  # lossless widening
    raise unsupported("f144", value)
