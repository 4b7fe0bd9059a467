"""`Settings` as the one definition of the options, typed endpoints, secrets, ESS env names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import MISSING

import pytest

from forwarder.adapters.kafka_endpoint import KafkaEndpoint, Secret
from forwarder.adapters.kafka_uri import KafkaUri
from forwarder.app.cli import build_parser, parse_args, resolve_environment
from forwarder.app.settings import Settings, default_of, env_var, long_option, option_fields

SECRET = "s3cr3t-pw"
REQUIRED = [
    "--config-topic", "h:9092/cfg", "--output-broker", "h:9092", "--status-topic", "h:9092/st"
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for f in option_fields():
        monkeypatch.delenv(env_var(f.name), raising=False)
        if f.metadata["option"].ess_env:
            monkeypatch.delenv(f.metadata["option"].ess_env, raising=False)
    yield


def test_secret_never_prints() -> None:
    s = Secret(SECRET)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", f"{s:>20}", repr([s]), repr({"p": s})):
        assert SECRET not in text
    assert s.reveal() == SECRET
    assert s == Secret(SECRET) and s != Secret("other") and bool(s) and not Secret("")


def test_endpoint_is_typed_and_redacted() -> None:
    settings = parse_args(
        [
            "--config-topic", "SCRAM-SHA-512\\fwd@b1:9092,b2:9093/cfg",
            "--config-topic-sasl-password", SECRET,
            "--output-broker", "b1:9092",
            "--status-topic", "b1:9092/st",
            "-X", f"ssl.key.password={SECRET}x",
            "-X", "linger.ms=7",
        ]
    )  # fmt: skip
    ep = settings.config_endpoint
    assert isinstance(ep, KafkaEndpoint)
    assert (ep.bootstrap, ep.topic) == ("b1:9092,b2:9093", "cfg")
    assert ep.sasl is not None and ep.sasl.mechanism == "SCRAM-SHA-512"
    assert ep.sasl.username == "fwd" and ep.sasl.password == Secret(SECRET)
    conf = ep.librdkafka_config()
    assert conf["sasl.password"] == SECRET and conf["security.protocol"] == "SASL_PLAINTEXT"
    assert conf["linger.ms"] == "7"
    for text in (repr(ep), str(ep), repr(settings), str(settings), repr(ep.sasl)):
        assert SECRET not in text, text
    assert SECRET in settings.secrets() and f"{SECRET}x" in settings.secrets()
    assert settings.output_endpoint.sasl is None
    assert settings.status_endpoint.topic == "st" and settings.storage_endpoint is None


def test_parser_is_derived_from_settings() -> None:
    """Every field is an option with its default, env var and help; nothing else is."""
    parser = build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for f in option_fields():
        action = by_dest[f.name]
        assert f"--{long_option(f.name)}" in action.option_strings
        assert env_var(f.name) in (action.help or "")
        ess = f.metadata["option"].ess_env
        if ess:
            assert ess in (action.help or "")
        required = f.default is MISSING and f.default_factory is MISSING
        assert action.required == (required and f.metadata["option"].kind == "value")
    defaults = parse_args(REQUIRED)
    for f in option_fields():
        if f.name in ("config_topic", "output_broker", "status_topic"):
            continue
        expected = default_of(f.name)
        assert getattr(defaults, f.name) == expected or dict(getattr(defaults, f.name)) == {}


def test_one_default_per_option() -> None:
    """Constructing `Settings` directly gives the same defaults as the parser."""
    direct = Settings(
        config_topic=KafkaUri("h:9092", "cfg"),
        output_broker=KafkaUri("h:9092"),
        status_topic=KafkaUri("h:9092", "st"),
    )
    parsed = parse_args(REQUIRED)
    assert direct == parsed
    assert direct.status_interval == 4000 and direct.fake_pv_period == 1000
    assert direct.service_id.startswith("forwarder-")


ESS_ENV = {
    "CONFIG_TOPIC": "ess:9092/cfg",
    "STATUS_TOPIC": "ess:9092/status",
    "OUTPUT_BROKER": "ess:9092",
    "STORAGE_TOPIC": "ess:9092/store",
    "PV_UPDATE_PERIOD": "750",
    "SERVICE_ID": "ess-service",
    "FAKE_PV_PERIOD": "33",
    "VERBOSITY": "Debug",
    "GRAYLOG_LOGGER_ADDRESS": "graylog:12201",
}


def test_ess_environment_names() -> None:
    settings = parse_args([], environ=ESS_ENV)
    assert settings.config_topic == KafkaUri("ess:9092", "cfg")
    assert settings.status_topic == KafkaUri("ess:9092", "status")
    assert settings.output_broker == KafkaUri("ess:9092")
    assert settings.storage_topic == KafkaUri("ess:9092", "store")
    assert (settings.pv_update_period, settings.fake_pv_period) == (750, 33)
    assert settings.service_id == "ess-service" and settings.verbosity == "Debug"
    assert settings.graylog_logger_address == "graylog:12201"
    assert any("from CONFIG_TOPIC" in n for n in settings.environment_notes)


def test_ess_sasl_password_and_ca_names(tmp_path: object) -> None:
    ca = os.path.join(str(tmp_path), "ca.pem")
    with open(ca, "w") as f:
        f.write("cert")
    env = {
        "CONFIG_TOPIC": "SASL_SSL+SCRAM-SHA-256\\u@k/cfg",
        "CONFIG_TOPIC_SASL_PASSWORD": SECRET,
        "OUTPUT_BROKER": "PLAIN\\u@k:9092",
        "OUTPUT_BROKER_SASL_PASSWORD": "p2",
        "STATUS_TOPIC": "PLAIN\\u@k:9092/st",
        "STATUS_TOPIC_SASL_PASSWORD": "p3",
        "STORAGE_TOPIC": "PLAIN\\u@k:9092/sto",
        "STORAGE_TOPIC_SASL_PASSWORD": "p4",
        "SSL_CA_CERT_FILE": ca,
        "LOG_FILE": os.path.join(str(tmp_path), "f.log"),
    }
    settings = parse_args([], environ=env)
    assert settings.config_topic_sasl_password == Secret(SECRET)
    assert settings.output_broker_sasl_password == Secret("p2")
    assert settings.status_topic_sasl_password == Secret("p3")
    assert settings.storage_topic_sasl_password == Secret("p4")
    assert settings.ssl_ca_cert_file == ca and settings.log_file == env["LOG_FILE"]
    assert settings.config_endpoint.librdkafka_config()["security.protocol"] == "SASL_SSL"
    assert all(SECRET not in n for n in settings.environment_notes)


def test_forwarder_name_wins_over_ess_name_and_is_noted() -> None:
    env = {**ESS_ENV, "FORWARDER_SERVICE_ID": "ours", "FORWARDER_CONFIG_TOPIC": "f:1/c"}
    settings = parse_args([], environ=env)
    assert settings.service_id == "ours"
    assert settings.config_topic == KafkaUri("f:1", "c")
    assert (
        "FORWARDER_SERVICE_ID and SERVICE_ID are both set; using FORWARDER_SERVICE_ID "
        "for --service-id" in settings.environment_notes
    )
    # and the command line beats both
    assert parse_args(["--service-id", "cli"], environ=env).service_id == "cli"


def test_empty_ess_variable_counts_as_unset() -> None:
    env, notes = resolve_environment({"LOG_FILE": "", "VERBOSITY": " "})
    assert "FORWARDER_LOG_FILE" not in env and "FORWARDER_VERBOSITY" not in env
    assert notes == ()


def test_ess_config_file_name(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "f.conf")
    with open(path, "w") as f:
        f.write("config-topic = file:9092/cfg\noutput-broker = file:9092\n")
        f.write("status-topic = file:9092/st\n")
    settings = parse_args([], environ={"CONFIG_FILE": path})
    assert settings.config_topic == KafkaUri("file:9092", "cfg")


def test_bad_ess_value_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(REQUIRED, environ={"PV_UPDATE_PERIOD": "soon"})
    assert exc.value.code == 2
    assert "--pv-update-period: 'soon' is not a whole number" in capsys.readouterr().err


def test_http_admin_token_from_env_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORWARDER_HTTP_ADMIN_TOKEN", SECRET)
    settings = parse_args([*REQUIRED, "--http-port", "8000"])
    assert settings.http_admin_token == Secret(SECRET)
    assert SECRET in settings.secrets()  # redacted from every log line
    assert SECRET not in repr(settings)
    monkeypatch.delenv("FORWARDER_HTTP_ADMIN_TOKEN")
    assert parse_args(REQUIRED).http_admin_token is None
