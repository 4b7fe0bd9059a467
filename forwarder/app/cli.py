"""Command line, environment and config-file settings, validated into one `Options` object.

Every option can come from the command line, from `FORWARDER_<OPTION_NAME>` or from a
``key = value`` config file (`-c`); precedence is command line > environment > file >
default.  All validation happens here so the service starts either with a complete,
consistent configuration or not at all: a bad value exits with status 2 and one line
naming the option, never a traceback, and never a password.

Choices that differ from the reference forwarder, on purpose:

* `--status-topic` is optional: without it no x5f2 status messages are sent (the service
  logs a warning), which is handy for development; production should set it.
* `--verbosity` defaults to Info so that a fresh deployment tells what it is doing.
* `--service-id` defaults to ``forwarder-<hostname>``: stable across restarts so status
  consumers see the same instance come back.  Set it when running several per host.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, NoReturn

import configargparse

from forwarder.adapters.kafka_uri import (
    SECURITY_PROTOCOLS,
    KafkaUri,
    librdkafka_config,
    parse_host_port,
    parse_kafka_setting,
    parse_kafka_uri,
)

ENV_PREFIX = "FORWARDER_"
VERBOSITY_LEVELS = ("Trace", "Debug", "Info", "Warning", "Error", "Critical")
STALE_TIMESTAMP_POLICIES = ("drop", "receive-time")
#: librdkafka's own default (100k) buffers ~10 s at 10k updates/s; 1M messages of a few
#: hundred bytes (≲300 MB, still capped by queue.buffering.max.kbytes) rides out a broker
#: outage of a minute or more at that rate before updates are dropped.
DEFAULT_PRODUCER_QUEUE_MAX_MESSAGES = 1_000_000
_LIBRDKAFKA_MAX_QUEUE = 2_147_483_647

# (uri option, password option) pairs; the password option is only valid with SASL.
_ENDPOINTS = (
    ("config_topic", "config_topic_sasl_password"),
    ("status_topic", "status_topic_sasl_password"),
    ("output_broker", "output_broker_sasl_password"),
    ("storage_topic", "storage_topic_sasl_password"),
)


def forwarder_version() -> str:
    from forwarder import __version__

    return __version__


@dataclass(frozen=True)
class Options:
    """Fully validated settings; periods and intervals are in milliseconds."""

    config_topic: KafkaUri
    output_broker: KafkaUri
    status_topic: KafkaUri | None = None
    storage_topic: KafkaUri | None = None
    config_topic_sasl_password: str | None = None
    status_topic_sasl_password: str | None = None
    output_broker_sasl_password: str | None = None
    storage_topic_sasl_password: str | None = None
    skip_retrieval: bool = False
    graylog_logger_address: str | None = None
    log_file: str | None = None
    pv_update_period: int | None = None
    service_id: str = "forwarder"
    fake_pv_period: int = 1000
    verbosity: str = "Info"
    stale_timestamps: str = "drop"
    status_interval: int = 4000
    http_port: int | None = None
    ssl_ca_cert_file: str | None = None
    security_protocol: str | None = None
    kafka_options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    producer_queue_max_messages: int = DEFAULT_PRODUCER_QUEUE_MAX_MESSAGES

    def secrets(self) -> tuple[str, ...]:
        """Passwords to register with the log redaction filter."""
        found = [getattr(self, f.name) for f in fields(self) if "password" in f.name]
        found += [v for k, v in self.kafka_options.items() if _is_secret_key(k)]
        return tuple(s for s in found if s)

    def __repr__(self) -> str:
        """Safe to log: passwords (also in -X settings) are shown as '***'."""
        parts = []
        for f in fields(self):
            value: Any = getattr(self, f.name)
            if "password" in f.name and value is not None:
                value = "***"
            elif f.name == "kafka_options":
                value = {k: "***" if _is_secret_key(k) else v for k, v in value.items()}
            elif isinstance(value, KafkaUri):
                value = str(value)
            parts.append(f"{f.name}={value!r}")
        return f"Options({', '.join(parts)})"

    __str__ = __repr__


def _is_secret_key(key: str) -> bool:
    return "password" in key.lower() or "secret" in key.lower()


class _Parser(configargparse.ArgumentParser):
    """Errors are one line naming the option (no usage dump, no echoed secrets)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {_clean_error(message)}\n")
        raise SystemExit(2)


