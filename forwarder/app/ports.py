"""The interfaces the controller is built from (its ports).

`forwarder.app.controller.Controller` takes one object for each of these; the wiring in
`forwarder.app.service` passes the real Kafka and EPICS adapters, the controller's unit
tests pass small in-memory ones.  These are the forwarder's own interfaces, not those of
confluent-kafka or the EPICS libraries, so a fake of them is a few lines of plain Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol

from forwarder.core.events import Monitors
from forwarder.core.storage import StorageUnavailable
from forwarder.core.streams import Protocol as EpicsProtocol

__all__ = [
    "Clock",
    "ConfigSource",
    "DataSink",
    "MessageWriter",
    "MonitorFactory",
    "StorageReader",
    "StorageUnavailable",
    "SystemClock",
    "TimerHook",
]


class DataSink(Protocol):
    """Where forwarded data goes (the Kafka producer).  `send` must never block."""

    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool: ...

    def queue_length(self) -> int:
        """Messages accepted but not yet delivered."""
        ...

    def close(self, timeout_s: float) -> int:
        """Deliver what is queued within `timeout_s`, then stop; returns what was left
        undelivered (and counts it as dropped)."""
        ...


class ConfigSource(Protocol):
    """The config topic: raw config messages, in the order they must be applied."""

    def poll(self, timeout_s: float) -> list[bytes]: ...

    def close(self) -> None: ...


class MessageWriter(Protocol):
    """A low-rate topic writer (status, storage)."""

    def write(self, payload: bytes, key: bytes | None = None) -> None: ...

    def flush(self, timeout_s: float) -> int: ...


class StorageReader(Protocol):
    """The storage topic, read from its end backwards."""

    def newest_first(self) -> Iterator[bytes]:
        """Stored messages, newest first.  Reads only as much history as the caller
        consumes; raises `StorageUnavailable` when it cannot go on."""
        ...


class Clock(Protocol):
    def monotonic_ns(self) -> int: ...

    def time_ns(self) -> int: ...


class SystemClock:
    """The real clocks."""

    monotonic_ns = staticmethod(time.monotonic_ns)
    time_ns = staticmethod(time.time_ns)


#: `timer_hook(period_ns, tick)`: registers `tick(now_unix_ns)` to be called every period by
#: the controller's one scheduler (fake PVs use it; CA and PVA ignore it).
TimerHook = Callable[[int, Callable[[int], None]], object]

#: Builds the monitors of one protocol, the first time a stream of that protocol is added.
MonitorFactory = Callable[[EpicsProtocol, TimerHook], Monitors]
