"""Streams from CHANNEL arguments and stream files, turned into the config message to send.

The message is validated by decoding it with the forwarder's own
`forwarder.core.config_messages`, so this tool accepts exactly what a forwarder applies.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from forwarder.app.config_cli.errors import UsageError
from forwarder.core.config_messages import (
    ConfigCommand,
    ConfigMessageError,
    UpdateKind,
    decode_config_message,
    encode_config_message,
)
from forwarder.core.streams import Protocol, StreamFilter, StreamSpec

_STREAM_FIELDS = ("channel", "schema", "topic", "protocol", "periodic")
_TRUE = frozenset({"1", "true", "yes", "on", "periodic"})
_FALSE = frozenset({"0", "false", "no", "off"})
KINDS = {
    "add": UpdateKind.ADD,
    "remove": UpdateKind.REMOVE,
    "remove-all": UpdateKind.REMOVEALL,
    "replace": UpdateKind.REPLACE,
}


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"{where}: periodic must be true or false, not {value!r}")


def _spec(fields: dict[str, Any], where: str) -> StreamSpec:
    """One stream from a file entry; deep validation is left to the config message codec."""
    unknown = sorted(set(fields) - set(_STREAM_FIELDS))
    if unknown:
        raise UsageError(
            f"{where}: unknown field(s) {', '.join(unknown)} (expected {', '.join(_STREAM_FIELDS)})"
        )
    missing = [f for f in _STREAM_FIELDS[:4] if fields.get(f) in (None, "")]
    if missing:
        raise UsageError(f"{where}: missing {', '.join(missing)}")
    for name in _STREAM_FIELDS[:4]:
        if not isinstance(fields[name], str):
            raise UsageError(f"{where}: {name} must be text, not {fields[name]!r}")
    try:
        protocol = Protocol.parse(fields["protocol"])
    except ValueError as exc:
        raise UsageError(f"{where}: {exc}") from None
    periodic = _bool(fields.get("periodic", False), where)
    return StreamSpec(fields["channel"], fields["schema"], fields["topic"], protocol, periodic)


def _looks_structured(text: str) -> str | None:
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped[0] in "[{":
            return "json"
        if stripped == "---" or stripped.startswith("- ") or stripped == "-":
            return "yaml"
        return None
    return None


def _text_streams(text: str, path: str) -> list[StreamSpec]:
    streams = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].split()
        if not content:
            continue
        where = f"{path}:{number}"
        if len(content) not in (4, 5):
            hint = " (a channel with spaces goes in a JSON or YAML file)" if content[5:] else ""
            raise UsageError(
                f"{where}: expected `channel schema topic protocol [periodic]`,"
                f" got {len(content)} field(s){hint}"
            )
        streams.append(_spec(dict(zip(_STREAM_FIELDS, content, strict=False)), where))
    return streams


def _structured_streams(data: Any, path: str) -> list[StreamSpec]:
    if isinstance(data, dict) and set(data) == {"streams"}:
        data = data["streams"]
    if data is None:
        return []
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of streams, not {type(data).__name__}")
    streams = []
    for index, entry in enumerate(data):
        where = f"{path}: stream {index + 1}"
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: expected an object with {', '.join(_STREAM_FIELDS)}")
        streams.append(_spec({str(k): v for k, v in entry.items()}, where))
    return streams


def read_stream_file(path: str) -> list[StreamSpec]:
    """Streams listed in a text, JSON or YAML file (by extension, else by content)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    suffix = Path(path).suffix.lower()
    kind = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(suffix)
    kind = kind or _looks_structured(text)
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: invalid JSON: {exc}") from None
        return _structured_streams(data, path)
    if kind == "yaml":
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise UsageError(f"{path}: invalid YAML: {detail}") from None
        return _structured_streams(data, path)
    return _text_streams(text, path)


def _argument_streams(args: argparse.Namespace) -> list[StreamSpec]:
    given = [o for o in ("schema", "topic", "protocol") if getattr(args, o) is not None]
    if args.periodic:
        given.append("periodic")
    if not args.channels:
        if given:
            raise UsageError(
                f"--{given[0]} applies to CHANNEL arguments, and none were given"
                " (file entries carry their own fields)"
            )
        return []
    missing = [f"--{o}" for o in ("topic", "protocol") if getattr(args, o) is None]
    if missing:
        raise UsageError(f"CHANNEL arguments need {' and '.join(missing)}")
    return [
        StreamSpec(c, args.schema or "f144", args.topic, args.protocol, args.periodic)
        for c in args.channels
    ]


