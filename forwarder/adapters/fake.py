"""Fake PVs: random doubles for every subscribed channel, driven by the app's scheduler.

There is no thread or timer per PV (nor per `FakeMonitors`): the application's control loop
calls `tick(now_ns)` once per period and every fake PV gets one update,
so 100,000 fake PVs cost one loop, not 100,000 timers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from forwarder.core.events import ChannelListener, ConnectionState

#: `scheduler_hook(period_ns, tick)`: lets the owner register `tick` with its scheduler.
SchedulerHook = Callable[[int, Callable[[int], None]], object]


class FakeChannel:
    """One fake PV subscription."""

    __slots__ = ("name", "listener", "_monitors")

    def __init__(self, monitors: FakeMonitors, name: str, listener: ChannelListener) -> None:
        self.name = name
        self.listener = listener
        self._monitors = monitors

    def close(self) -> None:
        self._monitors.remove(self)


class FakeMonitors:
    """Serves fake PVs.  Every name exists; subscribing reports CONNECTED at once."""

    def __init__(
        self,
        period_ms: int,  # the one default: Settings.fake_pv_period
        scheduler_hook: SchedulerHook | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        if period_ms <= 0:
            raise ValueError("fake PV period must be positive")
        self.period_ns = period_ms * 1_000_000
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._channels: dict[FakeChannel, None] = {}  # an ordered set
        # What tick() iterates; rebuilt lazily after (un)subscribes, so subscribing N PVs
        # costs O(N) in total and a tick takes no lock unless something changed.
        self._snapshot: tuple[FakeChannel, ...] | None = ()
        self._closed = False
        if scheduler_hook is not None:
            scheduler_hook(self.period_ns, self.tick)

    def subscribe(self, channel: str, listener: ChannelListener) -> FakeChannel:
        fake = FakeChannel(self, channel, listener)
        with self._lock:
            if self._closed:
                raise RuntimeError("FakeMonitors is closed")
            self._channels[fake] = None
            self._snapshot = None
        listener.on_connection(ConnectionState.CONNECTED, time.time_ns())
        return fake

    def remove(self, fake: FakeChannel) -> None:
        with self._lock:
            if self._channels.pop(fake, 0) is None:
                self._snapshot = None

    def channel_count(self) -> int:
        return len(self._channels)

    def tick(self, now_ns: int) -> None:
        """Emit one random double, stamped `now_ns` (unix ns), for every fake PV."""
        channels = self._snapshot
        if channels is None:
            with self._lock:
                channels = self._snapshot = tuple(self._channels)
        if not channels:
            return
        values = self._rng.random(len(channels))
        for fake, value in zip(channels, values, strict=True):
            fake.listener.on_update(value, now_ns, 0, "")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._channels.clear()
            self._snapshot = ()
