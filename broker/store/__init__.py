"""The broker's storage engine: an mmap CommitLog with ConsumeQueues and an Index.

``TimerStore`` (timer_wheel.py), the persisted timing wheel of timed messages, is opened
by the broker beside the ``MessageStore`` (in ``<root>/timer``); see docs/STORAGE.md.

Imports only the standard library, loguru and msgspec (a test enforces it): the
network layers sit above and speak to the store through ``MessageStore``.
"""

from __future__ import annotations

from .config import FlushMode, StoreConfig, TimerConfig
from .errors import ConfigError, CorruptRecordError, StoreClosedError, StoreError, StoreLockedError
from .message_store import MessageStore, RecoveryReport, StoreStats
from .messages import (
    DroppedRange,
    GetResult,
    GetStatus,
    PutMessage,
    PutResult,
    PutStatus,
    StoredMessage,
    decode_message,
)
from .record import tag_hash
from .timer_wheel import TimerEntry, TimerRecovery, TimerStore, due_second

__all__ = [
    "ConfigError",
    "CorruptRecordError",
    "DroppedRange",
    "FlushMode",
    "GetResult",
    "GetStatus",
    "MessageStore",
    "PutMessage",
    "PutResult",
    "PutStatus",
    "RecoveryReport",
    "StoreClosedError",
    "StoreConfig",
    "StoreError",
    "StoreLockedError",
    "StoreStats",
    "StoredMessage",
    "TimerConfig",
    "TimerEntry",
    "TimerRecovery",
    "TimerStore",
    "decode_message",
    "due_second",
    "tag_hash",
]
