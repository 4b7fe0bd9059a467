"""Command line / environment / config file parsing into validated `Settings`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder.adapters.kafka_endpoint import Secret
from forwarder.adapters.kafka_uri import KafkaUri
from forwarder.app.cli import parse_args
from forwarder.app.settings import DEFAULT_PRODUCER_QUEUE_MAX_MESSAGES, Settings, option_fields

REQUIRED = [
    "--config-topic", "localhost:9092/config",
    "--output-broker", "localhost:9092",
    "--status-topic", "localhost:9092/status",
]  # fmt: skip
SECRET = "hunter2-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The developer's own FORWARDER_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("FORWARDER_"):
            monkeypatch.delenv(name)
    for f in option_fields():  # and the ESS forwarder's names
        if f.metadata["option"].ess_env:
            monkeypatch.delenv(f.metadata["option"].ess_env, raising=False)
    monkeypatch.delenv("CONFIG_FILE", raising=False)
    yield


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a failed parse (asserting exit status 2)."""
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert ": error: " in lines[0]
    assert SECRET not in err
    return lines[0]


def test_output_broker_topic_is_accepted_and_warned_about_not_used() -> None:
    """The ESS forwarder ignores a topic on --output-broker; so do we, but say so."""
    opts = parse_args([*REQUIRED[:2], "--output-broker", "localhost:9092/whatever", *REQUIRED[4:]])
    assert opts.output_endpoint.librdkafka_config()["bootstrap.servers"] == "localhost:9092"
    (warning,) = opts.start_warnings()
    assert "--output-broker" in warning and "'whatever'" in warning and "ignored" in warning
    assert parse_args(REQUIRED).start_warnings() == ()


def test_minimal_arguments_give_documented_defaults() -> None:
    opts = parse_args(REQUIRED)
    assert opts.config_topic == KafkaUri("localhost:9092", "config")
    assert opts.output_broker == KafkaUri("localhost:9092")
    assert opts.status_topic == KafkaUri("localhost:9092", "status")
    assert opts.storage_topic is None
    assert opts.service_id == f"forwarder-{socket.gethostname()}"
    assert opts.verbosity == "Info"
    assert opts.fake_pv_period == 1000
    assert opts.status_interval == 4000
    assert opts.stale_timestamps == "drop"
    assert opts.pv_update_period is None and opts.http_port is None
    assert opts.skip_retrieval is False
    assert dict(opts.kafka_config) == {}
    assert opts.producer_queue_max_messages == DEFAULT_PRODUCER_QUEUE_MAX_MESSAGES
    assert opts.secrets() == ()