def _clean_error(message: str) -> str:
    if message.startswith("argument "):
        message = message[len("argument ") :]
    prefix = "unrecognized arguments: "
    if message.startswith(prefix):
        # Unknown tokens may be misspelled password options followed by the password.
        tokens = message[len(prefix) :].split()
        options = [t.split("=", 1)[0] for t in tokens if t.startswith("-")]
        hidden = len(tokens) - len(options)
        shown = " ".join(options)
        if hidden:
            shown = f"{shown} (and {hidden} value(s) not shown)".strip()
        message = prefix + shown
    return message.splitlines()[0] if message else "invalid arguments"


def checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn ValueError into argparse's error so the message survives unchanged."""

    def wrapper(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise configargparse.ArgumentTypeError(str(exc)) from None

    wrapper.__name__ = getattr(convert, "__name__", "value")
    return wrapper


def _uri_with_topic(text: str) -> KafkaUri:
    return parse_kafka_uri(text, require_topic=True)


def _uri_without_topic(text: str) -> KafkaUri:
    return parse_kafka_uri(text, require_topic=False)


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value

    return convert


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    by_key = {c.lower(): c for c in choices}

    def convert(text: str) -> str:
        found = by_key.get(text.strip().lower())
        if found is None:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return found

    return convert


def _host_port(text: str) -> str:
    host, port = parse_host_port(text)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _existing_file(text: str) -> str:
    path = text.strip()
    if not os.path.isfile(path):
        raise ValueError(f"file {path!r} does not exist")
    return path


def _log_file(text: str) -> str:
    path = text.strip()
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"directory {folder!r} for the log file does not exist")
    return path


