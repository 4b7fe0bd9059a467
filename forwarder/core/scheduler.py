"""One scheduler for everything timed: periodic re-sends, fake PV ticks, status messages.

A thread or timer object per PV does not scale to 100,000 PVs (the reference runs about
three threads per PV).  Instead the application runs one loop that asks this pure data
structure what is due.  Re-sends are kept in a heap keyed by due time; an entry is only
rescheduled when it comes due, so a PV updating at 100 Hz costs the scheduler nothing but
one comparison per period.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ResendSchedule(Generic[T]):
    """Decides which items are due for a re-send.

    `last_sent_of(item)` returns the monotonic ns of the item's last message, or None when
    the item was removed (it then leaves the schedule lazily, with no search).
    """

    def __init__(self, period_ns: int, last_sent_of: Callable[[T], int | None]) -> None:
        if period_ns <= 0:
            raise ValueError("re-send period must be positive")
        self.period_ns = period_ns
        self._last_sent_of = last_sent_of
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, item: T, now_ns: int) -> None:
        """Schedule `item`; its first check is one period after `now_ns`."""
        heapq.heappush(self._heap, (now_ns + self.period_ns, next(self._seq), item))

    def next_due_ns(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ns: int, limit: int = 1_000_000) -> list[T]:
        """Items whose last message is at least one period old; they are rescheduled as if
        re-sent at `now_ns`.  Items that sent something more recently are rescheduled at
        their own last-sent time plus the period.  At most `limit` items are returned so a
        huge backlog is spread over several calls."""
        heap = self._heap
        period = self.period_ns
        due: list[T] = []
        push = heapq.heapreplace
        while heap and heap[0][0] <= now_ns and len(due) < limit:
            _, _, item = heap[0]
            last = self._last_sent_of(item)
            if last is None:
                heapq.heappop(heap)
                continue
            if last + period <= now_ns:
                due.append(item)
                push(heap, (now_ns + period, next(self._seq), item))
            else:
                push(heap, (last + period, next(self._seq), item))
        return due


class Timers:
    """A few repeating timers (status, fake ticks, housekeeping) in one heap."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, Callable[[int], None]]] = []
        self._seq = itertools.count()

    def every(self, interval_ns: int, callback: Callable[[int], None], first_ns: int) -> None:
        """Call `callback(now_ns)` at `first_ns` and then every `interval_ns`."""
        if interval_ns <= 0:
            raise ValueError("timer interval must be positive")
        heapq.heappush(self._heap, (first_ns, next(self._seq), interval_ns, callback))

    def next_due_ns(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def run_due(self, now_ns: int) -> int:
        """Run every due callback once; a timer that fell behind skips the missed ticks
        instead of firing in a burst.  Returns how many callbacks ran."""
        ran = 0
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            due, _, interval, callback = heap[0]
            next_due = due + interval
            if next_due <= now_ns:
                next_due = now_ns + interval
            heapq.heapreplace(heap, (next_due, next(self._seq), interval, callback))
            callback(now_ns)
            ran += 1
        return ran
