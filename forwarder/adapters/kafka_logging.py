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
from typing import Any

_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Pass a message once per `interval_s`; identical up to numbers counts as the same."""

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = _DIGITS.sub("#", text)[:200]
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{text} ({last[1]} similar messages suppressed)"
            record.args = None
        self._seen[key] = (now, 0)
        if len(self._seen) > 1000:
            self._seen.clear()
        return True


_LOGGER = logging.getLogger("forwarder.librdkafka")
_LOGGER.addFilter(RepeatFilter())


def with_kafka_logger(config: dict[str, Any]) -> dict[str, Any]:
    """`config` plus a `logger` entry for librdkafka (unless one was given)."""
    conf = dict(config)
    conf.setdefault("logger", _LOGGER)
    return conf
