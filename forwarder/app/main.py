"""`forwarder-launch` / `forwarder_launch.py`: parse the command line, run until a signal."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from forwarder import __version__
from forwarder.adapters.kafka_uri import KafkaUri, librdkafka_config, redact
from forwarder.app.cli import Options, parse_args
from forwarder.app.logging_setup import LoggingSetupError, setup_logging
from forwarder.app.service import ForwarderService, ServiceSettings

log = logging.getLogger("forwarder")


def settings_from_options(opts: Options) -> ServiceSettings:
    """Resolve URIs and passwords into librdkafka configs for each Kafka client."""

    def conf(uri: KafkaUri, password: str | None) -> dict[str, Any]:
        return librdkafka_config(
            uri,
            password,
            security_protocol=opts.security_protocol,
            ssl_ca_file=opts.ssl_ca_cert_file,
            extra=opts.kafka_options,
        )

    status_conf = (
        conf(opts.status_topic, opts.status_topic_sasl_password) if opts.status_topic else None
    )
    storage_conf = (
        conf(opts.storage_topic, opts.storage_topic_sasl_password) if opts.storage_topic else None
    )
    return ServiceSettings(
        output_config=conf(opts.output_broker, opts.output_broker_sasl_password),
        config_config=conf(opts.config_topic, opts.config_topic_sasl_password),
        config_topic=opts.config_topic.topic or "",
        status_config=status_conf,
        status_topic=opts.status_topic.topic if opts.status_topic else None,
        storage_config=storage_conf,
        storage_topic=opts.storage_topic.topic if opts.storage_topic else None,
        skip_retrieval=opts.skip_retrieval,
        pv_update_period_ms=opts.pv_update_period,
        fake_pv_period_ms=opts.fake_pv_period,
        status_interval_ms=opts.status_interval,
        service_id=opts.service_id,
        use_receive_time=opts.stale_timestamps == "receive-time",
        producer_queue_max_messages=opts.producer_queue_max_messages,
        version=__version__,
        http_port=opts.http_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        setup_logging(
            opts.verbosity,
            opts.log_file,
            opts.graylog_logger_address,
            opts.service_id,
            secrets=opts.secrets(),
        )
    except LoggingSetupError as err:
        print(f"forwarder: error: {err}", file=sys.stderr)
        return 2
    try:
        settings = settings_from_options(opts)
    except ValueError as err:
        print(f"forwarder: error: {err}", file=sys.stderr)
        return 2
    log.info("forwarder %s starting as service %r", __version__, opts.service_id)
    log.debug("output producer config: %s", redact(settings.output_config))

    service = ForwarderService(settings)
    stop = service.stop_event

    # A watchdog: whatever hangs in start-up or shutdown, exit within the promised 5 seconds
    # of a signal.  Armed by the signal itself, because `service.run()` may be blocked in
    # start-up (e.g. waiting for an unreachable broker) for longer than that.
    watchdog = threading.Timer(4.5, lambda: _hard_exit(service))
    watchdog.daemon = True

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("Received %s, shutting down", signal.Signals(signum).name)
        stop.set()
        if watchdog.ident is None:
            watchdog.start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        service.run()
    finally:
        if watchdog.ident is None:
            watchdog.start()
        service.shutdown(flush_timeout_s=2.5)
        watchdog.cancel()
    return 0


def _hard_exit(service: ForwarderService) -> None:
    log.error("Shutdown took too long; exiting without waiting for the EPICS clients")
    logging.shutdown()
    import os

    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
