"""One rule for every log line that can repeat: at most once per interval per key, with a
count of what was held back.

A PV sending bad timestamps at 100 Hz, librdkafka retrying an unreachable broker every few
hundred ms, a Graylog host that fails every record: each would otherwise write a line per
event and bury everything else.  The first line goes out; the next one let through says how
many were held back in between.  The exact numbers live in the counters (status, metrics),
so the log only has to tell the story.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class RepeatLimiter:
    """Admits an event at most once per `interval_s` per key and counts the ones it holds back.

    Thread-safe (problem reports come from EPICS callback threads); the lock is only taken
    for events worth a log line, never per forwarded update.  With `max_keys`, the memory of
    keys is forgotten when it would grow beyond that (keys built from free text, such as
    library messages, are unbounded).
    """

    def __init__(
        self,
        interval_s: float,
        *,
        max_keys: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> (time of the last admitted event, events held back since then)
        self._state: dict[str, tuple[float, int]] = {}

    def admit(self, key: str) -> tuple[int, float] | None:
        """None when `key` was admitted within the interval (the event is held back and
        counted); otherwise `(held back since the last admitted event, seconds since it)`,
        `(0, 0.0)` for a key seen for the first time."""
        now = self._clock()
        with self._lock:
            last = self._state.get(key)
            if last is None:
                if self._max_keys is not None and len(self._state) >= self._max_keys:
                    self._state.clear()
                self._state[key] = (now, 0)
                return (0, 0.0)
            if now - last[0] < self.interval_s:
                self._state[key] = (last[0], last[1] + 1)
                return None
            self._state[key] = (now, 0)
            return (last[1], now - last[0])


class RateLimitedLogger:
    """Logs a recurring problem at most once per `interval_s` per key.

    A misbehaving PV can trigger the same warning hundreds of times a second; we keep
    the first line and report how many were swallowed when the next one is allowed out.
    With `max_keys`, keys may be free text (library error messages); see `RepeatLimiter`.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int | None = None,
    ) -> None:
        self._logger = logger
        self._limiter = RepeatLimiter(interval_s, max_keys=max_keys, clock=clock)

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Emit unless `key` was logged within the interval; True when emitted."""
        admitted = self._limiter.admit(key)
        if admitted is None:
            return False
        suppressed, since_s = admitted
        text = msg % args if args else msg
        if suppressed:
            text += f" ({suppressed} similar message(s) suppressed in the last {since_s:.0f} s)"
        self._logger.log(level, "%s", text)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def info(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)
