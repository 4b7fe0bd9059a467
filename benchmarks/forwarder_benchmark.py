#!/usr/bin/env python3
"""Benchmark the forwarder end to end: real EPICS server -> forwarder subprocess -> Kafka.

    python benchmarks/forwarder_benchmark.py --protocol pva --pvs 100 --rate 100
    python benchmarks/forwarder_benchmark.py --protocol ca --pvs 100 --rate 100
    python benchmarks/forwarder_benchmark.py --scale 10000
    python benchmarks/forwarder_benchmark.py --find-max
    python benchmarks/forwarder_benchmark.py --overload

Prints progress on stderr and ONE JSON line on stdout; see benchmarks/README.md for the
fields.  Every PV carries a counter (the generator's tick number), so a value that never
reached Kafka shows up as a gap in its PV's sequence.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.support import (  # noqa: E402
    Arrival,
    BaselineSubscriber,
    Recorder,
    cpu_seconds,
    drops,
    f144_time_and_value,
    internal_latency_ms,
    make_generator,
    memory_mb,
    metric,
    percentiles,
    run_probe_producer,
    scrape,
    thread_count,
    thread_cpu,
    thread_cpu_delta,
)
from forwarder.core.config_messages import UpdateKind, encode_config_message  # noqa: E402
from forwarder.core.streams import Protocol, StreamSpec  # noqa: E402
from tests.support.epics_servers import (  # noqa: E402
    CaRepeater,
    Counters,
    Record,
    SoftIoc,
    _ServerProcess,
    epics_env,
    free_port,
)
from tests.support.forwarder_process import ForwarderProcess  # noqa: E402
from tests.support.kafka import TansuBroker, create_topic, produce, unique_topic  # noqa: E402

PREFIX = "BENCH:"
CONFIG_CHUNK = 5000  # streams per config message (keeps each message well under 1 MB)
PROFILE_HZ = 200
_ERROR_LINE = re.compile(r"^\S+ \S+ ERROR\b")
_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- setup ---------------------------------------------------------------------------------
@dataclass
class Setup:
    args: argparse.Namespace
    bootstrap: str
    broker_pid: int | None


@contextlib.contextmanager
def broker(args: argparse.Namespace) -> Iterator[Setup]:
    if args.bootstrap:
        yield Setup(args, args.bootstrap, None)
        return
    tansu = TansuBroker()
    tansu.start()
    say(f"embedded Tansu broker on {tansu.bootstrap}")
    try:
        process = getattr(tansu, "_process", None)
        yield Setup(args, tansu.bootstrap, process.pid if process is not None else None)
    finally:
        tansu.close()


@contextlib.contextmanager
def generator(setup: Setup, counters: Counters) -> Iterator[_ServerProcess]:
    args = setup.args
    server = make_generator(args.protocol, args.ca_server, counters)
    repeater = CaRepeater(server.env) if args.protocol == "ca" else None
    if repeater is not None:  # as on a real IOC host: caproto clients register with it
        repeater.start()
    started = time.monotonic()
    server.start()
    say(f"{type(server).__name__}: {counters.count} PVs at {counters.rate_hz} Hz "
        f"(started in {time.monotonic() - started:.1f} s)")  # fmt: skip
    try:
        yield server
    finally:
        server.stop()
        if repeater is not None:
            repeater.stop()


def server_pid(server: _ServerProcess) -> int:
    proc = server._proc  # noqa: SLF001 - test support, no public pid
    assert proc is not None
    return proc.pid


@contextlib.contextmanager
def forwarder(setup: Setup, env: dict[str, str], extra: list[str]) -> Iterator[ForwarderProcess]:
    args = setup.args
    port = free_port()
    fwd = ForwarderProcess(
        setup.bootstrap,
        epics=env,
        args=["--http-port", str(port), *shlex.split(args.forwarder_args), *extra],
        status_interval_ms=args.status_interval,
        verbosity="Info",
    )
    fwd.http_port = port  # type: ignore[attr-defined]
    fwd.start(timeout=60.0)
    say(f"forwarder pid {fwd_pid(fwd)} ready (metrics on port {port})")
    try:
        yield fwd
    finally:
        fwd.close()


def fwd_pid(fwd: ForwarderProcess) -> int:
    assert fwd.proc is not None
    return fwd.proc.pid


def fwd_port(fwd: ForwarderProcess) -> int:
    port: int = fwd.http_port  # type: ignore[attr-defined]
    return port


def configure(
    setup: Setup, fwd: ForwarderProcess, names: list[str], topic: str, periodic: bool
) -> None:
    protocol = Protocol.CA if setup.args.protocol == "ca" else Protocol.PVA
    specs = [StreamSpec(n, setup.args.schema, topic, protocol, periodic) for n in names]
    payloads = [
        encode_config_message(UpdateKind.ADD, specs[i : i + CONFIG_CHUNK], "fc00")
        for i in range(0, len(specs), CONFIG_CHUNK)
    ]
    produce(setup.bootstrap, fwd.config_topic, payloads, timeout=60.0)


def wait_connected(fwd: ForwarderProcess, count: int, timeout: float) -> float:
    """Seconds until the forwarder reports `count` PVs connected."""
    started = time.monotonic()
    while True:
        if fwd.proc is not None and fwd.proc.poll() is not None:
            raise RuntimeError(f"forwarder exited:\n{fwd.log()[-3000:]}")
        with contextlib.suppress(OSError):
            if metric(scrape(fwd_port(fwd)), "forwarder_pvs_connected") >= count:
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"only some of {count} PVs connected after {timeout} s")
        time.sleep(0.5)


def log_errors(fwd: ForwarderProcess) -> tuple[int, list[str]]:
    lines = [line for line in fwd.log().splitlines() if _ERROR_LINE.match(line)]
    return len(lines), [line[:300] for line in lines[:3]]


# -- measurement window --------------------------------------------------------------------
@dataclass
class Mark:
    mono: float
    gen: dict[str, Any]
    fwd_cpu: float
    gen_cpu: float
    broker_cpu: float | None
    bench_cpu: float
    metrics: dict[str, float]
    fwd_threads: dict[int, tuple[str, float]]


def mark(setup: Setup, server: _ServerProcess, fwd: ForwarderProcess) -> Mark:
    gen = server.command("counters")
    times = os.times()
    return Mark(
        mono=time.monotonic(),
        gen=gen,
        fwd_cpu=cpu_seconds(fwd_pid(fwd)),
        gen_cpu=cpu_seconds(server_pid(server)),
        broker_cpu=cpu_seconds(setup.broker_pid) if setup.broker_pid else None,
        bench_cpu=times.user + times.system,
        metrics=scrape(fwd_port(fwd)),
        fwd_threads=thread_cpu(fwd_pid(fwd)),
    )


class Window:
    """Counter values (v0, v1] of every PV, checked against what reached Kafka."""

    def __init__(self, names: list[str], m0: Mark, m1: Mark) -> None:
        self.keys = {n.encode() for n in names}
        self.m0, self.m1 = m0, m1
        self.v0, self.v1 = int(m0.gen["ticks"]), int(m1.gen["ticks"])
        self.seen: dict[bytes, set[int]] = {k: set() for k in self.keys}
        self.latency_ms: list[float] = []
        self.duplicates = 0

    def feed(self, arrivals: list[Arrival]) -> None:
        v0, v1, seen = self.v0, self.v1, self.seen
        for a in arrivals:
            values = seen.get(a.key)
            if values is None:
                continue
            ts, value = f144_time_and_value(a.value)
            if math.isnan(value):
                continue
            counter = int(value)
            if v0 < counter <= v1:
                if counter in values:
                    self.duplicates += 1
                    continue
                values.add(counter)
                self.latency_ms.append((a.recv_ns - ts) / 1e6)

    def complete(self) -> bool:
        v1 = self.v1
        return all(v1 in values for values in self.seen.values())

    def result(self) -> dict[str, Any]:
        m0, m1 = self.m0, self.m1
        seconds = m1.mono - m0.mono
        per_pv = self.v1 - self.v0
        expected = per_pv * len(self.keys)
        received = sum(len(v) for v in self.seen.values())
        gaps = max_gap = 0
        pvs_with_loss = 0
        for values in self.seen.values():
            previous = self.v0
            lost_here = False
            for counter in [*sorted(values), self.v1 + 1]:
                if counter > previous + 1:
                    gaps += 1
                    max_gap = max(max_gap, counter - previous - 1)
                    lost_here = True
                previous = counter
            pvs_with_loss += lost_here
        gen_seconds = float(m1.gen["elapsed"]) - float(m0.gen["elapsed"])
        posts = int(m1.gen["posts"]) - int(m0.gen["posts"])
        got = metric(m1.metrics, "forwarder_updates_received") - metric(
            m0.metrics, "forwarder_updates_received"
        )
        fwd_updates = metric(m1.metrics, "forwarder_updates_forwarded") - metric(
            m0.metrics, "forwarder_updates_forwarded"
        )
        d0, d1 = drops(m0.metrics), drops(m1.metrics)
        dropped = {k: int(v - d0.get(k, 0)) for k, v in d1.items() if v - d0.get(k, 0)}
        fwd_cpu = m1.fwd_cpu - m0.fwd_cpu
        p50, p99, pmax = percentiles(self.latency_ms, (50, 99, 100))
        lost = expected - received
        return {
            "window_s": round(seconds, 2),
            "offered_per_s": round(posts / gen_seconds, 1) if gen_seconds > 0 else None,
            "forwarded_per_s": round(received / seconds, 1),
            "loss_fraction": round(lost / expected, 6) if expected else None,
            "lost": lost,
            "gaps": gaps,
            "max_gap": max_gap,
            "pvs_with_loss": pvs_with_loss,
            "duplicates": self.duplicates,
            # Where the lost values went: never handed to the forwarder's callbacks
            # (coalesced by the EPICS server / client library) vs dropped by the forwarder.
            "received_by_forwarder_per_s": round(got / seconds, 1),
            "lost_upstream_fraction": round(max(0.0, posts - got) / posts, 6) if posts else None,
            "forwarder_drops": dropped,
            "latency_ms": {"p50": p50, "p99": p99, "max": pmax},
            # The forwarder's own share: EPICS timestamp -> handed to librdkafka (bucket
            # upper bounds of its histogram), so broker and consumer are not in it.
            "forwarder_internal_latency_ms": internal_latency_ms(m0.metrics, m1.metrics),
            "forwarder_cpu_cores": round(fwd_cpu / seconds, 3),
            "forwarder_cpu_s_per_1000": round(fwd_cpu / fwd_updates * 1000, 4)
            if fwd_updates
            else None,
            "generator_cpu_cores": round((m1.gen_cpu - m0.gen_cpu) / seconds, 3),
            "broker_cpu_cores": round((m1.broker_cpu - m0.broker_cpu) / seconds, 3)
            if m1.broker_cpu is not None and m0.broker_cpu is not None
            else None,
            "bench_consumer_cpu_cores": round((m1.bench_cpu - m0.bench_cpu) / seconds, 3),
            "generator_late_ticks": int(m1.gen["late"]) - int(m0.gen["late"]),
            "forwarder_thread_cores": thread_cpu_delta(m0.fwd_threads, m1.fwd_threads, seconds),
        }


def measure(
    setup: Setup,
    server: _ServerProcess,
    fwd: ForwarderProcess,
    recorder: Recorder,
    names: list[str],
    seconds: float,
    during: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One window: discard what arrived so far, mark, wait, mark, collect the stragglers."""
    recorder.take()  # everything taken here arrived before m0, so its counter is <= v0
    m0 = mark(setup, server, fwd)
    if during is not None:
        during()
    time.sleep(max(0.0, seconds - (time.monotonic() - m0.mono)))
    m1 = mark(setup, server, fwd)
    window = Window(names, m0, m1)
    deadline = time.monotonic() + setup.args.grace
    while True:
        window.feed(recorder.take())
        if window.complete() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return window.result()


