"""A forwarder as one member of a cluster: the ownership filter between the configuration
and the forwarding core.

Every member keeps the whole configuration (the registry); only streams of the shards the
group protocol gave this member run in the forwarding core.  `ClusterMember` turns the
membership adapter's shard changes into stream starts and stops, measures hand-overs and
reports the member's part in the status document and metrics.  Without `--group` none of
this exists and the controller treats every stream as owned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from forwarder.core.forwarding import ForwardingCore
from forwarder.core.sharding import Ownership, shard_of
from forwarder.core.streams import StreamSpec

log = logging.getLogger("forwarder")

#: A hand-over not complete after this long (PVs that do not connect) is closed anyway
#: and counted as incomplete, so one dead IOC does not hold the measurement open forever.
HANDOVER_GIVE_UP_S = 30.0


class Membership(Protocol):
    """What `ClusterMember` needs of the group adapter (`adapters/kafka_group.py`)."""

    group: str
    shard_count: int
    owned: frozenset[int]
    rebalances: int
    sessions_lost: int
    #: Joins that got no assignment for far longer than a rebalance and were retried.
    join_retries: int
    on_change: Callable[[frozenset[int]], None] | None

    @property
    def member_id(self) -> str: ...

    def join(self) -> None: ...

    def poll(self) -> None: ...

    def leave(self) -> None: ...


class ClusterMember:
    """Applies shard ownership to the core; the controller's only cluster hook.

    `streams()` is the full configuration, `start(spec)` / `stop(spec)` start and stop one
    stream in the core (with re-send scheduling), `on_storage_owner()` is called when this
    member becomes the storage writer.
    """

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self.ownership = Ownership(membership.shard_count, [])
        self._streams: Callable[[], list[StreamSpec]] = list
        self._start: Callable[[StreamSpec], object] = lambda _s: None
        self._stop: Callable[[StreamSpec], None] = lambda _s: None
        self._on_storage_owner: Callable[[], None] = lambda: None
        self._core: ForwardingCore | None = None
        #: (started at monotonic s, streams still waiting for their first message)
        self._handover: tuple[float, list[StreamSpec]] | None = None
        self.handovers = 0
        self.handovers_incomplete = 0
        self.handover_seconds_sum = 0.0
        self.last_handover_s: float | None = None
        self._leaving = False
        self._shard_counts: tuple[object, dict[str, int]] | None = None
        membership.on_change = self._on_change

    def bind(
        self,
        core: ForwardingCore,
        streams: Callable[[], list[StreamSpec]],
        start: Callable[[StreamSpec], object],
        stop: Callable[[StreamSpec], None],
        on_storage_owner: Callable[[], None],
    ) -> None:
        self._core = core
        self._streams = streams
        self._start = start
        self._stop = stop
        self._on_storage_owner = on_storage_owner

    # -- the controller's hooks -----------------------------------------------------------
    def owns(self, spec: StreamSpec) -> bool:
        return self.ownership.owns(spec)

    @property
    def writes_storage(self) -> bool:
        return self.ownership.writes_storage

    def join(self) -> None:
        self.membership.join()

    def poll(self) -> None:
        self.membership.poll()
        if self._handover is not None:
            self._check_handover()

    def leave(self) -> None:
        """Hand the shards over at once (SIGTERM).  Called after the core stopped
        forwarding, so the revocation does not unsubscribe PV by PV (that is left to the
        shutdown, after the hand-over)."""
        self._leaving = True
        self.membership.leave()

    # -- shard changes ------------------------------------------------------------------
    def _on_change(self, owned: frozenset[int]) -> None:
        was_storage_owner = self.ownership.writes_storage
        if self._leaving:
            self.ownership.reassign((), owned)
            return
        change = self.ownership.reassign(self._streams(), owned)
        # Stop first: a revocation must be complete before librdkafka frees the shards.
        for spec in change.stop:
            self._stop(spec)
        for spec in change.start:
            self._start(spec)
        if change.stop or change.start:
            log.info(
                "group %r: %d streams started, %d stopped; forwarding %d streams",
                self.membership.group,
                len(change.start),
                len(change.stop),
                len(self._core.outputs) if self._core is not None else -1,
            )
        if change.start:
            pending = self._handover[1] if self._handover is not None else []
            self._handover = (time.monotonic(), pending + change.start)
            self._check_handover()
        if self.ownership.writes_storage and not was_storage_owner:
            self._on_storage_owner()

    def _check_handover(self) -> None:
        """Close the hand-over once every newly owned stream sent its first message."""
        assert self._handover is not None
        started, pending = self._handover
        core = self._core
        if core is not None:
            still = []
            for spec in pending:
                out = core.outputs.get(spec.key)
                if out is not None and out.last_sent_ns == 0 and self.owns(spec):
                    still.append(spec)
            pending = still
        elapsed = time.monotonic() - started
        if not pending or elapsed > HANDOVER_GIVE_UP_S:
            self._handover = None
            self.handovers += 1
            self.handover_seconds_sum += elapsed
            self.last_handover_s = elapsed
            if pending:
                self.handovers_incomplete += 1
                log.warning(
                    "group %r: hand-over incomplete after %.0f s: %d streams sent nothing yet",
                    self.membership.group,
                    elapsed,
                    len(pending),
                )
            else:
                log.info("group %r: hand-over complete in %.2f s", self.membership.group, elapsed)
        else:
            self._handover = (started, pending)

    # -- visibility ---------------------------------------------------------------------
    def status(
        self, streams: Callable[[], list[StreamSpec]] | None = None, version: object = None
    ) -> dict[str, Any]:
        """The member's part of the x5f2 status document.  With the configuration
        (`streams`, cached by `version`) it also counts the configured streams per shard,
        so that `forwarder-config status` can tell how many no live member forwards."""
        part = self._base_status()
        if streams is not None:
            cached = self._shard_counts
            if cached is None or cached[0] != version:
                per: dict[str, int] = {}
                count = self.ownership.shard_count
                for spec in streams():
                    key = str(shard_of(spec.channel, count))
                    per[key] = per.get(key, 0) + 1
                cached = self._shard_counts = (version, per)
            part["streams_per_shard"] = cached[1]
            part["streams_configured"] = sum(cached[1].values())
        return part

    def _base_status(self) -> dict[str, Any]:
        m = self.membership
        return {
            "group": m.group,
            "member_id": m.member_id,
            "shard_count": m.shard_count,
            "shards": sorted(self.ownership.shards),
            "rebalances": m.rebalances,
            "sessions_lost": m.sessions_lost,
            "join_retries": m.join_retries,
            "handovers": self.handovers,
            "handovers_incomplete": self.handovers_incomplete,
            "handover_seconds_sum": round(self.handover_seconds_sum, 3),
            "last_handover_s": self.last_handover_s,
        }
