from __future__ import annotations

import time

import pytest

from forwarder.core.config_messages import ConfigCommand, UpdateKind
from forwarder.core.registry import Change, StreamRegistry, matches
from forwarder.core.streams import Protocol, StreamFilter, StreamSpec


def spec(
    channel: str,
    schema: str = "f144",
    topic: str = "data",
    protocol: Protocol = Protocol.CA,
    periodic: bool = False,
) -> StreamSpec:
    return StreamSpec(channel, schema, topic, protocol, periodic)


def add(*streams: StreamSpec) -> ConfigCommand:
    return ConfigCommand(UpdateKind.ADD, streams=list(streams))


def remove(*filters: StreamFilter) -> ConfigCommand:
    return ConfigCommand(UpdateKind.REMOVE, filters=list(filters))


def replace(*streams: StreamSpec) -> ConfigCommand:
    return ConfigCommand(UpdateKind.REPLACE, streams=list(streams))


def registry_with(*streams: StreamSpec) -> StreamRegistry:
    registry = StreamRegistry()
    registry.apply(add(*streams))
    return registry


def test_change_is_truthy_only_when_something_changed() -> None:
    assert not Change()
    assert Change(added=[spec("A")])
    assert Change(removed=[spec("A")])
    assert Change(updated=[spec("A")])


def test_add_registers_streams_in_insertion_order() -> None:
    registry = StreamRegistry()
    change = registry.apply(add(spec("B"), spec("A")))
    change2 = registry.apply(add(spec("C")))
    assert change == Change(added=[spec("B"), spec("A")])
    assert change2 == Change(added=[spec("C")])
    assert registry.streams() == [spec("B"), spec("A"), spec("C")]
    assert len(registry) == 3


def test_identical_add_is_a_no_op() -> None:
    registry = registry_with(spec("A"), spec("B"))
    change = registry.apply(add(spec("A")))
    assert not change
    assert registry.streams() == [spec("A"), spec("B")]


def test_add_with_other_periodic_flag_updates_in_place() -> None:
    registry = registry_with(spec("A"), spec("B"))
    change = registry.apply(add(spec("A", periodic=True), spec("C")))
    assert change == Change(added=[spec("C")], updated=[spec("A", periodic=True)])
    assert registry.streams() == [spec("A", periodic=True), spec("B"), spec("C")]


def test_repeats_within_one_add_are_collapsed() -> None:
    registry = StreamRegistry()
    change = registry.apply(add(spec("A"), spec("A", periodic=True), spec("A")))
    assert change == Change(added=[spec("A")])
    assert len(registry) == 1


def test_same_pv_with_other_schema_topic_or_protocol_are_independent_streams() -> None:
    streams = [
        spec("PV"),
        spec("PV", schema="tdct"),
        spec("PV", topic="other"),
        spec("PV", protocol=Protocol.PVA),
    ]
    registry = registry_with(*streams)
    assert len(registry) == 4
    change = registry.apply(remove(StreamFilter("PV", "tdct", "")))
    assert change.removed == [spec("PV", schema="tdct")]
    assert registry.streams() == [streams[0], streams[2], streams[3]]
    change = registry.apply(remove(StreamFilter("PV", "", "other")))
    assert change.removed == [spec("PV", topic="other")]
    assert registry.streams() == [streams[0], streams[3]]


def test_remove_ignores_protocol_and_removes_every_match() -> None:
    registry = registry_with(spec("PV", protocol=Protocol.CA), spec("PV", protocol=Protocol.PVA))
    change = registry.apply(remove(StreamFilter("PV", "f144", "data")))
    assert change.removed == [spec("PV", protocol=Protocol.CA), spec("PV", protocol=Protocol.PVA)]
    assert len(registry) == 0


def test_remove_of_unknown_stream_changes_nothing() -> None:
    registry = registry_with(spec("A"))
    assert not registry.apply(remove(StreamFilter("B")))
    assert registry.streams() == [spec("A")]


def test_remove_with_several_filters_removes_streams_matching_any() -> None:
    registry = registry_with(spec("A"), spec("B"), spec("C"))
    change = registry.apply(remove(StreamFilter("A"), StreamFilter("C"), StreamFilter("A")))
    assert change.removed == [spec("A"), spec("C")]
    assert registry.streams() == [spec("B")]


def test_removeall_removes_everything() -> None:
    registry = registry_with(spec("A"), spec("B"))
    change = registry.apply(ConfigCommand(UpdateKind.REMOVEALL))
    assert change == Change(removed=[spec("A"), spec("B")])
    assert registry.streams() == []
    assert not registry.apply(ConfigCommand(UpdateKind.REMOVEALL))


def test_replace_keeps_unchanged_streams_silently() -> None:
    registry = registry_with(spec("A"), spec("B"), spec("C", periodic=False))
    change = registry.apply(replace(spec("D"), spec("C", periodic=True), spec("A")))
    assert change == Change(
        added=[spec("D")], removed=[spec("B")], updated=[spec("C", periodic=True)]
    )
    assert registry.streams() == [spec("A"), spec("C", periodic=True), spec("D")]


