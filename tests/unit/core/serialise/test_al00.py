"""al00 alarm messages."""

from __future__ import annotations

import pytest
from streaming_data_types.alarm_al00 import Severity, deserialise_al00

from forwarder.core.serialise import serialise_alarm


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        (0, Severity.OK),
        (1, Severity.MINOR),
        (2, Severity.MAJOR),
        (3, Severity.INVALID),
        (4, Severity.INVALID),
        (-1, Severity.INVALID),
        (99, Severity.INVALID),
    ],
)
def test_severity_mapping(severity: int, expected: Severity) -> None:
    out = serialise_alarm("pv:a", 123, severity, "HIHI")
    assert out[4:8] == b"al00"
    info = deserialise_al00(out)
    assert info.severity == expected
    assert (info.source, info.timestamp_ns, info.message) == ("pv:a", 123, "HIHI")


@pytest.mark.parametrize("ts", [0, 2**63 - 1])
def test_unicode_and_empty_message(ts: int) -> None:
    info = deserialise_al00(serialise_alarm("température", ts, 1, ""))
    assert (info.source, info.timestamp_ns, info.message) == ("température", ts, "")
    info = deserialise_al00(serialise_alarm("x", ts, 2, "défaut ψ"))
    assert info.message == "défaut ψ"
