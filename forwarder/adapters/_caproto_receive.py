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

It also adds a fast path for the one message that matters for throughput, a monitor
update (EVENT_ADD response).  caproto turns every update into a command object, runs it
through the circuit's and the channel's state machines, the circuit manager's dispatch
chain, the subscription's locked callback fan-out and an executor: about two thirds of the
forwarder's CPU per CA update.  A subscription with exactly one consumer may register a
handler for its subscription id on the circuit (`set_fast_handler`); its updates then go
straight from the header to that handler with the payload as a memoryview.  Ordering is
kept: fast updates travel in the same command list as everything else and are dispatched
in arrival order by the patched `VirtualCircuitManager.received`.  Anything unusual (other
commands, a data type or count the handler did not register for, an error status,
extended headers) takes caproto's own path, which the handler's owner uses to (re)register.

Everything else (command classes, state machine) is caproto's own.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import caproto._circuit as _circuit
import caproto.threading.client as _threading_client
from caproto import DISCONNECTED, RemoteProtocolError
from caproto._commands import Commands, bytes_needed_for_command

#: Largest TCP read handed to the parser at once.
MAX_TCP_READ = 256 * 1024

_log = logging.getLogger(__name__)
_installed = False

#: (payload after the 16-byte header, data count) -> None; runs on the socket thread.
FastHandler = Callable[[memoryview, int], None]
#: Attribute of a `VirtualCircuit` holding {subscription id: (data type, scalar, handler)}.
_FAST_TABLE = "_forwarder_fast_updates"
_HEADER = struct.Struct(">HHHHII")  # command, payload size, type, count, param 1, param 2
_HEADER_SIZE = 16
_EVENT_ADD = 1
_ECA_NORMAL = 1
_EXTENDED_SIZE = 0xFFFF
#: Attribute of a `VirtualCircuit`: bytes still missing before its pending tail can hold a
#: complete command (0: unknown, parse at the next read).
_MISSING = "_forwarder_missing"


def set_fast_handler(
    circuit: Any, subscription_id: int, data_type: int, scalar: bool, handler: FastHandler
) -> None:
    """Deliver `circuit`'s updates for `subscription_id` of `data_type` to `handler`.

    `scalar` handlers get only updates of one element; others any non-zero count.
    """
    table = circuit.__dict__.get(_FAST_TABLE)
    if table is None:
        table = {}
        setattr(circuit, _FAST_TABLE, table)
    table[subscription_id] = (data_type, scalar, handler)


def clear_fast_handler(circuit: Any, subscription_id: int) -> None:
    """Send `subscription_id`'s updates through caproto again."""
    table = circuit.__dict__.get(_FAST_TABLE)
    if table is not None:
        table.pop(subscription_id, None)


def _linear_recv(self: Any, *buffers: Any) -> tuple[deque[Any], int]:
    """Drop-in for `caproto.VirtualCircuit.recv` (same result, linear time)."""
    received = b"".join(buffers)
    commands: deque[Any] = deque()
    if not received:
        self.log.debug("Circuit disconnected")
        commands.append(DISCONNECTED)
        return commands, 0
    pending = self._data
    if pending:
        # The tail of an incomplete command: grow it in place (amortised linear; nothing
        # holds a view of it yet) and parse only once the command can be complete.  Copying
        # the whole pending part at every read instead made a large array quadratic: an
        # 8 MB waveform in 256 KiB reads copied ~260 MB, a 32 MB one ~4 GB.
        pending += received
        missing = self.__dict__.get(_MISSING, 0) - len(received)
        if missing > 0:
            setattr(self, _MISSING, missing)
            return deque(), missing
        data = pending
    else:
        data = bytearray(received)
    view = memoryview(data)
    role = self.their_role
    table = Commands[role]
    fast = self.__dict__.get(_FAST_TABLE)
    unpack_header = _HEADER.unpack_from
    size = len(data)
    offset = 0
    needed = 0
    while True:
        if fast and size - offset >= _HEADER_SIZE:
            command, payload_size, data_type, count, status, sub_id = unpack_header(data, offset)
            if (
                command == _EVENT_ADD
                and status == _ECA_NORMAL
                and 0 < payload_size < _EXTENDED_SIZE
                and count
                and (entry := fast.get(sub_id)) is not None
                and entry[0] == data_type
                and (count == 1 or not entry[1])
            ):
                start = offset + _HEADER_SIZE
                end = start + payload_size
                if end > size:
                    needed = end - size
                    break
                commands.append((entry[2], view[start:end], count))
                offset = end
                if offset == size:
                    needed = 0
                    break
                continue
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
    # commands parsed from it (their payloads are views into it), and is never written
    # again (a value kept for a later stream may be such a view).
    self._data = bytearray(view[offset:]) if offset < size else bytearray()
    setattr(self, _MISSING, needed)
    return commands, needed


def _received(self: Any, bytes_recv: Any, address: Any) -> Any:
    """Drop-in for `VirtualCircuitManager.received` that also dispatches fast updates."""
    self.last_tcp_receipt = time.monotonic()
    commands, needed = self.circuit.recv(bytes_recv)
    process = self._process_command
    for command in commands:
        if command.__class__ is tuple:
            try:
                command[0](command[1], command[2])
            except Exception:
                # Must not escape: caproto would drop the whole circuit.
                _log.exception("CA update handler %r failed", command[0])
        else:
            process(command)
    if not bytes_recv:
        return DISCONNECTED
    return needed


def install() -> None:
    """Patch caproto (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    _circuit.VirtualCircuit.recv = _linear_recv
    _threading_client.VirtualCircuitManager.received = _received
    original = _threading_client.socket_bytes_available

    def bounded_bytes_available(sock: socket.socket, **kwargs: Any) -> int:
        available: int = original(sock, **kwargs)
        if sock.type == socket.SOCK_STREAM:
            return min(available, MAX_TCP_READ)  # read at call time (tests lower it)
        return available

    _threading_client.socket_bytes_available = bounded_bytes_available
