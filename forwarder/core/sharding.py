"""Which streams a cluster member forwards: PV -> shard, shard set -> owned streams.

A cluster (several forwarders started with the same `--group`) splits its streams into a
fixed number of shards, one per partition of the group's coordination topic.  Kafka's
consumer-group protocol hands each partition, hence each shard, to exactly one live
member; this module only answers the pure questions that follow from that:

* `shard_of`: a PV's shard, from a stable hash of its name (CRC-32, identical on every
  host, Python version and run; Python's `hash()` is salted per process and would split
  the streams differently in every member).  All streams of one PV (several schemas or
  topics, any protocol) land in the same shard, so a PV is subscribed by one member only.
* `Ownership`: the shard set a member holds, `owns(spec)`, and `reassign(...)`: which
  streams to start and stop when the group protocol moves shards.

Without a group every stream is owned (`Ownership.everything()`), so a stand-alone
forwarder goes through the same code with no special case.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from forwarder.core.streams import StreamSpec

#: Shard whose owner writes the storage topic (one writer per cluster at a time).
STORAGE_SHARD = 0


def shard_of(channel: str, shard_count: int) -> int:
    """The shard of PV `channel` among `shard_count` shards (stable across processes)."""
    if shard_count < 1:
        raise ValueError(f"shard count must be at least 1, not {shard_count}")
    return zlib.crc32(channel.encode("utf-8")) % shard_count


@dataclass(frozen=True)
class Reassignment:
    """The streams to start and stop after the owned shard set changed."""

    start: list[StreamSpec]
    stop: list[StreamSpec]

    def __bool__(self) -> bool:
        return bool(self.start or self.stop)


class Ownership:
    """The shards this member owns; `None` means everything (no group)."""

    __slots__ = ("shard_count", "_shards")

    def __init__(self, shard_count: int, shards: Iterable[int] | None) -> None:
        if shard_count < 1:
            raise ValueError(f"shard count must be at least 1, not {shard_count}")
        self.shard_count = shard_count
        self._shards: frozenset[int] | None = None if shards is None else frozenset(shards)

    @classmethod
    def everything(cls) -> Ownership:
        """A stand-alone forwarder: owns every stream."""
        return cls(1, None)

    @property
    def grouped(self) -> bool:
        return self._shards is not None

    @property
    def shards(self) -> frozenset[int]:
        """The owned shards (all of them when not grouped)."""
        if self._shards is None:
            return frozenset(range(self.shard_count))
        return self._shards

    def owns_shard(self, shard: int) -> bool:
        return self._shards is None or shard in self._shards

    def owns(self, spec: StreamSpec) -> bool:
        """Whether this member forwards `spec`."""
        if self._shards is None:
            return True
        return shard_of(spec.channel, self.shard_count) in self._shards

    @property
    def writes_storage(self) -> bool:
        """Whether this member is the one that writes the storage topic now."""
        return self.owns_shard(STORAGE_SHARD)

    def owned(self, streams: Iterable[StreamSpec]) -> list[StreamSpec]:
        """The streams of `streams` this member forwards, in their order."""
        return [s for s in streams if self.owns(s)]

    def reassign(self, streams: Iterable[StreamSpec], shards: Iterable[int]) -> Reassignment:
        """Switch to owning `shards`; returns which of the configured `streams` to start
        (newly owned) and stop (no longer owned).  Streams in shards kept are untouched."""
        new = frozenset(shards)
        bad = [s for s in new if not 0 <= s < self.shard_count]
        if bad:
            raise ValueError(f"shards {sorted(bad)} outside 0..{self.shard_count - 1}")
        old = self.shards
        self._shards = new
        gained = new - old
        lost = old - new
        start: list[StreamSpec] = []
        stop: list[StreamSpec] = []
        if gained or lost:
            count = self.shard_count
            for spec in streams:
                shard = shard_of(spec.channel, count)
                if shard in gained:
                    start.append(spec)
                elif shard in lost:
                    stop.append(spec)
        return Reassignment(start=start, stop=stop)
