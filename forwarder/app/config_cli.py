"""`forwarder-config`: the operator's tool to configure running forwarders and see their status.

Forwarders are configured only through their config topic, so this tool publishes exactly
the rf5k/fc00 messages a forwarder reads, and reads back the x5f2 status messages they
publish.  Streams are validated by encoding and then decoding the message with the
forwarder's own `forwarder.core.config_messages`, so the tool accepts exactly what a
forwarder would apply and never drifts from it.

Usage (options may come before or after the subcommand; endpoint options and the SASL
passwords also come from the forwarder's own environment variables, e.g.
``FORWARDER_CONFIG_TOPIC``, ``FORWARDER_STATUS_TOPIC``, ``FORWARDER_CONFIG_TOPIC_SASL_PASSWORD``)::

    forwarder-config add SIMPLE:PV1 SIMPLE:PV2 --protocol ca --schema f144 --topic det \\
        --config-topic localhost:9092/forwarder_config
    forwarder-config add --file streams.yaml
    forwarder-config remove 'SIMPLE:*' --topic 'det_*'
    forwarder-config replace --file streams.txt
    forwarder-config remove-all
    forwarder-config status --status-topic localhost:9092/forwarder_status [--json]

Exit status: 0 success, 1 Kafka unreachable / not delivered / no status found, 2 bad input.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from forwarder.adapters.kafka_uri import (
    SECURITY_PROTOCOLS,
    KafkaUri,
    librdkafka_config,
    parse_kafka_setting,
    parse_kafka_uri,
    parse_security_protocol,
)
from forwarder.app.cli import checked
from forwarder.core.config_messages import (
    ConfigCommand,
    ConfigMessageError,
    UpdateKind,
    decode_config_message,
    encode_config_message,
)
from forwarder.core.streams import Protocol, StreamFilter, StreamSpec

PROG = "forwarder-config"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
ENV_PREFIX = "FORWARDER_"
DEFAULT_TIMEOUT_S = 10.0
#: Without end-of-partition events (some brokers), stop reading after this much silence.
DEFAULT_QUIET_S = 2.0

_STREAM_FIELDS = ("channel", "schema", "topic", "protocol", "periodic")
_TRUE = frozenset({"1", "true", "yes", "on", "periodic"})
_FALSE = frozenset({"0", "false", "no", "off"})
_KINDS = {
    "add": UpdateKind.ADD,
    "remove": UpdateKind.REMOVE,
    "remove-all": UpdateKind.REMOVEALL,
    "replace": UpdateKind.REPLACE,
}


class UsageError(Exception):
    """Bad input: exit 2 with one line per problem (never a traceback)."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "invalid input")
        self.lines = list(lines) or ["invalid input"]


class Failure(Exception):
    """The request was fine but could not be carried out (Kafka down, nothing found): exit 1."""


class _Parser(argparse.ArgumentParser):
    """One-line errors with exit 2, so scripts and operators see the problem, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# -- argument parsing -------------------------------------------------------------------------


def _kafka_setting(text: str) -> tuple[str, str]:
    """The forwarder's `-X` parser, with this tool's terser wording (never echoes input)."""
    try:
        return parse_kafka_setting(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected KEY=VALUE with a librdkafka setting name"
        ) from None


def _protocol(text: str) -> Protocol:
    try:
        return Protocol.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _add_connection_options(p: argparse.ArgumentParser, endpoints: Sequence[str], g: str) -> None:
    """Kafka options; `g` prefixes the dest so values given before the subcommand (stored
    by the main parser) are not overwritten by the subparser's unset defaults."""
    for name in endpoints:
        option = f"--{name}-topic"
        env = f"{ENV_PREFIX}{name.upper()}_TOPIC"
        p.add_argument(
            option,
            dest=f"{g}{name}_topic",
            metavar="URI",
            help=f"[SASL_MECHANISM\\user@]host:port[,host:port...]/topic (env {env})",
        )
        p.add_argument(
            f"{option}-sasl-password",
            dest=f"{g}{name}_topic_sasl_password",
            metavar="PASSWORD",
            help=f"SASL password for {option} (prefer env {env}_SASL_PASSWORD)",
        )
    p.add_argument(
        "--ssl-ca-cert-file",
        dest=f"{g}ssl_ca_cert_file",
        metavar="PATH",
        help=f"CA certificate for TLS (implies SSL/SASL_SSL; env {ENV_PREFIX}SSL_CA_CERT_FILE)",
    )
    p.add_argument(
        "--security-protocol",
        dest=f"{g}security_protocol",
        type=checked(parse_security_protocol),
        metavar="PROTOCOL",
        help=f"override the derived protocol: {', '.join(SECURITY_PROTOCOLS)}",
    )
    p.add_argument(
        "-X",
        dest=f"{g}kafka_config",
        type=_kafka_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting, repeatable (applied last)",
    )
    p.add_argument(
        "--timeout",
        dest=f"{g}timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help=f"give up on Kafka after this long (default {DEFAULT_TIMEOUT_S:g})",
    )