# -- phases --------------------------------------------------------------------------------
@dataclass
class FloorSample:
    """One run of the bare producer probe: latencies (ms) and what it cost the broker."""

    latency_ms: list[float]
    produced: int
    received: int
    seconds: float
    broker_cpu_s: float | None


def probe_floor(setup: Setup, pvs: int, rate: float) -> FloorSample:
    """A bare producer -> the same consumer code, at the same message rate."""
    args = setup.args
    topic = unique_topic("bench_probe")
    create_topic(setup.bootstrap, topic, args.partitions)
    recorder = Recorder(setup.bootstrap, topic, args.partitions).start()
    say(f"broker floor: bare producer, {pvs} keys x {rate} Hz for {args.floor_seconds} s")
    started_ns = time.time_ns()
    broker0 = cpu_seconds(setup.broker_pid) if setup.broker_pid else None
    probe = run_probe_producer(setup.bootstrap, topic, pvs, rate, args.floor_seconds)
    out, _ = probe.communicate(timeout=args.floor_seconds + 60)
    broker1 = cpu_seconds(setup.broker_pid) if setup.broker_pid else None
    stats = json.loads(out.decode().strip().splitlines()[-1])
    time.sleep(1.0)
    recorder.stop()
    skip_ns = started_ns + 2_000_000_000  # client start-up and first metadata round trips
    latency = []
    for a in recorder.take():
        ts, _ = f144_time_and_value(a.value)
        if ts >= skip_ns:
            latency.append((a.recv_ns - ts) / 1e6)
    return FloorSample(latency, stats["produced"], recorder.f144_count, stats["seconds"],
                       broker1 - broker0 if broker0 is not None and broker1 is not None
                       else None)  # fmt: skip


