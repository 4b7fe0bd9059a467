"""End to end: where the forwarder logs to, how much, and that secrets never appear.

The forwarder runs as a subprocess; its console output (stdout + stderr) is captured by
`ForwarderProcess`, the log file is read from disk and GELF records are caught by a real UDP
socket in the test.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forwarder.core.config_messages import UpdateKind, encode_config_message
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.epics_servers import REPO_ROOT, child_env
from tests.support.forwarder_process import LAUNCHER, ForwarderProcess
from tests.support.kafka import TopicReader, decode, free_port, produce, unique_topic

pytestmark = pytest.mark.integration

#: One formatted record: "2024-01-01 12:00:00,123 LEVEL    logger: message".
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) +(?P<rest>.*)$")


def _levels(text: str) -> dict[str, list[str]]:
    """Formatted log lines by level name."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            found.setdefault(m["level"], []).append(m["rest"])
    return found


def _add_fake_stream(bootstrap: str, fp: ForwarderProcess, channel: str) -> str:
    data = unique_topic("data")
    spec = StreamSpec(channel, "f144", data, Protocol.FAKE)
    produce(bootstrap, fp.config_topic, [encode_config_message(UpdateKind.ADD, [spec])])
    return data


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _wait_streaming(bootstrap: str, fp: ForwarderProcess, channel: str) -> None:
    """The status topic shows `channel` configured (independent of what is logged)."""
    with TopicReader(bootstrap, fp.status_topic) as reader:

        def configured(messages: list[Any]) -> bool:
            for m in reversed(messages):
                if m.schema_id == "x5f2":
                    streams = json.loads(decode(m)[1].status_json)["streams"]
                    return any(s["channel_name"] == channel for s in streams)
            return False

        reader.wait_for(configured, timeout=20)


def test_log_file_gets_the_log(
    kafka_bootstrap: str, tmp_path: Path, forwarders: list[ForwarderProcess]
) -> None:
    log_file = tmp_path / "forwarder.log"
    fp = ForwarderProcess(
        kafka_bootstrap,
        args=["--log-file", str(log_file), "--service-id", "log-file-test"],
        verbosity="Info",
    )
    forwarders.append(fp)
    fp.start()
    _add_fake_stream(kafka_bootstrap, fp, "FAKE:LOGFILE:1")
    _wait_until(
        lambda: "Forwarding fake://FAKE:LOGFILE:1" in log_file.read_text(),
        timeout=20,
        what="the 'Forwarding' line in the log file",
    )
    assert fp.stop() == 0
    text = log_file.read_text()
    levels = _levels(text)
    info = "\n".join(levels.get("INFO", []))
    assert "starting as service 'log-file-test'" in info
    assert "Forwarding fake://FAKE:LOGFILE:1 -> data_" in info
    assert "Stopped" in info
    # Every line of the file is a formatted record (no stray library output)...
    assert all(_LINE.match(line) for line in text.splitlines() if line.strip()), text
    # ...and the console got the same records.
    assert "Forwarding fake://FAKE:LOGFILE:1" in fp.log()


