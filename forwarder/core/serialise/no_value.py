"""Streams without value messages (`no_op`, `ep01`, `al00`): connection/alarm only."""

from __future__ import annotations

from typing import Any


class NoValueSerialiser:
    """Streams without value messages (`no_op`, `ep01`, `al00`): never produces one."""

    __slots__ = ("source_name",)

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name

    def serialise(
        self, value: Any, timestamp_ns: int, severity: int = 0, status: str = ""
    ) -> bytes | None:
        return None