def _add_stream_options(p: argparse.ArgumentParser, kind: UpdateKind) -> None:
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
        " (# comments), or a JSON/YAML list of {channel, schema, topic, protocol, periodic}",
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Configure running forwarders through their config topic and show their"
        " status.  Kafka options may be given before or after the subcommand.",
        allow_abbrev=False,
    )
    _add_connection_options(parser, ("config", "status"), "g_")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    helps = {
        "add": "start forwarding streams",
        "remove": "stop forwarding streams matching filters (wildcards ? and *)",
        "remove-all": "stop forwarding everything",
        "replace": "make the configuration exactly the given streams (fc00 only)",
    }
    for name, kind in _KINDS.items():
        p = sub.add_parser(name, help=helps[name], description=helps[name], allow_abbrev=False)
        _add_stream_options(p, kind)
        _add_connection_options(p, ("config",), "")
        p.set_defaults(handler=_run_config, kind=kind)
    p = sub.add_parser(
        "status",
        help="show the newest status of each forwarder",
        description="Read the status topic (all partitions, from the start, no consumer group)"
        " and show the newest x5f2 status of each service.",
        allow_abbrev=False,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--service-id", help="only this service (? and * match)")
    p.add_argument(
        "--max-age",
        type=_positive_seconds,
        metavar="SECONDS",
        help="ignore status messages older than this (default: read the whole topic)",
    )
    p.add_argument(
        "--quiet",
        type=_positive_seconds,
        default=DEFAULT_QUIET_S,
        metavar="SECONDS",
        help=f"stop after this long without new messages (default {DEFAULT_QUIET_S:g})",
    )
    _add_connection_options(p, ("status",), "")
    p.set_defaults(handler=_run_status)
    return parser


def _option(args: argparse.Namespace, name: str) -> Any:
    """Value given after the subcommand, else before it, else None."""
    value = getattr(args, name, None)
    return value if value is not None else getattr(args, f"g_{name}", None)


@dataclass(frozen=True)
class _Endpoint:
    uri: KafkaUri
    config: dict[str, Any]
    timeout: float


def _endpoint(args: argparse.Namespace, name: str) -> _Endpoint:
    """The Kafka endpoint for `--<name>-topic`, with the forwarder's env-var fallbacks."""
    option = f"--{name}-topic"
    env = f"{ENV_PREFIX}{name.upper()}_TOPIC"
    text = _option(args, f"{name}_topic") or os.environ.get(env, "").strip()
    if not text:
        raise UsageError(f"{option} is required (or set {env})")
    try:
        uri = parse_kafka_uri(text, require_topic=True)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    password = _option(args, f"{name}_topic_sasl_password") or os.environ.get(
        f"{env}_SASL_PASSWORD"
    )
    ca_file = _option(args, "ssl_ca_cert_file") or os.environ.get(f"{ENV_PREFIX}SSL_CA_CERT_FILE")
    if ca_file and not os.path.isfile(ca_file):
        raise UsageError(f"--ssl-ca-cert-file: file {ca_file!r} does not exist")
    security = _option(args, "security_protocol") or os.environ.get(
        f"{ENV_PREFIX}SECURITY_PROTOCOL"
    )
    if password and uri.sasl_mechanism is None:
        raise UsageError(f"{option}-sasl-password is set but {option} has no SASL user")
    # librdkafka logs every failed connection to stderr; we report one line instead.
    extra: dict[str, str] = {"log_level": "0"}
    extra.update(getattr(args, "g_kafka_config", []) or [])
    extra.update(getattr(args, "kafka_config", []) or [])
    try:
        config: dict[str, Any] = dict(
            librdkafka_config(
                uri, password, security, ca_file, extra, password_option=f"{option}-sasl-password"
            )
        )
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    timeout = _option(args, "timeout") or DEFAULT_TIMEOUT_S
    return _Endpoint(uri, config, float(timeout))


class _ErrorLog:
    """Keeps librdkafka's last error so 'unreachable' can say why (refused, TLS, auth...)."""

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, error: Any) -> None:
        text = str(error.str() if hasattr(error, "str") else error)
        # "1/1 brokers are down" follows the specific reason; keep the specific one.
        if self.last is None or "brokers are down" not in text:
            self.last = text

    def reason(self, exc: BaseException, client: Any) -> str:
        """librdkafka's own words (e.g. "Connection refused"), else the exception's."""
        try:
            client.poll(0)  # error callbacks are only served while polling
        except Exception:  # a failing poll must not hide the original problem
            pass
        if self.last:
            return self.last
        error: Any = exc.args[0] if exc.args else None
        if hasattr(error, "str"):
            return str(error.str())
        return str(exc) or type(exc).__name__