def floor_summary(samples: list[FloorSample]) -> dict[str, Any]:
    """Percentiles over every sample's latencies together (a floor measured before and
    after the forwarder phase brackets it, so a host that slows down or speeds up during
    the run does not bias the comparison), plus each sample's own p99."""
    latency = [v for s in samples for v in s.latency_ms]
    p50, p99, pmax = percentiles(latency, (50, 99, 100))
    seconds = sum(s.seconds for s in samples)
    cpu = [s.broker_cpu_s for s in samples]
    result: dict[str, Any] = {
        "p50": p50, "p99": p99, "max": pmax,
        "per_s": round(sum(s.produced for s in samples) / seconds, 1),
        "received": sum(s.received for s in samples),
        "produced": sum(s.produced for s in samples),
        "broker_cpu_cores": rounded(sum(c for c in cpu if c is not None) / seconds)
        if None not in cpu else None,
    }  # fmt: skip
    if len(samples) > 1:
        result["p99_each"] = [percentiles(s.latency_ms, (99,))[0] for s in samples]
    return result


def broker_floor(setup: Setup, pvs: int, rate: float) -> dict[str, Any]:
    return floor_summary([probe_floor(setup, pvs, rate)])


def baseline(
    setup: Setup, server: _ServerProcess, counters: Counters, loaded_floor: bool
) -> dict[str, Any]:
    """The bare EPICS client subscribing to the same PVs in its own process.

    With `loaded_floor`, the broker floor is then measured once more while that client keeps
    receiving: on two shared cores the IOC's sending and the client's receiving slow the
    broker down, and that part of the forwarder's latency is not the forwarder's doing.
    """
    args = setup.args
    sub = BaselineSubscriber(args.protocol, counters, server.env)
    sub.start()
    try:
        deadline = time.monotonic() + 60
        while sub.stats()["connected"] < counters.count:
            if time.monotonic() > deadline:
                raise TimeoutError("baseline subscriber did not connect to every PV")
            time.sleep(0.5)
        time.sleep(args.warmup)
        say(f"baseline: bare {args.protocol} client, measuring {args.seconds} s")
        s0 = sub.stats()
        g0 = server.command("counters")
        sub.command("latency")
        time.sleep(args.seconds)
        s1 = sub.stats()
        g1 = server.command("counters")
        latency = sub.command("latency")
        latency.pop("ok", None)
        loaded = broker_floor(setup, counters.count, counters.rate_hz) if loaded_floor else None
    finally:
        sub.stop()
    updates = s1["updates"] - s0["updates"]
    cpu = s1["cpu_s"] - s0["cpu_s"]
    gaps = s1["gaps"] - s0["gaps"]
    seconds = g1["elapsed"] - g0["elapsed"]
    return {
        "baseline_cpu_s_per_1000": round(cpu / updates * 1000, 4) if updates else None,
        "baseline_updates_per_s": round(updates / seconds, 1),
        "baseline_loss_fraction": round(gaps / (updates + gaps), 6) if updates else None,
        "baseline_cpu_cores": round(cpu / seconds, 3),
        "baseline_latency_ms": latency,
        "broker_floor_with_epics_load_ms": loaded,
    }


