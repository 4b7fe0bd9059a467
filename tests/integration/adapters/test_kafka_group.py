"""Group membership against a real broker: the coordinator splits the shards, a member
leaving hands them over, a member cut off from the broker drops them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from forwarder.adapters.kafka_group import GroupMembership
from tests.support.kafka import TansuBroker, create_topic, unique_topic

SESSION_MS = 6000


def poll_until(
    members: list[GroupMembership], condition: Callable[[], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            owned = {m.member_id: sorted(m.owned) for m in members}
            raise AssertionError(f"timed out after {timeout} s; ownership {owned}")
        for m in members:
            m.poll()
        time.sleep(0.05)


def covers_all_once(members: list[GroupMembership], shards: int) -> bool:
    owned = [s for m in members for s in m.owned]
    return sorted(owned) == list(range(shards))


@pytest.fixture
def make_member(kafka_bootstrap: str) -> Iterator[Callable[..., GroupMembership]]:
    made: list[GroupMembership] = []

    def factory(group: str, bootstrap: str = kafka_bootstrap, **kw: object) -> GroupMembership:
        m = GroupMembership(
            {"bootstrap.servers": bootstrap, "log_level": 0},
            group,
            session_timeout_ms=SESSION_MS,
            **kw,  # type: ignore[arg-type]
        )
        made.append(m)
        return m

    yield factory
    for m in made:
        m.leave()


def test_first_member_creates_the_topic_and_gets_every_shard(
    make_member: Callable[..., GroupMembership],
) -> None:
    changes: list[frozenset[int]] = []
    a = make_member(unique_topic("grp"), shard_count=6, on_change=changes.append)
    assert a.shard_count == 6
    a.join()
    poll_until([a], lambda: a.owned == frozenset(range(6)), 30)
    assert changes[-1] == frozenset(range(6))
    assert a.member_id
    assert a.rebalances >= 1


def test_existing_topic_decides_the_shard_count(
    kafka_bootstrap: str, make_member: Callable[..., GroupMembership]
) -> None:
    group = unique_topic("grp")
    create_topic(kafka_bootstrap, f"forwarder.{group}.shards", partitions=5)
    assert make_member(group, shard_count=24).shard_count == 5


def test_second_member_takes_half_and_leaving_hands_back(
    make_member: Callable[..., GroupMembership],
) -> None:
    group = unique_topic("grp")
    a = make_member(group, shard_count=8)
    a.join()
    poll_until([a], lambda: len(a.owned) == 8, 30)
    b = make_member(group)
    assert b.shard_count == 8
    b.join()
    poll_until([a, b], lambda: len(a.owned) == 4 and len(b.owned) == 4, 40)
    assert covers_all_once([a, b], 8)
    # Cooperative: the shards a kept were never revoked from it.
    kept = a.owned
    b.leave()
    assert b.owned == frozenset()
    poll_until([a], lambda: len(a.owned) == 8, 30)
    assert kept <= a.owned


def test_member_cut_off_from_the_broker_drops_its_shards() -> None:
    with TansuBroker() as broker:
        m = GroupMembership(
            {"bootstrap.servers": broker.bootstrap, "log_level": 0},
            unique_topic("grp"),
            session_timeout_ms=SESSION_MS,
            shard_count=4,
        )
        try:
            m.join()
            poll_until([m], lambda: len(m.owned) == 4, 30)
            broker.stop()
            cut_at = time.monotonic()
            poll_until([m], lambda: not m.owned, SESSION_MS / 1000 + 10)
            # Not before the session time-out: a short broker hiccup must not drop shards.
            assert time.monotonic() - cut_at >= SESSION_MS / 1000 - 3.5
            assert m.sessions_lost == 1
        finally:
            m.leave()


def test_partitions_beyond_the_shard_count_are_ignored(
    kafka_bootstrap: str, make_member: Callable[..., GroupMembership]
) -> None:
    """A coordination topic grown after this member read its size (here: a member that
    read 4 of its 6 partitions) must not crash the callback; the extra ones carry no PVs."""
    group = unique_topic("grp")
    create_topic(kafka_bootstrap, f"forwarder.{group}.shards", partitions=6)
    m = make_member(group)
    m.shard_count = 4
    m.join()
    poll_until([m], lambda: m.owned == frozenset(range(4)), 30)
