"""f142 (LogData, the predecessor of f144) serialiser built from patched templates.

f142 carries the alarm inside every value message (status and severity fields) instead of
in separate al00 messages.  The templates are built like f144's (see `f144`), with the
severity, status and timestamp fields next to each other in the root table: one
`struct.pack` patches all three and the value, so an f142 update costs what an f144 one
does.

Alarm values follow the ESS forwarder: EPICS severity 0..3 becomes f142's NO_ALARM, MINOR,
MAJOR, INVALID (whose enum numbers differ from EPICS'); the alarm status is matched by
name (CA's condition names such as "HIHI", also with the "_ALARM" suffix that PVA servers
may use), and a status f142 has no name for is sent as UDF, as the ESS forwarder does.
Differences, chosen because they report an alarm-free PV as alarm-free: an empty status
text with severity 0 is NO_ALARM (the ESS forwarder sends UDF for a PVA PV without alarm),
and an unknown severity is INVALID rather than an error.
"""

from __future__ import annotations

from typing import Any

import flatbuffers
from streaming_data_types.fbschemas.logdata_f142 import LogData as fb
from streaming_data_types.fbschemas.logdata_f142.AlarmSeverity import AlarmSeverity
from streaming_data_types.fbschemas.logdata_f142.AlarmStatus import AlarmStatus
from streaming_data_types.fbschemas.logdata_f142.Value import Value

from ._common import field_position, root_table
from ._logdata import LogDataSerialiser, PatchedTemplates

_FILE_IDENTIFIER = b"f142"
_VALUE_SLOT = 2
_TIMESTAMP_SLOT = 3
_STATUS_SLOT = 4
_SEVERITY_SLOT = 5

#: EPICS severity (0..3) -> f142 AlarmSeverity.
SEVERITY_TO_F142: dict[int, int] = {
    0: AlarmSeverity.NO_ALARM,
    1: AlarmSeverity.MINOR,
    2: AlarmSeverity.MAJOR,
    3: AlarmSeverity.INVALID,
}
#: EPICS alarm condition names, in CA wire order (the record's STAT field).
_EPICS_STATUS_NAMES = (
    "NO_ALARM", "READ", "WRITE", "HIHI", "HIGH", "LOLO", "LOW", "STATE", "COS", "COMM",
    "TIMEOUT", "HWLIMIT", "CALC", "SCAN", "LINK", "SOFT", "BAD_SUB", "UDF", "DISABLE",
    "SIMM", "READ_ACCESS", "WRITE_ACCESS",
)  # fmt: skip


def _status_table() -> dict[str, int]:
    """Status text as adapters deliver it -> f142 AlarmStatus (numbers as on CA's wire)."""
    table: dict[str, int] = {"": AlarmStatus.NO_ALARM}
    for number, name in enumerate(_EPICS_STATUS_NAMES):
        table[name] = number
        table[name + "_ALARM"] = number
    table["TIMED"] = table["TIMED_ALARM"] = AlarmStatus.TIMED
    if AlarmStatus.TIMED != table["TIMEOUT"] or AlarmStatus.WRITE_ACCESS != 21:
        raise RuntimeError("f142 AlarmStatus does not follow EPICS' numbering")
    return table


#: Status text -> f142 AlarmStatus.
STATUS_TO_F142: dict[str, int] = _status_table()
#: What an unknown severity or status maps to (typed: the generated enums are untyped).
_UNKNOWN_SEVERITY: int = AlarmSeverity.INVALID
_UNKNOWN_STATUS: int = AlarmStatus.UDF


def alarm_word(severity: int, status: str) -> int:
    """The 32-bit word the templates patch in: f142 severity (low half), status (high)."""
    return SEVERITY_TO_F142.get(severity, _UNKNOWN_SEVERITY) | (
        STATUS_TO_F142.get(status, _UNKNOWN_STATUS) << 16
    )


def _finish(builder: flatbuffers.Builder, name: int, member: int, value: int) -> bytes:
    fb.LogDataStart(builder)
    fb.LogDataAddSourceName(builder, name)
    fb.LogDataAddValueType(builder, member)
    fb.LogDataAddValue(builder, value)
    fb.LogDataAddTimestamp(builder, 0)
    fb.LogDataAddStatus(builder, 0)
    fb.LogDataAddSeverity(builder, 0)
    builder.Finish(fb.LogDataEnd(builder), file_identifier=_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _alarm_and_timestamp(buf: bytes) -> int:
    """Position of the severity field, checked to be followed by status and timestamp.

    The builder lays fields out in reverse order of addition, so severity (u16), status
    (u16) and timestamp (u64) form one 12-byte run that a single `<Iq` patches.
    """
    root = root_table(buf)
    sev = field_position(buf, root, _SEVERITY_SLOT)
    if (
        field_position(buf, root, _STATUS_SLOT) != sev + 2
        or field_position(buf, root, _TIMESTAMP_SLOT) != sev + 4
    ):
        raise RuntimeError("unexpected f142 template layout")
    return sev


_TEMPLATES = PatchedTemplates("f142", Value, _finish, "Iq", _alarm_and_timestamp, _VALUE_SLOT)
#: Status text -> the patched alarm word for each EPICS severity 0..3, precomputed so an
#: update only looks its word up (no int is built per update).
_ALARM_WORDS: dict[str, tuple[int, int, int, int]] = {
    status: (
        alarm_word(0, status),
        alarm_word(1, status),
        alarm_word(2, status),
        alarm_word(3, status),
    )
    for status in STATUS_TO_F142
}
_UNKNOWN_STATUS_WORDS = tuple(alarm_word(s, "?") for s in range(4))


class F142Serialiser(LogDataSerialiser):
    """Turns one PV's updates into f142 messages, alarm included, for `source_name`."""

    __slots__ = ()
    templates = _TEMPLATES

    def serialise(
        self, value: Any, timestamp_ns: int, severity: int = 0, status: str = ""
    ) -> bytes | None:
        """f142 message for `value` at `timestamp_ns` (unix ns) with the PV's alarm
        (EPICS severity 0..3, status text as the adapters give it); None for an empty
        array."""
        encode = self._by_type.get(type(value))
        if encode is None:
            encode = self._resolve(value)
        words = _ALARM_WORDS.get(status, _UNKNOWN_STATUS_WORDS)
        return encode(value, timestamp_ns, words[severity] if 0 <= severity <= 3 else words[3])
