"""`forwarder-launch` / `forwarder_launch.py`: parse the command line, run until a signal."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from forwarder import __version__
from forwarder.adapters.kafka_uri import redact
from forwarder.app.cli import parse_args
from forwarder.app.logging_setup import LoggingSetupError, setup_logging
from forwarder.app.service import ForwarderService
from forwarder.app.settings import Settings

log = logging.getLogger("forwarder")


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    try:
        setup_logging(
            settings.verbosity,
            settings.log_file,
            settings.graylog_logger_address,
            settings.service_id,
            secrets=settings.secrets(),
        )
    except LoggingSetupError as err:
        print(f"forwarder: error: {err}", file=sys.stderr)
        return 2
    log_start(settings)
    try:
        output_config = settings.output_endpoint.librdkafka_config()
    except ValueError as err:
        print(f"forwarder: error: {err}", file=sys.stderr)
        return 2
    log.debug("output producer config: %s", redact(output_config))

    stop = threading.Event()
    services: list[ForwarderService] = []  # for the watchdog, once there is one

    # A watchdog: whatever hangs in start-up or shutdown, exit within the promised 5 seconds
    # of a signal.  Armed by the signal itself, because `service.run()` may be blocked in
    # start-up (e.g. waiting for an unreachable broker) for longer than that.  The handlers
    # are installed before any Kafka client is built, so a signal during start-up is a
    # clean shutdown too.
    watchdog = threading.Timer(4.5, lambda: _hard_exit(services))
    watchdog.daemon = True

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("Received %s, shutting down", signal.Signals(signum).name)
        stop.set()
        if watchdog.ident is None:
            watchdog.start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    service = ForwarderService(settings, version=__version__, stop_event=stop)
    services.append(service)
    try:
        service.run()
    finally:
        if watchdog.ident is None:
            watchdog.start()
        left = service.shutdown(flush_timeout_s=2.5)
        watchdog.cancel()
    # Non-zero when data was lost, so a supervisor (or an operator) notices.
    return 1 if left else 0


def log_start(settings: Settings) -> None:
    """The start-up lines: version and service, the environment variables used, and
    options that were accepted but have no effect (so the operator can remove them)."""
    log.info("forwarder %s starting as service %r", __version__, settings.service_id)
    for note in settings.environment_notes:
        log.info("Environment: %s", note)
    for warning in settings.start_warnings():
        log.warning("%s", warning)


def _hard_exit(services: list[ForwarderService]) -> None:
    left = services[0].undelivered() if services else 0
    log.error(
        "Shutdown took too long; exiting without waiting for the EPICS clients "
        "(%d messages not delivered)",
        left,
    )
    logging.shutdown()
    import os

    os._exit(1 if left else 0)


if __name__ == "__main__":
    sys.exit(main())
