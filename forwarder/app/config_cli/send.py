"""`add`, `remove`, `remove-all`, `replace`: publish one config message and wait for the ack.

Published with the service's `TopicWriter`, so the message is produced exactly as the
forwarder's own status and storage messages are.
"""

from __future__ import annotations

import argparse
import os

from forwarder.adapters.kafka_config import DeliveryFailed, TopicWriter
from forwarder.app.config_cli.connection import (
    Connection,
    connection,
    option,
    unreachable_message,
)
from forwarder.app.config_cli.errors import EXIT_OK, Failure, UsageError
from forwarder.app.config_cli.streams import build_command, describe_command
from forwarder.app.settings import env_var
from forwarder.core.config_messages import UpdateKind


def publish(conn: Connection, payload: bytes) -> tuple[int, int]:
    """Produce one message and wait for the broker's ack; returns (partition, offset)."""
    config = {"message.timeout.ms": str(max(1, int(conn.timeout * 1000))), **conn.config()}
    try:
        writer = TopicWriter(config, conn.topic)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        writer.probe(conn.timeout)
    except ConnectionError as exc:
        raise Failure(unreachable_message(conn, str(exc))) from None
    try:
        return writer.write_and_wait(payload, None, conn.timeout)
    except DeliveryFailed as exc:
        raise Failure(f"message to {conn.endpoint.uri} {exc}") from None


def run_config(args: argparse.Namespace) -> int:
    payload, command = build_command(args)
    summary = f"{command.kind.name} ({command.schema_id})"
    count = len(command.streams) or len(command.filters)
    if command.kind is not UpdateKind.REMOVEALL:
        noun = "filter" if command.kind is UpdateKind.REMOVE else "stream"
        summary += f" with {count} {noun}{'s' if count != 1 else ''}"
    if args.dry_run:
        topic = option(args, "config_topic") or os.environ.get(env_var("config_topic"))
        print(f"would send {summary}" + (f" to {topic}" if topic else ""))
    else:
        conn = connection(args, "config")
        partition, offset = publish(conn, payload)
        print(f"sent {summary} to {conn.endpoint.uri} [partition {partition}, offset {offset}]")
    for line in describe_command(command):
        print(line)
    return EXIT_OK