def _service_id(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def default_service_id() -> str:
    return f"forwarder-{socket.gethostname()}"


def build_parser() -> configargparse.ArgumentParser:
    """The parser; `--help` lists every option with its environment variable."""
    p = _Parser(
        description="Forward EPICS PVs to Kafka as ESS FlatBuffers messages.",
        auto_env_var_prefix=ENV_PREFIX,
        allow_abbrev=False,
        add_config_file_help=True,
    )
    add = p.add_argument
    add(
        "-c",
        "--config-file",
        is_config_file=True,
        env_var=f"{ENV_PREFIX}CONFIG_FILE",
        help="file of `option-name = value` lines (# comments) giving defaults",
    )
    add("--version", action="version", version=f"forwarder {forwarder_version()}")
    uri_help = "[SASL_MECHANISM\\user@]host:port[,host:port...]"
    add(
        "--config-topic",
        type=checked(_uri_with_topic),
        required=True,
        help=f"where configuration commands are read: {uri_help}/topic",
    )
    add(
        "--status-topic",
        type=checked(_uri_with_topic),
        help=f"where x5f2 status messages go: {uri_help}/topic (none sent if omitted)",
    )
    add(
        "--output-broker",
        type=checked(_uri_without_topic),
        required=True,
        help=f"brokers PV data is produced to: {uri_help} (topics come from the config)",
    )
    add(
        "--storage-topic",
        type=checked(_uri_with_topic),
        help=f"where the current configuration is stored for restarts: {uri_help}/topic",
    )
    for uri_option, _ in _ENDPOINTS:
        add(
            f"--{uri_option.replace('_', '-')}-sasl-password",
            help=f"SASL password for --{uri_option.replace('_', '-')} (prefer the env var)",
        )
    add(
        "--skip-retrieval",
        action="store_true",
        help="do not restore the configuration from --storage-topic at start-up",
    )
    add("--graylog-logger-address", type=checked(_host_port), help="GELF UDP host:port")
    add("--log-file", type=checked(_log_file), help="also log to this file")
    add(
        "--pv-update-period",
        type=checked(_int_in(1, 2**31 - 1)),
        help="ms; re-send the last value of periodic streams when nothing new arrived",
    )
    add(
        "--service-id",
        type=checked(_service_id),
        default=default_service_id(),
        help="identifies this instance in status messages (default: forwarder-<hostname>)",
    )
    add(
        "--fake-pv-period",
        type=checked(_int_in(1, 2**31 - 1)),
        default=1000,
        help="ms between updates of fake PVs (default: 1000)",
    )
    add(
        "-v",
        "--verbosity",
        type=checked(_one_of(VERBOSITY_LEVELS)),
        default="Info",
        metavar="LEVEL",
        help=f"one of {', '.join(VERBOSITY_LEVELS)} (case-insensitive, default: Info)",
    )
    add(
        "--stale-timestamps",
        type=checked(_one_of(STALE_TIMESTAMP_POLICIES)),
        default="drop",
        help="updates with unusable EPICS timestamps: drop (default) or receive-time",
    )
    add(
        "--status-interval",
        type=checked(_int_in(1, 2**31 - 1)),
        default=4000,
        help="ms between status messages (default: 4000)",
    )
    add("--http-port", type=checked(_int_in(1, 65535)), help="serve Prometheus metrics here")
    add(
        "--ssl-ca-cert-file",
        type=checked(_existing_file),
        help="CA certificate for TLS to Kafka (implies SSL/SASL_SSL)",
    )
    add(
        "--security-protocol",
        type=checked(_one_of(SECURITY_PROTOCOLS)),
        help=f"override the derived protocol: {', '.join(SECURITY_PROTOCOLS)}",
    )
    add(
        "-X",
        "--kafka-config",
        type=checked(parse_kafka_setting),
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting for every Kafka client, repeatable (applied last)",
    )
    add(
        "--producer-queue-max-messages",
        type=checked(_int_in(1, _LIBRDKAFKA_MAX_QUEUE)),
        default=DEFAULT_PRODUCER_QUEUE_MAX_MESSAGES,
        help="messages buffered while Kafka is slow or down (default: 1000000)",
    )
    return p


def _check_endpoints(parser: configargparse.ArgumentParser, options: Options) -> None:
    """Cross-option rules a single `type=` cannot see (passwords, protocol/SASL clashes)."""
    for uri_name, password_name in _ENDPOINTS:
        uri: KafkaUri | None = getattr(options, uri_name)
        password: str | None = getattr(options, password_name)
        uri_option = f"--{uri_name.replace('_', '-')}"
        password_option = f"--{password_name.replace('_', '-')}"
        if uri is None:
            if password:
                parser.error(f"{password_option} is set but {uri_option} is not")
            continue
        if uri.sasl_mechanism is not None and not password:
            parser.error(
                f"{password_option} is required because {uri_option} has SASL user {uri.username!r}"
            )
        if password and uri.sasl_mechanism is None:
            parser.error(
                f"{password_option} is set but {uri_option} has no SASL user "
                "(expected MECHANISM\\user@host:port)"
            )
        try:
            librdkafka_config(
                uri,
                password,
                options.security_protocol,
                options.ssl_ca_cert_file,
                options.kafka_options,
                password_option=password_option,
            )
        except ValueError as exc:
            parser.error(f"{uri_option}: {exc}")


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse and validate; exits with status 2 and one clear line on any problem."""
    parser = build_parser()
    ns = parser.parse_args(None if argv is None else list(argv))
    values = {f.name: getattr(ns, f.name) for f in fields(Options) if f.name != "kafka_options"}
    options = Options(**values, kafka_options=MappingProxyType(dict(ns.kafka_config)))
    _check_endpoints(parser, options)
    return options
