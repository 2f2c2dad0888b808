"""Exceptions of the storage engine.

Hierarchy::

    StoreError                      anything the store refuses or cannot do
    ├── StoreLockedError            another process holds the store directory
    ├── StoreClosedError            the store was closed
    ├── CorruptRecordError          a record failed its magic, length or CRC check (path, offset)
    └── ConfigError                 a configuration value is out of range

Routine refusals of a put (too large, disk full, busy, flush timeout) are not
exceptions: they come back as a ``PutStatus`` in the ``PutResult``, because the
broker answers them to the client as ordinary replies.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CorruptRecordError",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
]


class StoreError(Exception):
    """Base class of every storage error."""


class StoreLockedError(StoreError):
    """The store directory is locked by another live process."""

    def __init__(self, path: str) -> None:
        super().__init__(f"store directory {path!r} is in use by another process")
        self.path = path


class StoreClosedError(StoreError):
    """An operation was attempted on a closed store."""


class CorruptRecordError(StoreError):
    """A record failed verification.

    Attributes:
        path: the segment file holding the record.
        offset: the record's physical (CommitLog) offset.
        reason: which check failed.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt record at offset {offset} in {path}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class ConfigError(StoreError):
    """A store configuration value is invalid."""
