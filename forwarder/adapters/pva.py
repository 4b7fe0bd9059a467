"""PV Access monitors (p4p 4.x client) feeding `ChannelListener`s.

One `p4p.client.thread.Context('pva', nt=False)` serves every PV: with NT unwrapping off
the callback gets the raw `Value` and reads value, timeStamp and alarm by field path,
which is the cheapest access p4p offers.

Queueing (p4p 4.3 / pvxs): each subscription has a pvxs queue of `queue_size` updates
(pvRequest `record[queueSize=N]`); when it is full pvxs squashes the newest updates into
the last slot, so a slow consumer loses intermediate values instead of growing memory.
When a queue becomes non-empty p4p pushes one "drain" job for that subscription into a
Python work queue, and a worker pops up to 4 updates per job before re-queueing it, so PVs
are served round-robin.  The work queue therefore holds at most one job per subscription
and is left unbounded on purpose: p4p drops (and never re-arms) a subscription whose job
does not fit.  By default p4p 4.3 shares four process-wide worker threads between every
Context; we pass our own queue with one worker: callbacks are pure Python and GIL-bound,
so more workers only add contention, and one worker keeps each PV in order.

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
from p4p.client.thread import Cancelled, Context, Disconnected, Finished, RemoteError
from p4p.client.thread import Subscription as P4pSubscription
from p4p.util import ThreadedWorkQueue

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


def make_extractor(v: Value) -> Extract:
    """Decide, from the first update of a connection, how to read the value field."""
    try:
        value_type = v.type()["value"]
    except KeyError:
        return lambda _v: None
    if not isinstance(value_type, str):  # a structure: NTEnum's {index, choices}
        if v.getID().startswith("epics:nt/NTEnum") or "index" in v["value"]:
            return _enum_index
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
        self._sub: P4pSubscription | None = None
        self._open()

    def _open(self) -> None:
        self._sub = self._monitors._context.monitor(
            self.name,
            self._on_event,
            request=self._monitors._request,
            notify_disconnect=True,
            queue=self._monitors._queue,
        )
        # p4p race: an event that arrives before monitor() has stored the pvxs handle
        # finds no handle, its wake-up is lost, and pvxs does not wake again until the
        # queue is drained, so the PV would never deliver.  One extra drain job is
        # harmless when there is nothing to pop.
        handle = getattr(self._sub, "_handle", None)
        if handle is not None:
            self._monitors._queue.push(handle)

    def _emit_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            self._state = state
            self._listener.on_connection(state, time.time_ns())

    def _on_event(self, v: Any) -> None:
        """Hot path: one call per update on the monitors' worker thread."""
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
            if not again and not self._closed:
                self._open()
        else:
            _log.debug("PVA monitor of %s: ignoring %r", self.name, exc)

    def close(self) -> None:
        """Stop delivering to this listener (an update already being delivered may finish)."""
        if self._closed:
            return
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is not None:
            sub.close()
        self._monitors._release(self)


class PvaMonitors:
    """All PVA subscriptions of the forwarder, on one p4p context.

    `conf`: EPICS_PVA_* settings (other keys are ignored); `use_env`: also read the
    process environment; `queue_size`: pvxs per-subscription queue depth; `workers`:
    threads running callbacks (1 keeps per-PV order and avoids GIL contention).
    """

    def __init__(
        self,
        conf: Mapping[str, str] | None = None,
        *,
        use_env: bool = True,
        queue_size: int = 4,
        workers: int = 1,
    ) -> None:
        pva_conf = {k: str(v) for k, v in (conf or {}).items() if k.startswith("EPICS_PVA_")}
        self._context = Context("pva", conf=pva_conf or None, useenv=use_env, nt=False)
        self._queue = ThreadedWorkQueue(
            name="pva-monitors", workers=workers, maxsize=0, daemon=True
        ).start()
        self._request = _request(queue_size)
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

    def _release(self, pva_channel: PvaChannel) -> None:
        with self._lock:
            self._channels.discard(pva_channel)

    def channel_count(self) -> int:
        with self._lock:
            return len(self._channels)

    def close(self) -> None:
        """Stop every subscription, the context and the worker threads.

        Must not be called from a listener callback (it joins the worker thread).
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = list(self._channels)
        for pva_channel in channels:
            pva_channel.close()
        self._context.close()
        self._queue.stop()