def process_facts(fwd: ForwarderProcess) -> dict[str, Any]:
    pid = fwd_pid(fwd)
    errors, first = log_errors(fwd)
    return {
        "peak_rss_mb": memory_mb(pid, "VmHWM"),
        "rss_mb": memory_mb(pid, "VmRSS"),
        "threads": thread_count(pid),
        "errors": errors,
        "first_errors": first,
    }


class Profiler:
    """py-spy on the forwarder (`--profile FILE`); every method is a no-op without it.

    `--gil` samples only the thread holding the GIL, i.e. where the Python time goes.
    """

    def __init__(self, path: str, pid: int) -> None:
        self.path = path
        self.pid = pid
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.seconds = 0.0

    def start(self) -> None:
        if self.path:
            cmd = ["py-spy", "record", "--pid", str(self.pid), "--rate", str(PROFILE_HZ),
                   "--nonblocking", "--gil", "--function", "--format", "raw",
                   "--output", self.path]  # fmt: skip
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.started = time.monotonic()

    def stop(self) -> dict[str, Any] | None:
        """Stop sampling (SIGINT makes py-spy write its file) and summarise."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        self.seconds = time.monotonic() - self.started
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if not os.path.exists(self.path):
            say(f"py-spy failed: {err.decode()[-500:]}")
            return None
        return summarise_profile(self.path, self.seconds)


def summarise_profile(path: str, seconds: float, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output;
    `gil_held_fraction`: share of the samples in which some thread held the GIL."""
    self_counts: Tally[str] = Tally()
    incl_counts: Tally[str] = Tally()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip().rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [_short_frame(fr) for fr in stack.split(";")]
            total += count
            self_counts[frames[-1]] += count
            for fr in set(frames):
                incl_counts[fr] += count
    if not total:
        return {}

    def share(tally: Tally[str]) -> list[str]:
        return [f"{100 * n / total:.1f}% {name}" for name, n in tally.most_common(top)]

    return {
        "samples": total,
        "gil_held_fraction": round(total / (PROFILE_HZ * seconds), 3),
        "self": share(self_counts),
        "inclusive": share(incl_counts),
    }


def _short_frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path}:{line})" if path else name


