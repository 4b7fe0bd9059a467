"""Every use of caproto's private parts, behind a version guard.

The CA adapter (`ca.py`) uses only caproto's public API.  What it gains from caproto's
internals lives here, and is used only when `fast_paths()` says so: the installed caproto
is a release these parts were tested with (`TESTED_CAPROTO`) and the operator did not ask
for the stock library path (`STOCK_ENV`).  Otherwise the adapter runs stock caproto
(its receive path, its executor threads, its search loop), slower but correct, and says
so once in the log.  The tests run both paths.

What is here:

* `Broadcaster`: re-searches soon after a new server's beacon; its search-retry thread
  survives a failure (a name caproto cannot put in a search request used to end it, and
  with it every later search of the process); one failing address no longer stops the
  others.
* `InlineContext`: circuits that run callbacks inline instead of in an unbounded
  per-circuit thread pool; a server that fails the circuit (refused, hung handshake) no
  longer ends the thread that connects every searched PV.
* `time_meta_size`: the size of a DBR_TIME_* header, for the adapter's fast decoders.
* A linear-time, bounded receive path with a fast path for monitor updates (below).

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
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import caproto as ca
import caproto.threading.client as _threading_client
from caproto import DISCONNECTED, RemoteProtocolError
from caproto.threading.client import SEARCH_MAX_DATAGRAM_BYTES, Context, SharedBroadcaster

try:  # private modules: a release that moved them gets the stock path, not a crash
    import caproto._circuit as _circuit
    from caproto._commands import Commands, bytes_needed_for_command
    from caproto._dbr import DBR_TYPES

    _IMPORT_PROBLEM: str | None = None
except ImportError as err:  # pragma: no cover - only with an untested caproto
    _IMPORT_PROBLEM = f"caproto's private modules changed ({err})"

from forwarder.adapters._versions import FastPathGuard, Releases
from forwarder.core.ratelimit import RateLimitedLogger

#: Largest TCP read handed to the parser at once.
MAX_TCP_READ = 256 * 1024

_log = logging.getLogger(__name__)
_installed = False

#: caproto releases the private parts below were tested with: [first, end).
TESTED_CAPROTO: Releases = ((1, 3), (1, 4))

#: Whether to use the private parts below (decided once per process, logged once).
fast_paths = FastPathGuard(
    "caproto",
    TESTED_CAPROTO,
    _IMPORT_PROBLEM,
    "Channel Access: %s; using stock caproto (slower)",
    _log,
)


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


def time_meta_size(data_type: int) -> int:
    """Bytes before the value in a DBR_TIME_* payload (status, severity, stamp, padding)."""
    return ctypes.sizeof(DBR_TYPES[data_type])


#: Room for one search request in a datagram (caproto batches searches into datagrams of
#: at most this many bytes, after a version request).
_MAX_SEARCH_BYTES = SEARCH_MAX_DATAGRAM_BYTES - len(
    ca.VersionRequest(0, ca.DEFAULT_PROTOCOL_VERSION)
)


def unsearchable_reason(name: str) -> str | None:
    """Why `name` cannot be searched for over CA (None if it can).

    caproto builds search requests on its search-retry thread; a name it refuses there
    (a record part over 59 characters) raises on that thread and ends it, and with it
    every later search of the process.  So names are checked here, the same way, first.
    """
    try:
        request = ca.SearchRequest(name, 0, ca.DEFAULT_PROTOCOL_VERSION)
    except Exception as err:  # noqa: BLE001 - whatever caproto refuses, we refuse
        return str(err)
    if len(request) > _MAX_SEARCH_BYTES:
        return f"a search request for it would not fit a datagram ({len(request)} bytes)"
    return None


class _InlineExecutor:
    """Stands in for caproto's per-circuit ThreadPoolExecutor: runs the callback at once."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            # An exception escaping here would make caproto drop the whole circuit.
            _log.exception("CA callback %r failed", fn)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


_INLINE = _InlineExecutor()


#: Failed CA circuits, logged at most once a minute per reason (a hung IOC fails every
#: attempt); reasons are library text, hence bounded.
_circuit_failures = RateLimitedLogger(_log, 60.0, max_keys=1000)