def _unreachable(endpoint: _Endpoint, why: str) -> Failure:
    return Failure(
        f"cannot reach Kafka at {endpoint.uri.bootstrap} within {endpoint.timeout:g} s ({why})"
    )


# -- stream input -----------------------------------------------------------------------------


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
            raise UsageError(
                f"{where}: expected `channel schema topic protocol [periodic]`,"
                f" got {len(content)} field(s)"
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


# -- publishing -------------------------------------------------------------------------------


def publish(endpoint: _Endpoint, payload: bytes) -> tuple[int, int]:
    """Produce one message and wait for the broker's ack; returns (partition, offset)."""
    from confluent_kafka import KafkaException, Producer

    deadline = time.monotonic() + endpoint.timeout
    errors = _ErrorLog()
    config = {
        "linger.ms": "0",
        "message.timeout.ms": str(max(1, int(endpoint.timeout * 1000))),
        **endpoint.config,
        "error_cb": errors,
    }
    try:
        producer = Producer(config)
    except KafkaException as exc:
        raise UsageError(f"invalid Kafka settings: {exc}") from None
    # Producing to an unreachable broker only fails after message.timeout.ms, with a vague
    # error; a metadata request fails fast and says why.
    try:
        producer.list_topics(timeout=endpoint.timeout)
    except KafkaException as exc:
        raise _unreachable(endpoint, errors.reason(exc, producer)) from None
    result: dict[str, Any] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        result["error"] = err
        result["where"] = (msg.partition(), msg.offset())

    topic = endpoint.uri.topic
    assert topic is not None  # parse_kafka_uri(require_topic=True)
    producer.produce(topic, value=payload, on_delivery=on_delivery)
    producer.flush(max(0.0, deadline - time.monotonic()))
    if "error" not in result:
        raise Failure(
            f"message to {endpoint.uri} not acknowledged within {endpoint.timeout:g} s"
            + (f" ({errors.last})" if errors.last else "")
        )
    if result["error"] is not None:
        raise Failure(f"message to {endpoint.uri} not delivered: {result['error'].str()}")
    partition, offset = result["where"]
    return int(partition), int(offset)


def _run_config(args: argparse.Namespace) -> int:
    payload, command = build_command(args)
    summary = f"{command.kind.name} ({command.schema_id})"
    count = len(command.streams) or len(command.filters)
    if command.kind is not UpdateKind.REMOVEALL:
        noun = "filter" if command.kind is UpdateKind.REMOVE else "stream"
        summary += f" with {count} {noun}{'s' if count != 1 else ''}"
    if args.dry_run:
        topic = _option(args, "config_topic") or os.environ.get(f"{ENV_PREFIX}CONFIG_TOPIC")
        print(f"would send {summary}" + (f" to {topic}" if topic else ""))
    else:
        endpoint = _endpoint(args, "config")
        partition, offset = publish(endpoint, payload)
        print(f"sent {summary} to {endpoint.uri} [partition {partition}, offset {offset}]")
    for line in describe_command(command):
        print(line)
    return EXIT_OK


# -- status -----------------------------------------------------------------------------------


@dataclass
class ServiceStatus:
    """The newest x5f2 message of one service."""

    service_id: str
    host_name: str
    process_id: int
    software_name: str
    software_version: str
    update_interval_ms: int
    timestamp_ms: int
    status: dict[str, Any] | None
    status_json: str

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "service_id": self.service_id,
            "host_name": self.host_name,
            "process_id": self.process_id,
            "software_name": self.software_name,
            "software_version": self.software_version,
            "update_interval_ms": self.update_interval_ms,
            "timestamp_ms": self.timestamp_ms,
            "status": self.status,
        }
        if self.status is None:
            doc["status_json"] = self.status_json
        return doc


