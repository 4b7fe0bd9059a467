"""The linear receive path must parse exactly what caproto's own parser parses.

Pure byte-level test: CA commands are serialised with caproto's own command classes and
fed, split at random points, through both parsers.
"""

from __future__ import annotations

import random

import caproto as ca
import numpy as np
import pytest
from caproto._dbr import DBR_TYPES

from forwarder.adapters import _caproto_compat
from tests.support.ca_wire import wire

ORIGINAL_RECV = ca.VirtualCircuit.recv


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
    stream = wire(_responses(300, seed))
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    expected = _parse(ORIGINAL_RECV, [stream])
    assert len(expected) == 330
    assert _parse(_caproto_compat._linear_recv, chunks) == expected
    assert _parse(_caproto_compat._linear_recv, [stream]) == expected


def test_linear_recv_reports_disconnect_and_bytes_needed() -> None:
    circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 5064), 0)
    circuit._data = bytearray()
    commands, needed = _caproto_compat._linear_recv(circuit, b"")
    assert list(commands) == [ca.DISCONNECTED] and needed == 0
    stream = wire(_responses(1, 0))
    commands, needed = _caproto_compat._linear_recv(circuit, stream[:5])
    assert not commands and needed == 16 - 5
    commands, needed = _caproto_compat._linear_recv(circuit, stream[5:])
    assert len(commands) == 2 and needed == 0  # the response and an echo


def test_install_bounds_tcp_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    import caproto.threading.client as tc

    _caproto_compat.install()
    assert ca.VirtualCircuit.recv is _caproto_compat._linear_recv
    monkeypatch.setattr(_caproto_compat, "MAX_TCP_READ", 1000)
    a, b = socket.socketpair()
    try:
        a.sendall(b"x" * 5000)
        time.sleep(0.1)
        assert tc.socket_bytes_available(b) == 1000
    finally:
        a.close()
        b.close()


# -- fast path for monitor updates --------------------------------------------------------
def _update(
    sub_id: int, values: list[float], data_type: int = ca.ChannelType.TIME_DOUBLE
) -> object:
    metadata = DBR_TYPES[data_type](status=0, severity=0)
    metadata.secondsSinceEpoch = 1000 + len(values)
    dtype = ">f4" if data_type == ca.ChannelType.TIME_FLOAT else ">f8"
    return ca.EventAddResponse(
        data=np.array(values, dtype), data_type=data_type, data_count=len(values),
        status=1, subscriptionid=sub_id, metadata=metadata,
    )  # fmt: skip


def _fast_circuit(scalar: bool = True) -> tuple[object, list[tuple[int, bytes, int]]]:
    circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 5064), 0)
    circuit._data = bytearray()
    seen: list[tuple[int, bytes, int]] = []
    _caproto_compat.set_fast_handler(
        circuit, 5, ca.ChannelType.TIME_DOUBLE, scalar,
        lambda payload, count: seen.append((5, bytes(payload), count)),
    )  # fmt: skip
    return circuit, seen


def _received_in_order(circuit: object, chunks: list[bytes]) -> list[object]:
    """What the patched circuit manager would dispatch, in order (fast ones run)."""
    out: list[object] = []
    for chunk in chunks:
        commands, _ = _caproto_compat._linear_recv(circuit, chunk)
        for c in commands:
            if type(c) is tuple:
                c[0](c[1], c[2])
                out.append("fast")
            else:
                out.append((type(c).__name__, getattr(c, "subscriptionid", None)))
    assert len(circuit._data) == 0  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_registered_updates_take_the_fast_path_in_order(seed: int) -> None:
    rng = random.Random(seed)
    commands: list[object] = []
    expected: list[object] = []
    fast_payloads: list[bytes] = []
    for i in range(200):
        pick = rng.randrange(4)
        if pick == 0:  # the registered subscription: fast
            command = _update(5, [float(i)])
            commands.append(command)
            expected.append("fast")
            fast_payloads.append(wire([command])[16:])
        elif pick == 1:  # another subscription: caproto's path
            commands.append(_update(6, [float(i)]))
            expected.append(("EventAddResponse", 6))
        elif pick == 2:  # registered id, but an array for a scalar handler: caproto's path
            commands.append(_update(5, [1.0, 2.0]))
            expected.append(("EventAddResponse", 5))
        else:
            commands.append(ca.EchoResponse())
            expected.append(("EchoResponse", None))
    stream = wire(commands)
    cuts = sorted(rng.sample(range(1, len(stream)), 60))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    circuit, seen = _fast_circuit()
    assert _received_in_order(circuit, chunks) == expected
    assert [payload for _, payload, _ in seen] == fast_payloads
    assert all(count == 1 for _, _, count in seen)


