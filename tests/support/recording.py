"""A ChannelListener that records everything, for adapter and end-to-end tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forwarder.core.events import ConnectionState


@dataclass(frozen=True)
class Update:
    value: Any
    timestamp_ns: int
    severity: int
    status: str
    thread: str


class RecordingListener:
    """Thread-safe log of on_update/on_connection calls, with waits for tests."""

    def __init__(self, fail_first: int = 0) -> None:
        self._cond = threading.Condition()
        self.updates: list[Update] = []
        self.states: list[tuple[ConnectionState, int]] = []
        self._fail = fail_first  # raise from the first N updates (robustness tests)

    def on_update(self, value: Any, timestamp_ns: int, severity: int, status_message: str) -> None:
        update = Update(value, timestamp_ns, severity, status_message,
                        threading.current_thread().name)  # fmt: skip
        with self._cond:
            self.updates.append(update)
            self._cond.notify_all()
            if self._fail > 0:
                self._fail -= 1
                raise RuntimeError("listener failure injected by the test")

    def on_connection(self, state: ConnectionState, timestamp_ns: int) -> None:
        with self._cond:
            self.states.append((state, timestamp_ns))
            self._cond.notify_all()

    def state_list(self) -> list[ConnectionState]:
        with self._cond:
            return [s for s, _ in self.states]

    def wait_update(
        self,
        match: Callable[[Update], bool] = lambda u: True,
        timeout: float = 10.0,
        start: int = 0,
    ) -> Update:
        """First update (from index `start`) satisfying `match`; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for update in self.updates[start:]:
                    if match(update):
                        return update
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching update in {timeout}s; got {self.updates}")
                self._cond.wait(left)

    def wait_value(self, expected: Any, timeout: float = 10.0, start: int = 0) -> Update:
        """First update whose value equals `expected` (element-wise for arrays)."""

        def match(update: Update) -> bool:
            try:
                return bool(_equal(update.value, expected))
            except (TypeError, ValueError):
                return False

        return self.wait_update(match, timeout, start)

    def wait_state(self, state: ConnectionState, timeout: float = 10.0, start: int = 0) -> int:
        """Index of the first `state` event at or after index `start`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (seen, _) in enumerate(self.states[start:], start):
                    if seen is state:
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {state.name} in {timeout}s; got {self.states}")
                self._cond.wait(left)

    def update_count(self) -> int:
        with self._cond:
            return len(self.updates)


def _equal(a: Any, b: Any) -> bool:
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        return a_arr.shape == b_arr.shape and bool(np.all(a_arr == b_arr))
    return bool(a == b)
