from __future__ import annotations

import logging
import threading

import pytest

from forwarder.core.ratelimit import RateLimitedLogger, RepeatLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_admits_once_per_interval_and_counts_what_it_held_back() -> None:
    clock = Clock()
    limiter = RepeatLimiter(10.0, clock=clock)
    assert limiter.admit("a") == (0, 0.0)
    for _ in range(3):
        clock.now += 2
        assert limiter.admit("a") is None
    assert limiter.admit("b") == (0, 0.0)  # keys are independent
    clock.now = 110.0
    assert limiter.admit("a") == (3, 10.0)
    clock.now = 125.0
    assert limiter.admit("a") == (0, 15.0)  # nothing held back since


def test_max_keys_forgets_instead_of_growing() -> None:
    clock = Clock()
    limiter = RepeatLimiter(10.0, max_keys=2, clock=clock)
    assert limiter.admit("a") == (0, 0.0)
    assert limiter.admit("b") == (0, 0.0)
    assert limiter.admit("a") is None
    assert limiter.admit("c") == (0, 0.0)  # memory full: forgotten, "c" starts afresh
    assert limiter.admit("a") == (0, 0.0)  # "a" was forgotten too


def test_counts_are_exact_under_concurrent_callers() -> None:
    limiter = RepeatLimiter(3600.0)
    admitted: list[object] = []

    def hammer() -> None:
        for _ in range(1000):
            if limiter.admit("k") is not None:
                admitted.append(1)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 1
    limiter.interval_s = 0.0
    result = limiter.admit("k")
    assert result is not None and result[0] == 4 * 1000 - 1  # every held-back call counted


def test_rate_limited_logger_counts_suppressed_lines(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limited = RateLimitedLogger(logging.getLogger("forwarder.rate"), 10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="forwarder.rate")
    assert limited.warning("pv:A", "bad timestamp on %s", "A") is True
    for _ in range(3):
        now[0] += 2
        assert limited.warning("pv:A", "bad timestamp on %s", "A") is False
    assert limited.warning("pv:B", "bad timestamp on %s", "B") is True  # keys are separate
    now[0] = 110.0
    assert limited.warning("pv:A", "bad timestamp on %s", "A") is True
    now[0] = 125.0
    assert limited.error("pv:A", "50% of updates late") is True  # '%' without args is safe
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", "bad timestamp on A"),
        ("WARNING", "bad timestamp on B"),
        ("WARNING", "bad timestamp on A (3 similar message(s) suppressed in the last 10 s)"),
        ("ERROR", "50% of updates late"),
    ]
