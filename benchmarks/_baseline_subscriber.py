"""Subprocess: the cheapest subscriber of the same EPICS library the forwarder uses.

CA: the stock caproto threading client (one `Context`, one DBR_TIME subscription per PV);
PVA: one p4p thread `Context` with `nt=False` and one monitor per PV.  The callback only
counts updates and counter gaps (and samples the delay from the EPICS timestamp to the
callback on every 10th update), so its CPU is the library's own cost per update: the
floor the forwarder's cost per update is compared with.

Pipe protocol as `tests.support._child`: the PVs are `counters.names()` of the configuration,
the protocol comes from $BENCH_BASELINE_PROTOCOL (ca or pva); the `stats` command
returns updates, counter gaps (values never delivered), connected PVs and this
process's CPU seconds; `latency` the delay percentiles sampled since the last call.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tests.support._child import Child


class Tally:
    """Updates, counter gaps and (every 10th update) EPICS timestamp -> callback delay."""

    def __init__(self, names: list[str]) -> None:
        self.updates = 0
        self.gaps = 0
        self.last: dict[str, int] = dict.fromkeys(names, 0)
        self.delays_s: list[float] = []

    def seen(self, name: str, value: float, timestamp_s: float) -> None:
        counter = int(value)
        previous = self.last[name]
        if previous and counter > previous + 1:
            self.gaps += counter - previous - 1
        self.last[name] = counter
        self.updates += 1
        if self.updates % 10 == 0:
            self.delays_s.append(time.time() - timestamp_s)

    def latency_ms(self) -> dict[str, float | None]:
        """Percentiles of the delays sampled since the previous call."""
        delays, self.delays_s = sorted(self.delays_s), []
        if not delays:
            return {"p50": None, "p99": None, "max": None}

        def at(q: float) -> float:
            return round(1000 * delays[min(len(delays) - 1, int(q * len(delays)))], 2)

        return {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)}


def subscribe_ca(names: list[str], tally: Tally) -> tuple[Any, list[Any]]:
    from caproto.threading.client import Context

    context = Context()
    pvs = context.get_pvs(*names, timeout=30.0)
    subs = []
    for pv in pvs:
        sub = pv.subscribe(data_type="time")

        def on_value(_sub: Any, response: Any, name: str = pv.name) -> None:
            tally.seen(name, response.data[0], response.metadata.timestamp)

        sub.add_callback(on_value)
        subs.append((sub, on_value))  # caproto holds callbacks weakly
    return context, subs


def subscribe_pva(names: list[str], tally: Tally) -> tuple[Any, list[Any]]:
    from p4p import Value
    from p4p.client.thread import Context

    context = Context("pva", nt=False)
    subs = []
    for name in names:

        def on_value(v: Any, name: str = name) -> None:
            if type(v) is Value:
                ts = v["timeStamp.secondsPastEpoch"] + v["timeStamp.nanoseconds"] * 1e-9
                tally.seen(name, v["value"], ts)

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
        if cmd["op"] == "latency":
            return tally.latency_ms()
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
