"""Helpers for the system tests: the forwarder launched as a user launches it, and readers.

`LaunchedForwarder` runs `forwarder_launch.py --config-file FILE` in a subprocess whose
environment carries `FORWARDER_*` variables (and the EPICS ones of the test's IOCs) — no
test-only command line.  Everything is judged from the outside: Kafka topics, the process'
exit code, its log file and `/proc/PID/status`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.support.kafka import Msg, TopicReader, decode

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = REPO_ROOT / "forwarder_launch.py"

Status = dict[str, Any]
StatusPredicate = Callable[[Status], bool]


def launch_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without EPICS_* and FORWARDER_* (a developer's shell may have some,
    which would silently override the config file), plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EPICS_") and not k.startswith("FORWARDER_")
    }
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config_file(path: Path, settings: Mapping[str, str]) -> Path:
    """A `key = value` file as in docs/reference/options.md (and config-files/forwarder.conf)."""
    lines = ["# forwarder configuration written by the system tests"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class LaunchedForwarder:
    """`forwarder_launch.py --config-file FILE` with `env` as FORWARDER_*/EPICS_* variables.

    Console output (stdout and stderr) goes to `console_path`; give the forwarder
    `FORWARDER_LOG_FILE` in `env` to have its own log file as well.
    """

    def __init__(self, config_file: Path, env: Mapping[str, str], console_path: Path) -> None:
        self.config_file = config_file
        self.env = dict(env)
        self.console_path = console_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> LaunchedForwarder:
        with open(self.console_path, "ab") as console:
            self.proc = subprocess.Popen(
                [sys.executable, str(LAUNCHER), "--config-file", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=launch_env(self.env),
                cwd=str(self.config_file.parent),
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Signal and wait; the exit code, or None if it had to be killed."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None

    def console(self) -> str:
        try:
            return self.console_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_file_text(self) -> str:
        path = self.env.get("FORWARDER_LOG_FILE")
        if not path:
            return ""
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def error_lines(self) -> list[str]:
        """Log lines at ERROR or CRITICAL level, and tracebacks, from the console output."""
        found = []
        for line in self.console().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2] in ("ERROR", "CRITICAL"):
                found.append(line)
            elif line.startswith("Traceback"):
                found.append(line)
        return found

    def rss_kib(self) -> int:
        """Resident set size from /proc/PID/status (VmRSS, kB)."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def describe(self, tail: int = 4000) -> str:
        code = None if self.proc is None else self.proc.poll()
        return (
            f"forwarder pid {self.proc and self.proc.pid} exit {code}; log tail:\n"
            + (self.console()[-tail:])
        )


class StatusWatcher:
    """Decodes every x5f2 message of a status topic, remembering the newest per pid."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.reader = TopicReader(bootstrap, topic)
        self.newest: dict[int, Status] = {}

    def poll(self, timeout: float = 0.3) -> None:
        for msg in self.reader.poll_messages(timeout):
            if msg.schema_id != "x5f2":
                continue
            _, status = decode(msg)
            self.newest[int(status.process_id)] = json.loads(status.status_json)
        self.reader.messages.clear()

    def wait(
        self, fw: LaunchedForwarder, predicate: StatusPredicate, timeout: float, what: str
    ) -> Status:
        """The newest status of `fw` once it satisfies `predicate` (AssertionError on
        timeout or if the forwarder exits)."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            status = self.newest.get(fw.pid)
            if status is not None and predicate(status):
                return status
            if not fw.running:
                raise AssertionError(f"forwarder exited while waiting for {what}\n{fw.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"status never showed {what} within {timeout} s; newest status: "
                    f"{json.dumps(status)[:3000]}\n{fw.describe()}"
                )

    def close(self) -> None:
        self.reader.close()


Decoded = tuple[Msg, str, Any]


class OutputTopic:
    """A data topic read from the start, every message decoded once."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.reader = TopicReader(bootstrap, topic)
        self.decoded: list[Decoded] = []

    def poll(self, timeout: float = 0.3) -> list[Decoded]:
        new = []
        for msg in self.reader.poll_messages(timeout):
            schema, obj = decode(msg)
            new.append((msg, schema, obj))
        self.reader.messages.clear()
        self.decoded.extend(new)
        return new

    def of(self, schema: str, source: str) -> list[Decoded]:
        return [d for d in self.decoded if d[1] == schema and source_of(d[2]) == source]

    def wait_for(self, predicate: Callable[[OutputTopic], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                tail = [(d[1], source_of(d[2])) for d in self.decoded[-8:]]
                raise AssertionError(
                    f"topic {self.topic}: no {what} within {timeout} s "
                    f"({len(self.decoded)} messages, last: {tail})"
                )
            self.poll()

    def close(self) -> None:
        self.reader.close()


def source_of(obj: Any) -> str:
    """The PV name of a decoded f144, tdct, ep01 or al00 message."""
    for attribute in ("source_name", "source", "name"):
        value = getattr(obj, attribute, None)
        if isinstance(value, str):
            return value
    return ""


def wait_newest(
    bootstrap: str, topic: str, predicate: Callable[[Msg], bool], timeout: float, what: str
) -> Msg:
    """The newest message of a one-partition topic once it satisfies `predicate`."""
    with TopicReader(bootstrap, topic) as reader:
        deadline = time.monotonic() + timeout
        while True:
            reader.poll_messages(0.5)
            newest = max(reader.messages, key=lambda m: m.offset, default=None)
            if newest is not None and predicate(newest):
                # Nothing newer behind it?  One more poll settles that.
                if not reader.poll_messages(0.5):
                    return newest
                continue
            if time.monotonic() > deadline:
                shown = None if newest is None else decode(newest)
                raise AssertionError(
                    f"topic {topic}: newest message never was {what} within {timeout} s "
                    f"({len(reader.messages)} messages, newest {shown})"
                )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
