"""A forwarder cluster under test: members started with one `--group`, a real IOC whose
PVs count updates, and the oracles (status topic, data topic) the tests judge by.

Each PV of the IOC is a counter posted at a fixed rate, so the data topic tells exactly
which updates were forwarded: at steady state every PV's f144 values must be consecutive
(a gap is a missed update, a repeat a duplicate).  The status topic tells which member
forwards which stream.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from forwarder.core.config_messages import UpdateKind
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.forwarder_process import ForwarderProcess, send_config
from tests.support.kafka import TopicReader, decode, unique_topic

Status = dict[str, Any]


@dataclass
class Update:
    """One f144 of a counter PV as it reached Kafka."""

    value: int
    kafka_ms: int
    arrived: float  # time.time() when the test read it
    offset: int


@dataclass
class DataWatch:
    """Everything on the data topic, indexed by PV."""

    reader: TopicReader
    by_pv: dict[str, list[Update]] = field(default_factory=dict)
    ep01: list[tuple[str, str, int]] = field(default_factory=list)  # (pv, service_id, ms)

    def poll(self, timeout: float = 0.3) -> None:
        now = time.time()
        for m in self.reader.poll_messages(timeout):
            schema = m.schema_id
            if schema == "f144":
                _, obj = decode(m)
                self.by_pv.setdefault(obj.source_name, []).append(
                    Update(int(obj.value), m.timestamp_ms, now, m.offset)
                )
            elif schema == "ep01":
                _, obj = decode(m)
                self.ep01.append((obj.source_name, obj.service_id or "", m.timestamp_ms))

    def since(self, pv: str, kafka_ms: float) -> list[Update]:
        return [u for u in self.by_pv.get(pv, []) if u.kafka_ms >= kafka_ms]

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.poll(0.3)


def gaps_and_repeats(updates: Iterable[Update]) -> tuple[int, int]:
    """(missed, duplicated) updates in a run of counter values, in topic order."""
    values = [u.value for u in sorted(updates, key=lambda u: u.offset)]
    missed = repeated = 0
    for a, b in zip(values, values[1:], strict=False):
        if b == a:
            repeated += 1
        elif b > a + 1:
            missed += b - a - 1
        elif b < a:
            repeated += 1  # an old value delivered late: a duplicate of what came before
    return missed, repeated


class Cluster:
    """Members of one group sharing config, status (and optionally storage) topics."""

    def __init__(
        self,
        bootstrap: str,
        epics: dict[str, str],
        pvs: list[str],
        *,
        shards: int = 12,
        session_ms: int = 6000,
        storage_topic: str | None = None,
        group: str | None = None,
        extra_args: Iterable[str] = (),
        watch_data: bool = True,
    ) -> None:
        self.bootstrap = bootstrap
        self.epics = epics
        self.pvs = pvs
        self.shards = shards
        self.session_ms = session_ms
        self.group = group or unique_topic("cluster")
        self.config_topic = unique_topic("cluster_config")
        self.status_topic = unique_topic("cluster_status")
        self.data_topic = unique_topic("cluster_data")
        self.storage_topic = storage_topic
        self.extra_args = list(extra_args)
        self.members: dict[str, ForwarderProcess] = {}
        self.status_reader = TopicReader(bootstrap, self.status_topic)
        #: service_id -> (Kafka ms, status document) of its newest status.
        self.statuses: dict[str, tuple[int, Status]] = {}
        self.data = DataWatch(TopicReader(bootstrap, self.data_topic))
        #: False: the data topic is read elsewhere (a benchmark's faster consumer).
        self.watch_data = watch_data

    # -- members ------------------------------------------------------------------------
    def start(self, name: str, bootstrap: str | None = None) -> ForwarderProcess:
        """Start member `name` (its service id); `bootstrap` lets it reach the broker
        another way (a proxy) than the test does."""
        fp = ForwarderProcess(
            bootstrap or self.bootstrap,
            epics=self.epics,
            config_topic=self.config_topic,
            status_topic=self.status_topic,
            storage_topic=self.storage_topic,
            args=[
                "--group",
                self.group,
                "--group-session-timeout-ms",
                str(self.session_ms),
                "--group-shards",
                str(self.shards),
                "--service-id",
                name,
                *self.extra_args,
            ],
        )
        self.members[name] = fp
        fp.start(wait_ready=False)
        return fp

    def live(self) -> list[str]:
        return [
            n for n, fp in self.members.items() if fp.proc is not None and fp.proc.poll() is None
        ]

    def close(self) -> None:
        for fp in self.members.values():
            fp.close()
        self.status_reader.close()
        self.data.reader.close()

    def group_log(self, last: int = 8) -> str:
        """The last group-related log lines of every member (for failure messages)."""
        lines = []
        for name, fp in self.members.items():
            mine = [x for x in fp.log().splitlines() if "group" in x.lower()]
            lines += [f"{name}: {x}" for x in mine[-last:]]
        return "\n".join(lines)

    def log_of(self, name: str) -> str:
        return self.members[name].log()

    # -- configuration ------------------------------------------------------------------
    def spec(self, pv: str) -> StreamSpec:
        return StreamSpec(pv, "f144", self.data_topic, Protocol.CA)

    def configure(self, kind: UpdateKind, pvs: Iterable[str]) -> None:
        send_config(self.bootstrap, self.config_topic, kind, [self.spec(p) for p in pvs])

    # -- status -------------------------------------------------------------------------
    def poll_status(self, timeout: float = 0.2) -> None:
        for m in self.status_reader.poll_messages(timeout):
            if m.schema_id != "x5f2":
                continue
            _, obj = decode(m)
            known = self.statuses.get(obj.service_id)
            if known is None or m.timestamp_ms >= known[0]:
                self.statuses[obj.service_id] = (m.timestamp_ms, json.loads(obj.status_json))

    def forwarded_by(self, since_ms: float) -> dict[str, list[str]]:
        """PV -> live members whose status (newer than `since_ms`) lists it."""
        owners: dict[str, list[str]] = {}
        for name in self.live():
            found = self.statuses.get(name)
            if found is None or found[0] < since_ms:
                continue
            for s in found[1]["streams"]:
                owners.setdefault(s["channel_name"], []).append(name)
        return owners

    def shards_of(self, name: str) -> list[int]:
        found = self.statuses.get(name)
        return list(found[1].get("cluster", {}).get("shards", [])) if found else []

    def settled(self, pvs: Iterable[str], since_ms: float, members: int) -> bool:
        """`members` live members report (after `since_ms`) disjoint, balanced shard sets
        covering all shards, and every PV of `pvs` is forwarded by exactly one of them."""
        self.poll_status()
        live = self.live()
        fresh = [n for n in live if n in self.statuses and self.statuses[n][0] >= since_ms]
        if len(fresh) != members or len(live) != members:
            return False
        shards = sorted(s for n in fresh for s in self.shards_of(n))
        if shards != list(range(self.shards)):
            return False
        # Balanced, as cooperative-sticky assigns once a rebalance is over.
        low, high = self.shards // members, -(-self.shards // members)
        if not all(low <= len(self.shards_of(n)) <= high for n in fresh):
            return False
        owners = self.forwarded_by(since_ms)
        wanted = set(pvs)
        return all(len(owners.get(p, [])) == 1 for p in wanted) and set(owners) == wanted

    def wait_settled(self, pvs: Iterable[str], members: int, timeout: float) -> float:
        """Wait until `settled`; returns how long it took."""
        pvs = list(pvs)
        started = time.monotonic()
        since = time.time() * 1000
        deadline = started + timeout
        while not self.settled(pvs, since, members):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"cluster not settled on {members} members within {timeout:.0f} s: "
                    f"live {self.live()}, shards "
                    f"{ {n: self.shards_of(n) for n in self.live()} }, owners "
                    f"{self.forwarded_by(since)}; group log lines:\n{self.group_log()}"
                )
            if self.watch_data:
                self.data.poll(0.2)
            else:
                time.sleep(0.2)
        return time.monotonic() - started

    def owner_of(self, pv: str) -> str:
        owners = self.forwarded_by(0)
        assert len(owners.get(pv, [])) == 1, owners.get(pv)
        return owners[pv][0]

    def steady_window(self, pvs: list[str], seconds: float) -> tuple[int, int, int]:
        """Watch `seconds` of data; returns (updates, missed, duplicated) over `pvs`,
        counting only updates produced inside the window."""
        start_ms = time.time() * 1000
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.data.poll(0.3)
        end_ms = time.time() * 1000 - 500  # leave time for the last ones to arrive
        self.data.wait(
            lambda: all(any(u.kafka_ms >= end_ms for u in self.data.by_pv.get(p, [])) for p in pvs),
            10,
            "the end of the window on every PV",
        )
        total = missed = repeated = 0
        for p in pvs:
            window = [u for u in self.data.by_pv.get(p, []) if start_ms <= u.kafka_ms <= end_ms]
            m, r = gaps_and_repeats(window)
            total += len(window)
            missed += m
            repeated += r
        return total, missed, repeated


class CuttableProxy:
    """A TCP proxy in front of a broker that can cut one member off.

    The broker must advertise the proxy's address, so that every Kafka connection of
    every client goes through here.  `cut(pid)` closes that process's connections and
    refuses its new ones (found by the client socket's local port in /proc), leaving the
    other members' connections alone; `heal()` lets it back in.
    """

    def __init__(self, target_port: int, listen_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = listen_port
        self._listener = socket.create_server(("127.0.0.1", listen_port), reuse_port=False)
        self._listener.settimeout(0.2)
        self._blocked: set[int] = set()
        self._pairs: list[tuple[socket.socket, socket.socket, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def cut(self, pid: int) -> None:
        with self._lock:
            self._blocked.add(pid)
            pairs = list(self._pairs)
        doomed = [(c, u) for c, u, peer_port in pairs if _owner_pid(peer_port) == pid]
        for client, upstream in doomed:
            _close(client)
            _close(upstream)

    def heal(self) -> None:
        with self._lock:
            self._blocked.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        _close(self._listener)
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream, _ in pairs:
            _close(client)
            _close(upstream)

    def _pid_blocked(self, peer_port: int) -> bool:
        with self._lock:
            blocked = set(self._blocked)
        return bool(blocked) and _owner_pid(peer_port) in blocked

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, addr = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            peer_port = int(addr[1])
            if self._pid_blocked(peer_port):
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _close(client)
                continue
            # Blocking from here on: Kafka connections sit idle for seconds.
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream, peer_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    _close(src)
    _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _owner_pid(local_port: int) -> int | None:
    """The process owning the TCP socket bound to 127.0.0.1:`local_port` (Linux /proc)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == local_port and parts[9] != "0":
                        inode = parts[9]
                        break
        except OSError:
            continue
        if inode:
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
        except OSError:
            continue
    return None
