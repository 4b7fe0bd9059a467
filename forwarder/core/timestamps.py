"""Which EPICS timestamps are trustworthy enough to be written to Kafka.

Consumers (file writers, plotting) index data by time; a single update from a misconfigured
IOC clock or a never-processed record (EPICS time 0 = unix 631152000 s) would otherwise land
far outside any run.  `TimestampPolicy.check` runs once per update on the monitor callback
thread, so it is a handful of integer comparisons and returns preallocated tuples on drops.
"""

from __future__ import annotations

from dataclasses import dataclass

from forwarder.core.counters import Drop

NS_PER_S = 1_000_000_000
#: Unix time of the EPICS epoch (1990-01-01T00:00:00Z), in ns.
EPICS_EPOCH_NS = 631_152_000 * NS_PER_S


# The reasons are the process-wide `Drop` members themselves, so the hot path counts a
# rejected update without translating between enums.
_DROP_OLDER = (0, Drop.OLDER_THAN_PREVIOUS)
_DROP_FUTURE = (0, Drop.TOO_FAR_IN_FUTURE)
_DROP_OLD = (0, Drop.TOO_OLD)


@dataclass(frozen=True, slots=True)
class TimestampPolicy:
    """Plausibility and ordering rules for update timestamps (all values in ns).

    * Older than the previous accepted timestamp of the same stream: dropped, because
      consumers assume each stream is monotonic.  Equal is accepted: EPICS legitimately
      repeats a timestamp (e.g. several fields posted in one record processing).
    * More than `max_future_ns` ahead of now, or more than `max_age_ns` behind now: dropped,
      unless `use_receive_time`, in which case the receive time `now_ns` is used instead (and
      must itself not be older than the previous accepted timestamp).  Anything at or before
      the EPICS epoch (including 0) is always treated as too old, whatever `max_age_ns` says:
      it means "never processed", never a real measurement time.
    * Plausibility is judged before ordering, so the more specific reason is reported.
    """

    max_future_ns: int = 10 * 60 * NS_PER_S
    max_age_ns: int = 365 * 24 * 3600 * NS_PER_S
    use_receive_time: bool = False

    def __post_init__(self) -> None:
        if self.max_future_ns < 0 or self.max_age_ns < 0:
            raise ValueError("max_future_ns and max_age_ns must not be negative")

    def check(self, update_ns: int, previous_ns: int, now_ns: int) -> tuple[int, Drop | None]:
        """Return `(timestamp_to_use, None)` or `(0, reason)`.

        `previous_ns` is the last timestamp accepted for this stream (0 if none); the caller
        stores the returned timestamp as the next `previous_ns`.
        """
        if update_ns - now_ns > self.max_future_ns:
            if not self.use_receive_time:
                return _DROP_FUTURE
            update_ns = now_ns
        elif update_ns <= EPICS_EPOCH_NS or now_ns - update_ns > self.max_age_ns:
            if not self.use_receive_time:
                return _DROP_OLD
            update_ns = now_ns
        if update_ns < previous_ns:
            return _DROP_OLDER
        return (update_ns, None)
