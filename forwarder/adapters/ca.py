"""Channel Access monitors (caproto threading client) feeding `ChannelListener`s.

One caproto `Context` serves every PV.  Per PV there is one DBR_TIME_* subscription with
mask DBE_VALUE|DBE_ALARM, so value and alarm changes arrive together with the EPICS
timestamp; enums arrive as their index (DBR_TIME_ENUM).

Updates of a PV with one consumer skip caproto's per-update machinery: after the first
update has come through caproto (and picked how values are converted), the channel
registers a decoder for its subscription id with the receive path
(`_caproto_compat.set_fast_handler`), which then hands it the raw DBR_TIME_* payload.
The decoder yields exactly what the caproto path yields (same types and values; tested).

Callbacks run inline on caproto's socket thread.  Stock caproto hands every update to a
per-circuit ThreadPoolExecutor whose queue has no bound: under overload it grows without
limit and each update pays a Future and a thread hand-off.  Running inline instead means a
slow consumer stops reading the socket, TCP pushes back and the server coalesces updates
per subscription (the EPICS flow-control design), so client memory stays bounded.
Listeners must therefore be quick and must not block (see `forwarder.core.events`).

The fast path, the inline callbacks, the bounded receive path and the hardened search loop
rely on caproto's private parts, all in `_caproto_compat`; when the installed caproto is not
a release they were tested with (or `FORWARDER_STOCK_EPICS_CLIENTS=1`), this adapter runs
stock caproto instead: same values, types and states, more CPU per update.

caproto reads its configuration (EPICS_CA_ADDR_LIST, EPICS_CA_SERVER_PORT, ...) from
`os.environ` only, when the context is created and at every search; there is no way to
pass it explicitly, so set the environment before creating `CaMonitors`.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from caproto import CLIENT, CLOSED, AlarmStatus, ChannelType, LocalProtocolError, SubscriptionType
from caproto.threading.client import PV, Context, SharedBroadcaster
from caproto.threading.client import Subscription as CaprotoSubscription

from forwarder.adapters import _caproto_compat
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
    meta_size = _caproto_compat.time_meta_size(data_type)  # includes the type's padding
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


class CaChannel:
    """One `subscribe()` call: a listener attached to a PV's time subscription."""

    def __init__(self, monitors: CaMonitors, pv: PV, listener: ChannelListener) -> None:
        self.name: str = pv.name
        self._monitors = monitors
        self.pv = pv
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
        self.sub = sub
        with sub.callback_lock:
            if sub.callbacks:
                # Shared with another channel of this PV: it loses its fast path (the
                # fast path serves one consumer), and caproto's last response, which is
                # stale while the fast path ran, must not be replayed to us.
                sub.most_recent_response = None
                self._monitors.clear_fast_path_of(sub)
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
        channel = self.pv.channel
        count = channel.native_data_count if channel is not None else len(response.data)
        self._scalar = count == 1
        self._convert = make_converter(response.data_type, response.data, self._scalar)
        self._data_type = response.data_type
        # A registered fast path decodes the old type: drop it before the decoder changes
        # (the caller registers again for the new type where there is a decoder).
        self.clear_fast_path()
        if self._monitors.fast:
            self._fast_decode = make_fast_decoder(response.data_type, self._scalar)

    def _use_fast_path(self, sub: CaprotoSubscription, data_type: int) -> None:
        """Have this subscription's next updates bypass caproto (idempotent)."""
        cm = self.pv.circuit_manager
        sub_id = sub.subscriptionid
        if cm is None or sub_id is None:
            return
        where = (cm.circuit, sub_id, data_type)
        if where == self._fast_at:
            return  # registered; this update just did not qualify (count, status)
        with sub.callback_lock:  # add_callback takes it too: no second consumer sneaks in
            if self._closed or len(sub.callbacks) != 1:
                return
            self.clear_fast_path()
            _caproto_compat.set_fast_handler(
                cm.circuit, sub_id, data_type, self._scalar, self._on_fast_value
            )
            self._fast_at = where

    def clear_fast_path(self) -> None:
        """Send this channel's updates through caproto again (idempotent)."""
        where = self._fast_at
        if where is not None:
            self._fast_at = None
            _caproto_compat.clear_fast_handler(where[0], where[1])

    def close(self) -> None:
        """Stop delivering to this listener (an update already being delivered may finish)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.clear_fast_path()
            # May send a cancel on the circuit's socket, which can raise (a stalled
            # server's full socket: BlockingIOError; a vanished one: EPIPE, ECONNRESET).
            self.sub.remove_callback(self._sub_token)
        finally:
            # Whatever the socket did, this channel is forgotten (and the caller told).
            self.pv.connection_state_callback.remove_callback(self._conn_token)
            self._monitors.release(self)


class CaMonitors:
    """All CA subscriptions of the forwarder, on one caproto context.

    `timeout` bounds the circuit handshake with a server that answered a search.
    """

    def __init__(self, timeout: float = 2.0) -> None:
        circuit_log = logging.getLogger("caproto.circ")
        if _LATE_RESPONSES not in circuit_log.filters:
            circuit_log.addFilter(_LATE_RESPONSES)
        #: Whether caproto's private parts are used (see the module docstring).
        self.fast = _caproto_compat.fast_paths()
        self._broadcaster: SharedBroadcaster
        if self.fast:
            _caproto_compat.install()
            self._broadcaster = _caproto_compat.Broadcaster()
            self._context = _caproto_compat.InlineContext(self._broadcaster, timeout=timeout)
        else:
            self._broadcaster = SharedBroadcaster()
            self._context = Context(self._broadcaster, timeout=timeout)
        self._lock = threading.Lock()
        self._channels: dict[str, set[CaChannel]] = {}
        self._searches_cancelled: set[str] = set()
        self._closed = False

    def subscribe(self, channel: str, listener: ChannelListener) -> CaChannel:
        """Monitor `channel` (searched for until it exists) and feed `listener`."""
        with self._lock:
            if self._closed:
                raise RuntimeError("CaMonitors is closed")
            reason = _caproto_compat.unsearchable_reason(channel)
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

    def clear_fast_path_of(self, sub: CaprotoSubscription) -> None:
        """Stop the fast path of whichever channel holds `sub` (it is being shared).

        Called by `CaChannel.__init__`, i.e. with `self._lock` held by `subscribe`.
        """
        holders = [c for c in self._channels.get(sub.pv.name, ()) if c.sub is sub]
        for holder in holders:
            holder.clear_fast_path()

    def release(self, ca_channel: CaChannel) -> None:
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
            if not self._closed and not ca_channel.pv.connected:
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
            try:
                ca_channel.close()
            except Exception as err:  # noqa: BLE001 - the context must be closed regardless
                _log.warning("Stopping the CA monitor of %s failed: %r", ca_channel.name, err)
        self._context.disconnect(wait=True)
        self._broadcaster.disconnect(wait=self.fast)  # stock: its back-off sleep can last 5 s
