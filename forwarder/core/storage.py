"""What reading the storage topic can fail with (shared by the adapter and the controller)."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """The storage topic could not be read (broker unreachable, or the newest configuration
    not found within the deadline).  The message says which."""
