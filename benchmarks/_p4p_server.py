"""Subprocess: a p4p PVA server with counter PVs whose rate can be changed while running.

The same JSON-lines pipe as `tests.support.p4p_script` (run via `PvaCounterServer` in
`benchmarks/servers.py`), reusing its `CounterThread`; the extra `rate` argument of the
`counters` command changes the posting period on the fly (find-max and overload modes).
"""

from __future__ import annotations

import time
from typing import Any

from p4p.server import Server, StaticProvider

from tests.support._child import Child
from tests.support.p4p_script import CounterThread


def main() -> None:
    child = Child()
    provider = StaticProvider("bench")
    started = time.monotonic()
    counters = CounterThread(child.config["counters"], provider)
    build_s = time.monotonic() - started
    server = Server(providers=[provider])

    def handle(cmd: dict[str, Any]) -> dict[str, Any] | None:
        if cmd["op"] != "counters":
            raise ValueError(f"unknown op {cmd['op']!r}")
        if "rate" in cmd:
            counters.period = 1.0 / float(cmd["rate"])
        if "run" in cmd:
            counters.set_running(bool(cmd["run"]))
        return counters.stats()

    if child.config["counters"]["autostart"]:
        counters.set_running(True)
    child.reply(ready=True, build_s=build_s)
    try:
        child.serve(handle)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
