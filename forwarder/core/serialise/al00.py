"""al00 (alarm) serialiser; runs only when a PV's alarm changes, so the library path is fine."""

from __future__ import annotations

from streaming_data_types.alarm_al00 import Severity, serialise_al00

_SEVERITIES = {int(s.value): s for s in Severity}


def serialise_alarm(source_name: str, timestamp_ns: int, severity: int, message: str) -> bytes:
    """al00 message; severity 0..3 = OK/MINOR/MAJOR/INVALID, anything else counts as INVALID
    because an unknown severity must not look healthier than it is."""
    # streaming_data_types ships no type information: the annotation states what it returns.
    encoded: bytes = serialise_al00(
        source_name, timestamp_ns, _SEVERITIES.get(int(severity), Severity.INVALID), message
    )
    return encoded