# -- modes ---------------------------------------------------------------------------------
def run_throughput(setup: Setup) -> dict[str, Any]:
    args = setup.args
    counters = Counters(args.pvs, args.rate, PREFIX, args.dtype)
    names = counters.names()
    result: dict[str, Any] = {"mode": "throughput", "protocol": args.protocol,
                              "schema": args.schema, "pvs": args.pvs,
                              "rate_hz": args.rate}  # fmt: skip
    if args.protocol == "ca":
        result["ca_server"] = args.ca_server
    with generator(setup, counters) as server:
        floors = [] if args.no_floor else [probe_floor(setup, args.pvs, args.rate)]
        base = {} if args.no_baseline else baseline(setup, server, counters, not args.no_floor)
        topic = unique_topic("bench_out")
        create_topic(setup.bootstrap, topic, args.partitions)
        recorder = Recorder(setup.bootstrap, topic, args.partitions).start()
        try:
            with forwarder(setup, server.env, []) as fwd:
                configure(setup, fwd, names, topic, periodic=False)
                connect_s = wait_connected(fwd, len(names), timeout=120)
                say(f"all {len(names)} PVs connected after {connect_s:.1f} s; "
                    f"warm-up {args.warmup} s, then measuring {args.seconds} s")  # fmt: skip
                time.sleep(args.warmup)
                profiler = Profiler(args.profile, fwd_pid(fwd))
                window = measure(setup, server, fwd, recorder, names, args.seconds, profiler.start)
                profile = profiler.stop()
                facts = process_facts(fwd)
        finally:
            recorder.stop()
        if floors:  # again with no subscriber, as before: the floor brackets the window
            floors.append(probe_floor(setup, args.pvs, args.rate))
    floor = floor_summary(floors) if floors else None
    offered = window.pop("offered_per_s")
    result.update(
        offered_per_s=offered,
        generator_offered_per_s=offered,
        generator_keeps_up=offered >= 0.98 * args.pvs * args.rate,
        forwarded_per_s=window.pop("forwarded_per_s"),
        loss_fraction=window.pop("loss_fraction"),
        latency_ms=window.pop("latency_ms"),
        broker_floor_ms=floor,
        forwarder_cpu_s_per_1000=window.pop("forwarder_cpu_s_per_1000"),
        **base,
        peak_rss_mb=facts.pop("peak_rss_mb"),
        threads=facts.pop("threads"),
        errors=facts.pop("errors"),
        generator_nominal_per_s=args.pvs * args.rate,
        connect_s=round(connect_s, 2),
        **window,
        **facts,
    )
    p99 = result["latency_ms"]["p99"]
    loaded = result.get("broker_floor_with_epics_load_ms")
    for key, probe in (("p99_above_floor_ms", floor), ("p99_above_loaded_floor_ms", loaded)):
        result[key] = rounded(p99 - probe["p99"], 2) if probe and p99 is not None else None
    if profile is not None:
        result["profile"] = profile
    return result


def run_scale(setup: Setup) -> dict[str, Any]:
    args = setup.args
    n = args.scale
    if args.protocol != "pva":
        raise SystemExit("--scale supports --protocol pva only")
    counters = Counters(n, 1.0, PREFIX, args.dtype, autostart=False)  # never changes
    names = counters.names()
    result: dict[str, Any] = {"mode": "scale", "protocol": "pva", "pvs": n,
                              "pv_update_period_ms": args.pv_update_period}  # fmt: skip
    started = time.monotonic()
    with generator(setup, counters) as server:
        result["server_start_s"] = round(time.monotonic() - started, 1)
        result["server_rss_mb"] = memory_mb(server_pid(server))
        topic = unique_topic("bench_scale")
        create_topic(setup.bootstrap, topic, args.partitions)
        recorder = Recorder(setup.bootstrap, topic, args.partitions, keep=False)
        recorder.track_first = True
        recorder.start()
        extra = ["--pv-update-period", str(args.pv_update_period)]
        try:
            with forwarder(setup, server.env, extra) as fwd:
                pid = fwd_pid(fwd)
                profiler = Profiler(args.profile, pid)
                profiler.start()
                t_config, t_config_ns = time.monotonic(), time.time_ns()
                configure(setup, fwd, names, topic, periodic=True)
                say(f"configured {n} periodic streams in {time.monotonic() - t_config:.1f} s")
                connected_s = first_s = None
                progress, progress_at = 0, t_config
                while first_s is None:
                    now = time.monotonic()
                    if len(recorder.first_seen) > progress:
                        progress, progress_at = len(recorder.first_seen), now
                    elif now - progress_at > args.stall_timeout:
                        say(f"gave up: {progress} of {n} PVs forwarded, none more for "
                            f"{args.stall_timeout} s")  # fmt: skip
                        break
                    if fwd.proc is not None and fwd.proc.poll() is not None:
                        raise RuntimeError(f"forwarder exited:\n{fwd.log()[-3000:]}")
                    if connected_s is None:
                        with contextlib.suppress(OSError):
                            connected = metric(scrape(fwd_port(fwd)), "forwarder_pvs_connected")
                            if connected >= n:
                                connected_s = now - t_config
                    if len(recorder.first_seen) >= n:
                        first_s = now - t_config
                    time.sleep(0.5)
                result["all_connected_s"] = rounded(connected_s, 1)
                result["all_first_values_s"] = rounded(first_s, 1)
                result["pvs_never_forwarded"] = n - len(recorder.first_seen)
                if recorder.first_seen:  # also meaningful when a few PVs never came
                    last = max(list(recorder.first_seen.values()))
                    result["last_first_value_s"] = round((last - t_config_ns) / 1e9, 1)
                result["rss_after_connect_mb"] = memory_mb(pid)
                profile = profiler.stop()
                if profile is not None:
                    result["profile_until_all_forwarded"] = profile
                recorder.stop()  # keep the benchmark's own CPU out of the idle window
                say(f"{len(recorder.first_seen)} PVs forwarded; idle window {args.seconds} s")
                c0, t0, th0 = cpu_seconds(pid), time.monotonic(), thread_cpu(pid)
                s0 = scrape(fwd_port(fwd))
                time.sleep(args.seconds)
                s1 = scrape(fwd_port(fwd))
                c1, t1, th1 = cpu_seconds(pid), time.monotonic(), thread_cpu(pid)
                result["idle_cpu_cores"] = round((c1 - c0) / (t1 - t0), 3)
                result["idle_thread_cores"] = thread_cpu_delta(th0, th1, t1 - t0)
                produced = metric(s1, "forwarder_messages_produced") - metric(
                    s0, "forwarder_messages_produced"
                )
                resends = metric(s1, "forwarder_resends") - metric(s0, "forwarder_resends")
                result["idle_messages_per_s"] = round(produced / (t1 - t0), 1)
                result["idle_resends_per_s"] = round(resends / (t1 - t0), 1)
                result["idle_window_s"] = round(t1 - t0, 1)
                result.update(process_facts(fwd))
        finally:
            recorder.stop()
    return result


