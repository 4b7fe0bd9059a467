"""Cluster membership over Kafka's consumer-group protocol.

Forwarders started with the same `--group NAME` join one Kafka consumer group that
subscribes to a *coordination topic* with a fixed number of partitions, one per shard.
Kafka's group coordinator (heartbeats, session time-out, cooperative-sticky assignment)
decides which member owns which partition; this adapter only reports the owned shard set
to the application.  Nothing is ever produced to the coordination topic, and no offsets are
committed: the partitions are tokens, not data.

Names derived from the group (documented in the README):

* consumer group id ``forwarder.<NAME>``;
* coordination topic ``forwarder.<NAME>.shards``, created with `shard_count` partitions by
  the first member; later members use whatever partition count the topic has, so every
  member agrees on the mapping even if one was started with another `--group-shards`.

Callbacks (`on_change`) run inside `poll()` / `leave()` on the caller's thread (the control
loop).  A revocation is reported *before* librdkafka tells the coordinator that the
partitions are free, so the old owner has stopped its streams before the new owner starts
them.  A lost session (cut off from the coordinator for longer than the session time-out,
or a control loop that did not poll within `max.poll.interval.ms`) is reported as losing
every shard: a member that may have been replaced must stop forwarding.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from forwarder.adapters.kafka_logging import with_kafka_logger

log = logging.getLogger(__name__)

DEFAULT_SHARDS = 24
DEFAULT_SESSION_TIMEOUT_MS = 6_000


def group_id_of(group: str) -> str:
    return f"forwarder.{group}"


def coordination_topic_of(group: str) -> str:
    return f"forwarder.{group}.shards"


class GroupMembership:
    """One member of a forwarder cluster; `owned` is the shard set it holds now."""

    def __init__(
        self,
        config: Mapping[str, Any],
        group: str,
        *,
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
        shard_count: int = DEFAULT_SHARDS,
        on_change: Callable[[frozenset[int]], None] | None = None,
        topic: str | None = None,
    ) -> None:
        self.group = group
        self.group_id = group_id_of(group)
        self.topic = topic or coordination_topic_of(group)
        self.session_timeout_ms = session_timeout_ms
        self.on_change = on_change
        self._config = dict(config)
        self.shard_count = self._ensure_topic(shard_count)
        self.owned: frozenset[int] = frozenset()
        #: Rebalances that changed this member's shards (assignments and revocations).
        self.rebalances = 0
        #: Times the session was lost (cut off, or the control loop stalled).
        self.sessions_lost = 0
        self.last_error = ""
        self._joined = False
        self._closed = False
        conf: dict[str, Any] = {
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
            "allow.auto.create.topics": False,
            "fetch.wait.max.ms": 100,
            **self._config,
            "group.id": self.group_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": session_timeout_ms,
            # At most a third of the session (two heartbeats may be lost), and at most 1 s:
            # members learn of a rebalance from a heartbeat answer, so this interval adds
            # to every hand-over (3.3 s heartbeats made a SIGTERM hand-over take 8.7 s
            # instead of about 4 s on the test broker).  One small request a second.
            "heartbeat.interval.ms": max(100, min(1000, session_timeout_ms // 3)),
            # The control loop polls at least every 100 ms; a loop stalled this long
            # cannot be trusted with shards.
            "max.poll.interval.ms": max(30_000, 3 * session_timeout_ms),
            "error_cb": self._on_error,
        }
        self._conf = conf
        self._consumer = Consumer(with_kafka_logger(conf))
        #: Monotonic time of the (re)join; None once an assignment (even empty) arrived.
        self._waiting_since: float | None = None
        #: Joins that never got an assignment and were retried with a fresh consumer.
        self.join_retries = 0

    # -- topic --------------------------------------------------------------------------
    def _ensure_topic(self, shard_count: int) -> int:
        """Create the coordination topic if missing; return its partition count."""
        admin = AdminClient(with_kafka_logger(self._config))
        deadline = time.monotonic() + 15.0
        created = False
        while True:
            try:
                md = admin.list_topics(timeout=2.0)
                info = md.topics.get(self.topic)
                if info is not None and info.error is None and info.partitions:
                    count = len(info.partitions)
                    if count != shard_count and not created:
                        log.info(
                            "group %r: coordination topic %r has %d partitions: %d shards",
                            self.group,
                            self.topic,
                            count,
                            count,
                        )
                    return count
                if not created:
                    futures = admin.create_topics(
                        [NewTopic(self.topic, num_partitions=shard_count, replication_factor=-1)],
                        request_timeout=5.0,
                    )
                    try:
                        futures[self.topic].result(timeout=5.0)
                        log.info(
                            "group %r: created coordination topic %r with %d shards",
                            self.group,
                            self.topic,
                            shard_count,
                        )
                    except KafkaException as err:
                        if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise
                    created = True
            except KafkaException as err:
                self.last_error = str(err)
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"group {self.group!r}: coordination topic {self.topic!r} "
                        f"not available: {err}"
                    ) from None
            time.sleep(0.2)

    # -- membership ---------------------------------------------------------------------
    def join(self) -> None:
        """Ask to join the group; shards arrive through `on_change` during `poll()`."""
        if not self._joined:
            self._joined = True
            self._subscribe()
            log.info(
                "group %r: joining as a member (session time-out %d ms, %d shards)",
                self.group,
                self.session_timeout_ms,
                self.shard_count,
            )

    def _subscribe(self) -> None:
        self._waiting_since = time.monotonic()
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    @property
    def _join_limit_s(self) -> float:
        return max(20.0, 2 * self.session_timeout_ms / 1000)

    def _retry_join(self) -> None:
        """A join that got no assignment at all (not even an empty one) for far longer
        than a rebalance takes.  Join again as a new member (a fresh consumer, hence a
        fresh member id); nothing is owned meanwhile, and the warning repeats every
        `_join_limit_s` for as long as it lasts, so a stuck group is never silent.

        A fresh member id is all a client can change.  It does not clear the Tansu 0.6
        fault documented in docs/how-to/clustering.md ("A group stuck after its leader
        left"), where the coordinator names a departed member as the leader of every
        later round, so no member gets an assignment until the broker restarts."""
        self.join_retries += 1
        log.warning(
            "group %r: no assignment %.0f s after joining (attempt %d); joining again as a "
            "new member.  If this repeats, the group coordinator is stuck: see 'A group "
            "stuck after its leader left' in docs/how-to/clustering.md",
            self.group,
            self._join_limit_s,
            self.join_retries,
        )
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as err:
            log.debug("group %r: closing the stuck consumer: %s", self.group, err)
        self._consumer = Consumer(with_kafka_logger(self._conf))
        self._subscribe()

    def poll(self) -> None:
        """Serve the group protocol's callbacks; call at least every few hundred ms."""
        if not self._joined or self._closed:
            return
        waiting = self._waiting_since
        if waiting is not None and time.monotonic() - waiting > self._join_limit_s:
            self._retry_join()
        msg = self._consumer.poll(0)
        if msg is not None:
            err = msg.error()
            if err is not None:
                self._on_error(err)

    @property
    def member_id(self) -> str:
        """The coordinator's id for this member ("" before the first join completed)."""
        if self._closed:
            return ""
        try:
            return self._consumer.memberid() or ""
        except (KafkaException, RuntimeError):
            return ""

    def leave(self) -> None:
        """Leave the group at once (the survivors take the shards without waiting for the
        session time-out); the revocation is reported through `on_change` first."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as err:
            log.warning("group %r: leaving failed: %s", self.group, err)
        self._set(frozenset(), "left the group")

    close = leave

    # -- librdkafka callbacks -----------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._waiting_since = None
        gained = {p.partition for p in partitions if p.topic == self.topic}
        extra = {x for x in gained if x >= self.shard_count}
        if extra:
            # The topic grew after this member read its size: those partitions carry no
            # PVs here (every PV maps below shard_count); restart members to use them.
            log.error(
                "group %r: coordination topic %r now has partitions %s beyond the %d shards "
                "this member uses; ignoring them (restart the members to re-shard)",
                self.group,
                self.topic,
                sorted(extra),
                self.shard_count,
            )
            gained -= extra
        if gained:
            self._set(self.owned | gained, f"assigned shards {sorted(gained)}")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {p.partition for p in partitions if p.topic == self.topic}
        if lost & self.owned:
            self._set(self.owned - lost, f"revoked shards {sorted(lost)}")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.sessions_lost += 1
        log.warning(
            "group %r: session lost (no contact with the group coordinator within the "
            "session time-out, or the control loop stalled); stopping shards %s",
            self.group,
            sorted(self.owned),
        )
        self._set(frozenset(), "session lost")

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)
        log.debug("group %r: %s", self.group, err)

    def _set(self, owned: frozenset[int], why: str) -> None:
        if owned == self.owned:
            return
        self.owned = owned
        self.rebalances += 1
        log.info(
            "group %r: %s; now owning %d of %d shards",
            self.group,
            why,
            len(owned),
            self.shard_count,
        )
        if self.on_change is not None:
            self.on_change(owned)
