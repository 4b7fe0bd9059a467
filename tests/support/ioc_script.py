"""Subprocess: a softioc IOC serving the records in its configuration over CA and PVA.

Run by `epics_servers.SoftIoc`; see `_child` for the pipe protocol.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from softioc import asyncio_dispatcher, builder, softioc

from tests.support._child import Child, CounterLoop, value_dtype


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


class CounterThread(CounterLoop):
    """Sets a counter on N records at R Hz from one Python thread (load generator).

    The records are ao (DOUBLE) or longout (LONG) with `always_update`: `set()` on an out
    record processes it synchronously in the calling thread (dbPutField), so every tick
    reaches the CA server's event queue; nothing is coalesced inside the IOC.  The record
    timestamp is the processing time (TSE=0).  Create before `LoadDatabase`, `start()`
    after `iocInit`.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec["rate_hz"])
        make = builder.longOut if spec["dtype"] == "LONG" else builder.aOut
        self.cast: Any = int if spec["dtype"] == "LONG" else float
        self.records = [
            make(f"{spec['prefix']}{i}", initial_value=0, always_update=True)
            for i in range(int(spec["count"]))
        ]

    def post_all(self, tick: int) -> int:
        value = self.cast(tick)
        for record in self.records:
            record.set(value)
        return len(self.records)


def main() -> None:
    child = Child()
    dispatcher = asyncio_dispatcher.AsyncioDispatcher()
    records = {spec["name"]: (spec, build(spec)) for spec in child.config["records"]}
    counter_spec = child.config.get("counters")
    counters = CounterThread(counter_spec) if counter_spec else None
    builder.LoadDatabase()
    softioc.iocInit(dispatcher)
    if counters is not None:
        counters.start()
        if counter_spec and counter_spec["autostart"]:
            counters.set_running(True)

    def handle(cmd: dict[str, Any]) -> dict[str, Any] | None:
        if cmd["op"] == "counters":
            if counters is None:
                raise ValueError("no counters configured")
            if "rate" in cmd:
                counters.set_rate(cmd["rate"])
            if "run" in cmd:
                counters.set_running(bool(cmd["run"]))
            return counters.stats()
        spec, record = records[cmd["name"]]
        if cmd["op"] == "put":
            value = cmd["value"]
            if spec["kind"] == "waveform":
                value = np.asarray(value, value_dtype(spec["dtype"]))
            record.set(value)
        elif cmd["op"] == "fill":  # a large waveform, without sending it through the pipe
            length = spec["length"]
            record.set(np.arange(length, dtype=value_dtype(spec["dtype"])) + cmd["start"])
        elif cmd["op"] == "alarm":
            record.set_alarm(cmd["severity"], cmd["status"])
        else:
            raise ValueError(f"unknown op {cmd['op']!r}")
        return None

    child.reply(ready=True)
    child.serve(handle)


if __name__ == "__main__":
    main()