def run_find_max(setup: Setup) -> dict[str, Any]:
    args = setup.args
    if args.protocol == "ca" and args.ca_server == "caproto":
        raise SystemExit("--find-max needs a generator whose rate can change (softioc or p4p)")
    rates = [float(r) for r in args.rates.split(",")]
    counters = Counters(args.pvs, rates[0], PREFIX, args.dtype)
    names = counters.names()
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    stop_reason = "all rates passed"
    with generator(setup, counters) as server:
        topic = unique_topic("bench_max")
        create_topic(setup.bootstrap, topic, args.partitions)
        recorder = Recorder(setup.bootstrap, topic, args.partitions).start()
        try:
            with forwarder(setup, server.env, []) as fwd:
                configure(setup, fwd, names, topic, periodic=False)
                wait_connected(fwd, len(names), timeout=120)
                for rate in rates:
                    server.command("counters", rate=rate)
                    time.sleep(args.warmup)
                    w = measure(setup, server, fwd, recorder, names, args.step_seconds)
                    step = {"rate_hz": rate, "nominal_per_s": rate * args.pvs,
                            **{k: w[k] for k in ("offered_per_s", "forwarded_per_s",
                                                 "loss_fraction", "lost_upstream_fraction",
                                                 "forwarder_drops", "forwarder_cpu_cores",
                                                 "generator_cpu_cores", "latency_ms")}}  # fmt: skip
                    steps.append(step)
                    say(f"step {rate} Hz: {json.dumps(step)}")
                    if w["loss_fraction"] is None or w["loss_fraction"] >= args.max_loss:
                        stop_reason = f"loss >= {args.max_loss} at {rate} Hz"
                        break
                    best = step
                    if w["offered_per_s"] < 0.9 * rate * args.pvs:
                        stop_reason = (f"generator could only offer {w['offered_per_s']}/s "
                                       f"of {rate * args.pvs:.0f}/s: the limit is not the "
                                       "forwarder's")  # fmt: skip
                        break
                facts = process_facts(fwd)
        finally:
            recorder.stop()
    return {
        "mode": "find-max", "protocol": args.protocol, "pvs": args.pvs,
        "max_loss": args.max_loss,
        "max_rate_hz": best["rate_hz"] if best else None,
        "max_forwarded_per_s": best["forwarded_per_s"] if best else None,
        "stop_reason": stop_reason, "steps": steps, **facts,
    }  # fmt: skip


