"""A linear-time, bounded receive path for caproto's Channel Access client.

caproto 1.x parses a TCP read by slicing the remaining buffer after every command
(`data[total_size:]`), so a read of N bytes holding K commands copies about N*K/2 bytes.
Its selector thread also reads everything the kernel holds.  When a forwarder falls behind
(say 20,000 updates/s), reads grow, parsing becomes quadratic, every command's payload
keeps its own copy of the rest of the buffer alive, and the process collapses: it forwards
nothing and grows to gigabytes in seconds (the failure the reference forwarder shows).

`install()` replaces two things, once per process:

* `VirtualCircuit.recv`: walks the buffer with an offset into one memoryview, so parsing is
  linear and payloads share the read they came from;
* the selector's read size for TCP sockets, capped at `MAX_TCP_READ`, so memory held per
  read is bounded and, when the forwarder is slower than the IOC, the kernel buffers fill
  and TCP flow control pushes back on the server, which then coalesces updates per
  subscription (EPICS's own overload behaviour) instead of the client queueing them.

Everything else (command classes, state machine) is caproto's own.
"""

from __future__ import annotations

import ctypes
import socket
from collections import deque
from typing import Any

import caproto._circuit as _circuit
import caproto.threading.client as _threading_client
from caproto import DISCONNECTED, RemoteProtocolError
from caproto._commands import Commands, bytes_needed_for_command

#: Largest TCP read handed to the parser at once.
MAX_TCP_READ = 256 * 1024

_installed = False


def _linear_recv(self: Any, *buffers: Any) -> tuple[deque[Any], int]:
    """Drop-in for `caproto.VirtualCircuit.recv` (same result, linear time)."""
    received = b"".join(buffers)
    commands: deque[Any] = deque()
    if not received:
        self.log.debug("Circuit disconnected")
        commands.append(DISCONNECTED)
        return commands, 0
    pending = self._data
    data = bytearray(pending) + received if pending else bytearray(received)
    view = memoryview(data)
    role = self.their_role
    table = Commands[role]
    size = len(data)
    offset = 0
    needed = 0
    while True:
        header, needed = bytes_needed_for_command(view[offset:], role)
        if needed > 0:
            break
        try:
            command_class = table[header.command]
        except KeyError:
            raise RemoteProtocolError(
                f"Packet with bad command ID {hex(header.command)} was received: {header}"
            ) from None
        end = offset + ctypes.sizeof(header) + header.payload_size
        commands.append(command_class.from_wire(header, view[offset + ctypes.sizeof(header) : end]))
        offset = end
        if offset == size:
            needed = 0
            break
    # The unparsed tail gets a buffer of its own: `data` stays alive only as long as the
    # commands parsed from it (their payloads are views into it).
    self._data = bytearray(view[offset:]) if offset < size else bytearray()
    return commands, needed


def install() -> None:
    """Patch caproto (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    _circuit.VirtualCircuit.recv = _linear_recv
    original = _threading_client.socket_bytes_available

    def bounded_bytes_available(sock: socket.socket, **kwargs: Any) -> int:
        available: int = original(sock, **kwargs)
        if sock.type == socket.SOCK_STREAM:
            return min(available, MAX_TCP_READ)  # read at call time (tests lower it)
        return available

    _threading_client.socket_bytes_available = bounded_bytes_available