def test_replace_with_nothing_empties_the_registry() -> None:
    registry = registry_with(spec("A"))
    assert registry.apply(replace()) == Change(removed=[spec("A")])
    assert len(registry) == 0


def test_replace_with_identical_configuration_changes_nothing() -> None:
    streams = [spec("A"), spec("B", periodic=True)]
    registry = registry_with(*streams)
    assert not registry.apply(replace(*reversed(streams)))
    assert registry.streams() == streams


def test_contains_compares_the_periodic_flag_too() -> None:
    registry = registry_with(spec("A"))
    assert spec("A") in registry
    assert spec("A", periodic=True) not in registry
    assert "A" not in registry


@pytest.mark.parametrize(
    ("filter_", "channel", "topic", "expected"),
    [
        (StreamFilter(), "ANY", "any", True),
        (StreamFilter("SIM:*"), "SIM:TEMP", "t", True),
        (StreamFilter("SIM:*"), "SIM:", "t", True),  # * matches the empty run
        (StreamFilter("SIM:*"), "XSIM:TEMP", "t", False),  # anchored at the start
        (StreamFilter("*TEMP"), "SIM:TEMP", "t", True),
        (StreamFilter("*TEMP"), "SIM:TEMP2", "t", False),  # anchored at the end
        (StreamFilter("SIM:TEMP?"), "SIM:TEMP1", "t", True),
        (StreamFilter("SIM:TEMP?"), "SIM:TEMP", "t", False),  # ? is exactly one char
        (StreamFilter("SIM:TEMP?"), "SIM:TEMP12", "t", False),
        (StreamFilter("A*B*C"), "A_x_B_y_C", "t", True),
        (StreamFilter("PV[1]"), "PV[1]", "t", True),  # brackets are literal
        (StreamFilter("PV[1]"), "PV1", "t", False),
        (StreamFilter("PV[!x]"), "PVa", "t", False),
        (StreamFilter("PV.A"), "PVXA", "t", False),  # regex characters are literal
        (StreamFilter("PV+"), "PVV", "t", False),
        (StreamFilter("a\\*"), "a\\bc", "t", True),  # backslash is literal, * still a wildcard
        (StreamFilter("LINE*"), "LINE\nBREAK", "t", True),
        (StreamFilter("", "", "topic_?"), "X", "topic_1", True),
        (StreamFilter("", "", "topic_?"), "X", "topic_10", False),
        (StreamFilter("", "", "*.raw"), "X", "det.raw", True),
        (StreamFilter("", "", "*.raw"), "X", "det_raw", False),
        (StreamFilter("sim:temp"), "SIM:TEMP", "t", False),  # case sensitive
        (StreamFilter("X", "", "*"), "X", "anything", True),
    ],
)
def test_filter_wildcards(filter_: StreamFilter, channel: str, topic: str, expected: bool) -> None:
    assert matches(filter_, spec(channel, topic=topic)) is expected


def test_filter_schema_matches_exactly_and_empty_schema_matches_all() -> None:
    f144, tdct = spec("PV", schema="f144"), spec("PV", schema="tdct")
    assert matches(StreamFilter("PV", "f144"), f144)
    assert not matches(StreamFilter("PV", "f144"), tdct)
    assert not matches(StreamFilter("PV", "f1*"), f144)  # no wildcards in schema
    assert matches(StreamFilter("PV", ""), tdct)


def test_all_given_fields_must_match() -> None:
    stream = spec("PV", schema="f144", topic="data")
    assert matches(StreamFilter("PV", "f144", "data"), stream)
    assert not matches(StreamFilter("PV", "f144", "other"), stream)
    assert not matches(StreamFilter("OTHER", "f144", "data"), stream)


def test_large_add_and_remove_are_linear() -> None:
    n = 100_000
    first = [spec(f"PV:{i}", topic=f"t{i % 7}") for i in range(n)]
    registry = registry_with(*first)
    assert len(registry) == n
    second = [
        spec(f"PV:{i}", topic=f"t{i % 7}", periodic=i % 2 == 0) for i in range(n // 2, n + n // 2)
    ]
    started = time.perf_counter()
    change = registry.apply(add(*second))
    add_seconds = time.perf_counter() - started
    assert len(change.added) == n // 2
    assert len(change.updated) == n // 4
    assert len(registry) == n + n // 2
    before = registry.streams()
    started = time.perf_counter()
    change = registry.apply(remove(StreamFilter("PV:1*"), StreamFilter("", "", "t3")))
    remove_seconds = time.perf_counter() - started
    expected = [s for s in before if s.channel.startswith("PV:1") or s.topic == "t3"]
    assert [s.key for s in change.removed] == [s.key for s in expected]
    # Complexity guard, not a speed target: quadratic behaviour would take hours.
    assert add_seconds < 30.0
    assert remove_seconds < 30.0
