"""The `forwarder-config` command line: one subcommand per job, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from forwarder.app.config_cli.connection import add_connection_options, positive_seconds
from forwarder.app.config_cli.errors import EXIT_FAILURE, EXIT_USAGE, PROG, Failure, UsageError
from forwarder.app.config_cli.send import run_config
from forwarder.app.config_cli.status import DEFAULT_QUIET_S, run_status
from forwarder.app.config_cli.streams import KINDS, add_stream_options


class _Parser(argparse.ArgumentParser):
    """One-line errors with exit 2, so scripts and operators see the problem, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Configure running forwarders through their config topic and show their"
        " status.  Kafka options may be given before or after the subcommand.",
        allow_abbrev=False,
    )
    add_connection_options(parser, ("config", "status"), "g_")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    helps = {
        "add": "start forwarding streams",
        "remove": "stop forwarding streams matching filters (wildcards ? and *)",
        "remove-all": "stop forwarding everything",
        "replace": "make the configuration exactly the given streams (fc00 only)",
    }
    for name, kind in KINDS.items():
        p = sub.add_parser(name, help=helps[name], description=helps[name], allow_abbrev=False)
        add_stream_options(p, kind)
        add_connection_options(p, ("config",), "")
        p.set_defaults(handler=run_config, kind=kind)
    p = sub.add_parser(
        "status",
        help="show the newest status of each forwarder",
        description="Read the status topic (all partitions, from the start, no consumer group)"
        " and show the newest x5f2 status of each service.",
        allow_abbrev=False,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--service-id", help="only this service (? and * match)")
    p.add_argument(
        "--max-age",
        type=positive_seconds,
        metavar="SECONDS",
        help="ignore status messages older than this (default: read the whole topic)",
    )
    p.add_argument(
        "--quiet",
        type=positive_seconds,
        default=DEFAULT_QUIET_S,
        metavar="SECONDS",
        help=f"stop after this long without new messages (default {DEFAULT_QUIET_S:g})",
    )
    add_connection_options(p, ("status",), "")
    p.set_defaults(handler=run_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status instead of raising SystemExit."""
    # The adapters log problems this tool reports itself, as one line: keep them quiet
    # (without a handler Python would print warnings to stderr).
    logging.getLogger("forwarder").addHandler(logging.NullHandler())
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    prog = f"{PROG} {args.command}"
    try:
        code: int = args.handler(args)
        return code
    except UsageError as exc:
        for line in exc.lines:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
