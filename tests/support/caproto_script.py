"""Subprocess: a caproto asyncio CA server serving records and/or counter PVs.

Run by `epics_servers.CaprotoServer`; see `_child` for the pipe protocol.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
from caproto import (
    AlarmSeverity,
    AlarmStatus,
    ChannelByte,
    ChannelData,
    ChannelDouble,
    ChannelEnum,
    ChannelFloat,
    ChannelInteger,
    ChannelShort,
    ChannelString,
)
from caproto.asyncio.server import Context

from tests.support._child import Child, CounterPacing, value_dtype

ARRAY_CHANNEL: dict[str, type[ChannelData]] = {
    "DOUBLE": ChannelDouble, "FLOAT": ChannelFloat, "LONG": ChannelInteger,
    "SHORT": ChannelShort, "CHAR": ChannelByte, "UCHAR": ChannelByte, "INT64": ChannelDouble,
}  # fmt: skip


def make_channel(spec: dict[str, Any]) -> ChannelData:
    """The caproto channel closest to the record kind (CA CHAR is unsigned)."""
    kind, value = spec["kind"], spec["value"]
    if kind in ("ai", "ao"):
        return ChannelDouble(value=0.0 if value is None else float(value))
    if kind in ("longin", "longout"):
        return ChannelInteger(value=0 if value is None else int(value))
    if kind in ("mbbi", "mbbo"):
        choices = list(spec["choices"])
        return ChannelEnum(value=choices[value or 0], enum_strings=choices)
    if kind == "waveform":
        dtype = "uint8" if spec["dtype"] in ("CHAR", "UCHAR") else value_dtype(spec["dtype"])
        arr = np.asarray([] if value is None else value, dtype)
        length = spec["length"] or max(len(arr), 2)
        return ARRAY_CHANNEL[spec["dtype"]](value=arr, max_length=length)
    if kind in ("stringin", "stringout"):
        return ChannelString(value="" if value is None else value)
    raise ValueError(f"unsupported record kind {kind!r}")


def to_channel_value(spec: dict[str, Any], value: Any) -> Any:
    if spec["kind"] in ("mbbi", "mbbo") and isinstance(value, int):
        return spec["choices"][value]
    if spec["kind"] == "waveform":
        dtype = "uint8" if spec["dtype"] in ("CHAR", "UCHAR") else value_dtype(spec["dtype"])
        return np.asarray(value, dtype)
    return value


class Counters(CounterPacing):
    """Writes a counter to N channels at R Hz from one asyncio task (verification hooks
    skipped: they cost more than the publish itself)."""

    def __init__(self, spec: dict[str, Any], pvdb: dict[str, ChannelData]) -> None:
        super().__init__(spec["rate_hz"], asyncio.Event())
        make = ChannelInteger if spec["dtype"] == "LONG" else ChannelDouble
        self.cast = int if spec["dtype"] == "LONG" else float
        self.channels = []
        for i in range(int(spec["count"])):
            channel = make(value=self.cast(0))
            pvdb[f"{spec['prefix']}{i}"] = channel
            self.channels.append(channel)

    async def loop(self) -> None:
        due = time.monotonic()
        run = self._run
        assert isinstance(run, asyncio.Event)
        while True:
            if not run.is_set():
                await run.wait()
                due = time.monotonic()
            self.ticks += 1
            value = self.cast(self.ticks)
            now = time.time()
            for channel in self.channels:
                await channel.write(value, timestamp=now, verify_value=False,
                                    update_fields=False)  # fmt: skip
            self.posts += len(self.channels)
            due, delay = self.next_due(due)
            await asyncio.sleep(delay)


def main() -> None:
    child = Child()
    pvdb: dict[str, ChannelData] = {}
    specs: dict[str, dict[str, Any]] = {}

    def add(spec: dict[str, Any]) -> None:
        pvdb[spec["name"]] = make_channel(spec)
        specs[spec["name"]] = spec

    for spec in child.config["records"]:
        add(spec)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        counters = Counters(child.config["counters"], pvdb) if child.config["counters"] else None

        async def handle(cmd: dict[str, Any]) -> dict[str, Any] | None:
            op = cmd["op"]
            if op == "add":
                add(cmd["record"])
            elif op == "counters":
                if counters is None:
                    raise ValueError("no counters configured")
                if "run" in cmd:
                    counters.set_running(bool(cmd["run"]))
                return counters.stats()
            elif op == "put":
                name = cmd["name"]
                await pvdb[name].write(to_channel_value(specs[name], cmd["value"]))
            elif op == "alarm":
                await pvdb[cmd["name"]].alarm.write(
                    status=AlarmStatus(cmd["status"]), severity=AlarmSeverity(cmd["severity"])
                )
            else:
                raise ValueError(f"unknown op {op!r}")
            return None

        def handle_sync(cmd: dict[str, Any]) -> dict[str, Any] | None:
            return asyncio.run_coroutine_threadsafe(handle(cmd), loop).result()

        async def startup(_async_lib: Any) -> None:
            if counters is not None:
                loop.create_task(counters.loop())
                if child.config["counters"]["autostart"]:
                    counters.set_running(True)
            child.reply(ready=True)
            threading.Thread(target=child.serve, args=(handle_sync,), daemon=True).start()

        await Context(pvdb, interfaces=["127.0.0.1"]).run(startup_hook=startup)

    asyncio.run(run())


if __name__ == "__main__":
    main()