def test_log_file_in_missing_folder_exits_with_one_clear_line(tmp_path: Path) -> None:
    bad = "/nonexistent/dir/x.log"
    bootstrap = f"127.0.0.1:{free_port()}"  # never contacted
    proc = subprocess.run(
        [
            sys.executable,
            LAUNCHER,
            "--config-topic",
            f"{bootstrap}/config",
            "--output-broker",
            bootstrap,
            "--status-topic",
            f"{bootstrap}/status",
            "--log-file",
            bad,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env({}),
        cwd=str(REPO_ROOT),
    )
    assert proc.returncode != 0
    output = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert "/nonexistent/dir" in lines[0]
    assert "log" in lines[0].lower()


class _GelfListener:
    """A UDP socket collecting GELF records (plain, zlib or gzip JSON; maybe chunked)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.records: list[dict[str, Any]] = []
        self._chunks: dict[bytes, dict[int, bytes]] = {}

    def poll(self, timeout: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                datagram = self.sock.recv(65535)
            except TimeoutError:
                continue
            self._take(datagram)

    def _take(self, datagram: bytes) -> None:
        if datagram[:2] == b"\x1e\x0f":  # chunked: magic, id (8), sequence, count
            msg_id, seq, count = datagram[2:10], datagram[10], datagram[11]
            parts = self._chunks.setdefault(msg_id, {})
            parts[seq] = datagram[12:]
            if len(parts) < count:
                return
            datagram = b"".join(parts[i] for i in range(count))
            del self._chunks[msg_id]
        if datagram[:2] == b"\x1f\x8b":
            datagram = gzip.decompress(datagram)
        elif datagram[:1] == b"\x78":
            datagram = zlib.decompress(datagram)
        self.records.append(json.loads(datagram))

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records if predicate(r)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                messages = [r.get("short_message") for r in self.records[-10:]]
                raise AssertionError(f"no matching GELF record in {timeout} s; last: {messages}")
            self.poll(0.3)

    def close(self) -> None:
        self.sock.close()


def test_graylog_receives_gelf_records_with_service_id_and_host(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    listener = _GelfListener()
    try:
        service_id = unique_topic("gelf")
        fp = ForwarderProcess(
            kafka_bootstrap,
            args=[
                "--graylog-logger-address",
                f"127.0.0.1:{listener.port}",
                "--service-id",
                service_id,
            ],
            verbosity="Info",
        )
        forwarders.append(fp)
        fp.start()
        start = listener.wait_for(
            lambda r: "starting as service" in r.get("short_message", ""), timeout=20
        )
        _add_fake_stream(kafka_bootstrap, fp, "FAKE:GELF:1")
        forwarding = listener.wait_for(
            lambda r: "Forwarding fake://FAKE:GELF:1" in r.get("short_message", ""),
            timeout=20,
        )
        for record in (start, forwarding):
            assert record["version"] in ("1.0", "1.1")
            assert record["host"] == socket.gethostname()
            assert record["_service_id"] == service_id
            assert record["level"] == 6  # syslog "informational"
            assert isinstance(record["timestamp"], int | float)
        assert fp.stop() == 0
        stopped = listener.wait_for(lambda r: "Stopped" in r.get("short_message", ""), 10)
        assert stopped["_service_id"] == service_id
    finally:
        listener.close()


def test_verbosity_selects_what_is_logged(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    runs: dict[str, ForwarderProcess] = {}
    for level in ("Trace", "Debug", "Warning"):
        fp = ForwarderProcess(kafka_bootstrap, args=["--fake-pv-period", "100"], verbosity=level)
        forwarders.append(fp)
        runs[level] = fp.start()
    for level, fp in runs.items():
        channel = f"FAKE:VERB:{level}"
        _add_fake_stream(kafka_bootstrap, fp, channel)
        produce(kafka_bootstrap, fp.config_topic, [b"not a config message at all"])
        _wait_streaming(kafka_bootstrap, fp, channel)

        def logged(fp: Any = fp) -> bool:
            return "Ignored config message" in fp.log()

        _wait_until(logged, 20, "the error line")
    for fp in runs.values():
        assert fp.stop() == 0

    by_level = {level: _levels(fp.log()) for level, fp in runs.items()}
    for level, found in by_level.items():
        assert any("Ignored config message" in m for m in found.get("ERROR", [])), level

    trace = by_level["Trace"]
    assert any("Status:" in m for m in trace.get("TRACE", [])), trace.keys()
    assert trace.get("DEBUG") and trace.get("INFO")

    debug = by_level["Debug"]
    assert "TRACE" not in debug
    assert any("output producer config" in m for m in debug.get("DEBUG", []))
    assert any("Forwarding fake://FAKE:VERB:Debug" in m for m in debug.get("INFO", []))

    warning = by_level["Warning"]
    assert not {"TRACE", "DEBUG", "INFO"} & set(warning), warning.keys()
    # The stream was forwarded all the same (checked on the status topic above).


def test_sasl_passwords_never_appear_in_logs(
    kafka_bootstrap: str, tmp_path: Path, forwarders: list[ForwarderProcess]
) -> None:
    cli_secret, env_secret = "s3cr3t-XYZ", "3nv-s3cr3t-QRS"
    log_file = tmp_path / "forwarder.log"
    storage = unique_topic("storage")
    fp = ForwarderProcess(
        kafka_bootstrap,
        # Read by the forwarder from its environment, like a deployment would.
        epics={"FORWARDER_STORAGE_TOPIC_SASL_PASSWORD": env_secret},
        args=[
            "--output-broker",
            f"SCRAM-SHA-256\\alice@{kafka_bootstrap}",
            "--output-broker-sasl-password",
            cli_secret,
            "--storage-topic",
            f"SCRAM-SHA-512\\bob@{kafka_bootstrap}/{storage}",
            # The storage broker refuses bob: restoring from it would hold configuration
            # messages until it can be read.  Writing to it is still tried (and fails).
            "--skip-retrieval",
            "--log-file",
            str(log_file),
            "--fake-pv-period",
            "100",
        ],
        verbosity="Trace",
    )
    forwarders.append(fp)
    fp.start(timeout=40)
    # Give the SASL clients work to fail at: data to produce, a configuration to store.
    _add_fake_stream(kafka_bootstrap, fp, "FAKE:SASL:1")
    _wait_streaming(kafka_bootstrap, fp, "FAKE:SASL:1")
    # Wait until the forwarder itself has reported the failing authentication.
    _wait_until(
        lambda: (
            "SASL SCRAM-SHA-256" in log_file.read_text()
            and "SASL SCRAM-SHA-512" in log_file.read_text()
        ),
        timeout=30,
        what="SASL failures in the log file",
    )
    fp.stop()
    console, file_text = fp.log(), log_file.read_text()
    # The client configurations were logged (at debug), with the password masked.
    assert "'sasl.username': 'alice'" in file_text
    assert "'sasl.password': '***'" in file_text
    for text in (console, file_text):
        assert cli_secret not in text
        assert env_secret not in text
        assert "s3cr3t" not in text


def test_no_librdkafka_secret_reaches_the_log_or_graylog(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    """Not only passwords: private keys, keystore passwords and OAUTHBEARER settings given
    with -X are masked in the logged client configurations, on the console and on
    Graylog.  (On a PLAINTEXT connection librdkafka accepts and ignores them.)"""
    secrets = {
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----PEMSECRET1-----END PRIVATE KEY-----",
        "ssl.keystore.password": "KEYSTORESECRET2",
        "sasl.oauthbearer.config": "principal=svc extension_token=OAUTHSECRET3",
        "sasl.oauthbearer.client.secret": "CLIENTSECRET4",
    }
    listener = _GelfListener()
    try:
        args = ["--graylog-logger-address", f"127.0.0.1:{listener.port}", "--fake-pv-period", "100"]
        for key, value in secrets.items():
            args += ["-X", f"{key}={value}"]
        fp = ForwarderProcess(kafka_bootstrap, args=args, verbosity="Debug")
        forwarders.append(fp)
        fp.start()
        _add_fake_stream(kafka_bootstrap, fp, "FAKE:SECRET:1")
        _wait_streaming(kafka_bootstrap, fp, "FAKE:SECRET:1")
        logged = listener.wait_for(
            lambda r: "output producer config" in r.get("short_message", ""), timeout=20
        )
        assert fp.stop() == 0
        listener.poll(0.5)
        console = fp.log()
        for key in secrets:
            assert f"'{key}': '***'" in console, key
            assert f"'{key}': '***'" in logged["short_message"], key
        gelf = json.dumps(listener.records)
        for marker in ("PEMSECRET1", "KEYSTORESECRET2", "OAUTHSECRET3", "CLIENTSECRET4"):
            assert marker not in console, marker
            assert marker not in gelf, marker
    finally:
        listener.close()