def run_overload(setup: Setup) -> dict[str, Any]:
    args = setup.args
    if args.protocol == "ca" and args.ca_server == "caproto":
        raise SystemExit("--overload needs a generator whose rate can change (softioc or p4p)")
    counters = Counters(args.pvs, args.rate, PREFIX, args.dtype)
    names = counters.names()
    result: dict[str, Any] = {"mode": "overload", "protocol": args.protocol,
                              "pvs": args.pvs, "base_rate_hz": args.rate}  # fmt: skip
    with generator(setup, counters) as server:
        topic = unique_topic("bench_overload")
        create_topic(setup.bootstrap, topic, args.partitions)
        recorder = Recorder(setup.bootstrap, topic, args.partitions).start()
        try:
            with forwarder(setup, server.env, []) as fwd:
                pid, port = fwd_pid(fwd), fwd_port(fwd)
                configure(setup, fwd, names, topic, periodic=False)
                wait_connected(fwd, len(names), timeout=120)
                time.sleep(args.warmup)
                calib = measure(setup, server, fwd, recorder, names, 5.0)
                if args.overload_rate:
                    rate = args.overload_rate
                else:  # one GIL-bound core: capacity ~ 1 / CPU seconds per update
                    capacity = 1000.0 / calib["forwarder_cpu_s_per_1000"]
                    rate = math.ceil(2 * capacity / args.pvs)
                result["capacity_estimate_per_s"] = round(1000 / calib["forwarder_cpu_s_per_1000"])
                result["overload_rate_hz"] = rate
                say(f"overload: {args.pvs} PVs x {rate} Hz for {args.seconds} s")
                recorder.keep = False
                recorder.take()
                server.command("counters", rate=rate)
                series = []
                s_start = scrape(port)
                g_start = server.command("counters")
                f_start, t_start, c_start = recorder.f144_count, time.monotonic(), cpu_seconds(pid)
                while time.monotonic() - t_start < args.seconds:
                    time.sleep(1.0)
                    s = scrape(port)
                    series.append({
                        "t": round(time.monotonic() - t_start, 1),
                        "rss_mb": memory_mb(pid),
                        "queue": int(metric(s, "forwarder_producer_queue_length")),
                        "received": int(metric(s, "forwarder_updates_received")
                                        - metric(s_start, "forwarder_updates_received")),
                    })  # fmt: skip
                s_end = scrape(port)
                g_end = server.command("counters")
                elapsed = time.monotonic() - t_start
                cpu = cpu_seconds(pid) - c_start
                posts = g_end["posts"] - g_start["posts"]
                got = metric(s_end, "forwarder_updates_received") - metric(
                    s_start, "forwarder_updates_received"
                )
                d0, d1 = drops(s_start), drops(s_end)
                rss = [p["rss_mb"] for p in series]
                half = len(rss) // 2
                result.update(
                    offered_per_s=round(posts / (g_end["elapsed"] - g_start["elapsed"]), 1),
                    forwarded_per_s=round((recorder.f144_count - f_start) / elapsed, 1),
                    received_by_forwarder_per_s=round(got / elapsed, 1),
                    lost_upstream_fraction=round(max(0.0, posts - got) / posts, 4),
                    forwarder_drops={
                        k: int(v - d0.get(k, 0)) for k, v in d1.items() if v - d0.get(k, 0)
                    },  # fmt: skip
                    forwarder_cpu_cores=round(cpu / elapsed, 3),
                    rss_mb_series=rss,
                    rss_bounded=bool(rss) and max(rss[half:]) <= max(rss[:half] or rss) + 20,
                    max_producer_queue=max(p["queue"] for p in series),
                )
                say(f"recovery: back to {args.rate} Hz")
                server.command("counters", rate=args.rate)
                time.sleep(args.warmup)
                recorder.take()
                recorder.keep = True
                rec = measure(setup, server, fwd, recorder, names, args.recovery_seconds)
                result["recovery"] = {k: rec[k] for k in (
                    "offered_per_s", "forwarded_per_s", "loss_fraction", "latency_ms",
                    "forwarder_cpu_cores")}  # fmt: skip
                result.update(process_facts(fwd))
        finally:
            recorder.stop()
    return result


# -- command line --------------------------------------------------------------------------
def _waveform_receive_times(
    ioc: SoftIoc, name: str, updates: int, subscribe: Callable[[Callable[[Any], None]], Any]
) -> list[float]:
    """Seconds from asking the IOC to post update i (its first element is i) to the client
    callback holding it, for i = 1..updates.  `subscribe(cb)` starts a monitor calling
    `cb(array)` and returns something with `close()`."""
    import threading

    got = threading.Condition()
    seen: list[tuple[float, float]] = []

    def on_value(data: Any) -> None:
        first = float(data[0]) if len(data) else math.nan  # the first update is empty
        with got:
            seen.append((first, time.monotonic()))
            got.notify_all()

    handle = subscribe(on_value)
    try:
        with got:
            if not got.wait_for(lambda: bool(seen), timeout=60):
                raise TimeoutError(f"{name}: no first update")
        times = []
        for i in range(1, updates + 1):
            started = time.monotonic()
            ioc.command("fill", timeout=60, name=name, start=i)

            def arrived_at(first: float = float(i)) -> float | None:
                return next((t for v, t in seen if v == first), None)

            with got:
                if not got.wait_for(lambda: arrived_at() is not None, timeout=60):
                    raise TimeoutError(f"{name}: update {i} never arrived")
                arrived = arrived_at()
                assert arrived is not None
            times.append(arrived - started)
        return times
    finally:
        handle.close()


