"""The linear receive path must parse exactly what caproto's own parser parses.

Pure byte-level test: CA commands are serialised with caproto's own command classes and
fed, split at random points, through both parsers.
"""

from __future__ import annotations

import random

import caproto as ca
import numpy as np
import pytest

from forwarder.adapters import _caproto_receive

ORIGINAL_RECV = ca.VirtualCircuit.recv


def _wire(commands: list[object]) -> bytes:
    out = bytearray()
    for command in commands:
        out += bytes(command.header)  # type: ignore[attr-defined]
        for buf in command.buffers:  # type: ignore[attr-defined]
            out += bytes(buf)
    return bytes(out)


def _responses(n: int, seed: int) -> list[object]:
    rng = random.Random(seed)
    commands: list[object] = []
    for i in range(n):
        count = rng.choice([1, 1, 3, 100])
        data = np.arange(count, dtype=">f8") + i
        commands.append(
            ca.EventAddResponse(
                data=data,
                data_type=ca.ChannelType.DOUBLE,
                data_count=count,
                status=1,
                subscriptionid=i % 7,
            )
        )
        if i % 10 == 0:
            commands.append(ca.EchoResponse())
    return commands


def _parse(recv: object, chunks: list[bytes]) -> list[tuple[str, object]]:
    circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 5064), 0)
    circuit._data = bytearray()
    parsed: list[tuple[str, object]] = []
    for chunk in chunks:
        commands, _ = recv(circuit, chunk)  # type: ignore[operator]
        for c in commands:
            key = getattr(c, "subscriptionid", None)
            data = np.asarray(c.data).tolist() if hasattr(c, "data") else None
            parsed.append((type(c).__name__, (key, data)))
    assert len(circuit._data) == 0, "bytes left over"
    return parsed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_linear_recv_matches_caproto_for_any_split(seed: int) -> None:
    stream = _wire(_responses(300, seed))
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    expected = _parse(ORIGINAL_RECV, [stream])
    assert len(expected) == 330
    assert _parse(_caproto_receive._linear_recv, chunks) == expected
    assert _parse(_caproto_receive._linear_recv, [stream]) == expected


def test_linear_recv_reports_disconnect_and_bytes_needed() -> None:
    circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 5064), 0)
    circuit._data = bytearray()
    commands, needed = _caproto_receive._linear_recv(circuit, b"")
    assert list(commands) == [ca.DISCONNECTED] and needed == 0
    stream = _wire(_responses(1, 0))
    commands, needed = _caproto_receive._linear_recv(circuit, stream[:5])
    assert not commands and needed == 16 - 5
    commands, needed = _caproto_receive._linear_recv(circuit, stream[5:])
    assert len(commands) == 2 and needed == 0  # the response and an echo


def test_install_bounds_tcp_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    import caproto.threading.client as tc

    _caproto_receive.install()
    assert ca.VirtualCircuit.recv is _caproto_receive._linear_recv
    monkeypatch.setattr(_caproto_receive, "MAX_TCP_READ", 1000)
    a, b = socket.socketpair()
    try:
        a.sendall(b"x" * 5000)
        time.sleep(0.1)
        assert tc.socket_bytes_available(b) == 1000
    finally:
        a.close()
        b.close()
