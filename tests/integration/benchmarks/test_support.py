"""The benchmark's fast f144/f142 reader agrees with `streaming_data_types` on every message."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from streaming_data_types.logdata_f144 import serialise_f144

from benchmarks.support import f144_time_and_value
from forwarder.core.serialise import F142Serialiser, F144Serialiser

TS = 1_700_000_000_123_456_789
VALUES = [0, 1, -5, 2**40, np.int8(-3), np.uint16(7), np.float32(1.5), 2.25, np.float64(0.0)]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_forwarder_messages(value: Any) -> None:
    for serialiser in (F144Serialiser("PV"), F142Serialiser("PV")):
        payload = serialiser.serialise(value, TS)
        assert payload is not None
        assert f144_time_and_value(payload) == (TS, float(value))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_library_messages(value: Any) -> None:
    """Built by the library (fields at their default may be absent): same result.  (Its
    f142 serialiser does not run under NumPy 2, so f142 is covered by the test above.)"""
    payload = serialise_f144("PV", value, TS)
    assert f144_time_and_value(payload) == (TS, float(value))


def test_arrays_are_not_counters() -> None:
    ts, value = f144_time_and_value(serialise_f144("PV", np.arange(3.0), TS))
    assert ts == TS and math.isnan(value)