def _remove_filters(args: argparse.Namespace) -> list[StreamFilter]:
    schema = args.schema or ""
    topic = args.topic or ""
    filters = [StreamFilter(c, schema, topic) for c in args.channels]
    if not args.channels and (schema or topic):
        filters.append(StreamFilter("", schema, topic))
    return filters


def build_command(args: argparse.Namespace) -> tuple[bytes, ConfigCommand]:
    """The message to send, validated by decoding it as a forwarder would."""
    kind: UpdateKind = args.kind
    if kind is UpdateKind.REPLACE and args.format == "rf5k":
        raise UsageError("rf5k cannot express replace; use --format fc00")
    file_streams = [s for path in args.file for s in read_stream_file(path)]
    items: list[StreamSpec | StreamFilter] = []
    if kind is UpdateKind.REMOVE:
        items += _remove_filters(args)
        items += [StreamFilter(s.channel, s.schema, s.topic) for s in file_streams]
        if not items:
            raise UsageError(
                "remove needs a CHANNEL, --schema, --topic or --file"
                " (use remove-all to remove everything)"
            )
    elif kind is not UpdateKind.REMOVEALL:
        streams = _argument_streams(args) + file_streams
        if not streams:
            raise UsageError(
                "no streams given: name CHANNELs (with --topic and --protocol) or use --file"
                + (" (use remove-all to remove everything)" if kind is UpdateKind.REPLACE else "")
            )
        if args.format == "rf5k" and any(s.periodic for s in streams):
            raise UsageError(
                "rf5k has no periodic flag (the forwarder applies its own default);"
                " use --format fc00 for periodic streams"
            )
        items += streams
    elif args.file:
        raise UsageError("remove-all takes no --file")
    try:
        payload = encode_config_message(kind, items, args.format)
        command = decode_config_message(payload, rf5k_periodic=False)
    except (ValueError, ConfigMessageError) as exc:
        raise UsageError(f"the forwarder would reject this: {exc}") from None
    if command.rejected:
        raise UsageError(*(f"invalid {r}" for r in command.rejected))
    return payload, command


def describe_command(command: ConfigCommand) -> list[str]:
    """Lines telling the operator what the forwarder will do with the message."""
    lines = []
    for spec in command.streams:
        periodic = " periodic" if spec.periodic else ""
        lines.append(f"  {spec.describe()}{periodic}")
    for f in command.filters:
        lines.append(
            f"  channel={f.channel or '(any)'} schema={f.schema or '(any)'}"
            f" topic={f.topic or '(any)'}"
        )
    return lines


def add_stream_options(p: argparse.ArgumentParser, kind: UpdateKind) -> None:
    p.add_argument(
        "--format",
        choices=("fc00", "rf5k"),
        default="fc00",
        help="config message schema (default fc00; rf5k has no replace and no periodic flag)",
    )
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="streams from a file: text lines `channel schema topic protocol [periodic]`"
        " (# comments), or a JSON/YAML list of {channel, schema, topic, protocol, periodic}"
        " (needed for channels with spaces)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the message without contacting Kafka",
    )
    if kind is UpdateKind.REMOVEALL:
        return
    if kind is UpdateKind.REMOVE:
        p.add_argument("channels", nargs="*", metavar="CHANNEL", help="PV name; ? and * match")
        p.add_argument("--schema", help="only streams with this schema")
        p.add_argument("--topic", help="only streams to this topic; ? and * match")
        return
    p.add_argument("channels", nargs="*", metavar="CHANNEL", help="PV name")
    p.add_argument("--schema", help="schema for the CHANNELs (default f144)")
    p.add_argument("--topic", help="output topic for the CHANNELs")
    p.add_argument("--protocol", type=_protocol, help="ca, pva or fake, for the CHANNELs")
    p.add_argument(
        "--periodic", action="store_true", help="re-send the CHANNELs' last value periodically"
    )


def _protocol(text: str) -> Protocol:
    try:
        return Protocol.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
