"""End to end: `forwarder_launch.py` run as a subprocess, the way an operator starts it.

Covers what a user sees on the command line (errors, --help, --version), the other two
ways of giving settings (config file, FORWARDER_* environment variables), behaviour with
an unreachable broker, and shutdown on SIGTERM / SIGINT while PVs are being forwarded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streaming_data_types.fbschemas.forwarder_config_update_fc00.Protocol import (
    Protocol as Fc00Protocol,
)

from forwarder import __version__
from tests.integration.app.test_e2e_ca import OutputTopic, fc00_config, problem_lines
from tests.support.epics_servers import REPO_ROOT, Counters, SoftIoc, epics_env, free_port
from tests.support.forwarder_process import LAUNCHER, ForwarderProcess
from tests.support.kafka import TansuBroker, TopicReader, decode, produce, unique_topic
from tests.support.kafka import free_port as free_tcp_port

pytestmark = pytest.mark.integration

WAIT = 20.0
BROKER = "127.0.0.1:9092"  # never contacted: these runs fail before connecting
REQUIRED = [
    "--config-topic", f"{BROKER}/config",
    "--output-broker", BROKER,
    "--status-topic", f"{BROKER}/status",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The developer's own FORWARDER_* variables must not reach the forwarder."""
    for name in list(os.environ):
        if name.startswith("FORWARDER_"):
            monkeypatch.delenv(name)
    yield


def launch(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORWARDER_", "EPICS_"))}
    return subprocess.run(
        [sys.executable, LAUNCHER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(REPO_ROOT),
    )


# -- errors, --help, --version ---------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "names"),
    [
        pytest.param(REQUIRED[:2] + REQUIRED[4:], "--output-broker", id="no-output"),
        pytest.param(REQUIRED[2:], "--config-topic", id="no-config-topic"),
        pytest.param(
            ["--config-topic", "127.0.0.1:99999/config", *REQUIRED[2:]],
            "--config-topic",
            id="port-out-of-range",
        ),
        pytest.param(
            [*REQUIRED[:2], *REQUIRED[4:], "--output-broker", "127.0.0.1:kafka"],
            "--output-broker",
            id="port-not-a-number",
        ),
        pytest.param([*REQUIRED, "-v", "Loud"], "--verbosity", id="bad-verbosity"),
        pytest.param([*REQUIRED, "--frobnicate"], "--frobnicate", id="unknown-option"),
        pytest.param(
            [*REQUIRED, "--pv-update-period", "-5"], "--pv-update-period", id="negative-period"
        ),
    ],
)
def test_bad_command_line_exits_with_one_clear_line(args: list[str], names: str) -> None:
    result = launch(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0] and names in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


def test_missing_status_topic_exits_2_with_one_line() -> None:
    """As in the ESS forwarder: without a status topic nobody could see what it does."""
    result = launch(*REQUIRED[:4])
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "forwarder_launch.py: error: the following arguments are required: --status-topic"
    ]


def test_help_lists_the_options() -> None:
    result = launch("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--config-topic", "--output-broker", "--status-topic", "--storage-topic",
                   "--config-file", "--pv-update-period", "--service-id", "--verbosity",
                   "--stale-timestamps", "--status-interval", "--fake-pv-period",
                   "FORWARDER_CONFIG_FILE"):  # fmt: skip
        assert option in result.stdout, option


