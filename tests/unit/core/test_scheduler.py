"""The re-send schedule and the repeating timers (pure data structures, fake clock)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from forwarder.core.scheduler import ResendSchedule, Timers

PERIOD = 1_000
T0 = 1_000_000


class LastSent:
    """`last_sent_of` backed by a dict; a missing item means "removed"."""

    def __init__(self) -> None:
        self.times: dict[str, int] = {}
        self.calls = 0

    def __call__(self, item: str) -> int | None:
        self.calls += 1
        return self.times.get(item)


def make(period: int = PERIOD) -> tuple[ResendSchedule[str], LastSent]:
    last = LastSent()
    return ResendSchedule(period, last), last


# -- ResendSchedule ---------------------------------------------------------------------
@pytest.mark.parametrize("period", [0, -1])
def test_period_must_be_positive(period: int) -> None:
    with pytest.raises(ValueError):
        ResendSchedule(period, lambda item: 0)


def test_empty_schedule() -> None:
    schedule, _ = make()
    assert len(schedule) == 0
    assert schedule.next_due_ns() is None
    assert schedule.pop_due(T0) == []


def test_item_is_due_only_after_a_full_period_without_a_send() -> None:
    schedule, last = make()
    last.times["a"] = T0
    schedule.add("a", T0)
    assert schedule.next_due_ns() == T0 + PERIOD
    assert schedule.pop_due(T0 + PERIOD - 1) == []
    assert schedule.pop_due(T0 + PERIOD) == ["a"]
    # Rescheduled as if re-sent now: not due again within the next period.
    assert schedule.next_due_ns() == T0 + 2 * PERIOD
    assert schedule.pop_due(T0 + 2 * PERIOD - 1) == []
    last.times["a"] = T0 + PERIOD  # the app records the re-send
    assert schedule.pop_due(T0 + 2 * PERIOD) == ["a"]
    assert len(schedule) == 1


def test_item_that_sent_recently_is_pushed_back_not_resent() -> None:
    schedule, last = make()
    schedule.add("busy", T0)
    last.times["busy"] = T0 + 400  # a live update after it was scheduled
    assert schedule.pop_due(T0 + PERIOD) == []
    assert schedule.next_due_ns() == T0 + 400 + PERIOD
    assert schedule.pop_due(T0 + 400 + PERIOD - 1) == []
    assert schedule.pop_due(T0 + 400 + PERIOD) == ["busy"]


def test_item_updating_every_period_is_never_resent() -> None:
    schedule, last = make()
    schedule.add("fast", T0)
    for step in range(1, 50):
        now = T0 + step * PERIOD
        last.times["fast"] = now - 1  # updated just before each check
        assert schedule.pop_due(now) == []
    assert len(schedule) == 1


def test_item_idle_for_long_is_resent_once_per_call_not_in_a_burst() -> None:
    schedule, last = make()
    last.times["idle"] = 0
    schedule.add("idle", T0)
    assert schedule.pop_due(T0 + 100 * PERIOD) == ["idle"]
    assert schedule.next_due_ns() == T0 + 101 * PERIOD


def test_removed_items_disappear_lazily() -> None:
    schedule, last = make()
    for name in ("a", "b", "c"):
        last.times[name] = T0
        schedule.add(name, T0)
    del last.times["b"]
    assert schedule.pop_due(T0 + PERIOD) == ["a", "c"]
    assert len(schedule) == 2
    del last.times["a"]
    del last.times["c"]
    assert schedule.pop_due(T0 + 5 * PERIOD) == []
    assert len(schedule) == 0
    assert schedule.next_due_ns() is None


def test_due_items_come_in_due_order_then_insertion_order() -> None:
    schedule, last = make()
    schedule.add("late", T0 + 50)
    schedule.add("early", T0)
    schedule.add("early2", T0)
    for name in ("late", "early", "early2"):
        last.times[name] = 0
    assert schedule.pop_due(T0 + PERIOD + 50) == ["early", "early2", "late"]


def test_limit_spreads_a_backlog_over_several_calls() -> None:
    schedule, last = make()
    names = [f"pv{i}" for i in range(10)]
    for name in names:
        last.times[name] = 0
        schedule.add(name, T0)
    now = T0 + PERIOD
    batches = [schedule.pop_due(now, limit=3) for _ in range(5)]
    assert [len(b) for b in batches] == [3, 3, 3, 1, 0]
    assert [n for b in batches for n in b] == names
    assert schedule.pop_due(now, limit=0) == []
    assert len(schedule) == 10


def test_pushed_back_and_removed_items_do_not_count_against_the_limit() -> None:
    schedule, last = make()
    for i in range(6):
        schedule.add(f"x{i}", T0)
    last.times.update({"x0": T0 + 10, "x1": 0, "x3": 0, "x4": T0 + 10, "x5": 0})  # x2 removed
    assert schedule.pop_due(T0 + PERIOD, limit=2) == ["x1", "x3"]
    assert schedule.pop_due(T0 + PERIOD, limit=2) == ["x5"]


def test_one_hundred_thousand_items() -> None:
    count = 100_000
    last: dict[int, int | None] = {}
    schedule: ResendSchedule[int] = ResendSchedule(PERIOD, last.get)
    for i in range(count):
        schedule.add(i, T0 + i % 7)
        # a third removed, a third busy, a third idle
        last[i] = None if i % 3 == 0 else (T0 + PERIOD // 2 if i % 3 == 1 else 0)
    now = T0 + PERIOD + 7
    due: list[int] = []
    while batch := schedule.pop_due(now, limit=20_000):
        due.extend(batch)
    assert sorted(due) == [i for i in range(count) if i % 3 == 2]
    assert len(schedule) == count - len(range(0, count, 3))
    assert schedule.next_due_ns() == T0 + PERIOD // 2 + PERIOD  # the busy ones come next
    assert schedule.pop_due(now) == []


# -- Timers -----------------------------------------------------------------------------
class Calls:
    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    def cb(self, name: str) -> Callable[[int], None]:
        def record(now_ns: int) -> None:
            self.log.append((name, now_ns))

        return record


def test_timer_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Timers().every(0, lambda now: None, 0)


def test_timer_fires_at_first_then_every_interval() -> None:
    timers = Timers()
    fired: list[int] = []
    timers.every(10, fired.append, first_ns=100)
    assert timers.next_due_ns() == 100
    assert timers.run_due(99) == 0
    assert timers.run_due(100) == 1
    assert timers.next_due_ns() == 110
    assert timers.run_due(105) == 0
    assert timers.run_due(112) == 1  # a little late: stays on its grid
    assert timers.next_due_ns() == 120
    assert fired == [100, 112]


def test_timer_that_fell_behind_skips_missed_ticks() -> None:
    timers = Timers()
    fired: list[int] = []
    timers.every(10, fired.append, first_ns=0)
    assert timers.run_due(0) == 1
    assert timers.run_due(55) == 1  # 5 ticks missed: one call, no burst
    assert fired == [0, 55]
    next_due = timers.next_due_ns()
    assert next_due is not None and 55 < next_due <= 65
    assert timers.run_due(next_due - 1) == 0
    assert timers.run_due(next_due) == 1


def test_empty_timers() -> None:
    timers = Timers()
    assert timers.next_due_ns() is None
    assert timers.run_due(10**18) == 0


def test_several_timers_fire_in_due_order_on_a_fake_clock() -> None:
    timers = Timers()
    calls = Calls()
    timers.every(10, calls.cb("status"), first_ns=0)
    timers.every(25, calls.cb("fake"), first_ns=5)
    timers.every(40, calls.cb("house"), first_ns=40)
    for now in range(0, 81):
        timers.run_due(now)
    times = [t for _, t in calls.log]
    assert times == sorted(times)
    by_name = {name: [t for n, t in calls.log if n == name] for name in ("status", "fake", "house")}
    assert by_name == {
        "status": list(range(0, 81, 10)),
        "fake": [5, 30, 55, 80],
        "house": [40, 80],
    }


def test_one_run_due_runs_every_due_timer_once_in_due_order() -> None:
    timers = Timers()
    calls = Calls()
    timers.every(100, calls.cb("c"), first_ns=30)
    timers.every(100, calls.cb("a"), first_ns=10)
    timers.every(100, calls.cb("b"), first_ns=20)
    timers.every(100, calls.cb("later"), first_ns=1_000)
    assert timers.run_due(500) == 3
    assert calls.log == [("a", 500), ("b", 500), ("c", 500)]
    next_due = timers.next_due_ns()
    assert next_due is not None and 500 < next_due <= 600
    assert timers.run_due(next_due - 1) == 0


def test_timer_added_from_a_callback_runs_later() -> None:
    timers = Timers()
    fired: list[str] = []

    def add_more(now_ns: int) -> None:
        fired.append("outer")
        if len(fired) == 1:
            timers.every(5, lambda n: fired.append("inner"), first_ns=now_ns + 5)

    timers.every(100, add_more, first_ns=0)
    timers.run_due(0)
    timers.run_due(5)
    assert fired == ["outer", "inner"]
