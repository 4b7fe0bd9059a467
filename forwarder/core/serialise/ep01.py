"""ep01 (connection status) serialiser; runs only on connection changes."""

from __future__ import annotations

from streaming_data_types.epics_connection_ep01 import ConnectionInfo, serialise_ep01

from ..events import ConnectionState

# ConnectionState mirrors ConnectionInfo value for value; map by value so a renamed member
# in either enum fails loudly at import instead of silently at run time.
_INFO = {state: ConnectionInfo(int(state)) for state in ConnectionState}


def serialise_connection(
    source_name: str, timestamp_ns: int, state: ConnectionState, service_id: str | None
) -> bytes:
    """ep01 message; `service_id` None leaves the field out (readers see "")."""
    # streaming_data_types ships no type information: the annotation states what it returns.
    encoded: bytes = serialise_ep01(
        timestamp_ns, _INFO[ConnectionState(state)], source_name, service_id
    )
    return encoded
