"""What an EPICS adapter tells the core: the only interface between monitors and forwarding.

Adapters (CA, PVA, fake) call these methods from their own callback threads.  The calls must
be cheap and must never block: the core serialises and hands the bytes to the sink directly.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol


class ConnectionState(enum.IntEnum):
    """Connection states; values match `streaming_data_types` ep01 `ConnectionInfo`."""

    UNKNOWN = 0
    NEVER_CONNECTED = 1
    CONNECTED = 2
    DISCONNECTED = 3
    DESTROYED = 4
    CANCELLED = 5
    FINISHED = 6
    REMOTE_ERROR = 7


class Severity(enum.IntEnum):
    """EPICS alarm severity; values match al00 and both CA and PVA."""

    NO_ALARM = 0
    MINOR = 1
    MAJOR = 2
    INVALID = 3


class ChannelListener(Protocol):
    """Receives the events of one PV.

    `value` is a numpy 0-d/1-d array, a numpy scalar, a Python int/float/bool, or a str for
    string PVs (enums are passed as their integer index).  `timestamp_ns` is the EPICS
    timestamp converted to unix nanoseconds (0 if the record was never processed: EPICS
    epoch 0 maps to 631152000 s unix, adapters pass it through unchanged; the timestamp
    policy judges it).  `status_message` is the alarm status as text (e.g. "HIHI", "" when
    no alarm).
    """

    def on_update(
        self, value: Any, timestamp_ns: int, severity: int, status_message: str
    ) -> None: ...

    def on_connection(self, state: ConnectionState, timestamp_ns: int) -> None: ...


class Subscription(Protocol):
    def close(self) -> None: ...


class Monitors(Protocol):
    """One per protocol; owns the library context (one for all PVs)."""

    def subscribe(self, channel: str, listener: ChannelListener) -> Subscription: ...

    def close(self) -> None: ...
