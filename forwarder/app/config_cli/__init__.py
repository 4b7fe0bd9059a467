"""`forwarder-config`: the operator's tool to configure running forwarders and see their status.

Forwarders are configured only through their config topic, so this tool publishes exactly
the rf5k/fc00 messages a forwarder reads, and reads back the x5f2 status messages they
publish.  Streams are validated by encoding and then decoding the message with the
forwarder's own `forwarder.core.config_messages`, so the tool accepts exactly what a
forwarder would apply and never drifts from it.

Usage (options may come before or after the subcommand; endpoint options and the SASL
passwords also come from the forwarder's own environment variables, e.g.
``FORWARDER_CONFIG_TOPIC``, ``FORWARDER_STATUS_TOPIC``, ``FORWARDER_CONFIG_TOPIC_SASL_PASSWORD``,
or the ESS forwarder's ``CONFIG_TOPIC``, ``STATUS_TOPIC`` ...)::

    forwarder-config add SIMPLE:PV1 SIMPLE:PV2 --protocol ca --schema f144 --topic det \\
        --config-topic localhost:9092/forwarder_config
    forwarder-config add --file streams.yaml
    forwarder-config remove 'SIMPLE:*' --topic 'det_*'
    forwarder-config replace --file streams.txt
    forwarder-config remove-all
    forwarder-config status --status-topic localhost:9092/forwarder_status [--json]

Exit status: 0 success, 1 Kafka unreachable / not delivered / no status found, 2 bad input.

One module per job: `connection` (Kafka options and endpoints, shared with
`forwarder-launch` through `forwarder.app.settings`), `streams` (stream arguments and files
into a validated config message), `send` (add, remove, remove-all, replace), `status`
(read and show status), `main` (parser and entry point).  All Kafka I/O goes through the
service's adapters (`forwarder.adapters.kafka_config`).
"""

from forwarder.app.config_cli.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Failure, UsageError
from forwarder.app.config_cli.main import build_parser, main
from forwarder.app.config_cli.status import ServiceStatus, format_status, read_status
from forwarder.app.config_cli.streams import build_command, read_stream_file

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Failure",
    "ServiceStatus",
    "UsageError",
    "build_command",
    "build_parser",
    "format_status",
    "main",
    "read_status",
    "read_stream_file",
]
