"""Kafka address parsing and the librdkafka settings derived from it."""

from __future__ import annotations

import pytest

from forwarder.adapters.kafka_uri import (
    KafkaUri,
    librdkafka_config,
    parse_host_port,
    parse_kafka_uri,
    redact,
)


def test_plain_broker_and_topic() -> None:
    uri = parse_kafka_uri("localhost:9092/forwarder_config", require_topic=True)
    assert uri == KafkaUri("localhost:9092", "forwarder_config", None, None)


def test_several_brokers_are_normalised() -> None:
    uri = parse_kafka_uri(" a:1, b.example.org:9093 ,[::1]:9094", require_topic=False)
    assert uri.bootstrap == "a:1,b.example.org:9093,[::1]:9094"
    assert uri.topic is None


@pytest.mark.parametrize(
    ("mechanism", "canonical"),
    [("scram-sha-256", "SCRAM-SHA-256"), ("SCRAM-SHA-512", "SCRAM-SHA-512"), ("plain", "PLAIN")],
)
def test_sasl_mechanisms_are_canonical(mechanism: str, canonical: str) -> None:
    uri = parse_kafka_uri(f"{mechanism}\\alice@broker:9092/t", require_topic=True)
    assert (uri.sasl_mechanism, uri.username, uri.bootstrap, uri.topic) == (
        canonical,
        "alice",
        "broker:9092",
        "t",
    )


def test_username_may_contain_at_sign() -> None:
    uri = parse_kafka_uri("PLAIN\\alice@example.org@broker:9092", require_topic=False)
    assert uri.username == "alice@example.org"
    assert uri.bootstrap == "broker:9092"


def test_missing_port_means_9092() -> None:
    uri = parse_kafka_uri("kafka/t", require_topic=True)
    assert uri.bootstrap == "kafka:9092"
    assert parse_kafka_uri("a,b:9093,[::1]", require_topic=False).bootstrap == (
        "a:9092,b:9093,[::1]:9092"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "SASL_SSL+SCRAM-SHA-512\\forwarder@kafka:9093/forwarder_config",
            KafkaUri("kafka:9093", "forwarder_config", "SCRAM-SHA-512", "forwarder", "SASL_SSL"),
        ),
        (
            "SASL_PLAINTEXT+PLAIN\\u@kafka/cfg",
            KafkaUri("kafka:9092", "cfg", "PLAIN", "u", "SASL_PLAINTEXT"),
        ),
        ("sasl_ssl+scram-sha-256\\u@h", KafkaUri("h:9092", None, "SCRAM-SHA-256", "u", "SASL_SSL")),
        ("SSL+h:9093/t", KafkaUri("h:9093", "t", None, None, "SSL")),
        ("PLAIN\\us+er@h:1/t", KafkaUri("h:1", "t", "PLAIN", "us+er")),
    ],
)
def test_ess_protocol_plus_mechanism_spelling(text: str, expected: KafkaUri) -> None:
    uri = parse_kafka_uri(text, require_topic=expected.topic is not None)
    assert uri == expected
    assert parse_kafka_uri(str(uri), require_topic=expected.topic is not None) == uri


def test_protocol_in_address_sets_security_protocol() -> None:
    uri = parse_kafka_uri("SASL_SSL+PLAIN\\u@h:1", require_topic=False)
    config = librdkafka_config(uri, "pw", None, None, {})
    assert config["security.protocol"] == "SASL_SSL"
    assert librdkafka_config(uri, "pw", "sasl_ssl", None, {})["security.protocol"] == "SASL_SSL"
    with pytest.raises(ValueError, match="address says SASL_SSL but --security-protocol says"):
        librdkafka_config(uri, "pw", "SASL_PLAINTEXT", None, {})
    # README-era spelling: derived as before
    old = parse_kafka_uri("PLAIN\\u@h:1", require_topic=False)
    assert librdkafka_config(old, "pw", None, None, {})["security.protocol"] == "SASL_PLAINTEXT"
    assert librdkafka_config(old, "pw", None, "ca.pem", {})["security.protocol"] == "SASL_SSL"


def test_str_round_trips() -> None:
    text = "SCRAM-SHA-512\\bob@h1:1,h2:2/topic.x"
    uri = parse_kafka_uri(text, require_topic=True)
    assert str(uri) == text
    assert parse_kafka_uri(str(uri), require_topic=True) == uri


def test_an_optional_topic_may_be_given_or_left_out() -> None:
    assert parse_kafka_uri("h:1/whatever", require_topic=None) == KafkaUri("h:1", "whatever")
    assert parse_kafka_uri("PLAIN\\u@h:1", require_topic=None) == KafkaUri(
        "h:1", None, "PLAIN", "u"
    )


