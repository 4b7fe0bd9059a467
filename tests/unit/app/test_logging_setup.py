"""Logging destinations, redaction and rate limiting, checked at the receiving end."""

from __future__ import annotations

import json
import logging
import socket
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.app.cli import parse_args
from forwarder.app.logging_setup import (
    TRACE,
    LoggingSetupError,
    register_secret,
    setup_logging,
    teardown_logging,
)


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    teardown_logging()
    root.setLevel(level)
    assert root.handlers == handlers


@pytest.fixture
def gelf_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    yield sock
    sock.close()


def receive_gelf(sock: socket.socket) -> dict[str, Any]:
    """One GELF message: plain, zlib/gzip-compressed, or reassembled from chunks."""
    chunks: dict[int, bytes] = {}
    while True:
        data, _ = sock.recvfrom(65535)
        if data[:2] != b"\x1e\x0f":
            payload = data
            break
        seq, total = data[10], data[11]
        chunks[seq] = data[12:]
        if len(chunks) == total:
            payload = b"".join(chunks[i] for i in range(total))
            break
    if payload[:1] == b"\x78":
        payload = zlib.decompress(payload)
    elif payload[:2] == b"\x1f\x8b":
        payload = zlib.decompress(payload, 16 + zlib.MAX_WBITS)
    result: dict[str, Any] = json.loads(payload)
    return result


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"{host}:{port}"


def test_console_on_stderr_with_trace_level(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("trace", None, None, "svc")
    assert logging.getLogger().level == TRACE == 5
    assert logging.getLevelName(TRACE) == "TRACE"
    logging.getLogger("forwarder.test").log(TRACE, "deep detail %d", 42)
    captured = capsys.readouterr()
    assert "TRACE" in captured.err and "forwarder.test: deep detail 42" in captured.err
    assert captured.out == ""


def test_file_gets_records_at_or_above_the_level(tmp_path: Path) -> None:
    path = tmp_path / "forwarder.log"
    setup_logging("Info", str(path), None, "svc")
    log = logging.getLogger("forwarder.file")
    log.debug("hidden debug")
    log.info("visible %s", "info")
    log.error("visible error")
    teardown_logging()
    text = path.read_text()
    assert "INFO     forwarder.file: visible info" in text
    assert "ERROR    forwarder.file: visible error" in text
    assert "hidden debug" not in text


def test_missing_log_folder_is_a_clear_error(tmp_path: Path) -> None:
    setup_logging("Info", None, None, "svc")
    before = list(logging.getLogger().handlers)
    missing = tmp_path / "nope" / "forwarder.log"
    with pytest.raises(LoggingSetupError) as err:
        setup_logging("Info", str(missing), "127.0.0.1:12201", "svc")
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)
    assert logging.getLogger().handlers == before  # the old configuration still works


def test_unknown_level_and_bad_graylog_address() -> None:
    with pytest.raises(LoggingSetupError, match="unknown log level 'loud'"):
        setup_logging("loud", None, None, "svc")
    with pytest.raises(LoggingSetupError, match="not host:port"):
        setup_logging("Info", None, "graylog", "svc")


_REQUIRED_ARGS = [
    *("--config-topic", "localhost:9092/config", "--status-topic", "localhost:9092/status"),
    *("--output-broker", "localhost:9092"),
]


@pytest.mark.parametrize(
    "address", ["graylog:99999", "graylog:0", "bad host:12201", "[::1:12201", "graylog:"]
)
def test_graylog_address_follows_the_option_parser(address: str) -> None:
    """The same rule as --graylog-logger-address (one host:port parser for both)."""
    with pytest.raises(LoggingSetupError, match="not host:port"):
        setup_logging("Info", None, address, "svc")
    with pytest.raises(SystemExit):
        parse_args([*_REQUIRED_ARGS, "--graylog-logger-address", address])


def test_gelf_messages_carry_service_id_and_host(gelf_listener: socket.socket) -> None:
    setup_logging("Debug", None, address(gelf_listener), "forwarder-test-1")
    logging.getLogger("forwarder.gelf").warning("PV %s disconnected", "SIM:1")
    message = receive_gelf(gelf_listener)
    assert message["short_message"] == "PV SIM:1 disconnected"
    assert message["_service_id"] == "forwarder-test-1"
    assert message["host"] == socket.gethostname()
    assert message["level"] == 4  # syslog warning
    assert message["facility"] == "forwarder.gelf"


def test_large_gelf_messages_are_chunked(gelf_listener: socket.socket) -> None:
    setup_logging("Info", None, address(gelf_listener), "svc")
    big = "".join(uuid.uuid4().hex for _ in range(400))  # ~12 kB, compresses to > 1 chunk
    logging.getLogger("forwarder.gelf").info("big %s", big)
    assert receive_gelf(gelf_listener)["short_message"] == f"big {big}"


def test_trace_is_sent_to_graylog_as_debug(gelf_listener: socket.socket) -> None:
    setup_logging("Trace", None, address(gelf_listener), "svc")
    logging.getLogger("forwarder.gelf").log(TRACE, "trace line")
    assert receive_gelf(gelf_listener)["level"] == 7


def test_registered_secrets_never_reach_any_destination(
    tmp_path: Path, gelf_listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    other = f"pw-{uuid.uuid4().hex}"
    register_secret(other)
    path = tmp_path / "f.log"
    setup_logging("Info", str(path), address(gelf_listener), "svc", secrets=[secret, None])
    log = logging.getLogger("forwarder.secret")
    log.info("connecting with password %s", secret)
    first = receive_gelf(gelf_listener)
    try:
        raise RuntimeError(f"auth failed for {other}")
    except RuntimeError:
        log.exception("login error")
    second = receive_gelf(gelf_listener)
    teardown_logging()
    outputs = [path.read_text(), capsys.readouterr().err, json.dumps([first, second])]
    for text in outputs:
        assert secret not in text and other not in text
        assert "connecting with password ***" in text
        assert "auth failed for ***" in text
