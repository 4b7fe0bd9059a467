"""The controller over in-memory ports: no broker, no EPICS server, fake clock.

Configuration apply, restore choice, re-sends, status timing and shutdown order are
decided here; the real adapters have their own tests against the real broker.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from streaming_data_types.status_x5f2 import deserialise_x5f2

from forwarder.core.config_messages import UpdateKind, encode_config_message
from forwarder.core.counters import Drop
from forwarder.core.streams import Protocol, StreamFilter, StreamSpec
from tests.support.fake_ports import (
    SERVICE_ID,
    FakeStorage,
    Rig,
    make_rig,
    stored,
)

A = StreamSpec("PV:A", "f144", "data", Protocol.CA)
B = StreamSpec("PV:B", "f144", "data", Protocol.CA)
C = StreamSpec("PV:C", "tdct", "chopper", Protocol.PVA)
A2 = StreamSpec("PV:A", "f144", "other", Protocol.CA)  # same PV, second topic
F = StreamSpec("FAKE:1", "f144", "data", Protocol.FAKE)


def msg(kind: UpdateKind, streams: list[StreamSpec], schema: str = "fc00") -> bytes:
    return encode_config_message(kind, streams, schema)


def remove(*filters: StreamFilter) -> bytes:
    from streaming_data_types.fbschemas.forwarder_config_update_rf5k.Protocol import (
        Protocol as WireProtocol,
    )
    from streaming_data_types.fbschemas.forwarder_config_update_rf5k.UpdateType import (
        UpdateType,
    )
    from streaming_data_types.forwarder_config_update_rf5k import StreamInfo, serialise_rf5k

    return serialise_rf5k(
        UpdateType.REMOVE,
        [StreamInfo(f.channel, f.schema, f.topic, WireProtocol.CA) for f in filters],
    )


def started(**kwargs: object) -> Rig:
    rig = make_rig(**kwargs)  # type: ignore[arg-type]
    rig.controller.start()
    return rig


def configured(rig: Rig) -> set[StreamSpec]:
    return set(rig.controller.registry.streams())


def last_status(rig: Rig) -> dict[str, Any]:
    payload, key = rig.status_writer.written[-1]
    assert key == SERVICE_ID.encode()
    result: dict[str, Any] = json.loads(deserialise_x5f2(payload).status_json)
    return result


# -- apply ----------------------------------------------------------------------------------
def test_add_subscribes_once_per_pv_and_stores_the_whole_configuration() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A, B]))
    rig.send(msg(UpdateKind.ADD, [A2]))
    assert configured(rig) == {A, B, A2}
    assert rig.events == ["subscribe PV:A", "subscribe PV:B"]
    assert rig.storage_writer.stored() == [{A, B}, {A, B, A2}]
    assert all(key == SERVICE_ID.encode() for _, key in rig.storage_writer.written)


def test_identical_add_changes_nothing_and_stores_nothing() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A]))
    statuses = rig.statuses()
    rig.send(msg(UpdateKind.ADD, [A]))
    assert len(rig.storage_writer.written) == 1
    assert rig.statuses() == statuses  # no change, no extra status


def test_remove_unsubscribes_only_when_the_last_stream_of_a_pv_goes() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A, A2, B]))
    rig.send(remove(StreamFilter(topic="other")))
    assert configured(rig) == {A, B}
    assert "unsubscribe PV:A" not in rig.events
    rig.send(remove(StreamFilter(channel="PV:?")))
    assert configured(rig) == set()
    assert {"unsubscribe PV:A", "unsubscribe PV:B"} <= set(rig.events)
    assert rig.storage_writer.stored()[-2:] == [{A, B}, set()]


def test_replace_keeps_unchanged_streams_subscribed() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A, B]))
    rig.events.clear()
    rig.send(msg(UpdateKind.REPLACE, [B, C]))
    assert configured(rig) == {B, C}
    assert rig.events == ["unsubscribe PV:A", "subscribe PV:C"]
    assert rig.storage_writer.stored()[-1] == {B, C}


def test_remove_all_stores_an_empty_configuration() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A, C]))
    rig.send(msg(UpdateKind.REMOVEALL, []))
    assert configured(rig) == set()
    payload, _ = rig.storage_writer.written[-1]
    from forwarder.core.config_messages import decode_config_message

    assert decode_config_message(payload, rf5k_periodic=False).kind == UpdateKind.REMOVEALL


def test_rejected_streams_are_counted_and_the_valid_ones_still_apply() -> None:
    rig = started()
    bad = StreamSpec("PV:BAD", "nope", "data", Protocol.CA)
    rig.send(msg(UpdateKind.ADD, [A, bad]))
    assert configured(rig) == {A}
    assert rig.controller.counters.drops[Drop.BAD_CONFIG] == 1
    assert rig.storage_writer.stored() == [{A}]


def test_garbage_is_counted_and_changes_nothing() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A]))
    rig.send(b"\x00\x01garbage", msg(UpdateKind.ADD, [B])[:12])
    assert configured(rig) == {A}
    assert rig.controller.counters.drops[Drop.BAD_CONFIG] == 2
    assert len(rig.storage_writer.written) == 1


def test_messages_of_one_batch_apply_in_the_order_given() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A]), remove(StreamFilter(channel="PV:A")))
    assert configured(rig) == set()


def test_fake_monitors_are_ticked_by_the_controllers_scheduler() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [F]))
    ticks: list[int] = []
    hook = rig.factory.timer_hooks[Protocol.FAKE]
    hook(500_000_000, ticks.append)
    first = rig.clock.wall
    rig.controller.step()
    rig.clock.advance(0.3)
    rig.controller.step()
    rig.clock.advance(0.2)
    rig.controller.step()
    # First tick at once, then one per period, each stamped with wall-clock time.
    assert ticks == [first, first + 500_000_000]


# -- restore choice -------------------------------------------------------------------------
def test_restore_applies_the_newest_valid_configuration_without_storing_it() -> None:
    storage = FakeStorage([stored("ADD", [B, C]), stored("ADD", [A])])
    rig = started(storage=storage)
    assert configured(rig) == {B, C}
    assert storage.read == 1  # older history not even read
    assert rig.storage_writer.written == []


def test_restore_skips_a_corrupt_newest_message() -> None:
    storage = FakeStorage([b"\x00\x00\x00\x00fc00garbage", stored("ADD", [A])])
    rig = started(storage=storage)
    assert configured(rig) == {A}
    assert storage.read == 2


def test_restore_skips_partial_changes_and_stops_at_remove_all() -> None:
    storage = FakeStorage(
        [remove(StreamFilter(channel="X")), stored("REMOVEALL", []), stored("ADD", [A])]
    )
    rig = started(storage=storage)
    assert configured(rig) == set()
    assert storage.read == 2


def test_restore_with_nothing_stored_starts_empty() -> None:
    rig = started(storage=FakeStorage([]))
    assert configured(rig) == set()


def test_restore_turned_off_reads_nothing() -> None:
    rig = started(storage=None)
    assert configured(rig) == set()


# -- re-sends -------------------------------------------------------------------------------
def test_periodic_stream_is_resent_after_a_quiet_period_with_now_as_kafka_time() -> None:
    periodic = StreamSpec("PV:A", "f144", "data", Protocol.CA, periodic=True)
    once = StreamSpec("PV:B", "f144", "data", Protocol.CA, periodic=False)
    rig = started(pv_update_period_ms=1000)
    rig.send(msg(UpdateKind.ADD, [periodic, once]))
    ca = rig.monitors()
    ts_ns = rig.clock.wall - 5_000_000
    for name in ("PV:A", "PV:B"):
        ca.connect(name, ts_ns)
        ca.update(name, 1.5, ts_ns)
    rig.sink.sent.clear()
    rig.clock.advance(0.5)
    rig.controller.step()
    assert rig.sink.sent == []  # not due yet
    rig.clock.advance(0.6)
    rig.controller.step()
    resent = rig.sink.sent
    assert {m.key for m in resent} == {b"PV:A"}
    assert {m.schema for m in resent} == {"f144", "al00", "ep01"}
    assert all(m.timestamp_ms == rig.clock.wall // 1_000_000 for m in resent)
    ca.update("PV:A", 2.5, rig.clock.wall)  # fresh data postpones the next re-send
    rig.sink.sent.clear()
    rig.clock.advance(0.9)
    rig.controller.step()
    assert rig.sink.of("f144") == []
    rig.clock.advance(0.2)
    rig.controller.step()
    assert len(rig.sink.of("f144")) == 1
    assert rig.controller.counters.resends == 2


def test_rf5k_streams_are_periodic_only_when_a_period_is_set() -> None:
    from streaming_data_types.fbschemas.forwarder_config_update_rf5k.Protocol import (
        Protocol as WireProtocol,
    )
    from streaming_data_types.fbschemas.forwarder_config_update_rf5k.UpdateType import (
        UpdateType,
    )
    from streaming_data_types.forwarder_config_update_rf5k import StreamInfo, serialise_rf5k

    add = serialise_rf5k(UpdateType.ADD, [StreamInfo("PV:A", "f144", "data", WireProtocol.CA)])
    with_period = started(pv_update_period_ms=1000)
    with_period.send(add)
    without = started()
    without.send(add)
    assert [s.periodic for s in with_period.controller.registry.streams()] == [True]
    assert [s.periodic for s in without.controller.registry.streams()] == [False]


# -- status timing --------------------------------------------------------------------------
def test_status_at_start_every_interval_and_after_each_change() -> None:
    rig = started(status_interval_ms=2000)
    rig.controller.step()
    assert rig.statuses() == 1  # at start
    rig.clock.advance(1.0)
    rig.controller.step()
    assert rig.statuses() == 1
    rig.send(msg(UpdateKind.ADD, [A]))
    assert rig.statuses() == 2  # right after the change
    assert [s["channel_name"] for s in last_status(rig)["streams"]] == ["PV:A"]
    rig.clock.advance(1.0)
    rig.controller.step()
    assert rig.statuses() == 3  # the interval goes on from the start
    rig.clock.advance(10.0)
    rig.controller.step()
    assert rig.statuses() == 4  # missed ticks are skipped, not sent in a burst
    payload, _ = rig.status_writer.written[-1]
    x5f2 = deserialise_x5f2(payload)
    assert (x5f2.service_id, x5f2.software_version, x5f2.update_interval) == (
        SERVICE_ID,
        "9.9.9",
        2000,
    )


def test_control_loop_waits_no_longer_than_the_next_timer() -> None:
    rig = started(status_interval_ms=2000)
    rig.controller.step()
    rig.clock.advance(1.95)
    rig.controller.step()
    assert rig.config.polls[-1] == pytest.approx(0.05)
    rig.clock.advance(0.5)
    rig.controller.step()
    assert rig.config.polls[-1] == 0.0  # overdue: no waiting


# -- shutdown -------------------------------------------------------------------------------
def test_shutdown_reports_what_could_not_be_delivered() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A, C]))
    rig.sink.undeliverable = 7
    assert rig.controller.shutdown(flush_timeout_s=1.5) == 7
    assert rig.controller.undelivered == 7
    assert rig.sink.closed_with == 1.5
    assert rig.config.closed
    assert rig.monitors(Protocol.CA).closed and rig.monitors(Protocol.PVA).closed


def test_shutdown_flushes_before_stopping_any_monitor_and_forwards_nothing_meanwhile() -> None:
    rig = started()
    rig.send(msg(UpdateKind.ADD, [A, C]))
    ca = rig.monitors(Protocol.CA)
    ca.connect("PV:A", rig.clock.wall)
    rig.sink.sent.clear()
    rig.events.clear()
    original_close = rig.sink.close

    def close_while_pv_updates(timeout_s: float) -> int:
        ca.update("PV:A", 1.0, rig.clock.wall)  # an update during the flush
        return original_close(timeout_s)

    rig.sink.close = close_while_pv_updates  # type: ignore[method-assign]
    rig.controller.shutdown()
    assert rig.events[0] == "sink.close"
    assert set(rig.events[1:]) == {"unsubscribe PV:A", "unsubscribe PV:C", "close CA", "close PVA"}
    assert rig.sink.sent == []


# -- restore that cannot read the storage topic ---------------------------------------------
def test_unreadable_storage_holds_config_and_retries_with_backoff_until_restored() -> None:
    storage = FakeStorage([stored("ADD", [B, C]), stored("ADD", [A])], fail="broker down")
    rig = make_rig(storage=storage)
    rig.config.push(msg(UpdateKind.ADD, [A2]))  # sent meanwhile: must wait, not apply
    rig.controller.start()
    rig.controller.step()
    assert rig.controller.restore.pending
    assert configured(rig) == set()
    assert rig.config.polls == []  # config stays in the config topic
    status = last_status(rig)
    assert status["restore"] == {"pending": True, "attempts": 1, "error": "broker down"}
    assert rig.storage_writer.written == []  # an empty configuration is never stored
    rig.clock.advance(0.9)
    rig.controller.step()
    assert rig.controller.restore.attempts == 1  # first retry after 1 s
    rig.clock.advance(0.2)
    rig.controller.step()
    assert rig.controller.restore.attempts == 2
    rig.clock.advance(1.5)
    rig.controller.step()
    assert rig.controller.restore.attempts == 2  # then after 2 s
    storage.fail = None
    rig.clock.advance(0.6)
    rig.controller.step()
    assert rig.controller.restore.attempts == 3
    assert not rig.controller.restore.pending
    assert configured(rig) == {B, C}  # the newest, never an older one
    assert "restore" not in last_status(rig)
    rig.controller.step()
    assert configured(rig) == {B, C, A2}  # the held config message, applied after
    assert rig.storage_writer.stored() == [{B, C, A2}]


# -- failed subscriptions -------------------------------------------------------------------
def test_failed_subscription_stays_in_status_with_its_error_and_is_retried_with_backoff() -> None:
    rig = started()
    rig.factory.failing["PV:B"] = OSError("no route to IOC")
    rig.send(msg(UpdateKind.ADD, [A, B]))
    assert configured(rig) == {A, B}
    assert rig.storage_writer.stored() == [{A, B}]  # configured, so stored
    entries = {s["channel_name"]: s for s in last_status(rig)["streams"]}
    assert entries["PV:B"]["connection"] == "SUBSCRIBE_FAILED"
    assert entries["PV:B"]["error"] == "OSError: no route to IOC"
    assert last_status(rig)["summary"]["streams"] == 2
    assert last_status(rig)["summary"]["failed"] == 1
    tries = lambda: rig.events.count("subscribe PV:B")  # noqa: E731
    assert tries() == 1
    rig.clock.advance(0.9)
    rig.controller.step()
    assert tries() == 1
    rig.clock.advance(0.2)
    rig.controller.step()
    assert tries() == 2  # after 1 s
    rig.clock.advance(1.5)
    rig.controller.step()
    assert tries() == 2
    rig.clock.advance(0.6)
    rig.controller.step()
    assert tries() == 3  # then after 2 s
    del rig.factory.failing["PV:B"]
    rig.clock.advance(4.1)
    rig.controller.step()
    assert tries() == 4
    assert rig.controller.failed == {}
    rig.clock.advance(4.0)  # the status timer
    rig.controller.step()
    entries = {s["channel_name"]: s for s in last_status(rig)["streams"]}
    assert entries["PV:B"]["connection"] == "NEVER_CONNECTED"
    assert "failed" not in last_status(rig)["summary"]


def test_sending_the_same_add_again_retries_a_failed_stream_at_once() -> None:
    rig = started()
    rig.factory.failing["PV:B"] = OSError("down")
    rig.send(msg(UpdateKind.ADD, [B]))
    del rig.factory.failing["PV:B"]
    rig.send(msg(UpdateKind.ADD, [B]))
    assert rig.events.count("subscribe PV:B") == 2
    assert rig.controller.failed == {}


def test_removing_a_failed_stream_stops_its_retries() -> None:
    rig = started()
    rig.factory.failing["PV:B"] = OSError("down")
    rig.send(msg(UpdateKind.ADD, [A, B]))
    rig.send(remove(StreamFilter(channel="PV:B")))
    assert rig.controller.failed == {}
    rig.clock.advance(100)
    rig.controller.step()
    assert rig.events.count("subscribe PV:B") == 1
    assert [s["channel_name"] for s in last_status(rig)["streams"]] == ["PV:A"]


def test_failing_monitor_factory_is_retried_like_a_failed_subscription() -> None:
    rig = started()
    rig.factory.creation_errors.append(RuntimeError("no network yet"))
    rig.send(msg(UpdateKind.ADD, [C]))
    [entry] = last_status(rig)["streams"]
    assert (entry["connection"], entry["error"]) == (
        "SUBSCRIBE_FAILED",
        "RuntimeError: no network yet",
    )
    rig.clock.advance(1.1)
    rig.controller.step()
    assert rig.controller.failed == {}
    assert rig.events == ["subscribe PV:C"]


def test_many_failing_streams_log_a_few_lines_and_a_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = started()
    specs = [StreamSpec(f"PV:F{i}", "f144", "data", Protocol.CA) for i in range(50)]
    for spec in specs:
        rig.factory.failing[spec.channel] = OSError("EPICS set-up broken")
    with caplog.at_level("INFO", logger="forwarder"):
        rig.send(msg(UpdateKind.ADD, specs))
        rig.clock.advance(1.1)
        rig.controller.step()
    loud = [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]
    assert len(loud) == 22  # 10 + summary at the ADD, 10 + summary at the first retry
    assert "40 more streams cannot start (50 in all" in loud[10].getMessage()
    assert last_status(rig)["summary"]["failed"] == 50
