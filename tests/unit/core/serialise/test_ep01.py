"""ep01 connection messages."""

from __future__ import annotations

import pytest
from streaming_data_types.epics_connection_ep01 import deserialise_ep01

from forwarder.core.events import ConnectionState
from forwarder.core.serialise import serialise_connection


@pytest.mark.parametrize("state", list(ConnectionState))
def test_every_state(state: ConnectionState) -> None:
    out = serialise_connection("pv:c", 456, state, "fwd-1")
    assert out[4:8] == b"ep01"
    info = deserialise_ep01(out)
    assert info.status.name == state.name and info.status.value == state.value
    assert (info.source_name, info.timestamp, info.service_id) == ("pv:c", 456, "fwd-1")


def test_without_service_id_and_unicode() -> None:
    info = deserialise_ep01(serialise_connection("ψ:pv", 0, ConnectionState.CONNECTED, None))
    assert (info.source_name, info.timestamp, info.service_id) == ("ψ:pv", 0, "")


def test_plain_int_state_accepted() -> None:
    info = deserialise_ep01(serialise_connection("p", 1, 3, None))  # type: ignore[arg-type]
    assert info.status.name == "DISCONNECTED"
