"""Shared fixtures: a real Kafka broker for the whole session, started only if asked for."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.forwarder_process import ForwarderProcess
from tests.support.kafka import (
    TansuBroker,
    TopicReader,
    broker_bootstrap,
    external_broker,
)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap of a shared broker: `$FORWARDER_TEST_KAFKA` if set, else a private Tansu
    (see `external_broker`).

    Shared across the session because starting a broker per test costs time; tests stay
    independent by using `unique_topic`.
    """
    with broker_bootstrap(external_broker()) as bootstrap:
        yield bootstrap


@pytest.fixture
def private_broker() -> Iterator[TansuBroker]:
    """A Tansu broker owned by one test, which may stop/restart it (outage tests)."""
    broker = TansuBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def make_reader() -> Iterator[Callable[[str, str], TopicReader]]:
    """Factory for `TopicReader`s that are all closed when the test ends."""
    readers: list[TopicReader] = []

    def factory(bootstrap: str, topic: str) -> TopicReader:
        reader = TopicReader(bootstrap, topic)
        readers.append(reader)
        return reader

    yield factory
    for reader in readers:
        reader.close()


@pytest.fixture
def forwarders() -> Iterator[list[ForwarderProcess]]:
    """Forwarder processes a test starts (append them); all closed when the test ends."""
    started: list[ForwarderProcess] = []
    yield started
    for fp in started:
        fp.close()
