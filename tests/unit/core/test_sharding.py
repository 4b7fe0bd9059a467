"""Shard mapping and ownership changes of cluster members (pure logic)."""

from __future__ import annotations

import subprocess
import sys
import zlib

import pytest

from forwarder.core.sharding import STORAGE_SHARD, Ownership, shard_of
from forwarder.core.streams import Protocol, StreamSpec


def spec(channel: str, schema: str = "f144", topic: str = "data") -> StreamSpec:
    return StreamSpec(channel, schema, topic, Protocol.CA)


def test_shard_is_crc32_of_the_name_and_the_same_in_another_process() -> None:
    names = [f"SIM:PV{i}" for i in range(50)] + ["Ünïcode:PV", ""]
    here = [shard_of(n, 12) for n in names]
    assert here == [zlib.crc32(n.encode()) % 12 for n in names]
    # Python's hash() is salted per process; the mapping must not be.
    code = (
        "from forwarder.core.sharding import shard_of; import sys, json; "
        "print(json.dumps([shard_of(n, 12) for n in json.load(sys.stdin)]))"
    )
    import json

    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[3]),
    )
    assert json.loads(out.stdout) == here


def test_shards_spread_pvs_roughly_evenly() -> None:
    counts = [0] * 12
    for i in range(12_000):
        counts[shard_of(f"SIM:PV{i}", 12)] += 1
    assert min(counts) > 800 and max(counts) < 1200, counts


def test_all_streams_of_one_pv_share_a_shard() -> None:
    own = Ownership(8, [shard_of("PV:A", 8)])
    streams = [spec("PV:A", "f144", "t1"), spec("PV:A", "tdct", "t2"), spec("PV:A", topic="t3")]
    assert own.owned(streams) == streams


def test_bad_shard_count_is_refused() -> None:
    with pytest.raises(ValueError):
        shard_of("x", 0)
    with pytest.raises(ValueError):
        Ownership(0, None)


def test_without_group_everything_is_owned_and_storage_written() -> None:
    own = Ownership.everything()
    assert not own.grouped
    assert own.owns(spec("anything"))
    assert own.writes_storage


def test_grouped_member_owns_nothing_until_assigned() -> None:
    own = Ownership(4, [])
    streams = [spec(f"PV{i}") for i in range(20)]
    assert own.grouped
    assert own.owned(streams) == []
    assert not own.writes_storage


def test_reassign_starts_gained_and_stops_lost_shards_only() -> None:
    streams = [spec(f"PV{i}") for i in range(40)]
    own = Ownership(4, [0, 1])
    change = own.reassign(streams, [1, 2])
    assert {shard_of(s.channel, 4) for s in change.start} == {2}
    assert {shard_of(s.channel, 4) for s in change.stop} == {0}
    assert len(change.start) == sum(1 for s in streams if shard_of(s.channel, 4) == 2)
    assert own.shards == frozenset({1, 2})
    assert own.owned(streams) == [s for s in streams if shard_of(s.channel, 4) in (1, 2)]
    assert not own.reassign(streams, [1, 2])  # no change, nothing to do


def test_split_over_members_covers_every_stream_once() -> None:
    streams = [spec(f"PV{i}") for i in range(100)]
    members = [Ownership(6, [0, 3]), Ownership(6, [1, 4]), Ownership(6, [2, 5])]
    owned = [s for m in members for s in m.owned(streams)]
    assert sorted(owned, key=lambda s: s.channel) == sorted(streams, key=lambda s: s.channel)


def test_storage_is_written_by_the_owner_of_the_storage_shard() -> None:
    own = Ownership(4, [STORAGE_SHARD])
    assert own.writes_storage
    own.reassign([], [1, 2])
    assert not own.writes_storage


def test_reassign_refuses_unknown_shards() -> None:
    with pytest.raises(ValueError):
        Ownership(4, []).reassign([], [4])
