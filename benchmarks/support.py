"""Measuring helpers for `forwarder_benchmark.py`: /proc readings, a timing consumer,
a fast f144 reader, /metrics scraping, the EPICS generator and baseline processes."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from forwarder.core.serialise._common import field_position, follow, root_table
from tests.support.epics_servers import (
    REPO_ROOT,
    CaprotoServer,
    Counters,
    P4pServer,
    SoftIoc,
    _ServerProcess,
    child_env,
)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- /proc -------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """Per thread of `pid`: (name, user + system CPU seconds)."""
    found: dict[int, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        found[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def thread_cpu_delta(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float
) -> dict[str, float]:
    """Cores used per thread name between two `thread_cpu` readings, busiest first."""
    by_name: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        by_name[name] = by_name.get(name, 0.0) + used
    ranked = sorted(by_name.items(), key=lambda item: -item[1])
    return {name: round(used / seconds, 3) for name, used in ranked if used > 0}


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    """VmRSS / VmHWM (peak) in MiB."""
    return round(int(proc_status(pid)[key].split()[0]) / 1024, 1)


def thread_count(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


# -- forwarder /metrics ------------------------------------------------------------------
def scrape(port: int, timeout: float = 10.0) -> dict[str, float]:
    """Prometheus text from the forwarder's --http-port: {'name{labels}': value}."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values


def metric(values: dict[str, float], name: str) -> float:
    return values.get(name, values.get(f"{name}_total", 0.0))


def drops(values: dict[str, float]) -> dict[str, float]:
    """forwarder_dropped_total{reason="..."} -> {reason: n}."""
    found: dict[str, float] = {}
    for key, value in values.items():
        if key.startswith("forwarder_dropped_total{") or key.startswith("forwarder_dropped{"):
            reason = key.split('reason="', 1)[1].split('"', 1)[0]
            found[reason] = value
    return found


# -- f144 --------------------------------------------------------------------------------
_I64 = struct.Struct("<q")
#: f144 Value union type -> scalar struct (the counters are scalars).
_SCALARS = {1: struct.Struct("<b"), 2: struct.Struct("<B"), 3: struct.Struct("<h"),
            4: struct.Struct("<H"), 5: struct.Struct("<i"), 6: struct.Struct("<I"),
            7: struct.Struct("<q"), 8: struct.Struct("<Q"), 9: struct.Struct("<f"),
            10: struct.Struct("<d")}  # fmt: skip

#: LogData file identifier -> (timestamp, value type, value) slots of its root table.
_LOGDATA_SLOTS = {b"f144": (1, 2, 3), b"f142": (3, 1, 2)}
#: The value schemas the benchmark can measure (both number their union members alike).
VALUE_IDS = frozenset(_LOGDATA_SLOTS)


def f144_time_and_value(buf: bytes) -> tuple[int, float]:
    """(timestamp ns, scalar value) of an f144 (or f142) message, ~10x faster than
    `deserialise_f144`; falls back to the library for anything but a scalar.

    Reads the fields with the same FlatBuffer layout helpers the forwarder's templates use.
    """
    ts_slot, type_slot, value_slot = _LOGDATA_SLOTS.get(buf[4:8], (1, 2, 3))
    try:
        root = root_table(buf)
        scalar = _SCALARS.get(buf[field_position(buf, root, type_slot)])
        if scalar is not None:
            inner = follow(buf, field_position(buf, root, value_slot))
            value = scalar.unpack_from(buf, field_position(buf, inner, 0))[0]
            return _I64.unpack_from(buf, field_position(buf, root, ts_slot))[0], float(value)
    except LookupError:  # a field left at its default: let the library read it
        pass
    from streaming_data_types import DESERIALISERS

    data = DESERIALISERS[buf[4:8].decode()](buf)
    try:
        return int(data.timestamp_unix_ns), float(data.value)
    except TypeError:  # an array: not a counter
        return int(data.timestamp_unix_ns), float("nan")


def is_f144(value: bytes) -> bool:
    return value[4:8] == b"f144"


# -- a consumer that timestamps arrivals -------------------------------------------------
@dataclass(slots=True)
class Arrival:
    recv_ns: int
    key: bytes
    value: bytes


