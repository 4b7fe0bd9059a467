"""Plumbing shared by the server scripts run as subprocesses by `epics_servers`.

Protocol: the first stdin line is the JSON configuration, every later line a command; each
gets exactly one JSON reply line on the protocol pipe (the original stdout).  The EPICS
libraries print to the C-level stdout, so fd 1 is pointed at stderr to keep the pipe clean.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

PR_SET_PDEATHSIG = 1

Handler = Callable[[dict[str, Any]], dict[str, Any] | None]


class Child:
    """The child's end of the pipe."""

    def __init__(self) -> None:
        self._proto: TextIO = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        line = sys.stdin.readline()
        if not line:
            os._exit(0)
        self.config: dict[str, Any] = json.loads(line)
        self._die_with_parent(int(self.config["parent_pid"]))

    @staticmethod
    def _die_with_parent(parent_pid: int) -> None:
        """No orphans: the kernel kills us if the test process dies without reaping us."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent_pid:
            os._exit(0)

    def reply(self, **message: Any) -> None:
        message.setdefault("ok", True)
        self._proto.write(json.dumps(message) + "\n")

    def serve(self, handle: Handler) -> None:
        """Answer commands until stdin closes, then exit at once (no library teardown)."""
        for line in sys.stdin:
            try:
                result = handle(json.loads(line)) or {}
                self.reply(**result)
            except Exception as exc:  # report, keep serving
                traceback.print_exc()
                self.reply(ok=False, error=f"{type(exc).__name__}: {exc}")
        sys.stderr.flush()
        os._exit(0)


def value_dtype(name: str) -> str:
    """numpy dtype for a waveform element type name."""
    return {
        "DOUBLE": "float64",
        "FLOAT": "float32",
        "LONG": "int32",
        "SHORT": "int16",
        "CHAR": "int8",
        "UCHAR": "uint8",
        "INT64": "int64",
    }[name.upper()]


class CounterPacing:
    """Run state, statistics and pacing of a counter generator, whichever way it waits
    (`CounterLoop` on a thread, caproto's asyncio task): every `period` seconds the tick
    number is posted to every PV; a tick that falls a whole period behind is skipped
    (counted in `late`) instead of bursting.  `run` is a threading or an asyncio Event."""

    def __init__(self, rate_hz: float, run: threading.Event | asyncio.Event) -> None:
        self.period = 1.0 / float(rate_hz)
        self.ticks = self.posts = self.late = 0
        self.started = time.monotonic()
        self._run = run

    def set_running(self, run: bool) -> None:
        if run and not self._run.is_set():
            self.started = time.monotonic()
            self.ticks = self.posts = self.late = 0
            self._run.set()
        elif not run:
            self._run.clear()

    def set_rate(self, rate_hz: float) -> None:
        self.period = 1.0 / float(rate_hz)

    def stats(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "posts": self.posts, "late": self.late,
                "elapsed": time.monotonic() - self.started}  # fmt: skip

    def next_due(self, due: float) -> tuple[float, float]:
        """After a tick due at `due`: when the next is due and how long to wait for it."""
        due += self.period
        delay = due - time.monotonic()
        if delay < -self.period:  # fell behind by a whole tick: drop, don't burst
            self.late += 1
            due = time.monotonic()
        return due, max(delay, 0.0)


class CounterLoop(CounterPacing):
    """A counter generator on its own thread.  Subclasses implement `post_all(tick)` and
    return how many updates they posted."""

    def __init__(self, rate_hz: float) -> None:
        super().__init__(rate_hz, threading.Event())

    def post_all(self, tick: int) -> int:
        raise NotImplementedError

    def start(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name="counters").start()

    def _loop(self) -> None:
        due = time.monotonic()
        while True:
            if not self._run.is_set():
                self._run.wait()
                due = time.monotonic()
            self.ticks += 1
            self.posts += self.post_all(self.ticks)
            due, delay = self.next_due(due)
            time.sleep(delay)
