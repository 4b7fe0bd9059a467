"""Turns core problem reports into log lines, at most one per key every few seconds.

A PV that sends a bad timestamp at 100 Hz must not write 100 log lines a second; the
counters carry the exact numbers, the log carries the story.
"""

from __future__ import annotations

import logging

from forwarder.core.ratelimit import RateLimitedLogger


class LogReporter:
    """Implements `forwarder.core.forwarding.Reporter`."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self._limited = RateLimitedLogger(logger, interval_s)

    def problem(self, key: str, message: str) -> None:
        self._limited.warning(key, "%s", message)
