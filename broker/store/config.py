"""Configuration of the storage engine: one msgspec Struct with production defaults."""

from __future__ import annotations

import enum

import msgspec

from .errors import ConfigError

__all__ = ["FlushMode", "StoreConfig", "TimerConfig"]

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class FlushMode(str, enum.Enum):
    """When a put becomes durable.

    ASYNC_FLUSH: acknowledged once in the page cache; flushed every ``flush_interval_ms``.
    SYNC_FLUSH: acknowledged only after an fsync covers it (group commit).
    """

    ASYNC_FLUSH = "ASYNC_FLUSH"
    SYNC_FLUSH = "SYNC_FLUSH"


class StoreConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Every knob of the store. Sizes in bytes, times in milliseconds, ratios in 0..1."""

    flush_mode: FlushMode = FlushMode.ASYNC_FLUSH
    #: CommitLog segment size (S1). Tests use small segments so that rolling is exercised.
    segment_size: int = 1 * GIB
    #: ConsumeQueue entries per file (20 bytes each; 300,000 gives 6,000,000-byte files).
    cq_entries_per_file: int = 300_000
    #: Index files: hash slots and entries per file (S3).
    index_slots: int = 1_000_000
    index_entries: int = 4_000_000
    #: ASYNC_FLUSH interval (S4).
    flush_interval_ms: int = 500
    #: SYNC_FLUSH: a put whose flush has not completed after this long gets FLUSH_DISK_TIMEOUT.
    sync_flush_timeout_ms: int = 5_000
    #: How often ConsumeQueue and Index files are flushed and the checkpoint written.
    checkpoint_interval_ms: int = 1_000
    #: Largest accepted body (S7).
    max_message_size: int = 4 * MIB
    #: Largest accepted encoded properties.
    max_properties_size: int = 32 * KIB
    #: Retention (S6): segments whose newest record is older than this are deleted.
    retention_ms: int = 72 * 3600 * 1000
    #: How often retention and disk use are checked.
    clean_interval_ms: int = 10_000
    #: Past this disk-use ratio the oldest segments are deleted even if not expired.
    disk_clean_ratio: float = 0.85
    #: Past this disk-use ratio puts are refused with SERVICE_NOT_AVAILABLE (S7).
    disk_full_ratio: float = 0.90
    #: A put that cannot take the append lock within this time gets SYSTEM_BUSY (S7).
    put_lock_timeout_ms: int = 1_000
    #: Crash recovery verifies at least this many trailing segments record by record (S5).
    recover_segments: int = 3
    #: Keep the bytes cut off during recovery in ``<root>/cut/`` instead of discarding them.
    keep_cut_bytes: bool = True
    #: Pages this far ahead of the writer are faulted in by a background thread (0: off).
    warm_ahead_bytes: int = 32 * MIB
    #: The default store-host address written into records (``host:port``).
    store_host: str = "127.0.0.1:0"

    def validate(self) -> StoreConfig:
        """Raise ConfigError for an out-of-range value; return self."""
        if self.segment_size < 4096 or self.segment_size % 4096:
            raise ConfigError(f"segment_size must be a multiple of 4096, got {self.segment_size}")
        if self.max_message_size + 64 * KIB > self.segment_size:
            raise ConfigError("segment_size must exceed max_message_size by at least 64 KiB")
        if self.cq_entries_per_file < 16:
            raise ConfigError("cq_entries_per_file must be at least 16")
        if self.index_slots < 1 or self.index_entries < 2:
            raise ConfigError("index_slots must be >= 1 and index_entries >= 2")
        for name in ("flush_interval_ms", "sync_flush_timeout_ms", "checkpoint_interval_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if not 0 < self.disk_clean_ratio <= self.disk_full_ratio <= 1:
            raise ConfigError("need 0 < disk_clean_ratio <= disk_full_ratio <= 1")
        if self.recover_segments < 1:
            raise ConfigError("recover_segments must be at least 1")
        return self


class TimerConfig(msgspec.Struct, kw_only=True, frozen=True):
    """Knobs of the timer store (timer_wheel.py): the wheel's size and the TimerLog's files."""

    #: Slots of the timing wheel, one per second: the horizon within which an entry is filed
    #: directly under its due second. Seven days (604,800 slots, 14.5 MB) covers the delays
    #: the issue requires without a single roll; the broker's default maximum (30 days) rolls
    #: an entry at most four times. RocketMQ 5 sizes its wheel the same way.
    wheel_seconds: int = 7 * 86_400
    #: TimerLog records per segment file (48 bytes each; the last one is the seal). 131,072
    #: gives 6 MiB files: small enough that retention frees space soon after delivery.
    log_entries_per_file: int = 1 << 17

    def validate(self) -> TimerConfig:
        """Raise ConfigError for an out-of-range value; return self."""
        if self.wheel_seconds < 2:
            raise ConfigError(f"wheel_seconds must be at least 2, got {self.wheel_seconds}")
        if self.log_entries_per_file < 4:
            raise ConfigError(
                f"log_entries_per_file must be at least 4, got {self.log_entries_per_file}"
            )
        return self