def _decode_status(value: bytes, timestamp_ms: int) -> ServiceStatus | None:
    """None for anything that is not a readable x5f2 (status topics may be shared)."""
    if value[4:8] != b"x5f2":
        return None
    from streaming_data_types.status_x5f2 import deserialise_x5f2

    try:
        msg = deserialise_x5f2(value)
    except Exception:  # corrupt flatbuffers raise assorted errors; skipping is the point
        return None
    try:
        status = json.loads(msg.status_json)
    except ValueError:
        status = None
    return ServiceStatus(
        msg.service_id,
        msg.host_name,
        int(msg.process_id),
        msg.software_name,
        msg.software_version,
        int(msg.update_interval),
        timestamp_ms,
        status if isinstance(status, dict) else None,
        msg.status_json,
    )


def read_status(
    endpoint: _Endpoint,
    max_age_s: float | None,
    quiet_s: float,
    accept: Callable[[str], bool],
) -> list[ServiceStatus]:
    """Newest status per service, read from every partition without joining a group.

    A partition is read once it reports its end or yields a message stamped after we
    started (running forwarders publish every few seconds, so their partition never stays
    at its end for long, and some brokers report the end late).  Reading stops when every
    partition is read, after `quiet_s` without messages, or at the endpoint timeout.
    """
    from confluent_kafka import (
        OFFSET_BEGINNING,
        OFFSET_END,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    topic = endpoint.uri.topic
    assert topic is not None
    started_ms = int(time.time() * 1000)
    errors = _ErrorLog()
    consumer = Consumer(
        {
            "group.id": f"{PROG}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "allow.auto.create.topics": "false",
            **endpoint.config,
            "error_cb": errors,
        }
    )
    try:
        deadline = time.monotonic() + endpoint.timeout
        try:
            metadata = consumer.list_topics(topic, timeout=endpoint.timeout)
        except KafkaException as exc:
            raise _unreachable(endpoint, errors.reason(exc, consumer)) from None
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            if info is not None and info.error is not None:
                if info.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise Failure(f"cannot read {endpoint.uri}: {info.error.str()}")
            raise Failure(f"no status messages: topic {topic!r} does not exist on {endpoint.uri}")
        partitions = sorted(info.partitions)
        since_ms = int(time.time() * 1000 - max_age_s * 1000) if max_age_s else None
        starts = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        if since_ms is not None:
            try:
                found = consumer.offsets_for_times(
                    [TopicPartition(topic, p, since_ms) for p in partitions],
                    timeout=max(0.1, deadline - time.monotonic()),
                )
                starts = [
                    TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                    for tp in found
                ]
            except KafkaException:
                pass  # read from the start and filter by timestamp instead
        consumer.assign(starts)
        newest: dict[str, ServiceStatus] = {}
        read: set[int] = set()
        last_activity = time.monotonic()
        while len(read) < len(partitions):
            now = time.monotonic()
            if now >= deadline or now - last_activity >= quiet_s:
                break
            for record in consumer.consume(500, timeout=min(0.2, deadline - now)):
                last_activity = time.monotonic()
                error = record.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        read.add(record.partition() or 0)
                    continue
                timestamp_ms = int(record.timestamp()[1])
                if timestamp_ms >= started_ms:
                    read.add(record.partition() or 0)
                else:
                    read.discard(record.partition() or 0)
                if since_ms is not None and timestamp_ms < since_ms:
                    continue
                found_status = _decode_status(record.value() or b"", timestamp_ms)
                if found_status is None or not accept(found_status.service_id):
                    continue
                known = newest.get(found_status.service_id)
                if known is None or found_status.timestamp_ms >= known.timestamp_ms:
                    newest[found_status.service_id] = found_status
        return sorted(newest.values(), key=lambda s: s.service_id)
    finally:
        consumer.close()


def _age(now_ms: float, then_ms: Any) -> str:
    if not isinstance(then_ms, int | float) or isinstance(then_ms, bool) or then_ms <= 0:
        return "never"
    seconds = max(0.0, (now_ms - then_ms) / 1000)
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


_COLUMNS = (
    ("CHANNEL", "channel_name"),
    ("PROTOCOL", "protocol"),
    ("TOPIC", "output_topic"),
    ("SCHEMA", "schema"),
    ("CONNECTION", "connection"),
    ("LAST UPDATE", "last_update_ms"),
    ("FORWARDED", "updates_forwarded"),
    ("DROPPED", "updates_dropped"),
)


def _table(rows: Sequence[Sequence[str]], right: Iterable[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    align = set(right)
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in align else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def format_status(services: Sequence[ServiceStatus], now_ms: float) -> list[str]:
    """Human-readable status: a header line per service, then one row per stream."""
    lines: list[str] = []
    for service in services:
        if lines:
            lines.append("")
        header = (
            f"SERVICE {service.service_id}  HOST {service.host_name}"
            f"  PID {service.process_id}"
            f"  {service.software_name} {service.software_version}"
            f"  reported {_age(now_ms, service.timestamp_ms)}"
        )
        lines.append(header)
        if service.status is None:
            lines.append("  (status JSON unreadable)")
            continue
        streams = service.status.get("streams")
        if not isinstance(streams, list) or not streams:
            lines.append("  (no streams)")
            continue
        rows = [[title for title, _ in _COLUMNS]]
        for stream in streams:
            stream = stream if isinstance(stream, dict) else {}
            row = []
            for _, key in _COLUMNS:
                value = stream.get(key)
                if key == "last_update_ms":
                    row.append(_age(now_ms, value))
                else:
                    row.append("-" if value is None else str(value))
            rows.append(row)
        lines += ["  " + line for line in _table(rows, right=(6, 7))]
    return lines


def _run_status(args: argparse.Namespace) -> int:
    endpoint = _endpoint(args, "status")
    pattern = args.service_id

    def accept(service_id: str) -> bool:
        return pattern is None or fnmatch.fnmatchcase(service_id, pattern)

    services = read_status(endpoint, args.max_age, args.quiet, accept)
    if not services:
        where = f" in the last {args.max_age:g} s" if args.max_age else ""
        which = f" for service id {pattern!r}" if pattern else ""
        raise Failure(f"no status messages{which} found on {endpoint.uri}{where}")
    if args.json:
        print(json.dumps([s.as_json() for s in services], indent=2))
    else:
        for line in format_status(services, time.time() * 1000):
            print(line)
    return EXIT_OK


# -- entry point ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status instead of raising SystemExit."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    prog = f"{PROG} {args.command}"
    try:
        code: int = args.handler(args)
        return code
    except UsageError as exc:
        for line in exc.lines:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
