"""`Settings`: the one definition of every forwarder option.

Each field of `Settings` is an option: its name (``config_topic`` is ``--config-topic``,
``FORWARDER_CONFIG_TOPIC`` and ``config-topic = ...`` in a config file), its type, its
default, its help text, its converter (which validates) and, where the ESS forwarder has
one, its ESS environment variable name.  The command line parser (`forwarder.app.cli`), the
service, the operator CLI and the deployment tests all read this class, so an option is
added, renamed or re-defaulted in exactly one place.

Why dataclasses and not pydantic-settings: configargparse already does the layering that
matters to operators (command line > environment > config file > default, with one-line
errors naming the option and ``--help`` listing the environment variables), and the
ESS forwarder's users know its behaviour; pydantic-settings would duplicate that layering
with different error texts and add two dependencies (and ~100 ms of start-up import) for
validation that the converters below already do.  A frozen dataclass gives the typed,
immutable object and `dataclasses.fields` gives the metadata the parser is built from.

Kafka endpoints are typed (`KafkaEndpoint`: bootstrap, topic, SASL, TLS, librdkafka
overrides) and passwords are `Secret`, so ``repr(settings)`` is safe to log.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any

from forwarder.adapters.carbon import DEFAULT_CARBON_PORT
from forwarder.adapters.kafka_endpoint import KafkaEndpoint, Secret, is_secret_key
from forwarder.adapters.kafka_uri import (
    SECURITY_PROTOCOLS,
    KafkaUri,
    parse_host_port,
    parse_kafka_setting,
    parse_kafka_uri,
)
from forwarder.app.logging_setup import log_folder_problem

ENV_PREFIX = "FORWARDER_"
VERBOSITY_LEVELS = ("Trace", "Debug", "Info", "Warning", "Error", "Critical")
STALE_TIMESTAMP_POLICIES = ("drop", "receive-time")
#: librdkafka's own default (100k) buffers ~10 s at 10k updates/s; 1M messages of a few
#: hundred bytes (≲300 MB, still capped by queue.buffering.max.kbytes) rides out a broker
#: outage of a minute or more at that rate before updates are dropped.
DEFAULT_PRODUCER_QUEUE_MAX_MESSAGES = 1_000_000
_LIBRDKAFKA_MAX_QUEUE = 2_147_483_647
_MAX_MS = 2**31 - 1
URI_HELP = "[[PROTOCOL+]SASL_MECHANISM\\user@]host[:port][,host[:port]...]"


def default_service_id() -> str:
    """``forwarder-<hostname>``: stable across restarts, so status consumers see the same
    instance come back (the ESS forwarder's default, the PID, changes every start)."""
    return f"forwarder-{socket.gethostname()}"


# -- converters: text -> typed value, ValueError with a message naming the problem -------


def uri_with_topic(text: str) -> KafkaUri:
    return parse_kafka_uri(text, require_topic=True)


def uri_topic_ignored(text: str) -> KafkaUri:
    """An address whose topic, if any, has no use (the output broker: each stream names its
    own topic); accepted as the ESS forwarder does, and named by `Settings.start_warnings`."""
    return parse_kafka_uri(text, require_topic=None)


def int_in(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value

    convert.__name__ = "int"
    return convert


def one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    by_key = {c.lower(): c for c in choices}

    def convert(text: str) -> str:
        found = by_key.get(text.strip().lower())
        if found is None:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return found

    convert.__name__ = "choice"
    return convert


def host_port(default_port: int | None = None) -> Callable[[str], str]:
    def convert(text: str) -> str:
        host, port = parse_host_port(text, default_port=default_port)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    convert.__name__ = "address"
    return convert


def existing_file(text: str) -> str:
    path = text.strip()
    if not os.path.isfile(path):
        raise ValueError(f"file {path!r} does not exist")
    return path


def log_file(text: str) -> str:
    path = text.strip()
    problem = log_folder_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path


def non_empty(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def group_name(text: str) -> str:
    """A cluster name; it becomes part of topic and group names (forwarder.NAME.shards)."""
    value = text.strip()
    if not value or len(value) > 200 or not all(c.isalnum() or c in "._-" for c in value):
        raise ValueError(
            f"{text!r} is not a group name (1-200 characters: letters, digits, '.', '_', '-')"
        )
    return value


def secret(text: str) -> Secret:
    return Secret(text)


# -- option metadata ---------------------------------------------------------------------


@dataclass(frozen=True)
class OptionSpec:
    """How one `Settings` field appears on the command line and in the environment."""

    help: str
    convert: Callable[[str], Any] | None = None
    #: "value", "flag" (store_true) or "append" (repeatable KEY=VALUE).
    kind: str = "value"
    short: str | None = None
    metavar: str | None = None
    #: The ESS forwarder's environment variable for this option, if it has one.
    ess_env: str | None = None
    required: bool = False


def option(
    help: str,  # noqa: A002 - the argparse word
    convert: Callable[[str], Any] | None = None,
    *,
    default: Any = MISSING,
    default_factory: Any = MISSING,
    kind: str = "value",
    short: str | None = None,
    metavar: str | None = None,
    ess_env: str | None = None,
) -> Any:
    """A `Settings` field carrying its `OptionSpec`; no default means required."""
    required = default is MISSING and default_factory is MISSING
    spec = OptionSpec(help, convert, kind, short, metavar, ess_env, required)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"option": spec})
    return field(default=default, metadata={"option": spec})


def _empty_mapping() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Fully validated settings; periods and intervals are in milliseconds unless named."""

    config_topic: KafkaUri = option(
        f"where configuration commands are read: {URI_HELP}/topic",
        uri_with_topic,
        ess_env="CONFIG_TOPIC",
    )
    status_topic: KafkaUri = option(
        f"where x5f2 status messages go: {URI_HELP}/topic",
        uri_with_topic,
        ess_env="STATUS_TOPIC",
    )
    output_broker: KafkaUri = option(
        f"brokers PV data is produced to: {URI_HELP} (topics come from the config; a "
        "/topic here is ignored, with a warning at start)",
        uri_topic_ignored,
        ess_env="OUTPUT_BROKER",
    )
    storage_topic: KafkaUri | None = option(
        f"where the current configuration is stored for restarts: {URI_HELP}/topic",
        uri_with_topic,
        default=None,
        ess_env="STORAGE_TOPIC",
    )
    config_topic_sasl_password: Secret | None = option(
        "SASL password for --config-topic (prefer the environment variable)",
        secret,
        default=None,
        ess_env="CONFIG_TOPIC_SASL_PASSWORD",
    )
    status_topic_sasl_password: Secret | None = option(
        "SASL password for --status-topic (prefer the environment variable)",
        secret,
        default=None,
        ess_env="STATUS_TOPIC_SASL_PASSWORD",
    )
    output_broker_sasl_password: Secret | None = option(
        "SASL password for --output-broker (prefer the environment variable)",
        secret,
        default=None,
        ess_env="OUTPUT_BROKER_SASL_PASSWORD",
    )
    storage_topic_sasl_password: Secret | None = option(
        "SASL password for --storage-topic (prefer the environment variable)",
        secret,
        default=None,
        ess_env="STORAGE_TOPIC_SASL_PASSWORD",
    )
    skip_retrieval: bool = option(
        "do not restore the configuration from --storage-topic at start-up",
        kind="flag",
        short="-s",
        default=False,
    )
    graylog_logger_address: str | None = option(
        "GELF UDP host:port",
        host_port(),
        default=None,
        ess_env="GRAYLOG_LOGGER_ADDRESS",
    )
    log_file: str | None = option(
        "also log to this file", log_file, default=None, ess_env="LOG_FILE"
    )
    pv_update_period: int | None = option(
        "ms; re-send the last value of periodic streams when nothing new arrived",
        int_in(1, _MAX_MS),
        default=None,
        ess_env="PV_UPDATE_PERIOD",
    )
    service_id: str = option(
        "identifies this instance in status messages (default: forwarder-<hostname>)",
        non_empty,
        default_factory=default_service_id,
        ess_env="SERVICE_ID",
    )
    fake_pv_period: int = option(
        "ms between updates of fake PVs",
        int_in(1, _MAX_MS),
        default=1000,
        ess_env="FAKE_PV_PERIOD",
    )
    verbosity: str = option(
        f"one of {', '.join(VERBOSITY_LEVELS)} (case-insensitive)",
        one_of(VERBOSITY_LEVELS),
        default="Info",
        short="-v",
        metavar="LEVEL",
        ess_env="VERBOSITY",
    )
    stale_timestamps: str = option(
        "updates with unusable EPICS timestamps: drop or receive-time",
        one_of(STALE_TIMESTAMP_POLICIES),
        default="drop",
    )
    status_interval: int = option("ms between status messages", int_in(1, _MAX_MS), default=4000)
    grafana_carbon_address: str | None = option(
        "push the /metrics counters to this Carbon (Graphite) server, HOST[:PORT] "
        f"(port {DEFAULT_CARBON_PORT} if omitted)",
        host_port(DEFAULT_CARBON_PORT),
        default=None,
    )
    statistics_update_interval: int = option(
        "seconds between metric pushes to --grafana-carbon-address",
        int_in(1, 86_400),
        default=10,
    )
    http_port: int | None = option(
        "serve Prometheus /metrics, /healthz and the operator web page on this port",
        int_in(1, 65535),
        default=None,
    )
    http_admin_token: Secret | None = option(
        "lets the web page on --http-port add and remove streams when it sends this token "
        "(prefer the environment variable; without it the page is read-only)",
        secret,
        default=None,
        metavar="TOKEN",
    )
    ssl_ca_cert_file: str | None = option(
        "CA certificate for TLS to Kafka (implies SSL/SASL_SSL)",
        existing_file,
        default=None,
        ess_env="SSL_CA_CERT_FILE",
    )
    security_protocol: str | None = option(
        f"protocol for every endpoint: {', '.join(SECURITY_PROTOCOLS)} (default: derived)",
        one_of(SECURITY_PROTOCOLS),
        default=None,
    )
    kafka_config: Mapping[str, str] = option(
        "librdkafka setting for every Kafka client, repeatable (applied last)",
        parse_kafka_setting,
        default_factory=_empty_mapping,
        kind="append",
        short="-X",
        metavar="KEY=VALUE",
    )
    producer_queue_max_messages: int = option(
        "messages buffered while Kafka is slow or down",
        int_in(1, _LIBRDKAFKA_MAX_QUEUE),
        default=DEFAULT_PRODUCER_QUEUE_MAX_MESSAGES,
    )
    group: str | None = option(
        "join the forwarder cluster NAME: members share one configuration and split the "
        "streams over Kafka's consumer-group protocol, with failover",
        group_name,
        default=None,
        metavar="NAME",
    )
    group_session_timeout_ms: int = option(
        "ms without heartbeats after which a cluster member's shards move to the others",
        int_in(1000, 300_000),
        default=6_000,
    )
    group_shards: int = option(
        "shards of a new cluster (an existing cluster keeps its coordination topic's count)",
        int_in(1, 10_000),
        default=24,
    )
    #: Which environment variables were read under which name (logged at start); not an
    #: option.
    environment_notes: tuple[str, ...] = field(default=(), compare=False)

    # -- endpoints ---------------------------------------------------------------------
    def endpoint(self, name: str) -> KafkaEndpoint | None:
        """The endpoint of option `name` (config_topic, status_topic, output_broker,
        storage_topic) with its password and the shared TLS/protocol/-X settings."""
        uri: KafkaUri | None = getattr(self, name)
        if uri is None:
            return None
        return KafkaEndpoint(
            uri,
            getattr(self, f"{name}_sasl_password"),
            self.security_protocol,
            self.ssl_ca_cert_file,
            self.kafka_config,
            password_option=f"--{name.replace('_', '-')}-sasl-password",
        )

    @property
    def config_endpoint(self) -> KafkaEndpoint:
        found = self.endpoint("config_topic")
        assert found is not None
        return found

    @property
    def output_endpoint(self) -> KafkaEndpoint:
        found = self.endpoint("output_broker")
        assert found is not None
        return found

    @property
    def status_endpoint(self) -> KafkaEndpoint:
        found = self.endpoint("status_topic")
        assert found is not None
        return found

    @property
    def storage_endpoint(self) -> KafkaEndpoint | None:
        return self.endpoint("storage_topic")

    def start_warnings(self) -> tuple[str, ...]:
        """What the operator gave that has no effect: logged as warnings at start."""
        found: list[str] = []
        if self.output_broker.topic is not None:
            found.append(
                f"--output-broker names topic {self.output_broker.topic!r}, which is ignored:"
                " PV data goes to the topic each stream is configured with"
            )
        return tuple(found)

    @property
    def use_receive_time(self) -> bool:
        return self.stale_timestamps == "receive-time"

    def secrets(self) -> tuple[str, ...]:
        """Passwords to register with the log redaction filter."""
        found = [v.reveal() for f in fields(self) if isinstance(v := getattr(self, f.name), Secret)]
        found += [v for k, v in self.kafka_config.items() if is_secret_key(k)]
        return tuple(s for s in found if s)

    def __repr__(self) -> str:
        """Safe to log: passwords (also in -X settings) are shown as '***'."""
        parts = []
        for f in option_fields():
            value: Any = getattr(self, f.name)
            if f.name == "kafka_config":
                value = {k: "***" if is_secret_key(k) else v for k, v in value.items()}
            elif isinstance(value, KafkaUri):
                value = str(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__


#: (uri option, password option) of each Kafka endpoint; the password only with SASL.
ENDPOINTS = (
    ("config_topic", "config_topic_sasl_password"),
    ("status_topic", "status_topic_sasl_password"),
    ("output_broker", "output_broker_sasl_password"),
    ("storage_topic", "storage_topic_sasl_password"),
)


def option_fields() -> tuple[Any, ...]:
    """The dataclass fields of `Settings` that are options, in definition order."""
    return tuple(f for f in fields(Settings) if "option" in f.metadata)


def long_option(name: str) -> str:
    """``config_topic`` -> ``config-topic`` (the config-file key; ``--`` on the command line)."""
    return name.replace("_", "-")


def env_var(name: str) -> str:
    """``config_topic`` -> ``FORWARDER_CONFIG_TOPIC``."""
    return ENV_PREFIX + name.upper()


def default_of(name: str) -> Any:
    for f in fields(Settings):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            return None
    raise KeyError(name)


#: The config-file option: not a setting itself, read only from the command line or the
#: environment (a config file cannot name another).
CONFIG_FILE_OPTION = "config_file"
CONFIG_FILE_ESS_ENV = "CONFIG_FILE"
