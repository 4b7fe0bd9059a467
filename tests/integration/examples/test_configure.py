"""examples/configure.py builds config messages the forwarder accepts and delivers them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from forwarder.core.config_messages import UpdateKind, decode_config_message
from forwarder.core.streams import Protocol
from tests.support.kafka import TopicReader, free_port, unique_topic

REPO_ROOT = Path(__file__).resolve().parents[3]
SCRIPT = REPO_ROOT / "examples" / "configure.py"

sys.path.insert(0, str(SCRIPT.parent))
import configure  # noqa: E402  (a script, not a package: imported from its folder)
import example_ioc  # noqa: E402

sys.path.remove(str(SCRIPT.parent))

EXPECTED = {f"P:{suffix}": schema for suffix, (_, schema) in example_ioc.PV_SCHEMAS.items()}


@pytest.mark.parametrize("fmt", ["fc00", "rf5k"])
@pytest.mark.parametrize(("protocol", "wire"), [("pva", Protocol.PVA), ("ca", Protocol.CA)])
def test_add_message_has_every_example_pv(fmt: str, protocol: str, wire: Protocol) -> None:
    command = decode_config_message(
        configure.build_message(fmt, "P:", protocol, "data"), rf5k_periodic=False
    )
    assert command.kind is UpdateKind.ADD and command.schema_id == fmt
    assert not command.rejected
    assert {s.channel: s.schema for s in command.streams} == EXPECTED
    assert {(s.topic, s.protocol, s.periodic) for s in command.streams} == {("data", wire, False)}
    assert dict(EXPECTED)["P:CHOPPER_TIMESTAMPS"] == "tdct"


def test_periodic_and_remove_all() -> None:
    periodic = decode_config_message(
        configure.build_message("fc00", "P:", "pva", "data", periodic=True), rf5k_periodic=False
    )
    assert all(s.periodic for s in periodic.streams)
    for fmt in configure.FORMATS:
        message = configure.build_message(fmt, "P:", "pva", "data", remove_all=True)
        assert decode_config_message(message, rf5k_periodic=False).kind is UpdateKind.REMOVEALL
    with pytest.raises(ValueError, match="periodic"):
        configure.build_message("rf5k", "P:", "pva", "data", periodic=True)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_sends_to_the_config_topic(
    kafka_bootstrap: str, make_reader: Callable[[str, str], TopicReader]
) -> None:
    topic = unique_topic("configure")
    done = run("--broker", kafka_bootstrap, "--topic", topic, "--prefix", "P:", "--format", "rf5k")
    assert done.returncode == 0, done.stderr
    assert "P:CHOPPER_TIMESTAMPS as tdct" in done.stdout
    reader = make_reader(kafka_bootstrap, topic)
    messages = reader.wait_for(lambda got: len(got) >= 1)
    command = decode_config_message(messages[0].value, rf5k_periodic=False)
    assert command.schema_id == "rf5k"
    assert {s.channel for s in command.streams} == set(EXPECTED)


def test_unreachable_broker_is_one_line_and_exit_1() -> None:
    done = run("--broker", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert done.returncode == 1
    assert done.stderr.startswith("configure.py: ") and done.stderr.count("\n") == 1


def test_rejects_periodic_with_rf5k() -> None:
    done = run("--format", "rf5k", "--periodic")
    assert done.returncode == 2 and "--periodic needs --format fc00" in done.stderr
