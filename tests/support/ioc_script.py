"""Subprocess: a softioc IOC serving the records in its configuration over CA and PVA.

Run by `epics_servers.SoftIoc`; see `_child` for the pipe protocol.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from softioc import asyncio_dispatcher, builder, softioc

from tests.support._child import Child, value_dtype


def build(spec: dict[str, Any]) -> Any:
    """Create one softioc record from a `Record` dict."""
    name, kind, value = spec["name"], spec["kind"], spec["value"]
    init: dict[str, Any] = {} if value is None else {"initial_value": value}
    if kind == "ai":
        return builder.aIn(name, **init)
    if kind == "ao":
        return builder.aOut(name, always_update=True, **init)
    if kind == "longin":
        return builder.longIn(name, **init)
    if kind == "longout":
        return builder.longOut(name, always_update=True, **init)
    if kind in ("mbbi", "mbbo"):
        make = builder.mbbIn if kind == "mbbi" else builder.mbbOut
        return make(name, *spec["choices"], **init)
    if kind == "waveform":
        dtype = np.dtype(value_dtype(spec["dtype"]))
        length = spec["length"] or (len(value) if value is not None else 1)
        if value is None:
            return builder.WaveformIn(name, datatype=dtype, length=length)
        return builder.WaveformIn(name, initial_value=np.asarray(value, dtype), length=length)
    if kind == "stringin":
        return builder.stringIn(name, **init)
    if kind == "stringout":
        return builder.stringOut(name, always_update=True, **init)
    raise ValueError(f"unsupported record kind {kind!r}")


def main() -> None:
    child = Child()
    dispatcher = asyncio_dispatcher.AsyncioDispatcher()
    records = {spec["name"]: (spec, build(spec)) for spec in child.config["records"]}
    builder.LoadDatabase()
    softioc.iocInit(dispatcher)

    def handle(cmd: dict[str, Any]) -> dict[str, Any] | None:
        spec, record = records[cmd["name"]]
        if cmd["op"] == "put":
            value = cmd["value"]
            if spec["kind"] == "waveform":
                value = np.asarray(value, value_dtype(spec["dtype"]))
            record.set(value)
        elif cmd["op"] == "alarm":
            record.set_alarm(cmd["severity"], cmd["status"])
        else:
            raise ValueError(f"unknown op {cmd['op']!r}")
        return None

    child.reply(ready=True)
    child.serve(handle)


if __name__ == "__main__":
    main()
