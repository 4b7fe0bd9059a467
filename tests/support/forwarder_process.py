"""Run `forwarder_launch.py` as a user would: a subprocess with a command line.

End-to-end tests talk to it only through Kafka topics, EPICS servers and signals, so they
exercise exactly what a facility deploys.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from forwarder.core.config_messages import UpdateKind, encode_config_message
from forwarder.core.streams import StreamSpec
from tests.support.epics_servers import REPO_ROOT, child_env
from tests.support.kafka import TopicReader, decode, produce, unique_topic

LAUNCHER = str(REPO_ROOT / "forwarder_launch.py")


def send_config(bootstrap: str, topic: str, kind: UpdateKind, streams: list[StreamSpec]) -> None:
    """One config message to `topic`, keyed so that successive ones keep their order.

    One key: Tansu auto-creates 4 partitions, and only one partition keeps the order.
    """
    produce(bootstrap, topic, [encode_config_message(kind, streams)], key="config")


class ForwarderProcess:
    """One forwarder subprocess with its own config, status and (optional) storage topics."""

    def __init__(
        self,
        bootstrap: str,
        *,
        epics: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        config_topic: str | None = None,
        status_topic: str | None = None,
        storage_topic: str | None = None,
        status_interval_ms: int = 500,
        verbosity: str = "Debug",
    ) -> None:
        self.bootstrap = bootstrap
        self.config_topic = config_topic or unique_topic("config")
        self.status_topic = status_topic or unique_topic("status")
        self.storage_topic = storage_topic
        self.epics = dict(epics or {})
        self.extra_args = list(args)
        self.status_interval_ms = status_interval_ms
        self.verbosity = verbosity
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            LAUNCHER,
            "--config-topic",
            f"{self.bootstrap}/{self.config_topic}",
            "--status-topic",
            f"{self.bootstrap}/{self.status_topic}",
            "--output-broker",
            self.bootstrap,
            "--status-interval",
            str(self.status_interval_ms),
            "-v",
            self.verbosity,
        ]
        if self.storage_topic:
            cmd += ["--storage-topic", f"{self.bootstrap}/{self.storage_topic}"]
        return cmd + self.extra_args

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> ForwarderProcess:
        self._log = tempfile.NamedTemporaryFile(prefix="forwarder-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(self.epics),
            cwd=str(REPO_ROOT),
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Ready = it published a status message (it has read its storage and is polling
        the config topic)."""
        with TopicReader(self.bootstrap, self.status_topic) as reader:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any(m.schema_id == "x5f2" for m in reader.poll_messages(0.3)):
                    return
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"forwarder exited early:\n{self.log()}")
        raise AssertionError(f"forwarder not ready within {timeout} s:\n{self.log()}")

    def last_status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The newest status JSON published after this call started."""
        import json

        since = time.time() * 1000
        with TopicReader(self.bootstrap, self.status_topic) as reader:
            msgs = reader.wait_for(
                lambda ms: any(m.schema_id == "x5f2" and m.timestamp_ms >= since for m in ms),
                timeout,
            )
        newest = [m for m in msgs if m.schema_id == "x5f2" and m.timestamp_ms >= since][-1]
        _, status = decode(newest)
        result: dict[str, Any] = json.loads(status.status_json)
        return result

    def log(self) -> str:
        if self._log is None:
            return ""
        with open(self._log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal and wait; returns the exit code (kills it if it does not exit)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            try:
                os.unlink(self._log.name)
            except OSError:
                pass
            self._log = None

    def __enter__(self) -> ForwarderProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
