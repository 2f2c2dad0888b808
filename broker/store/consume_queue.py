"""ConsumeQueue: per topic and queue, fixed 20-byte entries pointing into the CommitLog.

Entry layout (big-endian)::

    off size field
      0    8  commitlog_offset   int64   physical offset of the record
      8    4  size               int32   record size in bytes (never 0 in a written entry)
     12    8  tag_hash           int64   record.tag_hash(tags), 0 for no tag

Entry ``n`` (the message's queue offset) lives at byte ``n * 20`` of the queue's
logical space, split into files of ``entries_per_file * 20`` bytes named by the byte
offset of their first entry. A zero entry means "not written"; files are preallocated
with zeros. Queues are derived data: the dispatcher writes them and can rebuild them
from the CommitLog.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Callable
from typing import Final

from .mapped_file import CLOSED_ERRORS, MappedFile
from .segments import SegmentQueue

__all__ = ["CQ_ENTRY", "CQ_ENTRY_SIZE", "ConsumeQueue"]

CQ_ENTRY: Final = struct.Struct(">qiq")
CQ_ENTRY_SIZE: Final = 20
assert CQ_ENTRY.size == CQ_ENTRY_SIZE
_CLEAN: Final = 1 << 62
_pack_entry = CQ_ENTRY.pack_into


class ConsumeQueue:
    """One queue's entries. ``min_offset`` and ``max_offset`` bound the readable entries."""

    __slots__ = (
        "_active",
        "_file_bytes",
        "_on_new_file",
        "_segments",
        "directory",
        "dirty_from",
        "max_offset",
        "min_offset",
        "queue_id",
        "topic",
    )

    def __init__(
        self,
        root: str,
        topic: str,
        queue_id: int,
        entries_per_file: int,
        on_new_file: Callable[[MappedFile], None] | None = None,
    ) -> None:
        self.topic = topic
        self.queue_id = queue_id
        self._on_new_file = on_new_file
        self.directory = os.path.join(root, topic, str(queue_id))
        self._file_bytes = entries_per_file * CQ_ENTRY_SIZE
        self._segments = SegmentQueue(self.directory, self._file_bytes)
        self._active: MappedFile | None = None
        #: First readable queue offset, and one past the last written.
        self.min_offset = 0
        self.max_offset = 0
        #: Lowest byte written since the last flush (_CLEAN when none).
        self.dirty_from = _CLEAN

    # -- opening -----------------------------------------------------------------------------
    def load(self) -> None:
        """Map existing files and find the bounds (the end by binary search in the last file)."""
        self._segments.load()
        files = self._segments.files
        if not files:
            return
        last = files[-1]
        lo, hi = 0, self._file_bytes // CQ_ENTRY_SIZE  # first empty entry index in [lo, hi]
        mm = last.mm
        while lo < hi:
            mid = (lo + hi) // 2
            if CQ_ENTRY.unpack_from(mm, mid * CQ_ENTRY_SIZE)[1] > 0:
                lo = mid + 1
            else:
                hi = mid
        self.max_offset = (last.start + lo * CQ_ENTRY_SIZE) // CQ_ENTRY_SIZE
        self.min_offset = self._first_written()
        self._active = last

    def _first_written(self) -> int:
        files = self._segments.files
        if not files:
            return self.max_offset
        first = files[0]
        mm = first.mm
        # Entries below the first written one are zero (the queue was rebuilt from a log whose
        # head was deleted); written entries are contiguous, so a binary search finds it.
        lo, hi = first.start // CQ_ENTRY_SIZE, self.max_offset
        while lo < hi:
            mid = (lo + hi) // 2
            pos = mid * CQ_ENTRY_SIZE - first.start
            if pos >= first.size:
                hi = mid
                continue
            if CQ_ENTRY.unpack_from(mm, pos)[1] > 0:
                hi = mid
            else:
                lo = mid + 1
        return lo

    # -- writing -----------------------------------------------------------------------------
    def put(self, queue_offset: int, phys: int, size: int, tag: int) -> None:
        """Write the entry for ``queue_offset`` (idempotent: re-dispatch may rewrite it)."""
        byte = queue_offset * CQ_ENTRY_SIZE
        mf = self._active
        if mf is None or not (mf.start <= byte < mf.start + self._file_bytes):
            mf = self._file_for(byte)
        CQ_ENTRY.pack_into(mf.mm, byte - mf.start, phys, size, tag)
        if byte < self.dirty_from:
            self.dirty_from = byte
        if queue_offset >= self.max_offset:
            if self.max_offset == self.min_offset:
                # Empty queue: one rebuilt from a log whose head was deleted starts above 0.
                self.min_offset = queue_offset
            self.max_offset = queue_offset + 1
        elif queue_offset < self.min_offset:
            self.min_offset = queue_offset

    def append(self, phys: int, size: int, tag: int) -> None:
        """Write the entry for the next queue offset (``max_offset``): the put path."""
        byte = self.max_offset * CQ_ENTRY_SIZE
        mf = self._active
        if mf is None or not (mf.start <= byte < mf.start + self._file_bytes):
            mf = self._file_for(byte)
        _pack_entry(mf.mm, byte - mf.start, phys, size, tag)
        if byte < self.dirty_from:
            self.dirty_from = byte
        self.max_offset += 1

    def _file_for(self, byte: int) -> MappedFile:
        mf = self._segments.find(byte)
        if mf is None:
            start = byte - byte % self._file_bytes
            last = self._segments.last
            if last is not None and start < last.start:
                raise ValueError(f"queue {self.topic}/{self.queue_id}: no file for byte {byte}")
            mf = self._segments.create(start)
            if self._on_new_file is not None:
                self._on_new_file(mf)
        if mf is self._segments.last:
            self._active = mf
        return mf

    # -- reading -----------------------------------------------------------------------------
    def get(self, queue_offset: int) -> tuple[int, int, int] | None:
        """(commitlog offset, size, tag hash) of an entry, or None when not written."""
        byte = queue_offset * CQ_ENTRY_SIZE
        mf = self._active
        if mf is None or not (mf.start <= byte < mf.start + self._file_bytes):
            mf = self._segments.find(byte)
            if mf is None:
                return None
        try:
            entry: tuple[int, int, int] = CQ_ENTRY.unpack_from(mf.mm, byte - mf.start)
        except CLOSED_ERRORS:  # file deleted by retention under us
            return None
        return entry if entry[1] > 0 else None

    def entries(self, start: int, limit: int) -> list[tuple[int, int, int]]:
        """Up to ``limit`` written entries from ``start`` on, stopping at a file end or a hole."""
        out: list[tuple[int, int, int]] = []
        end = min(self.max_offset, start + limit)
        qo = start
        while qo < end:
            byte = qo * CQ_ENTRY_SIZE
            mf = self._segments.find(byte)
            if mf is None:
                break
            mm = mf.mm
            stop = min(end, (mf.start + self._file_bytes) // CQ_ENTRY_SIZE)
            try:
                for pos in range(
                    byte - mf.start, (stop - qo) * CQ_ENTRY_SIZE + byte - mf.start, CQ_ENTRY_SIZE
                ):
                    entry = CQ_ENTRY.unpack_from(mm, pos)
                    if entry[1] <= 0:
                        return out
                    out.append(entry)
            except CLOSED_ERRORS:
                return out
            qo = stop
        return out

    # -- recovery and retention ---------------------------------------------------------------
    def truncate_past(self, log_end: int) -> int:
        """Zero the trailing entries that point at or past ``log_end``; return how many."""
        cut = 0
        qo = self.max_offset - 1
        while qo >= self.min_offset:
            entry = self.get(qo)
            if entry is not None and entry[0] + entry[1] <= log_end:
                break
            self._zero(qo)
            cut += 1
            qo -= 1
        self.max_offset = qo + 1
        if self.max_offset <= self.min_offset:
            self.min_offset = self.max_offset
        for gone in self._segments.drop_after(
            ((self.max_offset * CQ_ENTRY_SIZE) // self._file_bytes + 1) * self._file_bytes
        ):
            gone.destroy()
        self._active = self._segments.last
        return cut

    def truncate_to(self, queue_offset: int) -> None:
        """Forget the entries at and after ``queue_offset`` (a put that was rolled back)."""
        for qo in range(queue_offset, self.max_offset):
            self._zero(qo)
        self.max_offset = max(queue_offset, self.min_offset)

    def _zero(self, queue_offset: int) -> None:
        byte = queue_offset * CQ_ENTRY_SIZE
        mf = self._segments.find(byte)
        if mf is not None:
            mf.mm[byte - mf.start : byte - mf.start + CQ_ENTRY_SIZE] = bytes(CQ_ENTRY_SIZE)
            self.dirty_from = min(self.dirty_from, byte)

    def delete_below(self, log_min: int) -> int:
        """Drop entries whose records are below ``log_min``; return the new min_offset.

        Whole files whose last entry points below ``log_min`` are deleted; within the first
        remaining file the new minimum is found by binary search.
        """
        files = self._segments.files
        while len(files) > 1:
            first = files[0]
            last_entry = CQ_ENTRY.unpack_from(first.mm, self._file_bytes - CQ_ENTRY_SIZE)
            if last_entry[1] > 0 and last_entry[0] < log_min:
                self._segments.drop_first()
                first.destroy()
                files = self._segments.files
            else:
                break
        lo, hi = self.min_offset, self.max_offset
        if files:
            lo = max(lo, files[0].start // CQ_ENTRY_SIZE)
        while lo < hi:
            mid = (lo + hi) // 2
            entry = self.get(mid)
            if entry is not None and entry[0] >= log_min:
                hi = mid
            else:
                lo = mid + 1
        self.min_offset = lo
        return lo

    @property
    def dirty(self) -> bool:
        """True when entries were written since the last flush."""
        return self.dirty_from != _CLEAN

    def flush(self) -> None:
        """fdatasync the files written since the last flush."""
        dirty_from, self.dirty_from = self.dirty_from, _CLEAN
        end = self.max_offset * CQ_ENTRY_SIZE
        for mf in self._segments.files:
            if mf.start + self._file_bytes > dirty_from and mf.start < end:
                lo = max(dirty_from, mf.start) - mf.start
                try:
                    # Only the written range: pages warmed past it stay writable.
                    mf.flush_range(lo, min(end, mf.end) - mf.start - lo)
                except CLOSED_ERRORS:
                    pass

    def close(self) -> None:
        """Unmap every file."""
        self._segments.close()
        self._active = None

    def destroy(self) -> None:
        """Close and delete the queue's directory."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)
