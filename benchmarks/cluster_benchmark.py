#!/usr/bin/env python3
"""Benchmark a forwarder cluster (`--group`): several members against one broker.

    python benchmarks/cluster_benchmark.py rate --members 1,2,3 --pvs 100 --rates 10,50,100
    python benchmarks/cluster_benchmark.py failover --pvs 100 --rate 10
    python benchmarks/cluster_benchmark.py scale --pvs 100000

Prints progress on stderr and ONE JSON line on stdout (fields in benchmarks/README.md).
Every PV carries a counter (the generator's tick number): a value that never reached
Kafka is a gap in its PV's sequence, a value that reached it twice a repeat.  All members
run on this host, so on a small machine they share its cores with the IOC, the broker
and this program: member counts compare coordination costs, not a scale-out of CPU.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.support import (  # noqa: E402
    Arrival,
    Recorder,
    f144_time_and_value,
    make_generator,
    memory_mb,
)
from forwarder.core.config_messages import UpdateKind, encode_config_message  # noqa: E402
from forwarder.core.streams import Protocol, StreamSpec  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.epics_servers import CaRepeater, Counters  # noqa: E402
from tests.support.kafka import TansuBroker, create_topic, produce  # noqa: E402

PREFIX = "CLB:"
CONFIG_CHUNK = 5000
_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class Sequences:
    """Per-PV counter values from a `Recorder`, in arrival order, with arrival times."""

    def __init__(self) -> None:
        self.values: dict[bytes, list[tuple[int, float, int]]] = {}  # key -> (recv_ns, v, ts)

    def add(self, arrivals: Iterable[Arrival]) -> None:
        for a in arrivals:
            ts, value = f144_time_and_value(a.value)
            self.values.setdefault(a.key, []).append((a.recv_ns, value, ts))

    def window(self, start_ns: int, end_ns: int, keys: Iterable[bytes]) -> dict[str, int]:
        """Updates whose EPICS timestamp is inside [start, end]: count, missed, repeated."""
        total = missed = repeated = 0
        for key in keys:
            vals = [v for _, v, ts in self.values.get(key, []) if start_ns <= ts <= end_ns]
            total += len(vals)
            for a, b in zip(vals, vals[1:], strict=False):
                if b <= a:
                    repeated += 1
                elif b > a + 1:
                    missed += int(b - a - 1)
        return {"updates": total, "missed": missed, "duplicated": repeated}


def member_counters(c: Cluster) -> tuple[int, int]:
    """(updates received, updates or messages dropped) summed over the live members'
    newest statuses: tells a loss inside the forwarders from one before them."""
    c.poll_status(0.5)
    received = dropped = 0
    for name in c.live():
        found = c.statuses.get(name)
        if found is None:
            continue
        counters = found[1].get("counters", {})
        received += int(counters.get("updates_received", 0))
        dropped += sum(int(v) for v in counters.get("dropped", {}).values())
    return received, dropped


def configure(c: Cluster, names: list[str], topic: str, protocol: Protocol) -> None:
    specs = [StreamSpec(n, "f144", topic, protocol) for n in names]
    payloads = [
        encode_config_message(UpdateKind.ADD, specs[i : i + CONFIG_CHUNK], "fc00")
        for i in range(0, len(specs), CONFIG_CHUNK)
    ]
    produce(c.bootstrap, c.config_topic, payloads, key="config", timeout=120.0)


def wait_all_seen(recorder: Recorder, count: int, timeout: float) -> float | None:
    started = time.monotonic()
    while len(recorder.first_seen) < count:
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.2)
    return time.monotonic() - started


def settle(c: Cluster, names: list[str], members: int, timeout: float = 120.0) -> float:
    took = c.wait_settled(names, members=members, timeout=timeout)
    say(f"{members} members settled in {took:.1f} s: "
        f"{ {n: len(c.shards_of(n)) for n in c.live()} } shards")  # fmt: skip
    return took


def new_cluster(bootstrap: str, env: dict[str, str], names: list[str], args: Any) -> Cluster:
    c = Cluster(
        bootstrap, env, names, shards=args.shards, session_ms=args.session_ms, watch_data=False
    )
    create_topic(bootstrap, c.data_topic, args.partitions)
    return c


def run_rate(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"{PREFIX}{i}" for i in range(args.pvs)]
    rates = [float(r) for r in args.rates.split(",")]
    counters = Counters(args.pvs, rates[0], PREFIX, "LONG")
    server = make_generator("ca", "softioc", counters)
    repeater = CaRepeater(server.env)
    repeater.start()
    server.start()
    results: list[dict[str, Any]] = []
    try:
        for members in (int(m) for m in args.members.split(",")):
            c = new_cluster(bootstrap, server.env, names, args)
            recorder = Recorder(bootstrap, c.data_topic, args.partitions).start()
            recorder.track_first = True
            seq = Sequences()
            try:
                for i in range(members):
                    c.start(f"r{members}-{i}")
                configure(c, names, c.data_topic, Protocol.CA)
                settle(c, names, members)
                for rate in rates:
                    server.counters_rate(rate)  # type: ignore[attr-defined]
                    time.sleep(args.warmup)
                    received0, dropped0 = member_counters(c)
                    posts0 = server.command("counters").get("posts", 0)
                    start_ns = time.time_ns()
                    time.sleep(args.seconds)
                    end_ns = time.time_ns()
                    posts1 = server.command("counters").get("posts", 0)
                    time.sleep(2.0)  # the last updates of the window reach Kafka
                    received1, dropped1 = member_counters(c)
                    seq.add(recorder.take())
                    w = seq.window(start_ns, end_ns, [n.encode() for n in names])
                    expected = args.pvs * rate * (end_ns - start_ns) / 1e9
                    row = {"members": members, "offered_per_s": args.pvs * rate,
                           "generator_posted_per_s": round(
                               (posts1 - posts0) / ((end_ns - start_ns) / 1e9)),
                           "forwarded_per_s": round(w["updates"] / ((end_ns - start_ns) / 1e9)),
                           "expected_updates": round(expected),
                           "members_received_per_s": round(
                               (received1 - received0) / ((end_ns - start_ns) / 1e9 + 2.5)),
                           "members_dropped": dropped1 - dropped0, **w}  # fmt: skip
                    say(f"{members} members at {args.pvs * rate:.0f}/s: {row}")
                    results.append(row)
                    seq.values.clear()
            finally:
                recorder.stop()
                c.close()
    finally:
        server.stop()
        repeater.stop()
    # Per member count: the highest offered rate with no loss at it or any lower rate.
    lossless: dict[str, float] = {}
    failed: set[str] = set()
    for r in sorted(results, key=lambda r: (r["members"], r["offered_per_s"])):
        key = str(r["members"])
        if r["missed"] or r["duplicated"]:
            failed.add(key)
        elif key not in failed:
            lossless[key] = r["offered_per_s"]
    return {"mode": "rate", "pvs": args.pvs, "window_s": args.seconds, "runs": results,
            "lossless_per_s_by_members": lossless}  # fmt: skip


def run_failover(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"{PREFIX}{i}" for i in range(args.pvs)]
    counters = Counters(args.pvs, args.rate, PREFIX, "LONG")
    server = make_generator("ca", "softioc", counters)
    repeater = CaRepeater(server.env)
    repeater.start()
    server.start()
    result: dict[str, Any] = {
        "mode": "failover",
        "pvs": args.pvs,
        "rate_hz": args.rate,
        "session_timeout_ms": args.session_ms,
        "shards": args.shards,
    }
    try:
        for how in ("SIGKILL", "SIGTERM"):
            c = new_cluster(bootstrap, server.env, names, args)
            recorder = Recorder(bootstrap, c.data_topic, args.partitions).start()
            seq = Sequences()
            try:
                for i in range(3):
                    c.start(f"f{i}")
                configure(c, names, c.data_topic, Protocol.CA)
                settle(c, names, 3)
                time.sleep(2)
                victim = "f1"
                owners = c.forwarded_by(0)
                its = [p.encode() for p, o in owners.items() if o == [victim]]
                others = [p.encode() for p, o in owners.items() if o != [victim]]
                seq.add(recorder.take())
                # The window starts 2 s before the stop, so that the victim's last updates
                # are in it and the gap after them counts as missed.
                before_ns = time.time_ns() - 2_000_000_000
                sig = signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM
                c.members[victim].stop(sig)
                stopped_ns = time.time_ns()
                # Every PV of the victim forwarding again: an update stamped after the stop.
                resumed: dict[bytes, int] = {}
                deadline = time.monotonic() + args.session_ms / 1000 + 30
                while len(resumed) < len(its) and time.monotonic() < deadline:
                    time.sleep(0.2)
                    seq.add(recorder.take())
                    for key in its:
                        if key not in resumed:
                            late = [r for r, _, ts in seq.values.get(key, []) if ts > stopped_ns]
                            if late:
                                resumed[key] = min(late)
                settle(c, names, 2)
                time.sleep(3)
                after_ns = time.time_ns()
                time.sleep(2)
                seq.add(recorder.take())
                gaps = sorted((r - stopped_ns) / 1e9 for r in resumed.values())
                result[how] = {
                    "victim_pvs": len(its),
                    "pvs_not_resumed": len(its) - len(resumed),
                    "resume_s_max": round(gaps[-1], 2) if gaps else None,
                    "resume_s_median": round(gaps[len(gaps) // 2], 2) if gaps else None,
                    "victim_pvs_window": seq.window(before_ns, after_ns, its),
                    "other_pvs_window": seq.window(before_ns, after_ns, others),
                }
                say(f"{how}: {result[how]}")
            finally:
                recorder.stop()
                c.close()
    finally:
        server.stop()
        repeater.stop()
    return result


def run_scale(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"{PREFIX}{i}" for i in range(args.pvs)]
    counters = Counters(args.pvs, 1.0, PREFIX, "DOUBLE", autostart=False)  # never changes
    started = time.monotonic()
    server = make_generator("pva", "", counters)
    server.start()
    say(f"p4p server with {args.pvs} PVs up in {time.monotonic() - started:.0f} s")
    result: dict[str, Any] = {"mode": "scale", "pvs": args.pvs, "members": args.scale_members}
    c = new_cluster(bootstrap, server.env, names, args)
    c.extra_args = ["-v", "Info"]
    recorder = Recorder(bootstrap, c.data_topic, args.partitions, keep=False)
    recorder.track_first = True
    recorder.start()
    try:
        for i in range(args.scale_members):
            c.start(f"s{i}")
        time.sleep(1)
        t0 = time.monotonic()
        configure(c, names, c.data_topic, Protocol.PVA)
        say(f"configured {args.pvs} streams in {time.monotonic() - t0:.1f} s")
        took = wait_all_seen(recorder, args.pvs, args.stall_timeout)
        result["all_forwarding_s"] = round(time.monotonic() - t0, 1) if took else None
        result["pvs_forwarded"] = len(recorder.first_seen)
        c.poll_status(1.0)
        result["rss_mb"] = {}
        result["shards"] = {}
        for name, fp in c.members.items():
            assert fp.proc is not None
            result["rss_mb"][name] = memory_mb(fp.proc.pid)
            result["shards"][name] = len(c.shards_of(name))
        say(f"scale: {result}")
    finally:
        recorder.stop()
        c.close()
        server.stop()
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("rate", "failover", "scale"))
    p.add_argument("--bootstrap", help="an existing broker instead of an embedded Tansu")
    p.add_argument("--pvs", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0, help="Hz per PV (failover)")
    p.add_argument("--rates", default="10,50,100", help="Hz per PV, comma-separated (rate)")
    p.add_argument("--members", default="1,2,3", help="member counts (rate)")
    p.add_argument("--scale-members", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="measurement window (rate)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--shards", type=int, default=12)
    p.add_argument("--session-ms", type=int, default=6000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--stall-timeout", type=float, default=600.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = {"rate": run_rate, "failover": run_failover, "scale": run_scale}[args.mode]
    if args.bootstrap:
        result = run(args.bootstrap, args)
    else:
        with TansuBroker() as broker:
            result = run(broker.bootstrap, args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
