"""The EPICS test servers themselves: a failure to start must be a clear error, not a test
that goes on against nothing."""

from __future__ import annotations

import socket

import pytest

from tests.support.epics_servers import LOCALHOST, CaRepeater, ServerError, epics_env, free_port

pytestmark = pytest.mark.integration


def test_repeater_is_up_only_once_it_confirms_registrations() -> None:
    repeater = CaRepeater(epics_env(free_port(), free_port()))
    assert not repeater._confirms()
    with repeater:
        assert repeater._confirms()
    assert not repeater._confirms()


def test_repeater_whose_port_is_held_by_another_socket_is_an_error_naming_the_port() -> None:
    """Holding the port is not being a repeater: the start fails, and says where."""
    env = epics_env(free_port(), free_port())
    repeater = CaRepeater(env)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((LOCALHOST, repeater.port))
        with pytest.raises(ServerError, match=f"UDP port {repeater.port}"):
            repeater.start(timeout=20.0)