def test_every_option_on_the_command_line(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("cert")
    opts = parse_args(
        [
            "--config-topic", "scram-sha-256\\cfg@b1:9092,b2:9093/cfg_topic",
            "--config-topic-sasl-password", "p1",
            "--status-topic", "PLAIN\\st@b1:9092/status",
            "--status-topic-sasl-password", "p2",
            "--output-broker", "SCRAM-SHA-512\\out@b3:9094",
            "--output-broker-sasl-password", "p3",
            "--storage-topic", "b1:9092/storage",
            "--skip-retrieval",
            "--graylog-logger-address", "graylog:12201",
            "--log-file", str(tmp_path / "f.log"),
            "--pv-update-period", "500",
            "--service-id", " my-forwarder ",
            "--fake-pv-period", "20",
            "-v", "debug",
            "--stale-timestamps", "Receive-Time",
            "--status-interval", "1000",
            "--http-port", "8000",
            "--ssl-ca-cert-file", str(ca),
            "--security-protocol", "sasl_ssl",
            "-X", "linger.ms=5",
            "-X", "message.max.bytes = 2000000",
            "--producer-queue-max-messages", "5000",
        ]
    )  # fmt: skip
    assert opts.config_topic == KafkaUri("b1:9092,b2:9093", "cfg_topic", "SCRAM-SHA-256", "cfg")
    assert opts.status_topic == KafkaUri("b1:9092", "status", "PLAIN", "st")
    assert opts.output_broker == KafkaUri("b3:9094", None, "SCRAM-SHA-512", "out")
    assert opts.storage_topic == KafkaUri("b1:9092", "storage")
    assert (opts.config_topic_sasl_password, opts.status_topic_sasl_password) == (
        Secret("p1"),
        Secret("p2"),
    )
    assert opts.output_broker_sasl_password == Secret("p3")
    assert opts.skip_retrieval is True
    assert opts.graylog_logger_address == "graylog:12201"
    assert opts.log_file == str(tmp_path / "f.log")
    assert (opts.pv_update_period, opts.fake_pv_period, opts.status_interval) == (500, 20, 1000)
    assert opts.service_id == "my-forwarder"
    assert opts.verbosity == "Debug"
    assert opts.stale_timestamps == "receive-time"
    assert opts.http_port == 8000
    assert opts.ssl_ca_cert_file == str(ca)
    assert opts.security_protocol == "SASL_SSL"
    assert dict(opts.kafka_config) == {"linger.ms": "5", "message.max.bytes": "2000000"}
    assert opts.producer_queue_max_messages == 5000
    assert sorted(opts.secrets()) == ["p1", "p2", "p3"]


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDER_CONFIG_TOPIC", "env:1/cfg")
    monkeypatch.setenv("FORWARDER_STATUS_TOPIC", "env:1/status")
    monkeypatch.setenv("FORWARDER_OUTPUT_BROKER", "PLAIN\\u@env:2")
    monkeypatch.setenv("FORWARDER_OUTPUT_BROKER_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("FORWARDER_SKIP_RETRIEVAL", "true")
    monkeypatch.setenv("FORWARDER_VERBOSITY", "TRACE")
    monkeypatch.setenv("FORWARDER_KAFKA_CONFIG", "[linger.ms=1, acks=all]")
    opts = parse_args([])
    assert opts.config_topic.bootstrap == "env:1"
    assert opts.output_broker.username == "u"
    assert opts.output_broker_sasl_password == Secret(SECRET)
    assert opts.skip_retrieval is True
    assert opts.verbosity == "Trace"
    assert dict(opts.kafka_config) == {"linger.ms": "1", "acks": "all"}


def test_config_file_with_comments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "forwarder.conf"
    path.write_text(
        "# forwarder settings\n"
        "\n"
        "config-topic = file:1/cfg\n"
        "output-broker=file:2\n"
        "status-topic = file:1/status\n"
        "; another comment style\n"
        "skip-retrieval = true\n"
        "verbosity = warning\n"
        "kafka-config = [linger.ms=3]\n"
    )
    opts = parse_args(["-c", str(path)])
    assert opts.config_topic == KafkaUri("file:1", "cfg")
    assert opts.output_broker == KafkaUri("file:2")
    assert opts.skip_retrieval is True
    assert opts.verbosity == "Warning"
    assert dict(opts.kafka_config) == {"linger.ms": "3"}
    monkeypatch.setenv("FORWARDER_CONFIG_FILE", str(path))
    assert parse_args([]) == opts


def test_precedence_is_cli_then_env_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "forwarder.conf"
    path.write_text(
        "config-topic = file:1/cfg\noutput-broker = file:2\nservice-id = from-file\n"
        "status-topic = file:1/st\n"
        "status-interval = 111\nfake-pv-period = 7\n"
    )
    monkeypatch.setenv("FORWARDER_OUTPUT_BROKER", "env:2")
    monkeypatch.setenv("FORWARDER_SERVICE_ID", "from-env")
    monkeypatch.setenv("FORWARDER_STATUS_INTERVAL", "222")
    opts = parse_args(["-c", str(path), "--service-id", "from-cli"])
    assert opts.config_topic.bootstrap == "file:1"  # only in the file
    assert opts.output_broker.bootstrap == "env:2"  # env beats file
    assert opts.status_interval == 222
    assert opts.service_id == "from-cli"  # command line beats both
    assert opts.fake_pv_period == 7


def test_repr_hides_passwords() -> None:
    opts = parse_args(
        REQUIRED[:2]
        + REQUIRED[4:]
        + ["--output-broker", "PLAIN\\user@h:1", "--output-broker-sasl-password", SECRET]
        + ["-X", f"ssl.key.password={SECRET}", "-X", "linger.ms=2"]
    )
    for text in (repr(opts), str(opts), f"{opts}"):
        assert SECRET not in text
        assert "***" in text and "linger.ms" in text and "PLAIN\\\\user@h:1" in text
    assert isinstance(opts, Settings)
    assert SECRET in opts.secrets()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--config-topic", "h:1/c"], "arguments are required: --status-topic, --output-broker"),
        (
            ["--config-topic", "h:1/c", "--output-broker", "localhost:abc"],
            "error: --output-broker: port 'abc' is not a number",
        ),
        # A topic there is ignored (with a warning), but it must still be a topic name.
        (
            ["--output-broker", "h:1/bad topic", "--config-topic", "h:1/c"],
            "--output-broker: invalid topic name",
        ),
        (["--output-broker", "h:1", "--config-topic", "h:1"], "--config-topic: missing topic"),
        (["--output-broker", "h:1", "--config-topic", ":1/c"], "--config-topic: missing host"),
        ([*REQUIRED, "--status-topic", "KERBEROS\\u@h:1/s"], "unknown SASL mechanism"),
        (
            [*REQUIRED[:2], *REQUIRED[4:], "--output-broker", "PLAIN\\u@h:1"],
            "--output-broker-sasl-password is required because --output-broker has SASL user",
        ),
        (
            [*REQUIRED, "--status-topic", "h:1/s", "--status-topic-sasl-password", SECRET],
            "--status-topic-sasl-password is set but --status-topic has no SASL user",
        ),
        (
            [*REQUIRED, "--storage-topic-sasl-password", SECRET],
            "--storage-topic-sasl-password is set but --storage-topic is not",
        ),
        (
            [
                *REQUIRED[:2],
                *REQUIRED[4:],
                "--output-broker",
                "PLAIN\\u@h:1",
                "--security-protocol",
                "SSL",
            ]
            + ["--output-broker-sasl-password", SECRET],
            "--output-broker: security protocol SSL cannot carry the SASL credentials",
        ),
        ([*REQUIRED, "--security-protocol", "TLS"], "--security-protocol: 'TLS' is not one of"),
        (REQUIRED[:4], "error: the following arguments are required: --status-topic"),
        (
            [*REQUIRED[:2], *REQUIRED[4:], "--output-broker", "SASL_SSL+PLAIN\\u@h:1"]
            + ["--output-broker-sasl-password", SECRET, "--security-protocol", "SASL_PLAINTEXT"],
            "--output-broker: the address says SASL_SSL but --security-protocol says "
            "SASL_PLAINTEXT",
        ),
        (
            [*REQUIRED, "--config-topic", "SASL_SSL+h:1/c"],
            "--config-topic: security protocol SASL_SSL needs credentials",
        ),
        ([*REQUIRED, "--pv-update-period", "0"], "--pv-update-period: 0 is out of range"),
        ([*REQUIRED, "--fake-pv-period", "abc"], "--fake-pv-period: 'abc' is not a whole number"),
        ([*REQUIRED, "--status-interval", "-5"], "--status-interval: -5 is out of range"),
        ([*REQUIRED, "--http-port", "70000"], "--http-port: 70000 is out of range 1-65535"),
        ([*REQUIRED, "-v", "loud"], "-v/--verbosity: 'loud' is not one of Trace, Debug, Info"),
        ([*REQUIRED, "--stale-timestamps", "keep"], "--stale-timestamps: 'keep' is not one of"),
        ([*REQUIRED, "--ssl-ca-cert-file", "/no/such/ca.pem"], "'/no/such/ca.pem' does not exist"),
        ([*REQUIRED, "-X", f"sasl.password{SECRET}"], "-X/--kafka-config: expected key=value"),
        ([*REQUIRED, "-X", "Bad Key=1"], "'Bad Key' is not a librdkafka setting name"),
        ([*REQUIRED, "--producer-queue-max-messages", "0"], "--producer-queue-max-messages: 0"),
        ([*REQUIRED, "--graylog-logger-address", "graylog"], "--graylog-logger-address: missing"),
        (
            [*REQUIRED, "--log-file", "/no/such/dir/f.log"],
            "--log-file: directory '/no/such/dir' for the log file",
        ),
        ([*REQUIRED, "--service-id", "  "], "--service-id: must not be empty"),
        (
            [*REQUIRED, "--output-broker-sasl-pasword", SECRET, "--bogus=" + SECRET],
            "unrecognized arguments: --output-broker-sasl-pasword --bogus (and 1 value(s)",
        ),
        ([*REQUIRED, "-c", "/no/such/forwarder.conf"], "/no/such/forwarder.conf"),
    ],
)
def test_errors_name_the_option_on_one_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fragment in parse_error(argv, capsys)


def test_bad_environment_values_are_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORWARDER_HTTP_PORT", "abc")
    assert "--http-port: 'abc' is not a whole number" in parse_error(REQUIRED, capsys)
    monkeypatch.delenv("FORWARDER_HTTP_PORT")
    monkeypatch.setenv("FORWARDER_SKIP_RETRIEVAL", "maybe")
    assert "FORWARDER_SKIP_RETRIEVAL" in parse_error(REQUIRED, capsys)


def test_unknown_config_file_key_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "forwarder.conf"
    path.write_text(f"output-broker-sasl-pasword = {SECRET}\n")
    assert "--output-broker-sasl-pasword" in parse_error([*REQUIRED, "-c", str(path)], capsys)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("forwarder ") and len(out.split()) == 2


def test_real_process_exits_2_without_traceback() -> None:
    code = "import sys; from forwarder.app.cli import parse_args; parse_args(sys.argv[1:])"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")}
    result = subprocess.run(
        [sys.executable, "-c", code, "--config-topic", "h:1/c", "--output-broker", "h:x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("error: --output-broker: port 'x' is not a number")
