"""The start-up log lines of `forwarder.app.main` (no service is started)."""

from __future__ import annotations

import logging

import pytest

from forwarder.adapters.kafka_uri import KafkaUri
from forwarder.app.main import log_start
from forwarder.app.settings import Settings


def _start_lines(
    output_broker: KafkaUri, caplog: pytest.LogCaptureFixture
) -> list[tuple[str, str]]:
    caplog.set_level(logging.INFO, logger="forwarder")
    config, status = KafkaUri("localhost:9092", "config"), KafkaUri("localhost:9092", "status")
    log_start(Settings(config_topic=config, status_topic=status, output_broker=output_broker))
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "forwarder"]


def test_an_output_broker_topic_is_logged_as_ignored(caplog: pytest.LogCaptureFixture) -> None:
    lines = _start_lines(KafkaUri("localhost:9092", "whatever"), caplog)
    warnings = [text for level, text in lines if level == "WARNING"]
    assert len(warnings) == 1, lines
    assert "--output-broker" in warnings[0] and "'whatever'" in warnings[0]
    assert "ignored" in warnings[0]


def test_no_warning_without_a_topic(caplog: pytest.LogCaptureFixture) -> None:
    lines = _start_lines(KafkaUri("localhost:9092"), caplog)
    assert [level for level, _ in lines] == ["INFO"]
    assert "starting as service" in lines[0][1]
