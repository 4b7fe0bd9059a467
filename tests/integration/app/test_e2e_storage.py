"""End to end: `--storage-topic` keeps the configuration across restarts.

The storage topic is read back with an independent consumer and decoded with
streaming_data_types; restored configurations are checked through the status topic and the
data actually reaching Kafka.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from streaming_data_types.fbschemas.forwarder_config_update_fc00.UpdateType import UpdateType
from streaming_data_types.forwarder_config_update_rf5k import StreamInfo as Rf5kStreamInfo
from streaming_data_types.forwarder_config_update_rf5k import serialise_rf5k

from forwarder.core.config_messages import UpdateKind, encode_config_message
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.forwarder_process import ForwarderProcess, send_config
from tests.support.kafka import (
    Msg,
    TansuBroker,
    TopicReader,
    create_topic,
    decode,
    free_port,
    produce,
    unique_topic,
)

pytestmark = pytest.mark.integration

Reader = Callable[[str, str], TopicReader]
Status = dict[str, Any]
FAKE_ARGS = ["--fake-pv-period", "100"]


def _start(
    bootstrap: str,
    storage_topic: str,
    forwarders: list[ForwarderProcess],
    args: list[str] | None = None,
    service_id: str = "storage-test",
) -> ForwarderProcess:
    fp = ForwarderProcess(
        bootstrap,
        storage_topic=storage_topic,
        args=[*FAKE_ARGS, "--service-id", service_id, *(args or [])],
    )
    forwarders.append(fp)
    return fp.start()


def _newest_status(bootstrap: str, topic: str, since_ms: float, timeout: float = 15) -> Status:
    """The newest status produced at or after `since_ms`."""
    with TopicReader(bootstrap, topic) as reader:
        msgs = reader.wait_for(
            lambda ms: any(m.schema_id == "x5f2" and m.timestamp_ms >= since_ms for m in ms),
            timeout,
        )
    _, status = decode([m for m in msgs if m.schema_id == "x5f2"][-1])
    result: Status = json.loads(status.status_json)
    return result


def _configured(status: Status) -> set[tuple[str, str, str, str, bool]]:
    return {
        (s["channel_name"], s["schema"], s["output_topic"], s["protocol"], s["periodic"])
        for s in status["streams"]
    }


def _as_status(spec: StreamSpec) -> tuple[str, str, str, str, bool]:
    return (spec.channel, spec.schema, spec.topic, spec.protocol.name, spec.periodic)


def _wait_for_data(bootstrap: str, topic: str, since_ms: float, sources: set[str]) -> None:
    """f144 values from every source in `sources`, produced at or after `since_ms`."""

    def fresh_sources(messages: list[Msg]) -> set[str]:
        found = set()
        for m in messages:
            if m.schema_id == "f144" and m.timestamp_ms >= since_ms:
                found.add(decode(m)[1].source_name)
        return found

    with TopicReader(bootstrap, topic) as reader:
        reader.wait_for(lambda ms: fresh_sources(ms) >= sources, timeout=20)


def _storage_after(reader: TopicReader, count: int, timeout: float = 15) -> Any:
    """Decoded newest storage message once at least `count` messages are there."""
    msgs = reader.wait_for(lambda ms: len(ms) >= count, timeout)
    newest = max(msgs, key=lambda m: (m.timestamp_ms, m.offset))
    schema, update = decode(newest)
    assert schema == "fc00"
    return update


def test_storage_topic_holds_the_whole_configuration_after_each_change(
    kafka_bootstrap: str, make_reader: Reader, forwarders: list[ForwarderProcess]
) -> None:
    storage = unique_topic("storage")
    create_topic(kafka_bootstrap, storage, partitions=1)
    fp = _start(kafka_bootstrap, storage, forwarders, args=["--pv-update-period", "1000"])
    reader = make_reader(kafka_bootstrap, storage)
    data = unique_topic("data")
    a = StreamSpec("FAKE:ST:A", "f144", data, Protocol.FAKE, periodic=True)
    b = StreamSpec("FAKE:ST:B", "f144", data, Protocol.FAKE, periodic=False)
    c = StreamSpec("FAKE:ST:C", "tdct", unique_topic("data"), Protocol.CA, periodic=False)

    def rows(update: Any) -> set[tuple[str, str, str, int, bool]]:
        return {
            (s.channel, s.schema, s.topic, s.protocol, bool(s.periodic)) for s in update.streams
        }

    def row(spec: StreamSpec) -> tuple[str, str, str, int, bool]:
        return (spec.channel, spec.schema, spec.topic, int(spec.protocol), spec.periodic)

    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, [a, b])
    update = _storage_after(reader, 1)
    assert update.config_change == UpdateType.ADD
    assert rows(update) == {row(a), row(b)}

    # An incremental ADD is stored as the whole configuration, not as the increment.
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, [c])
    update = _storage_after(reader, 2)
    assert update.config_change == UpdateType.ADD
    assert rows(update) == {row(a), row(b), row(c)}

    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.REMOVE, [a])
    update = _storage_after(reader, 3)
    assert rows(update) == {row(b), row(c)}

    # Same stream, other periodic flag: an update, stored with the new flag.
    b_periodic = StreamSpec(b.channel, b.schema, b.topic, b.protocol, periodic=True)
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, [b_periodic])
    update = _storage_after(reader, 4)
    assert rows(update) == {row(b_periodic), row(c)}

    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.REMOVEALL, [])
    update = _storage_after(reader, 5)
    assert update.config_change == UpdateType.REMOVEALL
    assert update.streams == []
    assert all(m.key == b"storage-test" for m in reader.messages)
    # A change that changes nothing (REMOVEALL of nothing) is not stored again.
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.REMOVEALL, [])
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, [b])
    update = _storage_after(reader, 6)
    assert rows(update) == {row(b)}
    assert len(reader.messages) == 6, reader.summary()


def test_restart_restores_the_stored_configuration(
    kafka_bootstrap: str, make_reader: Reader, forwarders: list[ForwarderProcess]
) -> None:
    storage = unique_topic("storage")  # auto-created by the first write, as in the field
    fp = _start(kafka_bootstrap, storage, forwarders)
    data = unique_topic("data")
    a = StreamSpec("FAKE:RS:A", "f144", data, Protocol.FAKE, periodic=True)
    b = StreamSpec("FAKE:RS:B", "f144", data, Protocol.FAKE)
    removed = StreamSpec("FAKE:RS:GONE", "f144", data, Protocol.FAKE)
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, [a, b, removed])
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.REMOVE, [removed])
    make_reader(kafka_bootstrap, storage).wait_for(lambda ms: len(ms) >= 2, timeout=15)
    assert fp.stop() == 0

    # A new instance with a fresh config topic: nothing is sent to it.
    started_ms = time.time() * 1000
    second = _start(kafka_bootstrap, storage, forwarders)
    status = _newest_status(kafka_bootstrap, second.status_topic, started_ms)
    assert _configured(status) == {_as_status(a), _as_status(b)}
    _wait_for_data(kafka_bootstrap, data, started_ms, {a.channel, b.channel})
    assert "Restored 2 streams" in second.log()


def test_skip_retrieval_restores_nothing(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    storage = unique_topic("storage")
    data = unique_topic("data")
    spec = StreamSpec("FAKE:SKIP:A", "f144", data, Protocol.FAKE)
    produce(kafka_bootstrap, storage, [encode_config_message(UpdateKind.ADD, [spec])])

    started_ms = time.time() * 1000
    fp = _start(kafka_bootstrap, storage, forwarders, args=["--skip-retrieval"])
    status = _newest_status(kafka_bootstrap, fp.status_topic, started_ms)
    assert status["streams"] == []
    with TopicReader(kafka_bootstrap, data) as reader:
        assert not [m for m in reader.poll_messages(1.0) if m.timestamp_ms >= started_ms]

    # The same storage without --skip-retrieval is restored (the test can tell).
    assert fp.stop() == 0
    started_ms = time.time() * 1000
    again = _start(kafka_bootstrap, storage, forwarders)
    status = _newest_status(kafka_bootstrap, again.status_topic, started_ms)
    assert _configured(status) == {_as_status(spec)}


def test_corrupt_newest_message_falls_back_to_the_previous_valid_one(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    storage = unique_topic("storage")
    create_topic(kafka_bootstrap, storage, partitions=1)
    data = unique_topic("data")
    old = StreamSpec("FAKE:CORR:OLD", "f144", data, Protocol.FAKE)
    good = StreamSpec("FAKE:CORR:GOOD", "f144", data, Protocol.FAKE)
    valid_header_bad_body = b"\x08\x00\x00\x00fc00" + bytes(range(200, 256)) * 3
    for payload in (
        encode_config_message(UpdateKind.ADD, [old]),
        encode_config_message(UpdateKind.ADD, [good]),  # newest valid: this one wins
        b"\xde\xad\xbe\xef garbage that is no flatbuffer at all",
        valid_header_bad_body,
        b"",
    ):
        produce(kafka_bootstrap, storage, [payload], key="storage-test")

    started_ms = time.time() * 1000
    fp = _start(kafka_bootstrap, storage, forwarders)
    status = _newest_status(kafka_bootstrap, fp.status_topic, started_ms)
    assert _configured(status) == {_as_status(good)}
    _wait_for_data(kafka_bootstrap, data, started_ms, {good.channel})
    log = fp.log()
    assert "Traceback" not in log
    assert "Skipping unusable stored configuration" in log


def test_hand_written_rf5k_add_is_restored(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    storage = unique_topic("storage")
    data = unique_topic("data")
    payload = serialise_rf5k(
        UpdateType.ADD,
        [
            Rf5kStreamInfo("FAKE:RF:1", "f144", data, Protocol.FAKE),
            Rf5kStreamInfo("FAKE:RF:2", "f144", data, Protocol.FAKE),
        ],
    )
    produce(kafka_bootstrap, storage, [payload])

    started_ms = time.time() * 1000
    fp = _start(kafka_bootstrap, storage, forwarders)
    status = _newest_status(kafka_bootstrap, fp.status_topic, started_ms)
    assert _configured(status) == {
        ("FAKE:RF:1", "f144", data, "FAKE", False),
        ("FAKE:RF:2", "f144", data, "FAKE", False),
    }
    _wait_for_data(kafka_bootstrap, data, started_ms, {"FAKE:RF:1", "FAKE:RF:2"})


@pytest.mark.parametrize("existing", [True, False], ids=["empty", "missing"])
def test_empty_or_missing_storage_topic_starts_with_no_streams(
    kafka_bootstrap: str,
    make_reader: Reader,
    forwarders: list[ForwarderProcess],
    existing: bool,
) -> None:
    storage = unique_topic("storage")
    if existing:
        create_topic(kafka_bootstrap, storage, partitions=1)
    started_ms = time.time() * 1000
    fp = _start(kafka_bootstrap, storage, forwarders)
    status = _newest_status(kafka_bootstrap, fp.status_topic, started_ms)
    assert status["streams"] == []
    log = fp.log()
    assert "Traceback" not in log
    assert " ERROR " not in log, log

    # It is usable: the first change is forwarded and stored.
    spec = StreamSpec("FAKE:EMPTY:1", "f144", unique_topic("data"), Protocol.FAKE)
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, [spec])
    update = _storage_after(make_reader(kafka_bootstrap, storage), 1)
    assert update.config_change == UpdateType.ADD
    assert [s.channel for s in update.streams] == [spec.channel]


def test_unreadable_storage_topic_holds_configuration_until_it_is_restored(
    kafka_bootstrap: str, private_broker: TansuBroker, forwarders: list[ForwarderProcess]
) -> None:
    """The storage topic's broker is down at start: the forwarder says so (error log,
    status), does not start with an empty configuration that its next change would store
    over the real one, holds config messages, and restores once the broker is back."""
    storage_uri = f"{private_broker.bootstrap}/{unique_topic('storage')}"
    private_broker.stop()
    started_ms = time.time() * 1000
    fp = ForwarderProcess(
        kafka_bootstrap, args=[*FAKE_ARGS, "--storage-topic", storage_uri], verbosity="Info"
    )
    forwarders.append(fp)
    fp.start(wait_ready=True)
    data = unique_topic("data")
    spec = StreamSpec("FAKE:HELD:1", "f144", data, Protocol.FAKE)
    send_config(kafka_bootstrap, fp.config_topic, UpdateKind.ADD, [spec])
    status = _newest_status(kafka_bootstrap, fp.status_topic, started_ms)
    assert status["restore"]["pending"] is True, status
    assert "cannot read storage topic" in status["restore"]["error"]
    time.sleep(2.0)  # the ADD is there; it must not be applied while the restore is pending
    held = fp.last_status()
    assert held["streams"] == [] and held["restore"]["pending"], held
    assert "Configuration NOT restored from the storage topic" in fp.log()

    private_broker.start()  # empty (memory-only broker): nothing stored
    since = time.time() * 1000
    deadline = time.monotonic() + 40
    while True:
        status = _newest_status(kafka_bootstrap, fp.status_topic, since)
        if "restore" not in status and _configured(status) == {_as_status(spec)}:
            break
        assert time.monotonic() < deadline, f"{status}\n{fp.log()[-3000:]}"
        since = time.time() * 1000
    _wait_for_data(kafka_bootstrap, data, since, {spec.channel})


def test_restore_finds_the_newest_configuration_at_the_end_of_a_long_history(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    """Forty stored configurations of 6,000 streams (~0.5 MB each, lz4-compressed as the
    forwarder writes them), then the newest, small one: the forwarder restores that one
    and reads a couple of messages, not the history."""
    from forwarder.adapters.kafka_config import TopicWriter

    storage = unique_topic("storage")
    create_topic(kafka_bootstrap, storage, partitions=1)
    writer = TopicWriter({"bootstrap.servers": kafka_bootstrap, "log_level": 0}, storage)
    for generation in range(40):
        old = [
            StreamSpec(f"OLD{generation}:DEV{i}:VALUE", "f144", "old_data", Protocol.CA)
            for i in range(6000)
        ]
        writer.write(encode_config_message(UpdateKind.ADD, old), key=b"storage-test")
        assert writer.flush(30.0) == 0
    data = unique_topic("data")
    newest = [StreamSpec(f"FAKE:LONG:{i}", "f144", data, Protocol.FAKE) for i in range(2)]
    writer.write(encode_config_message(UpdateKind.ADD, newest), key=b"storage-test")
    assert writer.flush(30.0) == 0

    started_ms = time.time() * 1000
    fp = _start(kafka_bootstrap, storage, forwarders)
    status = _newest_status(kafka_bootstrap, fp.status_topic, started_ms)
    assert _configured(status) == {_as_status(s) for s in newest}
    _wait_for_data(kafka_bootstrap, data, started_ms, {s.channel for s in newest})
    log = fp.log()
    assert "Restored 2 streams" in log
    read = re.search(r"storage topic '[^']+': (\d+) messages read", log)
    assert read is not None and int(read.group(1)) <= 3, log[-3000:]


def test_signal_while_the_restore_is_pending_stops_within_5_s(
    kafka_bootstrap: str, forwarders: list[ForwarderProcess]
) -> None:
    closed = f"127.0.0.1:{free_port()}"  # the storage topic's broker: nothing listens
    fp = ForwarderProcess(
        kafka_bootstrap, args=[*FAKE_ARGS, "--storage-topic", f"{closed}/storage"]
    )
    forwarders.append(fp)
    fp.start(wait_ready=True)
    deadline = time.monotonic() + 20
    while "Configuration NOT restored" not in fp.log():
        assert time.monotonic() < deadline, fp.log()[-3000:]
        time.sleep(0.1)
    time.sleep(1.5)  # into the next attempt (1 s later), which waits for the broker
    started = time.monotonic()
    code = fp.stop()
    elapsed = time.monotonic() - started
    log = fp.log()
    assert code == 0, log[-3000:]
    assert elapsed < 5, f"{elapsed:.1f} s\n{log[-3000:]}"
    assert "Shutdown took too long" not in log, log[-3000:]
