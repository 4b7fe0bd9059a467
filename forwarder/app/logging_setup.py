"""Logging for the service: console, optional file and Graylog, with secrets redacted.

Filters sit on the handlers, not on a logger, because logger filters do not see records
propagated from child loggers (`forwarder.*`, `caproto.*`, ...).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Iterable

import graypy
import graypy.handler

from forwarder.adapters.kafka_uri import parse_host_port
from forwarder.core.ratelimit import RepeatLimiter

TRACE = 5
_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"
_REDACTED = "***"

#: Handlers installed by the last `setup_logging`, removed by the next call (tests, reloads).
_installed: list[logging.Handler] = []
# Syslog has no level below DEBUG: send TRACE as debug (7) rather than as 5 ("notice").
graypy.handler.SYSLOG_LEVELS.setdefault(TRACE, 7)
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


class LoggingSetupError(Exception):
    """A log destination cannot be used; the message names it (the app exits with 2)."""


def register_secret(secret: str | None) -> None:
    """Never print `secret` (e.g. a SASL password) in any log line from now on."""
    if secret:
        with _secrets_lock:
            _secrets.add(secret)


def redact_text(text: str) -> str:
    """`text` with every registered secret replaced; longest first so substrings lose."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites records that would reveal a registered secret (message or traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # graypy and Formatter both prefer exc_text over formatting exc_info again.
            record.exc_text = redact_text(record.exc_text)
        return True


class ContextFilter(logging.Filter):
    """Adds `service_id` and `host` to every record so Graylog can tell instances apart."""

    def __init__(self, service_id: str, host: str) -> None:
        super().__init__()
        self.service_id = service_id
        self.host = host

    def filter(self, record: logging.LogRecord) -> bool:
        record.service_id = self.service_id
        record.host = self.host
        return True


def parse_level(level: str) -> int:
    """Level name (any case, including TRACE) to its number."""
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise LoggingSetupError(f"unknown log level {level!r}")
    return number


def log_folder_problem(path: str) -> str | None:
    """Why a log file cannot be created at `path` because of its folder, or None.

    Checked when the options are parsed (exit 2 naming --log-file) and again when the file
    is opened; a missing folder is the operator's most common mistake, so it gets a clearer
    line than the bare OS error.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"directory {folder!r} for the log file does not exist"
    return None


def _file_handler(path: str) -> logging.Handler:
    problem = log_folder_problem(path)
    if problem is not None:
        raise LoggingSetupError(f"cannot write log file {path!r}: {problem}")
    try:
        return logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise LoggingSetupError(f"cannot write log file {path!r}: {exc.strerror}") from None


# graypy ships no type information (no py.typed, no stubs package): its handler is Any to
# mypy, and subclassing it needs this one ignore.
class _GelfHandler(graypy.GELFUDPHandler):  # type: ignore[misc]
    """GELF over UDP that complains about send failures once a minute, not per record.

    The default `handleError` prints a traceback for every record, so an unresolvable or
    unreachable Graylog host would bury the console output.
    """

    def __init__(self, host: str, port: int, localname: str) -> None:
        super().__init__(host, port, localname=localname)
        self._complaints = RepeatLimiter(60.0)

    def handleError(self, record: logging.LogRecord) -> None:
        admitted = self._complaints.admit("send")
        if admitted is None:
            return
        failed_since = f" ({admitted[0]} more failures before)" if admitted[0] else ""
        error = sys.exc_info()[1]
        sys.stderr.write(
            f"Cannot send log to Graylog {self.host}:{self.port}: {error}{failed_since}\n"
        )


def _graylog_handler(address: str, host: str) -> logging.Handler:
    try:
        name, port = parse_host_port(address)
    except ValueError as exc:
        raise LoggingSetupError(f"Graylog address {address!r} is not host:port: {exc}") from None
    return _GelfHandler(name, port, localname=host)


_CHATTY_LIBRARIES = ("caproto", "p4p", "pvxs")


def setup_logging(
    level: str,
    log_file: str | None,
    graylog_address: str | None,
    service_id: str,
    *,
    secrets: Iterable[str | None] = (),
) -> None:
    """Configure the root logger; calling it again replaces what the last call installed.

    Builds every handler before installing any, so a bad destination leaves logging as
    it was and the caller can still report the error.
    """
    logging.addLevelName(TRACE, "TRACE")
    numeric = parse_level(level)
    for secret in secrets:
        register_secret(secret)
    host = socket.gethostname()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        if log_file:
            handlers.append(_file_handler(log_file))
        if graylog_address:
            handlers.append(_graylog_handler(graylog_address, host))
    except LoggingSetupError:
        for handler in handlers:
            handler.close()
        raise
    formatter = logging.Formatter(_FORMAT)
    teardown_logging()
    root = logging.getLogger()
    for handler in handlers:
        handler.addFilter(RedactingFilter())
        handler.addFilter(ContextFilter(service_id, host))
        if not isinstance(handler, _GelfHandler):
            handler.setFormatter(formatter)  # GELF carries time and level as fields
        root.addHandler(handler)
        _installed.append(handler)
    root.setLevel(numeric)
    # The EPICS client libraries log every update at debug level: their debug output is
    # only wanted at Trace, otherwise it would drown the forwarder's own debug lines.
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(
            numeric if numeric < logging.DEBUG else max(numeric, logging.INFO)
        )


def teardown_logging() -> None:
    """Remove and close what `setup_logging` installed (flushes the file and Graylog)."""
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()
