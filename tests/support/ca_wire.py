"""Channel Access commands as the bytes a server sends, built with caproto's own classes."""

from __future__ import annotations


def wire(commands: list[object]) -> bytes:
    """Header and payload buffers of each command, concatenated."""
    out = bytearray()
    for command in commands:
        out += bytes(command.header)  # type: ignore[attr-defined]
        for buf in command.buffers:  # type: ignore[attr-defined]
            out += bytes(buf)
    return bytes(out)
