"""PV Access monitors (p4p 4.x client) feeding `ChannelListener`s.

One p4p client context (the raw `p4p.client.raw.Context`, NT unwrapping off) serves every
PV: the callback gets the raw `Value` and reads value, timeStamp and alarm by field path,
the cheapest access p4p offers.

Delivery: each subscription has a pvxs queue of `queue_size` updates (pvRequest
`record[queueSize=N]`); when it is full pvxs squashes the newest updates into the last
slot, so a slow consumer loses intermediate values instead of growing memory.  When a
queue becomes non-empty pvxs wakes us on its network thread and we pop and forward
everything queued right there.  p4p's threaded client would instead hand every wake-up to
a Python worker thread through a work queue (and log at debug level on every pop), which
costs more than the forwarding itself; it also has a race in which the first wake-up is
lost and a PV never delivers.

The monitor itself is p4p's raw pvxs monitor, a private name (`_p4p_compat`); on a p4p
release it was not tested with, or with `FORWARDER_STOCK_EPICS_CLIENTS=1`, the public
`Context.monitor` is used instead (same events, a debug log call per update).

Configuration: `conf` (EPICS_PVA_* keys) overrides the environment; `use_env=False`
ignores the environment entirely (tests pass `epics_env(...)` this way).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from p4p import Value
from p4p.client.raw import Cancelled, Disconnected, Finished, RemoteError
from p4p.client.raw import Context as RawContext

from forwarder.adapters import _p4p_compat
from forwarder.core.events import ChannelListener, ConnectionState

_log = logging.getLogger(__name__)

_NS = 1_000_000_000
#: PVA alarm.status names, used only when a server leaves alarm.message empty.
PVA_STATUS = ("", "DEVICE", "DRIVER", "RECORD", "DB", "CONF", "UNDEFINED", "CLIENT")
#: numpy scalar types for PVA scalar type codes, so that scalars keep their width
#: (as numpy scalars, like the CA adapter) instead of widening to Python int/float.
_SCALAR_TYPES: dict[str, Callable[[Any], Any]] = {
    "b": np.int8, "B": np.uint8, "h": np.int16, "H": np.uint16, "i": np.int32,
    "I": np.uint32, "l": np.int64, "L": np.uint64, "f": np.float32, "d": np.float64,
}  # fmt: skip

Extract = Callable[[Value], Any]


def _request(queue_size: int) -> str:
    return f"field(value,timeStamp,alarm)record[queueSize={queue_size}]"


def _enum_index(v: Value) -> int:
    index: int = v["value.index"]
    return index


def _raw_value(v: Value) -> Any:
    return v["value"]


_NO_ROWS = np.zeros(0)


def _table_columns(v: Value) -> dict[str, Any]:
    """An NTTable's columns by name (what the nttable_* serialisers take); a column the
    server left unset is an empty array."""
    return {name: _NO_ROWS if column is None else column for name, column in v["value"].items()}


def make_extractor(v: Value) -> Extract:
    """Decide, from the first update of a connection, how to read the value field."""
    try:
        value_type = v.type()["value"]
    except KeyError:
        return lambda _v: None
    if not isinstance(value_type, str):  # a structure: NTEnum's {index, choices}
        if v.getID().startswith("epics:nt/NTEnum") or "index" in v["value"]:
            return _enum_index
        if v.getID().startswith("epics:nt/NTTable"):
            return _table_columns
        return _raw_value
    make = _SCALAR_TYPES.get(value_type)
    if make is None:  # arrays (already numpy), strings, booleans
        return _raw_value
    return lambda v: make(v["value"])


def _full_update(v: Value) -> tuple[int, int, str]:
    """timestamp ns, severity, status text of an NT value with timeStamp and alarm."""
    message: str = v["alarm.message"]
    severity: int = v["alarm.severity"]
    if not message and severity:
        status: int = v["alarm.status"]
        message = PVA_STATUS[status] if 0 <= status < len(PVA_STATUS) else str(status)
    return v["timeStamp.secondsPastEpoch"] * _NS + v["timeStamp.nanoseconds"], severity, message


def _partial_update(v: Value) -> tuple[int, int, str]:
    """Structures without timeStamp/alarm: receive time, no alarm."""
    sec = v.get("timeStamp.secondsPastEpoch")
    ts = sec * _NS + v.get("timeStamp.nanoseconds", 0) if sec is not None else time.time_ns()
    return ts, v.get("alarm.severity", 0), v.get("alarm.message", "")


class PvaChannel:
    """One `subscribe()` call: a p4p monitor feeding one listener."""

    def __init__(self, monitors: PvaMonitors, name: str, listener: ChannelListener) -> None:
        self.name = name
        self._monitors = monitors
        self._listener = listener
        self._closed = False
        self._state: ConnectionState | None = None
        self._extract: Extract = _raw_value
        self._meta: Callable[[Value], tuple[int, int, str]] = _full_update
        self._sub: Any = None
        # Re-entrant: a Finished event re-opens the monitor from inside a drain.
        self._drain_lock = threading.RLock()
        self._emit_state(ConnectionState.NEVER_CONNECTED)
        self._open()

    def _open(self) -> None:
        monitors = self._monitors
        self._sub = _p4p_compat.monitor(
            monitors.context, self.name, self._drain, monitors.request_value
        )
        # The first wake-up may have fired before the handle above was stored (and
        # pvxs does not wake again until the queue is drained): drain once now.
        self._drain()

    def _drain(self) -> None:
        """pvxs wake-up (its network thread, GIL held): deliver everything queued.

        Running the callbacks right here, instead of handing them to a worker thread,
        saves a queue hand-off per update; a slow forwarder then holds up pvxs, whose
        per-subscription queues squash updates instead of growing (bounded memory).
        """
        sub = self._sub
        if sub is None:
            return
        with self._drain_lock:
            pop = sub.pop
            on_event = self._on_event
            while True:
                try:
                    event = pop()
                except Exception as err:  # noqa: BLE001 - a closed monitor raises
                    _log.debug("PVA monitor of %s: pop failed: %r", self.name, err)
                    return
                if event is None:
                    return
                on_event(event)
                if type(event) is Finished:
                    return

    def _emit_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            self._state = state
            self._listener.on_connection(state, time.time_ns())

    def _on_event(self, v: Any) -> None:
        """Hot path: one call per update, on pvxs's network thread (from `_drain`)."""
        if self._closed:
            return
        try:
            if type(v) is not Value:
                self._on_exception(v)
                return
            if self._state is not ConnectionState.CONNECTED:
                self._connected(v)
            ts, severity, message = self._meta(v)
            self._listener.on_update(self._extract(v), ts, severity, message)
        except Exception:
            # Escaping exceptions make p4p close the subscription for good.
            _log.exception("PVA update of %s failed", self.name)

    def _connected(self, v: Value) -> None:
        self._extract = make_extractor(v)
        has_meta = "timeStamp" in v and "alarm" in v
        self._meta = _full_update if has_meta else _partial_update
        self._emit_state(ConnectionState.CONNECTED)

    def _on_exception(self, exc: Any) -> None:
        if isinstance(exc, Disconnected):
            # p4p sends one Disconnected as soon as the monitor is created.
            never = self._state in (None, ConnectionState.NEVER_CONNECTED)
            state = ConnectionState.NEVER_CONNECTED if never else ConnectionState.DISCONNECTED
            if self._state is not ConnectionState.FINISHED:
                self._emit_state(state)
        elif isinstance(exc, RemoteError):
            _log.warning("PVA monitor of %s: remote error %s", self.name, exc)
            self._emit_state(ConnectionState.REMOTE_ERROR)
        elif isinstance(exc, Cancelled):
            self._emit_state(ConnectionState.CANCELLED)
        elif isinstance(exc, Finished):
            # The server ended this monitor; p4p will not deliver anything more on it.
            # Subscribe again (once per connection, so a server that ends every monitor
            # at once cannot make us spin) so the PV resumes if it is served again.
            again = self._state is ConnectionState.FINISHED
            self._emit_state(ConnectionState.FINISHED)
            old = self._sub
            if not again and not self._closed:
                self._open()
            if old is not None:
                old.close()
        else:
            _log.debug("PVA monitor of %s: ignoring %r", self.name, exc)

    def close(self) -> None:
        """Stop delivering to this listener (an update already being delivered may finish)."""
        if self._closed:
            return
        self._closed = True
        sub, self._sub = self._sub, None
        try:
            if sub is not None:
                sub.close()
        finally:
            self._monitors.release(self)  # forgotten whatever closing raised


