"""Decode and encode configuration messages (rf5k and fc00) into `ConfigCommand`s.

Config messages come from a Kafka topic anyone may write to, so decoding treats every byte
as hostile: whatever the input, the only exception that leaves this module is
`ConfigMessageError`, and a message with some bad streams still applies its good ones
(each bad stream is reported in `ConfigCommand.rejected`).

Decisions about empty results (documented here because callers log them differently):

* ADD with no streams, or with only invalid ones -> `ConfigMessageError` (nothing to do, and
  the operator must see why).
* REMOVE with no usable filter -> `ConfigMessageError`.  An entry whose channel, schema and
  topic are all empty is rejected: it would match everything, which is REMOVEALL's job.
* REMOVEALL ignores any streams in the message.
* REPLACE with an empty stream list is accepted and empties the configuration (that is what
  it literally asks for); REPLACE whose streams are *all* invalid is an error, so a typo
  cannot wipe the running configuration.
* Streams repeated within one message are collapsed by identity (`StreamSpec.key`); the
  first position is kept and the last periodic flag wins.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from flatbuffers import encode, packer
from flatbuffers.table import Table
from streaming_data_types.forwarder_config_update_fc00 import (
    StreamInfo as Fc00StreamInfo,
)
from streaming_data_types.forwarder_config_update_fc00 import (
    deserialise_fc00,
    serialise_fc00,
)
from streaming_data_types.forwarder_config_update_rf5k import (
    StreamInfo as Rf5kStreamInfo,
)
from streaming_data_types.forwarder_config_update_rf5k import (
    deserialise_rf5k,
    serialise_rf5k,
)

from forwarder.core.streams import (
    PVA_ONLY_SCHEMAS,
    STREAM_SCHEMAS,
    Protocol,
    StreamFilter,
    StreamSpec,
    is_legal_topic,
)

SCHEMA_IDS = ("rf5k", "fc00")

_PROTOCOL_VALUES = frozenset(int(p) for p in Protocol)
#: How many rejection reasons an error line quotes before summarising the rest.
_MAX_REASONS_IN_ERROR = 3
#: Longest field text quoted in a reason; garbage input can carry huge strings.
_MAX_FIELD_CHARS = 80


class UpdateKind(enum.Enum):
    """What a config message asks for; values are the fc00 wire values (rf5k lacks REPLACE)."""

    ADD = 0
    REMOVE = 1
    REMOVEALL = 2
    REPLACE = 3


@dataclass
class ConfigCommand:
    """A decoded config message, ready for `StreamRegistry.apply`."""

    kind: UpdateKind
    streams: list[StreamSpec] = field(default_factory=list)
    filters: list[StreamFilter] = field(default_factory=list)
    schema_id: str = "fc00"
    rejected: list[str] = field(default_factory=list)


class ConfigMessageError(ValueError):
    """The whole message is unusable; `str(error)` is one line meant for the log."""


# A raw stream as found on the wire, before validation: channel, schema, topic, protocol,
# periodic.  Kept as a plain tuple because both schemas yield the same shape.
_RawStream = tuple[str, str, str, int, bool]


def decode_config_message(buf: bytes, rf5k_periodic: bool) -> ConfigCommand:
    """Decode an rf5k or fc00 message.

    rf5k has no periodic flag, so its streams get `rf5k_periodic` (a command-line choice).
    Raises `ConfigMessageError` (and nothing else) when the message cannot be used at all.
    """
    try:
        data = bytes(buf)
    except Exception as exc:  # not bytes-like at all: still only ConfigMessageError
        raise ConfigMessageError(f"message is not bytes ({type(buf).__name__})") from exc
    if len(data) < 8:
        raise ConfigMessageError(f"message too short ({len(data)} bytes)")
    schema_id = data[4:8].decode("ascii", "backslashreplace")
    if schema_id not in SCHEMA_IDS:
        raise ConfigMessageError(f"unknown schema id {schema_id!r}")
    raw_kind, raw_streams = _read(data, schema_id, rf5k_periodic)
    kind = _kind(raw_kind, schema_id)
    if kind is UpdateKind.REMOVEALL:
        return ConfigCommand(kind, schema_id=schema_id)
    if kind is UpdateKind.REMOVE:
        return _remove_command(raw_streams, schema_id)
    return _add_or_replace_command(kind, raw_streams, schema_id)


def encode_config_message(
    kind: UpdateKind,
    streams: Sequence[StreamSpec | StreamFilter],
    schema_id: str = "fc00",
) -> bytes:
    """Encode a config message (storage topic, operator CLI, tests).

    `StreamFilter`s are accepted so a REMOVE can carry wildcards and empty fields; they have
    no protocol or periodic flag on their own, so PVA and 0 are written (REMOVE ignores both).
    Raises ValueError for an unknown schema id or REPLACE with rf5k, which cannot express it.
    The streaming_data_types serialisers write the stream vector in reverse, so the rows are
    passed reversed: the wire order (and the decoded order) is then the order given here.
    """
    rows = [_wire_fields(s) for s in reversed(streams)]
    # streaming_data_types ships no type information: the annotations state what it returns.
    encoded: bytes
    if schema_id == "fc00":
        encoded = serialise_fc00(kind.value, [Fc00StreamInfo(*row) for row in rows])
        return encoded
    if schema_id == "rf5k":
        if kind is UpdateKind.REPLACE:
            raise ValueError("REPLACE is not supported by rf5k")
        encoded = serialise_rf5k(kind.value, [Rf5kStreamInfo(*row[:4]) for row in rows])
        return encoded
    raise ValueError(f"unknown schema id {schema_id!r} (expected one of {SCHEMA_IDS})")


def _wire_fields(stream: StreamSpec | StreamFilter) -> tuple[str, str, str, int, int]:
    if isinstance(stream, StreamSpec):
        return (
            stream.channel,
            stream.schema,
            stream.topic,
            int(stream.protocol),
            int(stream.periodic),
        )
    return (stream.channel, stream.schema, stream.topic, int(Protocol.PVA), 0)


def _read(data: bytes, schema_id: str, rf5k_periodic: bool) -> tuple[int, list[_RawStream]]:
    """Run the flatbuffers decoder, turning *any* failure into ConfigMessageError.

    Catching Exception is deliberate: flatbuffers reading corrupt input raises IndexError,
    struct.error, UnicodeDecodeError, OverflowError... and the list is not documented.
    """
    try:
        _check_bounds(data)
        if schema_id == "rf5k":
            update = deserialise_rf5k(data)
            raws = [
                (s.channel, s.schema, s.topic, int(s.protocol), rf5k_periodic)
                for s in update.streams
            ]
        else:
            update = deserialise_fc00(data)
            raws = [
                (s.channel, s.schema, s.topic, int(s.protocol), bool(s.periodic))
                for s in update.streams
            ]
        return int(update.config_change), raws
    except Exception as exc:
        detail = " ".join(str(exc).split()) or "no detail"
        raise ConfigMessageError(
            f"corrupt {schema_id} message: {type(exc).__name__}: {detail}"
        ) from exc


#: Table slots (vtable offsets) shared by rf5k and fc00: the root's stream vector and each
#: stream's channel, schema and topic strings.
_STREAMS_SLOT = 6
_STRING_SLOTS = (4, 6, 8)


def _check_bounds(data: bytes) -> None:
    """Raise ValueError if the stream vector or a stream's string runs past the end.

    The Python flatbuffers reader slices strings without checking their stored length, so a
    truncated message would otherwise decode into shortened PV names (and forward them),
    and the streaming_data_types deserialisers treat a cut stream vector as "no streams".
    """
    size = len(data)
    root = Table(data, encode.Get(packer.uoffset, data, 0))
    slot = root.Offset(_STREAMS_SLOT)
    if not slot:
        return
    first = root.Vector(slot)
    count = root.VectorLen(slot)
    if first + 4 * count > size:
        raise ValueError(f"stream vector of {count} entries runs past the end (truncated?)")
    for index in range(count):
        stream = Table(data, root.Indirect(first + 4 * index))
        for field_slot in _STRING_SLOTS:
            offset = stream.Offset(field_slot)
            if not offset:
                continue
            start = stream.Indirect(stream.Pos + offset)
            length = encode.Get(packer.uoffset, data, start)
            if start + 4 + length > size:
                raise ValueError(f"a string of stream {index} runs past the end (truncated?)")


def _kind(raw_kind: int, schema_id: str) -> UpdateKind:
    if schema_id == "rf5k" and raw_kind == UpdateKind.REPLACE.value:
        raise ConfigMessageError("REPLACE is not supported by rf5k")
    try:
        return UpdateKind(raw_kind)
    except ValueError:
        raise ConfigMessageError(f"unknown update type {raw_kind}") from None


def _remove_command(raws: list[_RawStream], schema_id: str) -> ConfigCommand:
    filters: dict[StreamFilter, None] = {}
    rejected: list[str] = []
    for channel, schema, topic, protocol, _periodic in raws:
        if not (channel or schema or topic):
            rejected.append(
                _reason(
                    channel,
                    schema,
                    topic,
                    protocol,
                    [
                        "REMOVE needs at least one of channel, schema or topic"
                        " (use REMOVEALL to remove everything)"
                    ],
                )
            )
            continue
        filters[StreamFilter(channel, schema, topic)] = None
    if not filters:
        raise ConfigMessageError(_nothing_usable("REMOVE", "usable filter", rejected))
    return ConfigCommand(
        UpdateKind.REMOVE, filters=list(filters), schema_id=schema_id, rejected=rejected
    )


def _add_or_replace_command(
    kind: UpdateKind, raws: list[_RawStream], schema_id: str
) -> ConfigCommand:
    valid: dict[tuple[str, str, str, Protocol], StreamSpec] = {}
    rejected: list[str] = []
    for channel, schema, topic, protocol, periodic in raws:
        problems = _problems(channel, schema, topic, protocol)
        if problems:
            rejected.append(_reason(channel, schema, topic, protocol, problems))
            continue
        spec = StreamSpec(channel, schema, topic, Protocol(protocol), periodic)
        valid[spec.key] = spec  # a repeat keeps its first position, last flag wins
    if not valid and (kind is UpdateKind.ADD or rejected):
        raise ConfigMessageError(_nothing_usable(kind.name, "valid streams", rejected))
    return ConfigCommand(kind, streams=list(valid.values()), schema_id=schema_id, rejected=rejected)


#: Longest record name (the part before the first ".") a CA search can carry: EPICS 3.14
#: on, enforced by caproto and RSRV.  Checked at ADD so that such a stream is rejected
#: with its reason (and never stored) rather than failing at every start.
CA_MAX_RECORD_NAME = 59


def _problems(channel: str, schema: str, topic: str, protocol: int) -> list[str]:
    """Every reason the stream cannot be forwarded, so the operator fixes them in one go."""
    problems = []
    if not channel.strip(" "):
        problems.append("channel is empty" if not channel else "channel is only spaces")
    elif not channel.isprintable():
        # Spaces are printable and allowed (the ESS forwarder accepts them, and a CA or PVA
        # server may serve such a name); tabs, newlines, other separators are not.
        problems.append("channel contains control characters or non-space whitespace")
    if protocol == Protocol.CA and len(channel.partition(".")[0]) > CA_MAX_RECORD_NAME:
        problems.append(
            f"CA record names are limited to {CA_MAX_RECORD_NAME} characters "
            f"(this one has {len(channel.partition('.')[0])}); CA cannot search for it"
        )
    if schema not in STREAM_SCHEMAS:
        problems.append(f"schema must be one of {', '.join(STREAM_SCHEMAS)}")
    elif schema in PVA_ONLY_SCHEMAS and protocol != Protocol.PVA and protocol in _PROTOCOL_VALUES:
        problems.append(
            f"schema {schema} needs protocol pva (an NTTable exists only over PV Access)"
        )
    if not topic:
        problems.append("topic is empty")
    elif not is_legal_topic(topic):
        problems.append("topic is not a legal Kafka topic name ([a-zA-Z0-9._-], max 249 chars)")
    if protocol not in _PROTOCOL_VALUES:
        problems.append(f"unknown protocol {protocol}")
    return problems


def _reason(channel: str, schema: str, topic: str, protocol: int, problems: list[str]) -> str:
    proto = Protocol(protocol).name.lower() if protocol in _PROTOCOL_VALUES else str(protocol)
    return (
        f"stream (channel={_quote(channel)}, schema={_quote(schema)}, topic={_quote(topic)},"
        f" protocol={proto}): {'; '.join(problems)}"
    )


def _quote(text: str) -> str:
    if len(text) > _MAX_FIELD_CHARS:
        return repr(text[:_MAX_FIELD_CHARS]) + "..."
    return repr(text)


def _nothing_usable(kind_name: str, what: str, rejected: list[str]) -> str:
    if not rejected:
        return f"{kind_name} with no streams"
    shown = " | ".join(rejected[:_MAX_REASONS_IN_ERROR])
    more = len(rejected) - _MAX_REASONS_IN_ERROR
    suffix = f" | (+{more} more)" if more > 0 else ""
    return f"{kind_name} with no {what}: {shown}{suffix}"
