"""NTTable serialisers: a table with `value` and `timestamp` columns -> one se00 / senv.

These are the ESS forwarder's `nttable_se00` and `nttable_senv` schemas.  A table update
(the PVA adapter hands it over as a dict of column name -> 1-d numpy array) becomes one
message holding the whole `value` column, with the `timestamp` column (unix ns) as the
per-value timestamps, the first timestamp as the message timestamp, the difference of the
first two as the sample interval (0 for a single row), channel 0 and a message counter
that starts at 0 and counts this stream's messages.  senv can only carry integers, so
floating-point values are rounded to int64 as the ESS forwarder does.

A table without rows is not forwarded.  Anything else (not a table, or a table lacking one
of the two columns) raises `UnsupportedValue`, which forwarding counts as a drop.  These
schemas update at table rate, not at value rate, so the library builders are used.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime, timezone
from typing import Any

import numpy as np
from streaming_data_types.array_1d_se00 import serialise_se00
from streaming_data_types.sample_environment_senv import serialise_senv

from ._common import UnsupportedValue

_SE00_VALUE_KINDS = "iuf"
_SENV_VALUE_KINDS = "iu"


class _TableSerialiser(ABC):
    """Shared table checks; `_encode` (se00 or senv) is the one part that differs."""

    schema = ""

    __slots__ = ("source_name", "_counter")

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self._counter = -1

    def serialise(
        self, value: Any, timestamp_ns: int, severity: int = 0, status: str = ""
    ) -> bytes | None:
        """One message for a table update, None for a table without rows (the update's
        own timestamp and alarm are not used: the table carries its times)."""
        columns = self._columns(value)
        if columns is None:
            return None
        return self._encode(*columns)

    @abstractmethod
    def _encode(self, values: np.ndarray, timestamps: np.ndarray) -> bytes: ...

    def _columns(self, value: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """(values, timestamps) of a table, None when it has no rows; else raise."""
        if not isinstance(value, dict):
            raise UnsupportedValue(
                f"{self.schema} needs an NTTable with 'value' and 'timestamp' columns, "
                f"the PV is not a table (got {type(value).__name__})"
            )
        try:
            values, timestamps = value["value"], value["timestamp"]
        except KeyError:
            raise UnsupportedValue(
                f"{self.schema} needs an NTTable with 'value' and 'timestamp' columns, "
                f"found columns {sorted(value)}"
            ) from None
        values, timestamps = np.asarray(values), np.asarray(timestamps)
        if values.ndim != 1 or timestamps.ndim != 1 or timestamps.dtype.kind not in "iu":
            raise UnsupportedValue(
                f"{self.schema} needs 1-d numeric 'value' and integer 'timestamp' columns, "
                f"got {values.dtype}[{values.ndim}-d] and {timestamps.dtype}"
            )
        if not len(timestamps):
            return None
        return values, timestamps

    def _next(self) -> int:
        self._counter += 1
        return self._counter


def _native(array: np.ndarray) -> np.ndarray:
    """The library's type maps are keyed by native-order dtypes."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _delta(timestamps: np.ndarray) -> int:
    return int(timestamps[1]) - int(timestamps[0]) if len(timestamps) > 1 else 0


class Se00Serialiser(_TableSerialiser):
    """`nttable_se00`: the table as one se00 (array_1d) message."""

    schema = "nttable_se00"
    __slots__ = ()

    def _encode(self, values: np.ndarray, timestamps: np.ndarray) -> bytes:
        if values.dtype.kind not in _SE00_VALUE_KINDS:
            raise UnsupportedValue(f"se00 cannot carry a 'value' column of type {values.dtype}")
        if values.dtype == np.float16:
            values = values.astype(np.float32)
        # streaming_data_types ships no type information: the annotation states what it returns.
        encoded: bytes = serialise_se00(
            name=self.source_name,
            channel=0,
            timestamp_unix_ns=int(timestamps[0]),
            sample_ts_delta=_delta(timestamps),
            message_counter=self._next(),
            values=_native(values),
            value_timestamps=timestamps,
        )
        return encoded


class SenvSerialiser(_TableSerialiser):
    """`nttable_senv`: the table as one senv (sample environment) message."""

    schema = "nttable_senv"
    __slots__ = ()

    def _encode(self, values: np.ndarray, timestamps: np.ndarray) -> bytes:
        if values.dtype.kind == "f":
            if not np.isfinite(values).all():
                raise UnsupportedValue("senv cannot carry NaN or infinite values")
            values = values.round().astype(np.int64)
        elif values.dtype.kind == "b":
            values = values.astype(np.uint8)
        elif values.dtype.kind not in _SENV_VALUE_KINDS:
            raise UnsupportedValue(f"senv cannot carry a 'value' column of type {values.dtype}")
        first = datetime.fromtimestamp(int(timestamps[0]) / 1e9, tz=timezone.utc)
        # streaming_data_types ships no type information: the annotation states what it returns.
        encoded: bytes = serialise_senv(
            name=self.source_name,
            channel=0,
            timestamp=first,
            sample_ts_delta=_delta(timestamps),
            message_counter=self._next(),
            values=_native(values),
            value_timestamps=timestamps,
        )
        return encoded
