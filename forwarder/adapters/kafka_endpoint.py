"""Typed Kafka endpoints: where a client connects and how, with secrets that never print.

A `KafkaEndpoint` is everything one Kafka client needs (bootstrap servers, topic, security
protocol, SASL credentials, CA file, ``-X`` librdkafka overrides).  The service, the
operator CLI and the tests build their producers and consumers from it, so the rules that
turn an operator's address into librdkafka settings live in one place
(`forwarder.adapters.kafka_uri.librdkafka_config`).

Passwords are held in `Secret`, whose ``repr`` and ``str`` are ``***``: an endpoint (or the
settings object holding it) can be logged, put in an exception or shown by a debugger
without leaking a password.  Only `Secret.reveal` gives the text, and only
`KafkaEndpoint.librdkafka_config` calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from forwarder.adapters.kafka_uri import KafkaUri, librdkafka_config
from forwarder.adapters.kafka_uri import is_secret_key as is_secret_key  # the one rule


class Secret:
    """A string that shows as ``***`` in repr, str and format; `reveal` gives the text."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _redacted(options: Mapping[str, str]) -> dict[str, str]:
    return {k: "***" if is_secret_key(k) else v for k, v in options.items()}


@dataclass(frozen=True)
class SaslCredentials:
    mechanism: str
    username: str
    password: Secret


@dataclass(frozen=True)
class KafkaEndpoint:
    """One Kafka client's connection: safe to log (``repr`` hides every secret)."""

    uri: KafkaUri
    password: Secret | None = None
    security_protocol: str | None = None
    ssl_ca_file: str | None = None
    overrides: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The option naming the password (for the error when SASL lacks one).
    password_option: str = "the SASL password"

    @property
    def bootstrap(self) -> str:
        return self.uri.bootstrap

    @property
    def topic(self) -> str | None:
        return self.uri.topic

    @property
    def sasl(self) -> SaslCredentials | None:
        if self.uri.sasl_mechanism is None or self.password is None:
            return None
        return SaslCredentials(self.uri.sasl_mechanism, self.uri.username or "", self.password)

    def librdkafka_config(self) -> dict[str, str]:
        """The client settings (with the real password); raises ValueError on a clash."""
        return librdkafka_config(
            self.uri,
            self.password.reveal() if self.password is not None else None,
            self.security_protocol,
            self.ssl_ca_file,
            self.overrides,
            password_option=self.password_option,
        )

    def secrets(self) -> tuple[str, ...]:
        """Texts for the log redaction filter."""
        found = [v for k, v in self.overrides.items() if is_secret_key(k) and v]
        if self.password:
            found.append(self.password.reveal())
        return tuple(found)

    def __repr__(self) -> str:
        return (
            f"KafkaEndpoint({str(self.uri)!r}, password={self.password!r}, "
            f"security_protocol={self.security_protocol!r}, ssl_ca_file={self.ssl_ca_file!r}, "
            f"overrides={_redacted(self.overrides)!r})"
        )

    __str__ = __repr__
