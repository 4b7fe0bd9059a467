"""Kafka addresses as operators write them, turned into librdkafka settings.

The command line takes one compact string per Kafka endpoint,
``[[PROTOCOL+]SASL_MECHANISM\\username@]host[:port][,host[:port]...][/topic]``, so that a
broker list, a topic, the security protocol and SASL credentials travel together.  Both of
the ESS forwarder's spellings are accepted: the README-era ``SCRAM-SHA-512\\user@host:port``
(the protocol is then derived: SASL_PLAINTEXT, or SASL_SSL with a CA file) and the current
``SASL_SSL+SCRAM-SHA-512\\user@host:port``.  As there (librdkafka's rule), a host without
a port means port 9092.  Passwords are never part of the string: they
come from separate options (or environment variables) so they do not leak into process
listings or error messages.  Error messages never echo the credentials part either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from forwarder.core.streams import is_legal_topic

#: Canonical spelling of every SASL mechanism we accept, keyed by upper-case input.
SASL_MECHANISMS = {m.upper(): m for m in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")}
#: librdkafka `security.protocol` values.
SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")
#: librdkafka's port for a broker given without one.
DEFAULT_KAFKA_PORT = 9092

_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")
#: librdkafka settings whose value can be or hold a secret, by a part of their name:
#: passwords and passphrases (sasl.password, ssl.key.password, ssl.keystore.password,
#: sasl.oauthbearer.assertion.private.key.passphrase), client secrets
#: (sasl.oauthbearer.client.secret and its alias) and private keys in the setting itself
#: (ssl.key.pem, sasl.oauthbearer.assertion.private.key.pem).
_SECRET_MARKERS = ("password", "passphrase", "secret", "key.pem")
#: ... and by their whole name: a private key set through the API, and free-form settings
#: that carry credentials (the OAUTHBEARER configuration may hold tokens and client
#: secrets, its extensions may hold identifiers issued with them).
_SECRET_KEYS = frozenset(("ssl_key", "sasl.oauthbearer.config", "sasl.oauthbearer.extensions"))


@dataclass(frozen=True, slots=True)
class KafkaUri:
    """A parsed address: `bootstrap` is the normalised ``host:port[,host:port]`` list."""

    bootstrap: str
    topic: str | None = None
    sasl_mechanism: str | None = None
    username: str | None = None
    #: Given in the address (``PROTOCOL+...``); None means derived.
    security_protocol: str | None = None

    def __str__(self) -> str:
        """Round-trips through `parse_kafka_uri`; safe to log (holds no password)."""
        creds = f"{self.sasl_mechanism}\\{self.username}@" if self.sasl_mechanism else ""
        protocol = f"{self.security_protocol}+" if self.security_protocol else ""
        topic = f"/{self.topic}" if self.topic is not None else ""
        return f"{protocol}{creds}{self.bootstrap}{topic}"


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split one ``host:port`` (``[v6addr]:port`` allowed); shared with Graylog and Carbon
    addresses.  Without `default_port` the port is mandatory."""
    item = text.strip()
    if not item:
        raise ValueError("empty address (expected host:port)")
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"malformed IPv6 address in {item!r} (expected [addr]:port)")
        if not rest and default_port is not None:
            return host, default_port
        if not rest.startswith(":"):
            raise ValueError(f"missing port in {item!r} (expected [addr]:port)")
        port_text = rest[1:]
    else:
        host, sep, port_text = item.rpartition(":")
        if not sep and default_port is not None:
            host, port_text = item, str(default_port)
        elif not sep:
            raise ValueError(f"missing port in {item!r} (expected host:port)")
        if not host:
            raise ValueError(f"missing host in {item!r} (expected host:port)")
        if not _HOST_RE.match(host):
            raise ValueError(f"invalid host name {host!r}")
    if not port_text:
        raise ValueError(f"missing port in {item!r} (expected host:port)")
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host, port


def _format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_credentials(creds: str) -> tuple[str, str]:
    mechanism, sep, username = creds.partition("\\")
    if not sep:
        # Do not echo `creds`: people sometimes put `user:password` there.
        raise ValueError(
            "credentials before '@' must be written MECHANISM\\username "
            f"(mechanism one of {', '.join(SASL_MECHANISMS.values())})"
        )
    canonical = SASL_MECHANISMS.get(mechanism.strip().upper())
    if canonical is None:
        raise ValueError(
            f"unknown SASL mechanism {mechanism.strip()!r} "
            f"(expected one of {', '.join(SASL_MECHANISMS.values())})"
        )
    if not username:
        raise ValueError("SASL username is empty")
    return canonical, username