def test_fast_path_needs_matching_type_status_and_registration() -> None:
    circuit, seen = _fast_circuit(scalar=False)
    other_type = _update(5, [1.0], ca.ChannelType.TIME_FLOAT)
    error = _update(5, [1.0])
    error.header.parameter1 = 42  # type: ignore[attr-defined]  # not ECA_NORMAL
    cancel = ca.EventAddResponse(data=(), data_type=ca.ChannelType.TIME_DOUBLE, data_count=0,
                                 status=1, subscriptionid=5)  # fmt: skip
    array = _update(5, [1.0, 2.0, 3.0])
    stream = wire([other_type, error, cancel, array])
    assert _received_in_order(circuit, [stream]) == [
        ("EventAddResponse", 5), ("EventAddResponse", 5), ("EventAddResponse", 5), "fast",
    ]  # fmt: skip
    assert seen[0][2] == 3
    _caproto_compat.clear_fast_handler(circuit, 5)
    assert _received_in_order(circuit, [wire([array])]) == [("EventAddResponse", 5)]


def test_patched_manager_dispatches_fast_updates_and_survives_failures() -> None:
    calls: list[int] = []
    processed: list[object] = []

    def failing(payload: memoryview, count: int) -> None:
        calls.append(count)
        raise ValueError("listener bug")

    class Manager:  # the attributes `_received` uses, as caproto's manager has them
        last_tcp_receipt = 0.0

        def __init__(self) -> None:
            self.circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 5064), 0)
            self.circuit._data = bytearray()
            _caproto_compat.set_fast_handler(
                self.circuit, 5, ca.ChannelType.TIME_DOUBLE, True, failing
            )

        def _process_command(self, command: object) -> None:
            processed.append(command)

    manager = Manager()
    stream = wire([_update(5, [1.0]), ca.EchoResponse(), _update(5, [2.0])])
    assert _caproto_compat._received(manager, stream, None) == 0
    assert calls == [1, 1] and [type(c).__name__ for c in processed] == ["EchoResponse"]
    assert manager.last_tcp_receipt > 0
    assert _caproto_compat._received(manager, b"", None) is ca.DISCONNECTED


def test_a_large_array_is_received_in_linear_time() -> None:
    """A command spread over many reads is collected in one growing buffer and parsed
    once complete: the pending part is never copied again per read (which made an 8 MB
    waveform cost ~260 MB of copying, a 32 MB one ~4 GB)."""
    n = 1 << 20  # 8 MiB of doubles
    stream = wire(
        [
            ca.EventAddResponse(
                data=np.arange(n, dtype=">f8"),
                data_type=ca.ChannelType.DOUBLE,
                data_count=n,
                status=1,
                subscriptionid=3,
            ),
            ca.EchoResponse(),
        ]
    )
    chunk = _caproto_compat.MAX_TCP_READ
    circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", 5064), 0)
    circuit._data = bytearray()
    commands, needed = _caproto_compat._linear_recv(circuit, stream[:chunk])
    assert not commands and needed == len(stream) - 16 - chunk  # all but the echo
    pending = circuit._data
    for start in range(chunk, len(stream) - chunk, chunk):
        commands, needed = _caproto_compat._linear_recv(circuit, stream[start : start + chunk])
        assert not commands
        assert circuit._data is pending  # grown in place, not rebuilt from a copy
    last = (len(stream) - 1) // chunk * chunk
    commands, needed = _caproto_compat._linear_recv(circuit, stream[last:])
    assert [type(c).__name__ for c in commands] == ["EventAddResponse", "EchoResponse"]
    assert needed == 0 and len(circuit._data) == 0
    assert np.array_equal(np.asarray(commands[0].data), np.arange(n))