def run_large_waveform(setup: Setup) -> dict[str, Any]:
    """MB/s of one large CA waveform: IOC post -> client callback, stock caproto first
    (its own receive path and executor), then the forwarder's CA adapter (linear receive
    path, inline callbacks).  No Kafka: this isolates the EPICS receive side, where a
    quadratic parse once stalled every CA circuit for seconds per 32 MB update."""
    from caproto.threading.client import Context

    from forwarder.adapters.ca import CaMonitors

    args = setup.args
    size_mb = args.large_waveform
    elements = int(size_mb * 2**20) // 8
    name = f"{PREFIX}WAVEFORM"
    env = epics_env(free_port(), free_port())
    env["EPICS_CA_MAX_ARRAY_BYTES"] = str(elements * 8 + 65536)
    os.environ.update(env)  # caproto reads its configuration from the environment only
    result: dict[str, Any] = {"mode": "large_waveform", "protocol": "ca",
                              "waveform_mb": size_mb, "elements": elements,
                              "updates": args.updates}  # fmt: skip
    with (
        CaRepeater(env),
        SoftIoc([Record(name, "waveform", None, "DOUBLE", elements)], env=env) as ioc,
    ):
        say(f"softioc serving {name}: {elements} doubles ({size_mb} MiB)")

        def stock(cb: Callable[[Any], None]) -> Any:
            context = Context(timeout=10)
            (pv,) = context.get_pvs(name, timeout=10)
            sub = pv.subscribe(data_type="time")

            class Closer:
                """Holds the callback: caproto keeps only a weak reference to it."""

                def on_value(self, _sub: Any, response: Any) -> None:
                    cb(response.data)

                def close(self) -> None:
                    context.disconnect()

            closer = Closer()
            sub.add_callback(closer.on_value)
            return closer

        def ours(cb: Callable[[Any], None]) -> Any:
            class Listener:
                def on_update(self, value: Any, _ts: int, _sev: int, _status: str) -> None:
                    cb(value)

                def on_connection(self, _state: Any, _ts: int) -> None:
                    pass

            monitors = CaMonitors(timeout=10)
            monitors.subscribe(name, Listener())  # type: ignore[arg-type]
            return monitors

        for label, subscribe in (("stock_caproto", stock), ("forwarder", ours)):
            times = _waveform_receive_times(ioc, name, args.updates, subscribe)
            median = sorted(times)[len(times) // 2]
            result[f"{label}_mb_per_s"] = rounded(size_mb / median, 1)
            result[f"{label}_post_to_callback_ms"] = {
                "p50": rounded(median * 1000, 1),
                "max": rounded(max(times) * 1000, 1),
            }
            say(f"{label}: {size_mb / median:.0f} MB/s (median {median * 1000:.1f} ms/update)")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=("pva", "ca"), default="pva")
    p.add_argument(
        "--ca-server",
        choices=("softioc", "caproto"),
        default="softioc",
        help="CA generator: a softioc IOC (default) or a caproto server",
    )
    p.add_argument("--pvs", type=int, default=100, help="counter PVs (default 100)")
    p.add_argument("--rate", type=float, default=100.0, help="updates per PV per second")
    p.add_argument("--dtype", choices=("DOUBLE", "LONG"), default="DOUBLE")
    p.add_argument(
        "--schema",
        choices=("f144", "f142"),
        default="f144",
        help="value schema of the forwarded streams (f142 carries the alarm in each message)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="measurement window (scale: idle window; overload: overload phase)",
    )
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="max seconds to wait for values of the window still in flight",
    )
    p.add_argument("--bootstrap", help="use this Kafka broker instead of an embedded Tansu")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--status-interval", type=int, default=4000, help="forwarder ms")
    p.add_argument("--floor-seconds", type=float, default=10.0)
    p.add_argument("--no-floor", action="store_true", help="skip the broker floor probe")
    p.add_argument("--no-baseline", action="store_true", help="skip the bare-client phase")
    p.add_argument(
        "--forwarder-args",
        default="",
        metavar="ARGS",
        help='extra forwarder command-line arguments, e.g. "-X linger.ms=5"',
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy the forwarder during the window (raw stacks to FILE)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--scale",
        type=int,
        nargs="?",
        const=100_000,
        metavar="N",
        help="N idle PVs with periodic re-sends (default N 100000)",
    )
    mode.add_argument("--find-max", action="store_true")
    mode.add_argument("--overload", action="store_true")
    mode.add_argument(  # see run_large_waveform
        "--large-waveform",
        type=float,
        nargs="?",
        const=8.0,
        metavar="MB",
        help="MB/s of one CA waveform of MB MiB (default 8), stock caproto and ours",
    )
    p.add_argument("--updates", type=int, default=10, help="large-waveform: updates timed")
    p.add_argument("--pv-update-period", type=int, default=10_000, help="scale mode, ms")
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="scale: stop waiting when no PV got its first value for this long",
    )
    p.add_argument(
        "--rates",
        default="100,200,400,700,1000,1500,2000,3000",
        help="find-max: Hz per PV, tried in order",
    )
    p.add_argument("--step-seconds", type=float, default=8.0, help="find-max window per rate")
    p.add_argument("--max-loss", type=float, default=0.001)
    p.add_argument(
        "--overload-rate",
        type=float,
        help="overload: Hz per PV (default: twice the estimated capacity)",
    )
    p.add_argument("--recovery-seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.overload and "--seconds" not in (argv if argv is not None else sys.argv):
        args.seconds = 30.0
    return args


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: no orphaned processes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    if args.large_waveform:  # EPICS side only: no broker
        print(json.dumps(run_large_waveform(Setup(args, "", None))), flush=True)
        return 0
    with broker(args) as setup:
        if args.scale:
            result = run_scale(setup)
        elif args.find_max:
            result = run_find_max(setup)
        elif args.overload:
            result = run_overload(setup)

        else:
            result = run_throughput(setup)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