class Broadcaster(SharedBroadcaster):  # type: ignore[misc]
    """Re-sends unanswered searches soon after a new or restarted server is seen.

    caproto's own retry loop only sends a search again after ~8 s and then every 5-10 s
    (its wait and its resend threshold double together), and on a server beacon it merely
    notes the server.  libca re-searches on such beacon anomalies; we do the same, a few
    times with backoff, because an IOC beacons before it answers searches (RSRV ignores
    them until iocInit has finished).  Beacons reach a client only through a CA repeater.
    """

    FOLLOW_UPS_S = (0.0, 0.1, 0.3, 0.7, 1.5, 3.1)

    def __init__(self) -> None:
        # Set before super().__init__(): its threads may report a beacon at once.
        self._follow_up_cond = threading.Condition()
        self._follow_ups: list[float] = []
        self._failing_addresses: set[tuple[str, int]] = set()
        super().__init__()
        threading.Thread(
            target=self._follow_up_loop, daemon=True, name="ca-search-follow-up"
        ).start()

    def search(self, results_queue: Any, names: Any, *, timeout: float = 2) -> None:
        """Queue searches, leaving out names a search request cannot carry (see
        `unsearchable_reason`): one such name would end the search-retry thread."""
        good = []
        for name in names:
            reason = unsearchable_reason(name)
            if reason is None:
                good.append(name)
            else:
                _log.error("Not searching for CA channel %r: %s", name, reason)
        super().search(results_queue, good, timeout=timeout)

    def _retry_unanswered_searches(self) -> None:
        """caproto's search-retry loop, restarted if anything escapes it.

        Anything raised there ends the thread, and with it every search of the process:
        no PV added later connects, no disconnected PV comes back.  Names that cannot be
        searched are dropped before the restart; the pause keeps a persistent failure
        from spinning.
        """
        while not self._close_event.is_set():
            try:
                super()._retry_unanswered_searches()
                return
            except Exception:  # noqa: BLE001 - this thread must outlive any one failure
                _log.exception("CA search-retry loop failed; restarting it")
                with self._search_lock:
                    for search_id, item in list(self.unanswered_searches.items()):
                        if unsearchable_reason(item[0]) is not None:
                            del self.unanswered_searches[search_id]
                self._close_event.wait(0.5)

    def send(self, *commands: Any) -> None:
        """Send search datagrams to every address of the address list.

        caproto's own version raises at the first address that refuses the datagram
        (ENETUNREACH, EPERM, ...), so one bad entry of EPICS_CA_ADDR_LIST skipped every
        address after it and ended the search-retry thread.  Here a failing address is
        logged (once until it works again) and the others still get the search.
        """
        data = self.broadcaster.send(*commands)
        for address in ca.get_client_address_list():
            sock = self.udp_sock
            if sock is None:
                return
            try:
                sock.sendto(data, address)
            except OSError as err:
                if address not in self._failing_addresses:
                    self._failing_addresses.add(address)
                    _log.warning("CA search to %s:%d failed: %s", *address, err)
            else:
                self._failing_addresses.discard(address)

    def _new_server_found(self) -> None:
        super()._new_server_found()
        now = time.monotonic()
        with self._follow_up_cond:
            self._follow_ups = [now + delay for delay in self.FOLLOW_UPS_S]
            self._follow_up_cond.notify()

    def disconnect(self, *, wait: bool = True) -> None:
        """Stop searching before caproto closes the socket the search thread sends on.

        Plain caproto closes the socket first, so a search in flight dies with EBADF, and
        `wait=True` then waits out the search thread's back-off sleep (up to 5 s).
        """
        with self._search_lock:
            self.unanswered_searches.clear()
        self._close_event.set()
        self._search_now.set()  # wake the retry loop so that it sees the close event
        with self._follow_up_cond:
            self._follow_up_cond.notify()
        retry = getattr(self, "_retry_unanswered_searches_thread", None)
        if retry is not None and retry is not threading.current_thread():
            retry.join(timeout=5)
        super().disconnect(wait=wait)

    def _follow_up_loop(self) -> None:
        cond = self._follow_up_cond
        while not self._close_event.is_set():
            with cond:
                if not self._follow_ups:
                    cond.wait(0.5)
                    continue
                delay = self._follow_ups[0] - time.monotonic()
                if delay > 0:
                    cond.wait(min(delay, 0.5))
                    continue
                self._follow_ups.pop(0)
            self.search_now()


class InlineContext(Context):  # type: ignore[misc]
    """caproto Context whose circuits deliver callbacks inline (see module docstring), and
    whose search-results thread survives a server that fails the connection.

    caproto makes the TCP circuit to a server that answered a search on that thread, and
    lets any error there end it: a server that refuses the connection (it died after
    answering) or does not finish the handshake within caproto's timeout (hung, or just
    slow on a loaded host) left every PV searched afterwards unconnected, for the life of
    the process.  Here the thread goes on, and the PVs that the failure left without a
    circuit (the one being connected, and any whose search answer was dropped with it)
    are searched for again.
    """

    #: Pause before searching again after a failed circuit (a server failing every
    #: connection at once must not make this spin).
    RESEARCH_PAUSE_S = 0.5

    def _process_search_results_loop(self) -> None:
        while not self._close_event.is_set():
            try:
                super()._process_search_results_loop()
                return
            except Exception as err:  # noqa: BLE001 - this thread must outlive any server
                _circuit_failures.warning(
                    str(err),
                    "CA: connecting to a server that answered a search failed (%s); "
                    "searching again for the PVs that were waiting on it",
                    err,
                )
                if self._close_event.wait(self.RESEARCH_PAUSE_S):
                    return
                self._search_again_without_circuit()

    def _search_again_without_circuit(self) -> None:
        """Search again for every PV that is neither connected, nor on a live circuit, nor
        still being searched for (no duplicate searches, however often servers fail)."""
        broadcaster = self.broadcaster
        with broadcaster._search_lock:
            searching = {item[0] for item in broadcaster.unanswered_searches.values()}
        with self.pv_cache_lock:
            keys = [
                key
                for key, pv in self.pvs.items()
                if key[0] not in searching
                and not pv.connected
                and (pv.circuit_manager is None or pv.circuit_manager.dead.is_set())
            ]
        if keys:
            self.reconnect(keys)

    def get_circuit_manager(self, address: Any, priority: int) -> Any:
        with self._lock_during_get_circuit_manager:
            cm = super().get_circuit_manager(address, priority)
            executor = getattr(cm, "user_callback_executor", None)
            if executor is not _INLINE:
                cm.user_callback_executor = _INLINE
                if executor is not None:
                    executor.shutdown(wait=False)
        return cm
