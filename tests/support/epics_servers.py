"""Real EPICS servers for tests: a softioc IOC, a p4p PVA server and a caproto CA server.

Each server runs in its own subprocess so that a test can kill it (IOC death), restart it
on the same ports (reconnect tests) and so that its EPICS libraries read *their* ports from
*their* environment.  Everything is pinned to 127.0.0.1 and to ports chosen per test, so
tests never see each other's PVs (or a site's real IOCs).

The servers are driven through a JSON-lines pipe: the parent writes one command per line on
the child's stdin and reads one reply per line from the child's stdout (the child moves
C-level output to stderr first).  Driving them this way, rather than with an EPICS client in
the test process, keeps `put`/`set_alarm` independent of the code under test.  A child exits
when its stdin closes and asks the kernel to kill it when the parent dies, so a crashed test
run leaves no orphan servers.

Client side: p4p accepts an explicit configuration (`PvaMonitors(conf=epics_env(...))`),
but caproto's client only reads `os.environ`, so CA tests set `epics_env(...)` in the test
process environment (pytest's `monkeypatch.setenv`) before creating the client.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import caproto as ca

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"

#: EPICS alarm conditions (the record STAT field / CA status), in wire order.
ALARM_STATUS = (
    "NO_ALARM", "READ", "WRITE", "HIHI", "HIGH", "LOLO", "LOW", "STATE", "COS", "COMM",
    "TIMEOUT", "HWLIMIT", "CALC", "SCAN", "LINK", "SOFT", "BAD_SUB", "UDF", "DISABLE",
    "SIMM", "READ_ACCESS", "WRITE_ACCESS",
)  # fmt: skip

# Ports handed out by this process (and their +1 neighbour, see `free_port`).
_reserved: set[int] = set()
_reserve_lock = threading.Lock()


def _bindable(port: int) -> bool:
    """Whether both TCP and UDP `port` are free on every interface."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port P free for TCP and UDP, with P+1 free for UDP as well.

    The neighbour is reserved too because `epics_env` derives the CA repeater port from the
    CA server port; reserving it here means two ports from this function never overlap.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("", 0))
            port = int(probe.getsockname()[1])
        if port >= 65535:
            continue
        with _reserve_lock:
            if port in _reserved or port + 1 in _reserved:
                continue
            if _bindable(port) and _bindable(port + 1):
                _reserved.update((port, port + 1))
                return port
    raise RuntimeError("no free port pair found")


def epics_env(ca_port: int, pva_port: int) -> dict[str, str]:
    """All EPICS_* variables pinning CA and PVA clients and servers to 127.0.0.1.

    CA: server TCP and UDP search on `ca_port`, repeater/beacons on `ca_port + 1` (so a
    caRepeater of another test or of the machine is never shared).  PVA: server TCP and UDP
    search on `pva_port` (TCP and UDP numbers do not collide); clients listen for beacons
    on UDP `pva_port + 1`, where servers send them.  Sharing one UDP port between a server
    and a client on one host would let the kernel hand each unicast beacon to only one of
    them, and pvxs clients search again at once only when they see a new server's beacon.
    Use the same mapping for servers and clients.
    """
    ca, rep, pva = str(ca_port), str(ca_port + 1), str(pva_port)
    pva_search = f"{LOCALHOST}:{pva_port}"
    pva_beacons = f"{LOCALHOST}:{pva_port + 1}"
    return {
        "EPICS_CA_SERVER_PORT": ca,
        "EPICS_CAS_SERVER_PORT": ca,
        "EPICS_CA_REPEATER_PORT": rep,
        "EPICS_CAS_BEACON_PORT": rep,
        "EPICS_CA_ADDR_LIST": LOCALHOST,
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": LOCALHOST,
        "EPICS_CAS_BEACON_ADDR_LIST": LOCALHOST,
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVA_SERVER_PORT": pva,
        "EPICS_PVAS_SERVER_PORT": pva,
        "EPICS_PVA_BROADCAST_PORT": str(pva_port + 1),
        "EPICS_PVAS_BROADCAST_PORT": pva,
        "EPICS_PVA_ADDR_LIST": pva_search,
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": LOCALHOST,
        "EPICS_PVAS_BEACON_ADDR_LIST": pva_beacons,
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
    }


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a subprocess: ours without any EPICS_* plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    base.update(env)
    base["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), base.get("PYTHONPATH", "")) if p
    )
    base["PYTHONUNBUFFERED"] = "1"
    return base


