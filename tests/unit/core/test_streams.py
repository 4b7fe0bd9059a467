from __future__ import annotations

import pytest

from forwarder.adapters.kafka_uri import parse_kafka_uri
from forwarder.core.config_messages import (
    UpdateKind,
    decode_config_message,
    encode_config_message,
)
from forwarder.core.streams import Protocol, StreamSpec, is_legal_topic

LEGAL = ["t", "forwarder_config", "a.b-c_D9", "t" * 249]
ILLEGAL = ["", ".", "..", "t" * 250, "bad topic", "ü", "a/b", "topic\n"]


@pytest.mark.parametrize("name", LEGAL)
def test_legal_topic_names(name: str) -> None:
    assert is_legal_topic(name)


@pytest.mark.parametrize("name", ILLEGAL)
def test_illegal_topic_names(name: str) -> None:
    assert not is_legal_topic(name)


# Addresses are stripped of surrounding blanks and split at "/" before the topic is checked.
@pytest.mark.parametrize(
    "name", [n for n in LEGAL + ILLEGAL if n and n == n.strip() and "/" not in n]
)
def test_config_streams_and_uris_apply_the_same_rule(name: str) -> None:
    """A topic a config message may name is exactly one an address may name."""
    payload = encode_config_message(
        UpdateKind.ADD, [StreamSpec("PV", "f144", name, Protocol.CA, False)]
    )
    try:
        accepted_in_config = bool(decode_config_message(payload, False).streams)
    except ValueError:
        accepted_in_config = False
    try:
        parse_kafka_uri(f"localhost:9092/{name}", require_topic=True)
        accepted_in_uri = True
    except ValueError:
        accepted_in_uri = False
    assert accepted_in_config == accepted_in_uri == is_legal_topic(name)
