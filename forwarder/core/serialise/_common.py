"""Shared pieces of the serialisers: the error type and FlatBuffer layout readers.

Templates are built once with the official builder; these helpers find where the fields
ended up so that later messages can be produced by splicing new bytes into the template
instead of running the (slow, pure Python) builder on every update.
"""

from __future__ import annotations

import struct

import numpy as np


class UnsupportedValue(TypeError):
    """The value's type cannot be represented by the schema (string, object, 2-D, complex...).

    A TypeError so callers can treat it like any other wrong-type input; the message names
    the type so the operator can tell which PV is misconfigured.
    """


_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")


def root_table(buf: bytes) -> int:
    """Position of the root table (the first uoffset of a finished buffer)."""
    return int(_U32.unpack_from(buf, 0)[0])


def field_position(buf: bytes, table: int, slot: int) -> int:
    """Absolute position of field `slot` of the table at `table`.

    Raises LookupError when the field is absent, which would mean the template was built
    without ForceDefaults and could not be patched.
    """
    vtable = table - _I32.unpack_from(buf, table)[0]
    vtable_size = _U16.unpack_from(buf, vtable)[0]
    entry = 4 + 2 * slot
    offset = _U16.unpack_from(buf, vtable + entry)[0] if entry < vtable_size else 0
    if offset == 0:
        raise LookupError(f"field {slot} missing from table at {table}")
    return table + int(offset)


def follow(buf: bytes, position: int) -> int:
    """Target of the uoffset stored at `position` (a sub-table or a vector's length word)."""
    return position + int(_U32.unpack_from(buf, position)[0])


def unsupported(schema: str, value: object) -> UnsupportedValue:
    """Build the error naming the offending type, so log lines say what the PV delivered."""
    if isinstance(value, np.ndarray):
        what = f"numpy array of dtype {value.dtype} with {value.ndim} dimensions"
    else:
        what = type(value).__name__
    return UnsupportedValue(f"{schema} cannot carry a value of type {what}")