def test_version_is_printed() -> None:
    result = launch("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"forwarder {__version__}"
    assert re.search(r"\d", __version__)


# -- settings from a config file or the environment ------------------------------------
class BareForwarder(ForwarderProcess):
    """A forwarder started with only `args` on its command line; `epics` carries the
    extra environment (here FORWARDER_* variables)."""

    def command(self) -> list[str]:
        return [sys.executable, LAUNCHER, *self.extra_args]


#: The ESS forwarder's environment variable names (it has none for --status-interval).
ESS_NAMES = {
    "config-topic": "CONFIG_TOPIC",
    "output-broker": "OUTPUT_BROKER",
    "status-topic": "STATUS_TOPIC",
    "service-id": "SERVICE_ID",
    "fake-pv-period": "FAKE_PV_PERIOD",
}


@pytest.mark.parametrize("source", ["config-file", "environment", "ess-environment"])
def test_settings_from_config_file_or_environment(
    source: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    config_topic, status_topic = unique_topic("config"), unique_topic("status")
    service_id = unique_topic(f"svc_{source}")
    settings = {
        "config-topic": f"{kafka_bootstrap}/{config_topic}",
        "output-broker": kafka_bootstrap,
        "status-topic": f"{kafka_bootstrap}/{status_topic}",
        "status-interval": "400",
        "service-id": service_id,
        "fake-pv-period": "100",
    }
    if source == "config-file":
        path = tmp_path / "forwarder.conf"
        lines = ["# forwarder settings"] + [f"{k} = {v}" for k, v in settings.items()]
        path.write_text("\n".join(lines) + "\n")
        args, env = ["--config-file", str(path)], {}
    elif source == "environment":
        args = []
        env = {f"FORWARDER_{k.upper().replace('-', '_')}": v for k, v in settings.items()}
    else:
        args = []
        env = {
            ESS_NAMES.get(k, f"FORWARDER_{k.upper().replace('-', '_')}"): v
            for k, v in settings.items()
        }
        # Both names set: FORWARDER_* wins, and the start-up log says so.
        env |= {"VERBOSITY": "Critical", "FORWARDER_VERBOSITY": "Info"}
    fw = BareForwarder(
        kafka_bootstrap,
        epics=env,
        args=args,
        config_topic=config_topic,
        status_topic=status_topic,
    )
    data = OutputTopic(kafka_bootstrap, unique_topic("data"))
    try:
        fw.start()  # returns once a status message arrived on the configured status topic
        with TopicReader(kafka_bootstrap, status_topic) as reader:
            msgs = reader.wait_for(lambda ms: any(m.schema_id == "x5f2" for m in ms), WAIT)
            _, status = decode(next(m for m in msgs if m.schema_id == "x5f2"))
        assert status.service_id == service_id
        assert status.update_interval == 400
        assert json.loads(status.status_json)["streams"] == []
        # Config topic and output broker are the configured ones: a stream added there
        # is forwarded.
        config = fc00_config([("FAKE:CLI:1", "f144", data.name)], Fc00Protocol.FAKE)
        produce(kafka_bootstrap, config_topic, [config])
        data.wait("FAKE:CLI:1", "f144")
        assert fw.stop() == 0
        if source == "ess-environment":
            log = fw.log()
            assert "Environment: --config-topic from CONFIG_TOPIC" in log, log
            assert (
                "FORWARDER_VERBOSITY and VERBOSITY are both set; using FORWARDER_VERBOSITY"
            ) in log
    finally:
        data.close()
        fw.close()


# -- unreachable broker ----------------------------------------------------------------
def test_unreachable_broker_is_reported_and_does_not_crash() -> None:
    closed = f"127.0.0.1:{free_tcp_port()}"  # nothing listens there
    fw = ForwarderProcess(closed, verbosity="Info")
    try:
        fw.start(wait_ready=False)
        assert fw.proc is not None
        deadline = time.monotonic() + WAIT
        while not problem_lines(fw.log(), closed):
            assert fw.proc.poll() is None, fw.log()[-3000:]
            assert time.monotonic() < deadline, f"no error logged:\n{fw.log()[-3000:]}"
            time.sleep(0.2)
        time.sleep(3)  # keeps trying rather than giving up
        assert fw.proc.poll() is None, fw.log()[-3000:]
        started = time.monotonic()
        code = fw.stop(signal.SIGTERM)
        elapsed = time.monotonic() - started
        log = "\n".join(line for line in fw.log().splitlines() if not line.startswith("%"))
        assert code == 0, log[-3000:]
        assert elapsed < 5, f"took {elapsed:.1f} s\n{log[-3000:]}"
        assert "Traceback" not in log
    finally:
        fw.close()


# -- shutdown while forwarding ---------------------------------------------------------
@pytest.fixture(scope="module")
def busy_ioc() -> Iterator[SoftIoc]:
    """An IOC whose counter PVs update at 20 Hz, served over CA and PVA."""
    with SoftIoc(env=epics_env(free_port(), free_port()), counters=Counters(3, 20.0)) as ioc:
        yield ioc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_forwarding_exits_0_within_5_s(
    sig: signal.Signals, busy_ioc: SoftIoc, kafka_bootstrap: str
) -> None:
    fw = ForwarderProcess(
        kafka_bootstrap, epics=busy_ioc.env, args=["--fake-pv-period", "50"], verbosity="Info"
    )
    data = OutputTopic(kafka_bootstrap, unique_topic("data"))
    try:
        fw.start()
        assert fw.proc is not None
        assert busy_ioc.counters is not None
        names = busy_ioc.counters.names()
        configs = [
            fc00_config([(names[0], "f144", data.name)], Fc00Protocol.CA),
            fc00_config([(names[1], "f144", data.name)], Fc00Protocol.PVA),
            fc00_config([("FAKE:SIG", "f144", data.name)], Fc00Protocol.FAKE),
        ]
        produce(kafka_bootstrap, fw.config_topic, configs)
        try:
            for pv in (names[0], names[1], "FAKE:SIG"):
                data.wait_count(pv, "f144", 3)
        except AssertionError as err:
            raise AssertionError(f"{err}\nforwarder log:\n{fw.log()[-4000:]}") from None
        started = time.monotonic()
        fw.send_signal(sig)
        code = fw.proc.wait(timeout=10)
        elapsed = time.monotonic() - started
        log = fw.log()
        tail = f"exit {code} after {elapsed:.1f} s\n{log[-4000:]}"
        assert code == 0, tail
        assert elapsed < 5, tail
        assert f"Received {sig.name}" in log, tail
        assert "Traceback" not in log, tail
        assert "Shutdown took too long" not in log, tail
    finally:
        data.close()
        fw.close()


def test_shutdown_with_undeliverable_messages_reports_them_and_exits_1_within_5_s(
    private_broker: TansuBroker,
) -> None:
    """The output broker dies under load, then SIGTERM: the forwarder tries to deliver what
    is queued first, names in its last log line how many messages it could not deliver,
    exits non-zero, and is still gone within 5 s."""
    bootstrap = private_broker.bootstrap
    data = OutputTopic(bootstrap, unique_topic("data"))
    fw = ForwarderProcess(bootstrap, args=["--fake-pv-period", "100"], verbosity="Info")
    try:
        fw.start()
        assert fw.proc is not None
        streams = [(f"FAKE:LOAD{i}", "f144", data.name) for i in range(300)]
        produce(bootstrap, fw.config_topic, [fc00_config(streams, Fc00Protocol.FAKE)])
        data.wait_count("FAKE:LOAD299", "f144", 2)
        private_broker.stop()
        time.sleep(1.0)  # a few thousand updates queue up for a broker that is gone
        started = time.monotonic()
        fw.send_signal(signal.SIGTERM)
        code = fw.proc.wait(timeout=10)
        elapsed = time.monotonic() - started
        log = fw.log()
        tail = f"exit {code} after {elapsed:.1f} s\n{log[-4000:]}"
        assert elapsed < 5, tail
        assert code == 1, tail
        last = log.strip().splitlines()[-1]
        found = re.search(r"(\d+) messages not delivered", last)
        assert found and int(found.group(1)) > 0, tail
        assert "Traceback" not in log, tail
    finally:
        data.close()
        fw.close()
