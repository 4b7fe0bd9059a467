"""Channel Access monitors (caproto threading client) feeding `ChannelListener`s.

One caproto `Context` serves every PV.  Per PV there is one DBR_TIME_* subscription with
mask DBE_VALUE|DBE_ALARM, so value and alarm changes arrive together with the EPICS
timestamp; enums arrive as their index (DBR_TIME_ENUM).

Updates of a PV with one consumer skip caproto's per-update machinery: after the first
update has come through caproto (and picked how values are converted), the channel
registers a decoder for its subscription id with the receive path
(`_caproto_receive.set_fast_handler`), which then hands it the raw DBR_TIME_* payload.
The decoder yields exactly what the caproto path yields (same types and values; tested).

Callbacks run inline on caproto's socket thread.  Stock caproto hands every update to a
per-circuit ThreadPoolExecutor whose queue has no bound: under overload it grows without
limit and each update pays a Future and a thread hand-off.  Running inline instead means a
slow consumer stops reading the socket, TCP pushes back and the server coalesces updates
per subscription (the EPICS flow-control design), so client memory stays bounded.
Listeners must therefore be quick and must not block (see `forwarder.core.events`).

caproto reads its configuration (EPICS_CA_ADDR_LIST, EPICS_CA_SERVER_PORT, ...) from
`os.environ` only, when the context is created and at every search; there is no way to
pass it explicitly, so set the environment before creating `CaMonitors`.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import caproto as ca
import numpy as np
from caproto import CLIENT, CLOSED, AlarmStatus, ChannelType, LocalProtocolError, SubscriptionType
from caproto._dbr import DBR_TYPES
from caproto.threading.client import PV, SEARCH_MAX_DATAGRAM_BYTES, Context, SharedBroadcaster
from caproto.threading.client import Subscription as CaprotoSubscription

from forwarder.adapters import _caproto_receive
from forwarder.core.events import ChannelListener, ConnectionState

_log = logging.getLogger(__name__)

#: Seconds from the unix epoch (1970) to the EPICS epoch (1990).
EPICS_EPOCH_OFFSET_S = 631_152_000
_NS = 1_000_000_000
_MASK = SubscriptionType.DBE_VALUE | SubscriptionType.DBE_ALARM
#: Alarm status text by number; "" for NO_ALARM (nothing to report).
_STATUS_TEXT: tuple[str, ...] = tuple(
    "" if n == 0 else AlarmStatus(n).name for n in range(max(AlarmStatus) + 1)
)
_N_STATUS = len(_STATUS_TEXT)
_STRING_TYPES = frozenset((ChannelType.TIME_STRING, ChannelType.STRING))
_ENUM_TYPES = frozenset((ChannelType.TIME_ENUM, ChannelType.ENUM))

Converter = Callable[[Any], Any]


def status_text(status: int) -> str:
    """CA alarm status number -> text ("HIHI"), "" for NO_ALARM.

    The one lookup for both update paths.  The wire field is a signed short, so a server
    sending a value beyond the table (or negative) gets `STATUS_<n>`, never another name.
    """
    return _STATUS_TEXT[status] if 0 <= status < _N_STATUS else f"STATUS_{status}"


def _decode_strings(data: Any) -> Any:
    texts = [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in data]
    return texts[0] if len(texts) == 1 else texts


def _first_as_int(data: Any) -> Any:
    return int(data[0]) if len(data) else data


def _first(data: Any) -> Any:
    # Indexing a big-endian array yields a native numpy scalar of the same kind.
    return data[0] if len(data) else data


def make_converter(data_type: int, sample: Any, scalar: bool) -> Converter:
    """Pick, once per (re)connection, how caproto's payload becomes the listener's value.

    caproto gives numbers as big-endian numpy arrays (views of the received bytes); the
    core wants native numpy scalars for scalar PVs and native-order 1-d arrays otherwise.
    """
    if data_type in _STRING_TYPES:
        return _decode_strings
    if data_type in _ENUM_TYPES and scalar:
        return _first_as_int
    if scalar:
        return _first
    dtype = np.asarray(sample).dtype
    native = dtype.newbyteorder("=")
    if dtype == native:
        return np.asarray
    return lambda data: data.astype(native)


#: DBR_TIME_* number type -> (struct code, big-endian dtype, scalar constructor giving what
#: `make_converter` gives: native numpy scalars, enums as int).
_FAST_TYPES: dict[int, tuple[str, np.dtype[Any], Callable[[Any], Any]]] = {
    ChannelType.TIME_INT: ("h", np.dtype(">i2"), np.int16),
    ChannelType.TIME_FLOAT: ("f", np.dtype(">f4"), np.float32),
    ChannelType.TIME_ENUM: ("H", np.dtype(">u2"), int),
    ChannelType.TIME_CHAR: ("B", np.dtype("u1"), np.uint8),
    ChannelType.TIME_LONG: ("i", np.dtype(">i4"), np.int32),
    ChannelType.TIME_DOUBLE: ("d", np.dtype(">f8"), np.float64),
}
#: status, severity, seconds and nanoseconds: the start of every DBR_TIME_* payload.
_TIME_META = struct.Struct(">hhII")

#: (payload, count) -> (value, EPICS timestamp in unix ns, severity, status number)
FastDecoder = Callable[[memoryview, int], tuple[Any, int, int, int]]


def make_fast_decoder(data_type: int, scalar: bool) -> FastDecoder | None:
    """Decode a raw DBR_TIME_* update payload the way caproto + `make_converter` would.

    None for types without a fast path (strings).  A scalar decoder takes one element.
    """
    spec = _FAST_TYPES.get(data_type)
    if spec is None:
        return None
    code, big_endian, construct = spec
    meta_size = ctypes.sizeof(DBR_TYPES[data_type])  # includes the type's padding
    if scalar:
        unpack = struct.Struct(f">hhII{meta_size - _TIME_META.size}x{code}").unpack_from

        def decode_scalar(payload: memoryview, count: int) -> tuple[Any, int, int, int]:
            status, severity, seconds, nanoseconds, value = unpack(payload)
            ts = (seconds + EPICS_EPOCH_OFFSET_S) * _NS + nanoseconds
            return construct(value), ts, severity, status

        return decode_scalar
    native = big_endian.newbyteorder("=")
    swap = native != big_endian
    unpack_meta = _TIME_META.unpack_from
    frombuffer = np.frombuffer

    def decode_array(payload: memoryview, count: int) -> tuple[Any, int, int, int]:
        status, severity, seconds, nanoseconds = unpack_meta(payload)
        data = frombuffer(payload, big_endian, count, meta_size)
        ts = (seconds + EPICS_EPOCH_OFFSET_S) * _NS + nanoseconds
        return (data.astype(native) if swap else data), ts, severity, status

    return decode_array


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


class _LateResponseFilter(logging.Filter):
    """Drops caproto's warning, with a traceback, about a response that arrives for a
    channel already closed on our side.

    Typical at shutdown: subscriptions are cancelled and the circuits closed right after,
    so the server's answers to the cancels can reach a closed channel.  There is nothing
    left to deliver them to; the message only alarms whoever reads the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, LocalProtocolError) and isinstance(record.args, tuple):
            states = getattr(record.args[-1], "states", None) if record.args else None
            if isinstance(states, dict) and states.get(CLIENT) is CLOSED:
                return False
        return True


