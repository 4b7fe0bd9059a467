"""Kafka connection options of every command, resolved into the service's `KafkaEndpoint`.

The same option names, converters and environment variables as `forwarder-launch`
(`forwarder.app.settings`), including the ESS forwarder's names (``CONFIG_TOPIC``,
``STATUS_TOPIC``, ``*_SASL_PASSWORD``, ``SSL_CA_CERT_FILE``), with the same precedence:
command line, then ``FORWARDER_<OPTION>``, then the ESS name.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from forwarder.adapters.kafka_endpoint import KafkaEndpoint, Secret
from forwarder.adapters.kafka_uri import SECURITY_PROTOCOLS, parse_kafka_setting
from forwarder.app.cli import checked, resolve_environment
from forwarder.app.config_cli.errors import UsageError
from forwarder.app.settings import URI_HELP, env_var, existing_file, one_of, uri_with_topic

DEFAULT_TIMEOUT_S = 10.0


def _kafka_setting(text: str) -> tuple[str, str]:
    """The forwarder's `-X` parser, with this tool's terser wording (never echoes input)."""
    try:
        return parse_kafka_setting(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected KEY=VALUE with a librdkafka setting name"
        ) from None


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def add_connection_options(p: argparse.ArgumentParser, endpoints: Sequence[str], g: str) -> None:
    """Kafka options; `g` prefixes the dest so values given before the subcommand (stored
    by the main parser) are not overwritten by the subparser's unset defaults."""
    for name in endpoints:
        option = f"--{name}-topic"
        env = env_var(f"{name}_topic")
        p.add_argument(
            option,
            dest=f"{g}{name}_topic",
            metavar="URI",
            help=f"{URI_HELP}/topic (env {env})",
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
        help=f"CA certificate for TLS (implies SSL/SASL_SSL; env {env_var('ssl_ca_cert_file')})",
    )
    p.add_argument(
        "--security-protocol",
        dest=f"{g}security_protocol",
        type=checked(one_of(SECURITY_PROTOCOLS)),
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
        type=positive_seconds,
        metavar="SECONDS",
        help=f"give up on Kafka after this long (default {DEFAULT_TIMEOUT_S:g})",
    )


def option(args: argparse.Namespace, name: str) -> Any:
    """Value given after the subcommand, else before it, else None."""
    value = getattr(args, name, None)
    return value if value is not None else getattr(args, f"g_{name}", None)


@dataclass(frozen=True)
class Connection:
    """Where a command talks to Kafka, and for how long it may try."""

    endpoint: KafkaEndpoint
    timeout: float

    @property
    def topic(self) -> str:
        topic = self.endpoint.topic
        assert topic is not None  # uri_with_topic
        return topic

    def config(self) -> dict[str, Any]:
        return self.endpoint.librdkafka_config()


def _setting(
    args: argparse.Namespace, env: dict[str, str], name: str, convert: Callable[[str], Any]
) -> Any:
    text = option(args, name)
    if text is None:
        text = env.get(env_var(name), "").strip() or None
    if text is None:
        return None
    try:
        return convert(text)
    except ValueError as exc:
        raise UsageError(f"--{name.replace('_', '-')}: {exc}") from None


def connection(args: argparse.Namespace, name: str) -> Connection:
    """The Kafka endpoint for `--<name>-topic`, with the forwarder's environment fallbacks."""
    opt = f"--{name}-topic"
    env, _ = resolve_environment(os.environ)
    uri = _setting(args, env, f"{name}_topic", uri_with_topic)
    if uri is None:
        raise UsageError(f"{opt} is required (or set {env_var(f'{name}_topic')})")
    password = _setting(args, env, f"{name}_topic_sasl_password", Secret)
    ca_file = _setting(args, env, "ssl_ca_cert_file", existing_file)
    security = _setting(args, env, "security_protocol", one_of(SECURITY_PROTOCOLS))
    if password and uri.sasl_mechanism is None:
        raise UsageError(f"{opt}-sasl-password is set but {opt} has no SASL user")
    timeout = float(option(args, "timeout") or DEFAULT_TIMEOUT_S)
    # librdkafka logs every failed connection to stderr; we report one line instead.
    extra: dict[str, str] = {"log_level": "0"}
    extra.update(getattr(args, "g_kafka_config", []) or [])
    extra.update(getattr(args, "kafka_config", []) or [])
    endpoint = KafkaEndpoint(
        uri, password, security, ca_file, extra, password_option=f"{opt}-sasl-password"
    )
    try:
        endpoint.librdkafka_config()
    except ValueError as exc:
        raise UsageError(f"{opt}: {exc}") from None
    return Connection(endpoint, timeout)


def unreachable_message(conn: Connection, why: str) -> str:
    return f"cannot reach Kafka at {conn.endpoint.bootstrap} within {conn.timeout:g} s ({why})"