class Recorder:
    """Consumes every partition of a topic from offset 0 on a thread and notes when each
    f144 (or f142) message arrived (wall-clock ns, taken when it reached this process).

    `keep=True` stores f144 arrivals for `take()`; `first_seen` maps each key to the
    arrival time of its first f144 message (how long until a PV's first value is out).
    Other schemas are only counted.  Already available messages are drained in batches
    (`consume(timeout=0)`), then one `poll` waits for the next, so an arrival time is never
    held back by a batch timeout.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int, keep: bool = True) -> None:
        self.topic = topic
        self.keep = keep
        self.track_first = False
        self.first_seen: dict[bytes, int] = {}
        self.count = 0
        self.f144_count = 0
        self._kept: list[Arrival] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 20,
                "log_level": 0,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._thread = threading.Thread(target=self._run, name=f"recorder-{topic}", daemon=True)

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def _run(self) -> None:
        consume = self._consumer.consume
        poll = self._consumer.poll
        while not self._stop.is_set():
            batch = consume(2000, 0)
            if not batch:
                one = poll(0.05)
                if one is None:
                    continue
                batch = [one]
            now = time.time_ns()
            kept: list[Arrival] = []
            for record in batch:
                if record.error() is not None:
                    continue
                value = record.value() or b""
                self.count += 1
                if value[4:8] not in VALUE_IDS:
                    continue
                self.f144_count += 1
                key = record.key() or b""
                if self.track_first and key not in self.first_seen:
                    self.first_seen[key] = now
                if self.keep:
                    kept.append(Arrival(now, key, value))
            if kept:
                with self._lock:
                    self._kept.extend(kept)

    def take(self) -> list[Arrival]:
        """Everything kept since the last call."""
        with self._lock:
            kept, self._kept = self._kept, []
        return kept

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(5.0)
        self._consumer.close()


# -- EPICS processes ---------------------------------------------------------------------
class PvaCounterServer(P4pServer):
    """p4p server with counter PVs whose rate can change (benchmarks/_p4p_server.py)."""

    module = "benchmarks._p4p_server"

    def counters_rate(self, rate_hz: float) -> dict[str, Any]:
        return self.command("counters", rate=rate_hz)


def make_generator(protocol: str, ca_server: str, counters: Counters) -> _ServerProcess:
    if protocol == "pva":
        return PvaCounterServer(counters=counters, startup_timeout=600.0)
    if ca_server == "caproto":
        return CaprotoServer(counters=counters, startup_timeout=600.0)
    return SoftIoc(counters=counters, startup_timeout=600.0)


class BaselineSubscriber(_ServerProcess):
    """benchmarks/_baseline_subscriber.py: the bare EPICS client the forwarder is compared
    with.  It subscribes to `counters.names()`; `stats()` returns updates and CPU seconds."""

    module = "benchmarks._baseline_subscriber"

    def __init__(self, protocol: str, counters: Counters, env: dict[str, str]) -> None:
        super().__init__(
            env={**env, "BENCH_BASELINE_PROTOCOL": protocol}, counters=counters,
            startup_timeout=120.0,
        )  # fmt: skip

    def _served_ports(self) -> list[int]:
        return []

    def stats(self) -> dict[str, Any]:
        return self.command("stats", timeout=30.0)


def run_probe_producer(
    bootstrap: str, topic: str, pvs: int, rate_hz: float, seconds: float
) -> subprocess.Popen[bytes]:
    """Start benchmarks/_probe_producer.py (a bare producer of f144 counters)."""
    cmd = [sys.executable, "-m", "benchmarks._probe_producer", bootstrap, topic, str(pvs),
           str(rate_hz), str(seconds)]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=child_env({}),
        cwd=str(REPO_ROOT),
    )  # fmt: skip


def percentiles(values: Sequence[float], qs: Sequence[float]) -> list[float | None]:
    if not values:
        return [None for _ in qs]
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return [round(float(np.percentile(arr, q)), 2) for q in qs]


def internal_latency_ms(
    before: dict[str, float], after: dict[str, float]
) -> dict[str, float | None]:
    """p50/p99 (upper bucket bounds) of the forwarder's own EPICS-timestamp-to-produce
    latency in a window, from its `forwarder_latency_seconds` histogram (all protocols)."""
    prefix = "forwarder_latency_seconds_bucket{"
    by_bound: dict[float, float] = {}
    for key, value in after.items():
        if key.startswith(prefix):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            by_bound[bound] = by_bound.get(bound, 0.0) + value - before.get(key, 0.0)
    buckets = sorted(by_bound.items())
    total = buckets[-1][1] if buckets else 0.0
    result: dict[str, float | None] = {"p50": None, "p99": None}
    if total <= 0:
        return result
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        for bound, count in buckets:
            if count >= q * total:
                result[name] = None if bound == float("inf") else bound * 1000
                break
    return result
