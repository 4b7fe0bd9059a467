"""The controller as a cluster member: only owned streams run, one member writes storage,
the group is joined after the restore and left first at shutdown (in-memory ports)."""

from __future__ import annotations

from forwarder.app.cluster import ClusterMember
from forwarder.core.config_messages import UpdateKind, encode_config_message
from forwarder.core.sharding import STORAGE_SHARD, shard_of
from forwarder.core.streams import Protocol, StreamSpec
from tests.support.fake_ports import FakeMembership, FakeStorage, Rig, make_rig, stored

STREAMS = [StreamSpec(f"PV{i}", "f144", "data", Protocol.CA) for i in range(12)]


def add(streams: list[StreamSpec]) -> bytes:
    return encode_config_message(UpdateKind.ADD, streams, "fc00")


def in_shards(shards: set[int]) -> set[str]:
    return {s.channel for s in STREAMS if shard_of(s.channel, 4) in shards}


def rig(storage: FakeStorage | None = None) -> tuple[Rig, FakeMembership]:
    membership = FakeMembership()
    r = make_rig(storage=storage, cluster=ClusterMember(membership))
    return r, membership


def running(r: Rig) -> set[str]:
    return {o.spec.channel for o in r.controller.core.all_outputs()}


def test_only_owned_streams_run_and_shards_move_them() -> None:
    r, m = rig()
    r.controller.start()
    assert m.joined
    r.send(add(STREAMS))
    assert running(r) == set()  # nothing owned yet: configured, not forwarded
    assert len(r.controller.registry) == 12
    m.assign(frozenset({1, 2}))
    assert running(r) == in_shards({1, 2})
    m.assign(frozenset({2, 3}))
    assert running(r) == in_shards({2, 3})
    doc, text = r.controller.status()
    assert doc["cluster"]["shards"] == [2, 3] and '"cluster":' in text
    assert doc["cluster"]["streams_configured"] == 12


def test_restored_streams_wait_for_shards_and_join_follows_the_restore() -> None:
    r, m = rig(FakeStorage([stored("ADD", STREAMS)]))
    r.controller.start()
    assert len(r.controller.registry) == 12 and running(r) == set()
    assert m.joined
    m.assign(frozenset({0, 1, 2, 3}))
    assert running(r) == in_shards({0, 1, 2, 3})


def test_only_the_storage_shard_owner_writes_storage_and_catches_up() -> None:
    r, m = rig()
    r.controller.start()
    m.assign(frozenset({1}))
    r.send(add(STREAMS[:3]))
    assert r.storage_writer.written == []  # another member (or none) owns shard 0
    m.assign(frozenset({1, STORAGE_SHARD}))
    # It missed no change, but nobody stored the last one: it does, once.
    assert r.storage_writer.stored() == [set(STREAMS[:3])]
    assert {k for _, k in r.storage_writer.written} == {b"fake-group"}
    r.send(add(STREAMS[3:5]))
    assert r.storage_writer.stored()[-1] == set(STREAMS[:5])
    m.assign(frozenset({1}))
    r.send(add(STREAMS[5:6]))
    assert len(r.storage_writer.written) == 2


def test_shutdown_stops_forwarding_then_leaves_before_flushing() -> None:
    r, m = rig()
    r.controller.start()
    r.send(add(STREAMS))
    m.assign(frozenset({0, 1, 2, 3}))
    m.events = r.events
    r.controller.shutdown(1.0)
    assert m.left
    assert r.events.index("group leave") < next(
        i for i, e in enumerate(r.events) if e == "sink.close"
    ), r.events
