"""`ClusterMember` turns shard changes into stream starts/stops (no broker: the membership
is a plain object standing in for the group adapter, driven like librdkafka would)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forwarder.app.cluster import ClusterMember
from forwarder.core.forwarding import ForwardingCore, Subscribers
from forwarder.core.sharding import shard_of
from forwarder.core.streams import Protocol, StreamSpec
from forwarder.core.timestamps import TimestampPolicy


class Membership:
    group = "g"
    shard_count = 4
    rebalances = 0
    sessions_lost = 0
    join_retries = 0
    member_id = "m-1"

    def __init__(self) -> None:
        self.owned: frozenset[int] = frozenset()
        self.on_change: Callable[[frozenset[int]], None] | None = None
        self.left = False

    def join(self) -> None: ...

    def poll(self) -> None: ...

    def leave(self) -> None:
        self.left = True
        self.assign(frozenset())

    def assign(self, shards: frozenset[int]) -> None:
        self.owned = shards
        assert self.on_change is not None
        self.on_change(shards)


class Sink:
    def send(self, topic: str, key: bytes, payload: bytes, timestamp_ms: int) -> bool:
        return True


def make() -> tuple[ClusterMember, Membership, ForwardingCore, list[StreamSpec], list[str]]:
    subscribed: list[str] = []

    def subscribe(_p: Protocol, name: str, _channel: Any) -> str:
        subscribed.append(name)
        return name

    core = ForwardingCore(Sink(), TimestampPolicy(), "svc", Subscribers(subscribe, lambda _s: None))
    streams = [StreamSpec(f"PV{i}", "f144", "t", Protocol.CA) for i in range(20)]
    membership = Membership()
    member = ClusterMember(membership)
    storage_owner: list[bool] = []
    member.bind(
        core,
        lambda: streams,
        core.add_stream,
        core.remove_stream,
        lambda: storage_owner.append(True),
    )
    return member, membership, core, streams, subscribed


def test_owns_nothing_before_assignment_then_starts_assigned_shards() -> None:
    member, membership, core, streams, subscribed = make()
    assert not any(member.owns(s) for s in streams)
    membership.assign(frozenset({1, 2}))
    wanted = {s.channel for s in streams if shard_of(s.channel, 4) in (1, 2)}
    assert set(subscribed) == wanted
    assert {o.spec.channel for o in core.all_outputs()} == wanted
    assert member.status()["shards"] == [1, 2]


def test_revoke_stops_only_revoked_and_handover_is_measured() -> None:
    member, membership, core, streams, _ = make()
    membership.assign(frozenset({0, 1}))
    membership.assign(frozenset({1}))
    assert {shard_of(o.spec.channel, 4) for o in core.all_outputs()} == {1}
    # Nothing was sent yet on the new streams: the hand-over is still open.
    assert member.handovers == 0
    for out in core.all_outputs():
        out.last_sent_ns = 1
    member.poll()
    assert member.handovers == 1 and member.last_handover_s is not None


def test_leaving_does_not_unsubscribe_pv_by_pv() -> None:
    member, membership, core, _, _ = make()
    membership.assign(frozenset({0, 1, 2, 3}))
    count = len(core.outputs)
    member.leave()
    assert membership.left
    assert len(core.outputs) == count  # the shutdown closes them after the hand-over
    assert member.ownership.shards == frozenset()


def test_retried_joins_are_reported_in_status() -> None:
    """A group that never assigns anything must be visible from outside the log."""
    member, membership, _, _, _ = make()
    assert member.status()["join_retries"] == 0
    membership.join_retries = 3
    assert member.status()["join_retries"] == 3
