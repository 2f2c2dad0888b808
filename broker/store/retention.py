"""Retention (S6): which CommitLog segments to delete, by age or by disk pressure.

Pure decisions over the segment list; the store applies them under its lock and then
trims the derived files. A segment's age is the store time of its newest record, which
is at most the store time of the first record of the next segment, so only sealed
segments (never the one being written) are candidates.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable

from .commitlog import CommitLog

__all__ = ["DiskUsage", "disk_usage_ratio", "segments_to_delete"]

#: Returns the used fraction (0..1) of the disk holding a path.
DiskUsage = Callable[[str], float]


def disk_usage_ratio(path: str) -> float:
    """Used fraction of the filesystem holding ``path``."""
    usage = shutil.disk_usage(path)
    return usage.used / usage.total if usage.total else 0.0


def segments_to_delete(
    log: CommitLog,
    now_ms: int,
    retention_ms: int,
    ratio: float,
    clean_ratio: float,
    max_delete: int = 10,
) -> list[int]:
    """Start offsets of the oldest sealed segments to delete now.

    Oldest first: segments whose newest record is older than ``retention_ms``; and while
    the disk use ``ratio`` is past ``clean_ratio``, the oldest ones regardless of age
    (each deletion is assumed to bring the ratio down, so at most ``max_delete``).
    """
    files = log.segments.files
    chosen: list[int] = []
    forced = ratio > clean_ratio
    for older, newer in itertools.pairwise(files):
        if len(chosen) >= max_delete:
            break
        newest_ts = log.store_timestamp_at(newer.start)
        expired = newest_ts is not None and now_ms - newest_ts > retention_ms
        if expired or forced:
            chosen.append(older.start)
            # One forced deletion per round: the next round re-reads the disk use.
            forced = False
        else:
            break
    return chosen