_LATE_RESPONSES = _LateResponseFilter()


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


class _Broadcaster(SharedBroadcaster):  # type: ignore[misc]
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


class _InlineContext(Context):  # type: ignore[misc]
    """caproto Context whose circuits deliver callbacks inline (see module docstring)."""

    def get_circuit_manager(self, address: Any, priority: int) -> Any:
        with self._lock_during_get_circuit_manager:
            cm = super().get_circuit_manager(address, priority)
            executor = getattr(cm, "user_callback_executor", None)
            if executor is not _INLINE:
                cm.user_callback_executor = _INLINE
                if executor is not None:
                    executor.shutdown(wait=False)
        return cm


class CaChannel:
    """One `subscribe()` call: a listener attached to a PV's time subscription."""

    def __init__(self, monitors: CaMonitors, pv: PV, listener: ChannelListener) -> None:
        self.name: str = pv.name
        self._monitors = monitors
        self._pv = pv
        self._listener = listener
        self._closed = False
        self._state: ConnectionState | None = None
        self._data_type = -1
        self._scalar = True
        self._convert: Converter = _first
        self._fast_decode: FastDecoder | None = None
        #: (circuit, subscription id, data type) the fast path is registered for.
        self._fast_at: tuple[Any, int, int] | None = None
        if not pv.connected:
            self._emit_state(ConnectionState.NEVER_CONNECTED)
        # Replay the current state only if connected (NEVER_CONNECTED was reported above).
        self._conn_token = pv.connection_state_callback.add_callback(
            self._on_connection, run=pv.connected
        )
        sub: CaprotoSubscription = pv.subscribe(data_type="time", mask=_MASK)
        self._sub = sub
        with sub.callback_lock:
            if sub.callbacks:
                # Shared with another channel of this PV: it loses its fast path (the
                # fast path serves one consumer), and caproto's last response, which is
                # stale while the fast path ran, must not be replayed to us.
                sub.most_recent_response = None
                self._monitors._clear_fast_path(sub)
            self._sub_token = sub.add_callback(self._on_value)

    def _emit_state(self, state: ConnectionState) -> None:
        if state is not self._state and not self._closed:
            self._state = state
            self._listener.on_connection(state, time.time_ns())

    def _on_connection(self, pv: PV, state: str) -> None:
        if state == "connected":
            self._data_type = -1  # the IOC may come back with another type
            self._emit_state(ConnectionState.CONNECTED)
        elif state == "disconnected":
            self._emit_state(ConnectionState.DISCONNECTED)

    def _on_value(self, sub: CaprotoSubscription, response: Any) -> None:
        """Hot path: one call per update on caproto's socket thread."""
        if self._closed:
            return
        if response.data_type != self._data_type:
            self._choose_converter(response)
        md = response.metadata
        self._listener.on_update(
            self._convert(response.data),
            (md.secondsSinceEpoch + EPICS_EPOCH_OFFSET_S) * _NS + md.nanoSeconds,
            md.severity,
            status_text(md.status),
        )
        if self._fast_decode is not None:
            self._use_fast_path(sub, response.data_type)

    def _on_fast_value(self, payload: memoryview, count: int) -> None:
        """Hot path: an update straight from the receive path (see module docstring)."""
        if self._closed:
            return
        value, ts, severity, status = self._fast_decode(payload, count)  # type: ignore[misc]
        self._listener.on_update(
            value,
            ts,
            severity,
            status_text(status),
        )

    def _choose_converter(self, response: Any) -> None:
        channel = self._pv.channel
        count = channel.native_data_count if channel is not None else len(response.data)
        self._scalar = count == 1
        self._convert = make_converter(response.data_type, response.data, self._scalar)
        self._data_type = response.data_type
        # A registered fast path decodes the old type: drop it before the decoder changes
        # (the caller registers again for the new type where there is a decoder).
        self._clear_fast_path()
        self._fast_decode = make_fast_decoder(response.data_type, self._scalar)

    def _use_fast_path(self, sub: CaprotoSubscription, data_type: int) -> None:
        """Have this subscription's next updates bypass caproto (idempotent)."""
        cm = self._pv.circuit_manager
        sub_id = sub.subscriptionid
        if cm is None or sub_id is None:
            return
        where = (cm.circuit, sub_id, data_type)
        if where == self._fast_at:
            return  # registered; this update just did not qualify (count, status)
        with sub.callback_lock:  # add_callback takes it too: no second consumer sneaks in
            if self._closed or len(sub.callbacks) != 1:
                return
            self._clear_fast_path()
            _caproto_receive.set_fast_handler(
                cm.circuit, sub_id, data_type, self._scalar, self._on_fast_value
            )
            self._fast_at = where

    def _clear_fast_path(self) -> None:
        where = self._fast_at
        if where is not None:
            self._fast_at = None
            _caproto_receive.clear_fast_handler(where[0], where[1])

    def close(self) -> None:
        """Stop delivering to this listener (an update already being delivered may finish)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._clear_fast_path()
            # May send a cancel on the circuit's socket, which can raise (a stalled
            # server's full socket: BlockingIOError; a vanished one: EPIPE, ECONNRESET).
            self._sub.remove_callback(self._sub_token)
        finally:
            # Whatever the socket did, this channel is forgotten (and the caller told).
            self._pv.connection_state_callback.remove_callback(self._conn_token)
            self._monitors._release(self)


class CaMonitors:
    """All CA subscriptions of the forwarder, on one caproto context.

    `timeout` bounds the circuit handshake with a server that answered a search.
    """

    def __init__(self, timeout: float = 2.0) -> None:
        _caproto_receive.install()
        circuit_log = logging.getLogger("caproto.circ")
        if _LATE_RESPONSES not in circuit_log.filters:
            circuit_log.addFilter(_LATE_RESPONSES)
        self._broadcaster = _Broadcaster()
        self._context = _InlineContext(self._broadcaster, timeout=timeout)
        self._lock = threading.Lock()
        self._channels: dict[str, set[CaChannel]] = {}
        self._searches_cancelled: set[str] = set()
        self._closed = False

    def subscribe(self, channel: str, listener: ChannelListener) -> CaChannel:
        """Monitor `channel` (searched for until it exists) and feed `listener`."""
        with self._lock:
            if self._closed:
                raise RuntimeError("CaMonitors is closed")
            reason = unsearchable_reason(channel)
            if reason is not None:
                raise ValueError(f"CA channel {channel!r} cannot be searched for: {reason}")
            (pv,) = self._context.get_pvs(channel, timeout=None)
            if channel in self._searches_cancelled:
                self._searches_cancelled.discard(channel)
                if not pv.connected:
                    self._context.reconnect([(channel, pv.priority)])
            ca_channel = CaChannel(self, pv, listener)
            self._channels.setdefault(channel, set()).add(ca_channel)
            return ca_channel

    def _clear_fast_path(self, sub: CaprotoSubscription) -> None:
        """Stop the fast path of whichever channel holds `sub` (it is being shared).

        Called by `CaChannel.__init__`, i.e. with `self._lock` held by `subscribe`.
        """
        holders = [c for c in self._channels.get(sub.pv.name, ()) if c._sub is sub]
        for holder in holders:
            holder._clear_fast_path()

    def _release(self, ca_channel: CaChannel) -> None:
        """Forget a closed channel; stop searching for a PV nobody wants any more.

        A connected PV keeps its (cheap, idle) CA channel: caproto's idle/re-activate path
        is fragile, and the subscription itself was cancelled with the last callback.
        """
        with self._lock:
            users = self._channels.get(ca_channel.name)
            if users is None:
                return
            users.discard(ca_channel)
            if users:
                return
            del self._channels[ca_channel.name]
            if not self._closed and not ca_channel._pv.connected:
                self._broadcaster.cancel(ca_channel.name)
                self._searches_cancelled.add(ca_channel.name)

    def channel_count(self) -> int:
        with self._lock:
            return sum(len(users) for users in self._channels.values())

    def close(self) -> None:
        """Stop every subscription and the context's threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = [c for users in self._channels.values() for c in users]
        for ca_channel in channels:
            ca_channel.close()
        self._context.disconnect(wait=True)
        self._broadcaster.disconnect(wait=True)
