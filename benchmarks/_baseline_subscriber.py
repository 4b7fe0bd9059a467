"""Subprocess: the cheapest subscriber of the same EPICS library the forwarder uses.

CA: the stock caproto threading client (one `Context`, one DBR_TIME subscription per PV);
PVA: one p4p thread `Context` with `nt=False` and one monitor per PV.  The callback only
counts updates and counter gaps, so its CPU is the library's own cost per update: the
floor the forwarder's cost per update is compared with.

Pipe protocol as `tests.support._child`: the PVs are `counters.names()` of the configuration,
the protocol comes from $BENCH_BASELINE_PROTOCOL (ca or pva); the `stats` command
returns updates, counter gaps (values never delivered), connected PVs and this
process's CPU seconds.
"""

from __future__ import annotations

import os
from typing import Any

from tests.support._child import Child


class Tally:
    def __init__(self, names: list[str]) -> None:
        self.updates = 0
        self.gaps = 0
        self.last: dict[str, int] = dict.fromkeys(names, 0)

    def seen(self, name: str, value: float) -> None:
        counter = int(value)
        previous = self.last[name]
        if previous and counter > previous + 1:
            self.gaps += counter - previous - 1
        self.last[name] = counter
        self.updates += 1


def subscribe_ca(names: list[str], tally: Tally) -> tuple[Any, list[Any]]:
    from caproto.threading.client import Context

    context = Context()
    pvs = context.get_pvs(*names, timeout=30.0)
    subs = []
    for pv in pvs:
        sub = pv.subscribe(data_type="time")

        def on_value(_sub: Any, response: Any, name: str = pv.name) -> None:
            tally.seen(name, response.data[0])

        sub.add_callback(on_value)
        subs.append(sub)
    return context, subs


def subscribe_pva(names: list[str], tally: Tally) -> tuple[Any, list[Any]]:
    from p4p import Value
    from p4p.client.thread import Context

    context = Context("pva", nt=False)
    subs = []
    for name in names:

        def on_value(v: Any, name: str = name) -> None:
            if type(v) is Value:
                tally.seen(name, v["value"])

        subs.append(context.monitor(name, on_value, notify_disconnect=True))
    return context, subs


def main() -> None:
    child = Child()
    spec = child.config["counters"]
    names = [f"{spec['prefix']}{i}" for i in range(int(spec["count"]))]
    tally = Tally(names)
    subscribe = subscribe_ca if os.environ["BENCH_BASELINE_PROTOCOL"] == "ca" else subscribe_pva
    _context, _subs = subscribe(names, tally)

    def handle(cmd: dict[str, Any]) -> dict[str, Any] | None:
        if cmd["op"] != "stats":
            raise ValueError(f"unknown op {cmd['op']!r}")
        times = os.times()
        connected = sum(1 for v in tally.last.values() if v)
        return {"updates": tally.updates, "gaps": tally.gaps, "connected": connected,
                "cpu_s": times.user + times.system}  # fmt: skip

    child.reply(ready=True)
    child.serve(handle)


if __name__ == "__main__":
    main()