@pytest.mark.parametrize(
    ("text", "require_topic", "fragment"),
    [
        ("", True, "empty Kafka address"),
        ("localhost:abc/t", True, "port 'abc' is not a number"),
        ("localhost:70000/t", True, "out of range"),
        ("localhost:0", False, "out of range"),
        (":9092/t", True, "missing host"),
        ("/t", True, "missing host"),
        ("a:1,,b:2", False, "empty address"),
        ("localhost:9092", True, "missing topic"),
        ("localhost:9092/", True, "topic after '/' is empty"),
        ("localhost:9092/t", False, "not allowed"),
        ("localhost:9092/bad topic", True, "invalid topic name"),
        # An optional topic (the output broker's) is still checked when given.
        ("localhost:9092/", None, "topic after '/' is empty"),
        ("localhost:9092/bad topic", None, "invalid topic name"),
        ("GSSAPI\\u@localhost:9092", False, "unknown SASL mechanism 'GSSAPI'"),
        ("PLAIN\\@localhost:9092", False, "username is empty"),
        ("ho st:1", False, "invalid host name"),
        ("[::1:9092", False, "malformed IPv6"),
        ("TLS+PLAIN\\u@h:1", False, "unknown security protocol 'TLS' before '+'"),
        ("SASL_SSL+h:1", False, "SASL_SSL needs credentials"),
        ("SASL_SSL+u@h:1", False, "must be written MECHANISM\\username"),
        ("SSL+PLAIN\\u@h:1", False, "SSL cannot carry SASL credentials"),
    ],
)
def test_errors_are_one_clear_sentence(
    text: str, require_topic: bool | None, fragment: str
) -> None:
    with pytest.raises(ValueError) as err:
        parse_kafka_uri(text, require_topic=require_topic)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_credentials_without_mechanism_are_not_echoed() -> None:
    with pytest.raises(ValueError) as err:
        parse_kafka_uri("alice:s3cr3t@broker:9092", require_topic=False)
    assert "s3cr3t" not in str(err.value)
    assert "MECHANISM\\username" in str(err.value)


def test_parse_host_port() -> None:
    assert parse_host_port("graylog:12201") == ("graylog", 12201)
    assert parse_host_port("[fe80::1]:5") == ("fe80::1", 5)
    with pytest.raises(ValueError, match="missing port"):
        parse_host_port("graylog")


def test_config_without_sasl() -> None:
    uri = parse_kafka_uri("h:1,h:2", require_topic=False)
    assert librdkafka_config(uri, None, None, None, {}) == {"bootstrap.servers": "h:1,h:2"}


def test_config_with_sasl_plaintext() -> None:
    uri = parse_kafka_uri("SCRAM-SHA-256\\u@h:1", require_topic=False)
    assert librdkafka_config(uri, "pw", None, None, {}) == {
        "bootstrap.servers": "h:1",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "u",
        "sasl.password": "pw",
        "security.protocol": "SASL_PLAINTEXT",
    }


def test_ca_file_upgrades_sasl_to_ssl() -> None:
    uri = parse_kafka_uri("PLAIN\\u@h:1", require_topic=False)
    config = librdkafka_config(uri, "pw", None, "/ca.pem", {})
    assert config["security.protocol"] == "SASL_SSL"
    assert config["ssl.ca.location"] == "/ca.pem"


def test_explicit_protocol_wins_and_is_canonical() -> None:
    uri = parse_kafka_uri("PLAIN\\u@h:1", require_topic=False)
    assert librdkafka_config(uri, "pw", "sasl_ssl", None, {})["security.protocol"] == "SASL_SSL"
    plain = parse_kafka_uri("h:1", require_topic=False)
    assert librdkafka_config(plain, None, None, "/ca.pem", {})["security.protocol"] == "SSL"
    assert librdkafka_config(plain, None, "ssl", None, {})["security.protocol"] == "SSL"


def test_protocol_errors() -> None:
    sasl = parse_kafka_uri("PLAIN\\u@h:1", require_topic=False)
    with pytest.raises(ValueError, match="cannot carry the SASL credentials"):
        librdkafka_config(sasl, "pw", "PLAINTEXT", None, {})
    with pytest.raises(ValueError, match="unknown security protocol 'TLS'"):
        librdkafka_config(sasl, "pw", "TLS", None, {})


def test_sasl_without_password_names_the_option() -> None:
    uri = parse_kafka_uri("PLAIN\\u@h:1", require_topic=False)
    with pytest.raises(ValueError, match="--output-broker-sasl-password is required"):
        librdkafka_config(
            uri, None, None, None, {}, password_option="--output-broker-sasl-password"
        )
    with pytest.raises(ValueError, match="SASL password is required"):
        librdkafka_config(uri, "", None, None, {})


def test_extra_settings_come_last() -> None:
    uri = parse_kafka_uri("PLAIN\\u@h:1", require_topic=False)
    config = librdkafka_config(
        uri, "pw", None, None, {"security.protocol": "SASL_SSL", "linger.ms": "5"}
    )
    assert config["security.protocol"] == "SASL_SSL"
    assert config["linger.ms"] == "5"
    assert list(config)[-1] == "linger.ms"


def test_redact_hides_passwords_and_secrets() -> None:
    config = {
        "sasl.password": "pw",
        "ssl.key.password": "kp",
        "sasl.oauthbearer.client.secret": "cs",
        "bootstrap.servers": "h:1",
    }
    assert redact(config) == {
        "sasl.password": "***",
        "ssl.key.password": "***",
        "sasl.oauthbearer.client.secret": "***",
        "bootstrap.servers": "h:1",
    }
    assert config["sasl.password"] == "pw"


#: Every librdkafka setting (CONFIGURATION.md) whose value is, or can carry, a secret.
SECRET_SETTINGS = [
    "sasl.password",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.keystore.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.extensions",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
]
#: Neighbours that are not secret and stay readable (paths, names, public keys).
PLAIN_SETTINGS = [
    "sasl.username",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.certificate.pem",
    "ssl.ca.pem",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.token.endpoint.url",
    "linger.ms",
]


def test_every_setting_that_can_carry_a_secret_is_redacted() -> None:
    config = {key: f"value-of-{key}" for key in SECRET_SETTINGS + PLAIN_SETTINGS}
    shown = redact(config)
    assert [k for k in SECRET_SETTINGS if shown[k] != "***"] == []
    assert [k for k in PLAIN_SETTINGS if shown[k] != config[k]] == []
