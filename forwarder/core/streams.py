"""Stream identity: what the forwarder is asked to forward, independent of any library.

A *stream* is one PV forwarded with one schema to one topic.  The same PV may appear in
several streams (different schemas or topics); each is registered, matched and removed on
its own so that removing one never stops another.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Protocol(enum.IntEnum):
    """EPICS transport; the numeric values are the ones used by rf5k/fc00 on the wire."""

    PVA = 0
    CA = 1
    FAKE = 2

    @classmethod
    def parse(cls, text: str) -> Protocol:
        """Accept `ca`, `CA`, `pva`, `fake` ... (used by the CLI and config files)."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(p.name.lower() for p in cls)
            raise ValueError(f"unknown protocol {text!r} (expected one of {names})") from None


#: Schemas a stream may ask for: every one the ESS forwarder accepts in a config message.
#: Every stream also gets ep01 (connection) messages; see `ALARM_SCHEMAS` for al00.
#: `no_op` and `ep01` streams send connection messages only, `al00` streams alarms and
#: connection messages; the others one value message per update.
STREAM_SCHEMAS = ("f144", "f142", "tdct", "nttable_se00", "nttable_senv", "no_op", "al00", "ep01")
#: Schemas only PVA can feed (an NTTable has no CA or fake equivalent).
PVA_ONLY_SCHEMAS = ("nttable_se00", "nttable_senv")
#: Schemas whose streams also get al00 alarm messages (f142 carries the alarm itself).
ALARM_SCHEMAS = ("f144", "tdct", "nttable_se00", "nttable_senv", "al00")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One configured stream.

    `periodic` is whether the last value is re-sent when nothing new arrived within the
    update period.  It is not part of the identity: adding the same stream again with a
    different flag updates the flag instead of creating a second stream.
    """

    channel: str
    schema: str
    topic: str
    protocol: Protocol
    periodic: bool = False

    @property
    def key(self) -> tuple[str, str, str, Protocol]:
        return (self.channel, self.schema, self.topic, self.protocol)

    def describe(self) -> str:
        return f"{self.protocol.name.lower()}://{self.channel} -> {self.topic} [{self.schema}]"


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """A REMOVE selector: empty fields match everything; `?`/`*` wildcards are allowed in
    channel and topic.  The protocol is not matched (the wire formats cannot leave it empty).
    """

    channel: str = ""
    schema: str = ""
    topic: str = ""


#: Kafka's own rule for topic names (kafka.common.internals.Topic): 1 to 249 of these.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def is_legal_topic(name: str) -> bool:
    """Whether Kafka accepts `name` as a topic (config streams and URIs use the same rule)."""
    return name not in (".", "..") and _TOPIC_NAME.fullmatch(name) is not None
