"""Process-wide counters: every update that is not forwarded is counted under a reason.

Counters are plain ints bumped from EPICS callback threads without a lock.  Under the GIL an
increment can in rare interleavings lose a count; a lock per update would cost more than the
serialisation itself, so exactness under contention is traded for a cheap hot path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Drop(enum.Enum):
    """Why an update (or a message) did not reach Kafka."""

    OLDER_THAN_PREVIOUS = "older_than_previous"
    TOO_FAR_IN_FUTURE = "too_far_in_future"
    TOO_OLD = "too_old"
    UNSUPPORTED_TYPE = "unsupported_type"
    SERIALISE_ERROR = "serialise_error"
    QUEUE_FULL = "queue_full"
    DELIVERY_FAILED = "delivery_failed"
    BAD_CONFIG = "bad_config"


@dataclass
class ProcessCounters:
    """Totals for status, metrics and the log."""

    updates_received: int = 0
    updates_forwarded: int = 0
    empty_updates: int = 0
    resends: int = 0
    messages_produced: int = 0
    #: Monitors that raised while being stopped (REMOVE, shutdown); the change went on.
    monitor_stop_errors: int = 0
    drops: dict[Drop, int] = field(default_factory=lambda: {d: 0 for d in Drop})

    def drop(self, reason: Drop, n: int = 1) -> None:
        self.drops[reason] += n

    def as_dict(self) -> dict[str, object]:
        return {
            "updates_received": self.updates_received,
            "updates_forwarded": self.updates_forwarded,
            "empty_updates": self.empty_updates,
            "resends": self.resends,
            "messages_produced": self.messages_produced,
            "monitor_stop_errors": self.monitor_stop_errors,
            "dropped": {d.value: n for d, n in self.drops.items()},
        }
