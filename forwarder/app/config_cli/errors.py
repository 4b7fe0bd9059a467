"""Exit codes and the two ways a command fails (bad input, or Kafka could not do it)."""

from __future__ import annotations

PROG = "forwarder-config"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: exit 2 with one line per problem (never a traceback)."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "invalid input")
        self.lines = list(lines) or ["invalid input"]


class Failure(Exception):
    """The request was fine but could not be carried out (Kafka down, nothing found): exit 1."""
