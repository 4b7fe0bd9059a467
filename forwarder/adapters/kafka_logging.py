"""Route librdkafka's own log lines through Python logging, rate-limited.

By default librdkafka prints straight to stderr, bypassing the log file, Graylog and the
password redaction filter, and repeats a failing connection every few hundred ms.  Passing a
logger makes its lines ordinary log records; this filter lets the same line through at
most once per interval and says how many were held back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from forwarder.core.ratelimit import RepeatLimiter

_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Pass a message once per `interval_s`; identical up to numbers counts as the same."""

    def __init__(
        self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        # Keys are library text: bounded so that varied messages cannot grow it forever.
        self._limiter = RepeatLimiter(interval_s, max_keys=1000, clock=clock)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        admitted = self._limiter.admit(_DIGITS.sub("#", text)[:200])
        if admitted is None:
            return False
        if admitted[0]:
            record.msg = f"{text} ({admitted[0]} similar messages suppressed)"
            record.args = None
        return True


_LOGGER = logging.getLogger("forwarder.librdkafka")
_LOGGER.addFilter(RepeatFilter())


def with_kafka_logger(config: dict[str, Any]) -> dict[str, Any]:
    """`config` plus a `logger` entry for librdkafka (unless one was given)."""
    conf = dict(config)
    conf.setdefault("logger", _LOGGER)
    return conf