@dataclass(frozen=True)
class Record:
    """One PV to serve, described independently of the server flavour.

    kind: ai/ao (double), longin/longout (int32), mbbi/mbbo (enum; `choices`, value is the
    index), waveform (`dtype` DOUBLE/FLOAT/LONG/SHORT/CHAR/UCHAR, `length` elements),
    stringin/stringout.  The p4p and caproto servers map these to the closest native type.
    p4p only: nttable (an NTTable with a `value` column of `dtype` and an int64 `timestamp`
    column; value and puts are {"value": [...], "timestamp": [ns, ...]}).
    """

    name: str
    kind: str
    value: Any = None
    dtype: str = "DOUBLE"
    length: int = 0
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Counters:
    """N PVs named `{prefix}{i}` whose value is an update counter, posted `rate_hz` times a
    second (all N per tick, like records on one scan).  dtype: DOUBLE, LONG or INT64
    (INT64 falls back to DOUBLE on CA)."""

    count: int
    rate_hz: float
    prefix: str = "CNT:"
    dtype: str = "DOUBLE"
    autostart: bool = True

    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]


_S = TypeVar("_S", bound="_ServerProcess")


class ServerError(RuntimeError):
    """The server process failed to start or rejected a command."""


class _ServerProcess:
    """Spawns a `tests.support.*_script` module and talks JSON lines to it."""

    module = ""

    def __init__(
        self,
        records: Sequence[Record] = (),
        *,
        env: Mapping[str, str] | None = None,
        counters: Counters | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        if env is None:
            env = epics_env(free_port(), free_port())
        self.env: dict[str, str] = dict(env)
        self.records = list(records)
        self.counters = counters
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._stderr: Any = None

    # -- ports ---------------------------------------------------------------------------
    @property
    def ca_port(self) -> int:
        return int(self.env["EPICS_CA_SERVER_PORT"])

    @property
    def pva_port(self) -> int:
        return int(self.env["EPICS_PVA_SERVER_PORT"])

    def _served_ports(self) -> list[int]:
        """TCP ports that accept connections once the server is up."""
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self: _S) -> _S:
        """Start (or restart, on the same ports) and return once it serves its PVs."""
        if self.running:
            return self
        self._stderr = tempfile.TemporaryFile()
        self._buf = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self.module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env(self.env),
            cwd=str(REPO_ROOT),
        )
        config = {
            "parent_pid": os.getpid(),
            "records": [asdict(r) for r in self.records],
            "counters": asdict(self.counters) if self.counters else None,
        }
        try:
            self._send(config)
            self._reply(self.startup_timeout)
            self._wait_listening(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill the server (SIGKILL: clients see the TCP connections drop, like an IOC
        crash) and reap it.  Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- commands ------------------------------------------------------------------------
    def command(self, op: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        """Send one command, return the reply; raise ServerError if the child refused."""
        if not self.running:
            raise ServerError(f"{type(self).__name__} is not running")
        self._send({"op": op, **args})
        return self._reply(timeout)

    def put(self, name: str, value: Any) -> None:
        """Set a PV's value from the server side (as the IOC itself would)."""
        if hasattr(value, "tolist"):
            value = value.tolist()
        self.command("put", name=name, value=value)

    def set_alarm(self, name: str, severity: int, status: str | int) -> None:
        """Raise/clear an alarm; `status` is a CA alarm condition name ("HIHI") or number."""
        if isinstance(status, str):
            status = ALARM_STATUS.index(status)
        self.command("alarm", name=name, severity=int(severity), status=int(status))

    # -- plumbing ------------------------------------------------------------------------
    def _send(self, message: Mapping[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(message).encode() + b"\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise ServerError(f"server died: {self.stderr_tail()}") from None

    def _reply(self, timeout: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerError(f"no reply within {timeout}s: {self.stderr_tail()}")
            readable, _, _ = select.select([fd], [], [], min(left, 0.2))
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ServerError(f"server exited: {self.stderr_tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise ServerError(str(reply.get("error")))
        return reply

    def _wait_listening(self, deadline: float) -> None:
        """Belt and braces after the child's "ready": its TCP ports accept connections."""
        for port in self._served_ports():
            while True:
                try:
                    socket.create_connection((LOCALHOST, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or not self.running:
                        raise ServerError(f"port {port} not served: {self.stderr_tail()}") from None
                    time.sleep(0.02)

    def stderr_tail(self, limit: int = 3000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text: str = self._stderr.read().decode(errors="replace")
        return text[-limit:]


class SoftIoc(_ServerProcess):
    """A real softioc IOC (RSRV for CA, pvxs QSRV for PVA) serving `records`.

    Supports put, set_alarm, stop (kill) and start again on the same ports.  `counters`
    become ao (DOUBLE) or longout (LONG) records set from a Python thread in the IOC.
    """

    module = "tests.support.ioc_script"

    def _served_ports(self) -> list[int]:
        return [self.ca_port, self.pva_port]

    def counters_run(self, run: bool) -> dict[str, Any]:
        """Start/stop the counter generator; returns its statistics."""
        return self.command("counters", run=run)

    def counter_stats(self) -> dict[str, Any]:
        """ticks, posts, elapsed seconds and late ticks of the counter generator."""
        return self.command("counters")

    def counters_rate(self, rate_hz: float) -> dict[str, Any]:
        """Change the counter generator's rate while it runs."""
        return self.command("counters", rate=rate_hz)


class P4pServer(_ServerProcess):
    """A p4p.server PVA server (pvxs underneath) serving `records` and/or `counters`."""

    module = "tests.support.p4p_script"

    def _served_ports(self) -> list[int]:
        return [self.pva_port]

    def add(self, record: Record) -> None:
        """Serve one more PV while running (a PV that appears later)."""
        self.command("add", record=asdict(record))

    def counters_run(self, run: bool) -> dict[str, Any]:
        """Start/stop the counter generator; returns its statistics."""
        return self.command("counters", run=run)

    def counter_stats(self) -> dict[str, Any]:
        """ticks, posts, elapsed seconds and late ticks of the counter generator."""
        return self.command("counters")


class CaprotoServer(P4pServer):
    """A caproto asyncio CA server serving `records` and/or `counters`."""

    module = "tests.support.caproto_script"

    def _served_ports(self) -> list[int]:
        return [self.ca_port]


class CaRepeater:
    """A caproto CA repeater on the environment's repeater port.

    Real sites run a caRepeater on every host; it forwards server beacons to CA clients,
    which is how clients notice a restarted or newly started IOC quickly.  libca would
    spawn one on its own; caproto's client does not.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.port = int(self.env["EPICS_CA_REPEATER_PORT"])
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, attempts: int = 3) -> CaRepeater:
        """Start it and wait until it holds its port.

        A repeater that finds its port taken exits at once, taking it for another
        repeater; on a busy host a client's short-lived ephemeral UDP socket can hold
        the port for a moment.  So an early exit is retried, and the last one's output
        is in the error.
        """
        deadline = time.monotonic() + timeout
        output = ""
        exited = False
        for _ in range(attempts):
            with tempfile.TemporaryFile() as out:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.support.repeater_script", str(os.getpid())],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=child_env(self.env),
                    cwd=str(REPO_ROOT),
                )
                while not self._confirms():
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        break
                else:
                    return self
                exited = self._proc.poll() is not None
                self.stop()
                out.seek(0)
                output = out.read().decode(errors="replace")[-2000:]
            if not exited:
                break  # out of time: another attempt would not have any
        why = f"it exited {attempts} times (port taken?)" if exited else f"no answer in {timeout} s"
        raise ServerError(f"CA repeater on UDP port {self.port} did not start: {why}\n{output}")

    def _confirms(self, wait_s: float = 0.1) -> bool:
        """Whether a repeater answers a client's registration on the port (holding the
        port proves nothing: any socket may hold it)."""
        broadcaster = ca.Broadcaster(our_role=ca.CLIENT)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOCALHOST, 0))
            sock.settimeout(wait_s)
            try:
                sock.sendto(
                    broadcaster.send(broadcaster.register(LOCALHOST)), (LOCALHOST, self.port)
                )
                data, address = sock.recvfrom(1024)
            except OSError:  # timed out; or refused (ICMP port unreachable): nobody there
                time.sleep(wait_s)
                return False
        replies = broadcaster.recv(data, address)
        return any(isinstance(reply, ca.RepeaterConfirmResponse) for reply in replies)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdin is not None:
                proc.stdin.close()

    def __enter__(self) -> CaRepeater:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = [
    "CaRepeater",
    "ALARM_STATUS",
    "CaprotoServer",
    "Counters",
    "P4pServer",
    "Record",
    "ServerError",
    "SoftIoc",
    "child_env",
    "epics_env",
    "free_port",
]