class PvaMonitors:
    """All PVA subscriptions of the forwarder, on one p4p context.

    `conf`: EPICS_PVA_* settings (other keys are ignored); `use_env`: also read the
    process environment; `queue_size`: pvxs per-subscription queue depth.
    """

    def __init__(
        self,
        conf: Mapping[str, str] | None = None,
        *,
        use_env: bool = True,
        queue_size: int = 4,
    ) -> None:
        pva_conf = {k: str(v) for k, v in (conf or {}).items() if k.startswith("EPICS_PVA_")}
        self.context = RawContext("pva", conf=pva_conf or None, useenv=use_env, nt=False)
        self.request_value = RawContext.makeRequest(_request(queue_size))
        self._lock = threading.Lock()
        self._channels: set[PvaChannel] = set()
        self._closed = False

    def subscribe(self, channel: str, listener: ChannelListener) -> PvaChannel:
        """Monitor `channel` (searched for until it exists) and feed `listener`."""
        with self._lock:
            if self._closed:
                raise RuntimeError("PvaMonitors is closed")
            pva_channel = PvaChannel(self, channel, listener)
            self._channels.add(pva_channel)
            return pva_channel

    def release(self, pva_channel: PvaChannel) -> None:
        with self._lock:
            self._channels.discard(pva_channel)

    def channel_count(self) -> int:
        with self._lock:
            return len(self._channels)

    def close(self) -> None:
        """Stop every subscription and the pvxs client context.

        Must not be called from a listener callback: callbacks run on pvxs's network thread,
        which closing the context stops.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels)
        for pva_channel in channels:
            try:
                pva_channel.close()
            except Exception as err:  # noqa: BLE001 - the context must be closed regardless
                _log.warning("Stopping the PVA monitor of %s failed: %r", pva_channel.name, err)
        self.context.close()
