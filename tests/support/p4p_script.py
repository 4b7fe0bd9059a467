"""Subprocess: a p4p.server PVA server serving records and/or counter PVs.

Run by `epics_servers.P4pServer`; see `_child` for the pipe protocol.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from p4p import Type, Value
from p4p.nt import NTEnum, NTScalar, NTTable
from p4p.server import Server, StaticProvider
from p4p.server.thread import SharedPV

from tests.support._child import Child, CounterLoop, value_dtype
from tests.support.epics_servers import ALARM_STATUS

#: p4p type codes of the waveform element types.
ARRAY_CODE = {"DOUBLE": "d", "FLOAT": "f", "LONG": "i", "SHORT": "h", "CHAR": "b",
              "UCHAR": "B", "INT64": "l"}  # fmt: skip
PVA_STATUS_RECORD = 3  # alarm.status "RECORD": what an IOC reports for record alarms


def make_pv(spec: dict[str, Any]) -> SharedPV:
    """A SharedPV with the normative type closest to the record kind."""
    kind, value = spec["kind"], spec["value"]
    if kind in ("ai", "ao"):
        nt, initial = NTScalar("d"), 0.0 if value is None else value
    elif kind in ("longin", "longout"):
        nt, initial = NTScalar("i"), 0 if value is None else value
    elif kind in ("mbbi", "mbbo"):
        nt, initial = NTEnum(), {"index": value or 0, "choices": list(spec["choices"])}
    elif kind == "waveform":
        nt = NTScalar("a" + ARRAY_CODE[spec["dtype"]])
        initial = np.asarray([] if value is None else value, value_dtype(spec["dtype"]))
    elif kind in ("stringin", "stringout"):
        nt, initial = NTScalar("s"), "" if value is None else value
    elif kind == "nttable":
        return SharedPV(initial=table_value(spec, value if isinstance(value, dict) else {}))
    else:
        raise ValueError(f"unsupported record kind {kind!r}")
    return SharedPV(nt=nt, initial=initial, timestamp=time.time())


_TABLE_TYPES: dict[str, Type] = {}


def table_value(spec: dict[str, Any], columns: dict[str, list[Any]]) -> Value:
    """An NTTable Value with both columns always set (so an empty table is sent as one:
    a column left out of a post would keep its previous rows on the client)."""
    table_type = _TABLE_TYPES.get(spec["dtype"])
    if table_type is None:  # posts must reuse the exact Type the PV was opened with
        layout = [("value", ARRAY_CODE[spec["dtype"]]), ("timestamp", "l")]
        table_type = _TABLE_TYPES[spec["dtype"]] = NTTable(layout).type
    return Value(
        table_type,
        {
            "labels": ["value", "timestamp"],
            "value": {
                "value": np.asarray(columns.get("value", []), value_dtype(spec["dtype"])),
                "timestamp": np.asarray(columns.get("timestamp", []), np.int64),
            },
            "timeStamp": stamp(time.time()),
        },
    )


def stamp(now: float) -> dict[str, int]:
    sec, frac = divmod(now, 1.0)
    return {"secondsPastEpoch": int(sec), "nanoseconds": int(frac * 1e9)}


class CounterThread(CounterLoop):
    """Posts a counter to N PVs at R Hz from one thread.

    Raw Values of one prebuilt Type are posted (no NT wrapping), one fresh Value per post
    because pvxs may still hold the previous one in subscriber queues.  Each post carries
    its own time, as an IOC stamps each record when it processes: a latency measured from
    it starts when the server had the value, not when the tick began.
    """

    def __init__(self, spec: dict[str, Any], provider: StaticProvider) -> None:
        super().__init__(spec["rate_hz"])
        code = {"DOUBLE": "d", "LONG": "i", "INT64": "l"}[spec["dtype"]]
        self.type: Type = NTScalar.buildType(code)
        zero = 0.0 if code == "d" else 0
        self.pvs = []
        for i in range(int(spec["count"])):
            pv = SharedPV(
                initial=Value(self.type, {"value": zero, "timeStamp": stamp(time.time())})
            )
            provider.add(f"{spec['prefix']}{i}", pv)
            self.pvs.append(pv)
        self.cast = float if code == "d" else int
        self.start()

    def post_all(self, tick: int) -> int:
        value, now = self.cast(tick), time.time
        for pv in self.pvs:
            pv.post(Value(self.type, {"value": value, "timeStamp": stamp(now())}))
        return len(self.pvs)


def main() -> None:
    child = Child()
    provider = StaticProvider("test")
    pvs: dict[str, tuple[dict[str, Any], SharedPV]] = {}

    def add(spec: dict[str, Any]) -> None:
        pv = make_pv(spec)
        provider.add(spec["name"], pv)
        pvs[spec["name"]] = (spec, pv)

    for spec in child.config["records"]:
        add(spec)
    counters = None
    if child.config["counters"]:
        counters = CounterThread(child.config["counters"], provider)
    server = Server(providers=[provider])

    def handle(cmd: dict[str, Any]) -> dict[str, Any] | None:
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
            spec, pv = pvs[cmd["name"]]
            value = cmd["value"]
            if spec["kind"] == "nttable":  # value: {"value": [...], "timestamp": [ns, ...]}
                pv.post(table_value(spec, value))
                return None
            if spec["kind"] == "waveform":
                value = np.asarray(value, value_dtype(spec["dtype"]))
            pv.post(value, timestamp=time.time())
        elif op == "alarm":
            _, pv = pvs[cmd["name"]]
            status = cmd["status"]
            alarm = {"severity": cmd["severity"], "status": PVA_STATUS_RECORD if status else 0,
                     "message": ALARM_STATUS[status] if status else ""}  # fmt: skip
            pv.post({"alarm": alarm, "timeStamp": stamp(time.time())})
        else:
            raise ValueError(f"unknown op {op!r}")
        return None

    if counters is not None and child.config["counters"]["autostart"]:
        counters.set_running(True)
    child.reply(ready=True)
    try:
        child.serve(handle)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
