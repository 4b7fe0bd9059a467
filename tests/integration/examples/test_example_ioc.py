"""examples/example_ioc.py really serves its PVs over both CA and PVA and stops on SIGTERM.

The IOC runs as `python examples/example_ioc.py` (as a user would start it) on ports chosen
for this test, bound to 127.0.0.1 only; the clients are caproto (CA) and p4p (PVA).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.support.epics_servers import LOCALHOST, child_env, epics_env, free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
IOC_SCRIPT = REPO_ROOT / "examples" / "example_ioc.py"
PREFIX = f"TEST{os.getpid()}:EX:"
STARTUP_TIMEOUT = 30.0

sys.path.insert(0, str(IOC_SCRIPT.parent))
import example_ioc  # noqa: E402  (a script, not a package: imported from its folder)

sys.path.remove(str(IOC_SCRIPT.parent))


@dataclass
class RunningIoc:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)

    def pv(self, suffix: str) -> str:
        return f"{PREFIX}{suffix}"


def _pump(stream: object, out: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line.rstrip("\n"))
    out.put(None)


def _start(env: dict[str, str], stderr_path: Path) -> RunningIoc:
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(IOC_SCRIPT), "--prefix", PREFIX, "--period", "0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=child_env(env),
            cwd=str(REPO_ROOT),
            text=True,
        )
    ioc = RunningIoc(proc, env)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            proc.kill()
            proc.wait(10)
            raise AssertionError(
                f"IOC did not print {example_ioc.READY_LINE} (exit {proc.returncode}): "
                f"stdout={ioc.lines!r} stderr={stderr_path.read_text()[-2000:]!r}"
            )
        ioc.lines.append(line)
        if line == example_ioc.READY_LINE:
            return ioc


@pytest.fixture(scope="module")
def ioc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIoc]:
    env = epics_env(free_port(), free_port())
    running = _start(env, tmp_path_factory.mktemp("ioc") / "stderr.txt")
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(10)


@pytest.fixture
def ca_env(ioc: RunningIoc, monkeypatch: pytest.MonkeyPatch) -> None:
    """caproto's client reads its EPICS settings from os.environ only."""
    for key in [k for k in os.environ if k.startswith("EPICS_")]:
        monkeypatch.delenv(key)
    for key, value in ioc.env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def pva(ioc: RunningIoc) -> Iterator[object]:
    from p4p.client.thread import Context

    conf = {k: v for k, v in ioc.env.items() if k.startswith("EPICS_PVA_")}
    ctx = Context("pva", conf=conf, useenv=False)
    try:
        yield ctx
    finally:
        ctx.close()


def test_environment_is_loopback_only(ioc: RunningIoc) -> None:
    assert ioc.env["EPICS_CA_ADDR_LIST"] == LOCALHOST
    assert ioc.env["EPICS_PVA_ADDR_LIST"].split(":")[0] == LOCALHOST
    assert ioc.env["EPICS_CA_AUTO_ADDR_LIST"] == ioc.env["EPICS_PVA_AUTO_ADDR_LIST"] == "NO"
    assert {"EPICS_CA_REPEATER_PORT", "EPICS_PVA_BROADCAST_PORT"} <= set(ioc.env)


def test_prints_the_pvs_it_serves(ioc: RunningIoc) -> None:
    printed = {line.split()[1]: line.split()[3] for line in ioc.lines if line.startswith("PV ")}
    assert printed == {ioc.pv(s): schema for s, (_, schema) in example_ioc.PV_SCHEMAS.items()}
    ports = (
        f"CA on port {ioc.env['EPICS_CA_SERVER_PORT']} and PVA on port "
        + ioc.env["EPICS_PVA_SERVER_PORT"]
    )
    assert any(ports in line for line in ioc.lines), ioc.lines


def test_serves_over_channel_access(ioc: RunningIoc, ca_env: None) -> None:
    from caproto.sync.client import read

    first = read(ioc.pv("LONG"), timeout=5, repeater=False).data[0]
    time.sleep(0.5)
    assert read(ioc.pv("LONG"), timeout=5, repeater=False).data[0] > first
    stamps = read(ioc.pv("CHOPPER_TIMESTAMPS"), timeout=5, repeater=False).data
    assert len(stamps) == example_ioc.PULSES_PER_SECOND
    assert np.all(np.diff(stamps) > 0)
    assert len(read(ioc.pv("WAVEFORM"), timeout=5, repeater=False).data) == 16


def test_serves_over_pv_access(ioc: RunningIoc, pva: object) -> None:
    get = pva.get  # type: ignore[attr-defined]
    assert isinstance(float(get(ioc.pv("DOUBLE"), timeout=5)), float)
    enum = get(ioc.pv("ENUM"), timeout=5).raw.value
    assert list(enum.choices) == list(example_ioc.ENUM_STATES)
    assert np.asarray(get(ioc.pv("CHOPPER_TIMESTAMPS"), timeout=5)).dtype == np.int32
    assert np.asarray(get(ioc.pv("WAVEFORM"), timeout=5)).shape == (16,)


def test_amplitude_written_over_ca_is_read_over_pva(
    ioc: RunningIoc, ca_env: None, pva: object
) -> None:
    from caproto.sync.client import write

    write(ioc.pv("AMPLITUDE"), [7.5], notify=True, timeout=5, repeater=False)
    assert float(pva.get(ioc.pv("AMPLITUDE"), timeout=5)) == 7.5  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    while np.max(np.abs(pva.get(ioc.pv("WAVEFORM"), timeout=5))) <= 1.0:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "waveform never scaled by the new amplitude"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_stops_cleanly_on_signal(signum: int, tmp_path: Path) -> None:
    own = _start(epics_env(free_port(), free_port()), tmp_path / "stderr.txt")
    try:
        assert own.proc.poll() is None
        own.proc.send_signal(signum)
        assert own.proc.wait(timeout=15) == 0
    finally:
        if own.proc.poll() is None:
            own.proc.kill()
            own.proc.wait(10)