def parse_kafka_uri(text: str, require_topic: bool | None) -> KafkaUri:
    """Parse an address; `require_topic` True means a topic is mandatory, False forbidden,
    None optional (a topic given is parsed and checked like any other).

    The output broker takes an optional topic that it does not use, as the ESS forwarder
    does; the caller warns about it (`Settings.start_warnings`).
    """
    raw = text.strip()
    if not raw:
        raise ValueError("empty Kafka address")
    mechanism: str | None = None
    username: str | None = None
    protocol: str | None = None
    head, plus, rest = raw.partition("+")
    if plus and "\\" not in head and "@" not in head:
        # Neither '+' nor '\\' occurs in a host, topic or mechanism name, so a '+' before
        # the credentials ends the protocol (the ESS forwarder splits the same way).
        protocol = _parse_protocol(head)
        raw = rest.strip()
    if "@" in raw:
        # Topics and host names cannot contain '@', so the last one ends the credentials.
        creds, _, raw = raw.rpartition("@")
        mechanism, username = _parse_credentials(creds)
    if protocol is not None and protocol.startswith("SASL_") and mechanism is None:
        raise ValueError(
            f"security protocol {protocol} needs credentials: {protocol}+MECHANISM\\user@host"
        )
    if protocol is not None and not protocol.startswith("SASL_") and mechanism is not None:
        raise ValueError(f"security protocol {protocol} cannot carry SASL credentials")
    hosts_text, slash, topic_text = raw.partition("/")
    topic: str | None = None
    if slash:
        if not topic_text:
            raise ValueError("topic after '/' is empty")
        if not is_legal_topic(topic_text):
            raise ValueError(
                f"invalid topic name {topic_text!r} (allowed: letters, digits, '.', '_', '-')"
            )
        topic = topic_text
    if require_topic and topic is None:
        raise ValueError("missing topic (expected host:port/topic)")
    if require_topic is False and topic is not None:
        raise ValueError(f"a topic ({topic!r}) is not allowed here (expected host:port only)")
    if not hosts_text.strip():
        raise ValueError("missing host (expected host:port)")
    servers = [
        _format_host_port(*parse_host_port(item, default_port=DEFAULT_KAFKA_PORT))
        for item in hosts_text.split(",")
    ]
    return KafkaUri(",".join(servers), topic, mechanism, username, protocol)


def _parse_protocol(text: str) -> str:
    value = text.strip().upper()
    if value not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"unknown security protocol {text.strip()!r} before '+' "
            f"(expected one of {', '.join(SECURITY_PROTOCOLS)})"
        )
    return value


def librdkafka_config(
    uri: KafkaUri,
    password: str | None,
    security_protocol: str | None,
    ssl_ca_file: str | None,
    extra: Mapping[str, str],
    *,
    password_option: str = "the SASL password",
) -> dict[str, str]:
    """Build the librdkafka settings for one endpoint.

    The security protocol is derived so the common cases need no extra option: SASL
    credentials imply SASL_PLAINTEXT, upgraded to SASL_SSL when a CA file is given; a CA
    file alone implies SSL.  `extra` (``-X key=value``) comes last so operators can
    override anything we chose.  `password_option` names the option in the error raised
    when SASL credentials lack a password.

    A protocol written in the address (``SASL_SSL+...``) and `security_protocol`
    (``--security-protocol``, shared by every endpoint) may both be given if they agree;
    when they differ nothing can tell which one the operator meant, so it is an error.
    """
    config: dict[str, str] = {"bootstrap.servers": uri.bootstrap}
    protocol = security_protocol.strip().upper() if security_protocol else None
    if protocol is not None and protocol not in SECURITY_PROTOCOLS:
        raise ValueError(
            f"unknown security protocol {security_protocol!r} "
            f"(expected one of {', '.join(SECURITY_PROTOCOLS)})"
        )
    if uri.security_protocol is not None:
        if protocol is not None and protocol != uri.security_protocol:
            raise ValueError(
                f"the address says {uri.security_protocol} but --security-protocol says {protocol}"
            )
        protocol = uri.security_protocol
    if uri.sasl_mechanism is not None:
        if not password:
            raise ValueError(
                f"{password_option} is required for SASL user {uri.username!r} on {uri.bootstrap}"
            )
        if protocol is None:
            protocol = "SASL_SSL" if ssl_ca_file else "SASL_PLAINTEXT"
        elif not protocol.startswith("SASL_"):
            raise ValueError(
                f"security protocol {protocol} cannot carry the SASL credentials of {uri}"
            )
        config["sasl.mechanism"] = uri.sasl_mechanism
        config["sasl.username"] = uri.username or ""
        config["sasl.password"] = password
    elif protocol is None and ssl_ca_file:
        protocol = "SSL"
    if protocol is not None:
        config["security.protocol"] = protocol
    if ssl_ca_file:
        config["ssl.ca.location"] = ssl_ca_file
    for key, value in extra.items():
        config[key] = value
    return config


def is_secret_key(key: str) -> bool:
    """Whether a librdkafka setting can hold a secret, so that its value is never shown
    (logs, Graylog, status).  Errs on the side of hiding: checked against every
    setting of librdkafka's CONFIGURATION.md that takes a key, password or token."""
    lowered = key.lower()
    return lowered in _SECRET_KEYS or any(m in lowered for m in _SECRET_MARKERS)


def redact(config: Mapping[str, str]) -> dict[str, str]:
    """Copy of `config` fit for logs: values of settings that can hold a secret become
    ``***`` (see `is_secret_key`)."""
    return {key: "***" if is_secret_key(key) else value for key, value in config.items()}


_KAFKA_KEY_RE = re.compile(r"^[a-z][a-z0-9._]*$")


def parse_kafka_setting(text: str) -> tuple[str, str]:
    """`key=value` of a `-X` option: a librdkafka setting name and its value."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        # Do not echo the text: it may be `sasl.password` with a typo.
        raise ValueError("expected key=value (a librdkafka setting, e.g. linger.ms=5)")
    if not _KAFKA_KEY_RE.match(key):
        raise ValueError(f"{key!r} is not a librdkafka setting name")
    return key, value.strip()
