"""The CommitLog: the single append-only log of every message, and the only truth.

Appends happen under the store's put lock (see ``MessageStore.put``); this module
finds room (rolling to a new segment with an end marker when a record does not
fit), reads by physical offset, scans and verifies records for recovery, cuts a
damaged tail, and flushes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import msgspec
from loguru import logger

from .mapped_file import CLOSED_ERRORS, MADV_NORMAL, MADV_RANDOM, MappedFile, segment_name
from .record import (
    BLANK_MAGIC,
    BLANK_MARKER,
    END_MARKER_LEN,
    HEADER_LEN,
    MESSAGE_MAGIC,
    SIZE_MAGIC,
    STORE_TIMESTAMP,
    STORE_TIMESTAMP_AT,
    verify,
)
from .segments import SegmentQueue

__all__ = ["CommitLog", "ScanOutcome"]

_ZERO_CHUNK = 1 << 20


class ScanOutcome(msgspec.Struct, frozen=True):
    """Where a verifying scan stopped and why."""

    end: int
    records: int
    #: None when the scan stopped at the zero-filled end of the log.
    damage: str | None = None
    damage_path: str = ""


class CommitLog:
    """Segments under ``<root>/commitlog``; ``wrote`` is the offset where the next record goes."""

    def __init__(self, directory: str, segment_size: int) -> None:
        self.segments = SegmentQueue(directory, segment_size)
        #: The segment being appended to (None before the first append).
        self.current: MappedFile | None = None
        self.segment_size = segment_size
        #: Offset one past the last byte written (the log's end).
        self.wrote = 0
        #: Offset up to which the log is known durable.
        self.flushed = 0
        #: The page warmer asks to be woken (``on_warm_mark``) once ``wrote`` passes this.
        self.warm_mark = 1 << 62
        self.on_warm_mark: Callable[[], object] = _nothing

    # -- opening -----------------------------------------------------------------------------
    def load(self) -> None:
        """Map the existing segments. ``wrote`` is set by recovery, not here."""
        self.segments.load()
        last = self.segments.last
        self.wrote = self.flushed = last.end if last is not None else 0

    @property
    def min_offset(self) -> int:
        """The lowest offset still stored (start of the oldest segment)."""
        return self.segments.min_offset

    # -- appending ---------------------------------------------------------------------------
    def reserve(self, size: int) -> tuple[MappedFile, int]:
        """Find room for a record of ``size`` bytes at ``wrote``; return (segment, position).

        When the record does not fit in the current segment, an end marker fills the rest
        and a new segment is created; ``wrote`` moves to its start. Raises OSError when the
        disk cannot hold a new segment.
        """
        mf = self.segments.last
        wrote = self.wrote
        if wrote > self.warm_mark:
            self.on_warm_mark()
        if mf is None or wrote >= mf.end:
            mf = self._new_segment(wrote - wrote % self.segment_size if mf is None else mf.end)
            self.wrote = wrote = mf.start
            logger.info("commitlog segment created: {}", mf.path)
        pos = wrote - mf.start
        if pos + size + END_MARKER_LEN > mf.size:
            remaining = mf.size - pos
            BLANK_MARKER.pack_into(mf.mm, pos, remaining, BLANK_MAGIC)
            nxt = self._new_segment(mf.end)
            mf.advise(MADV_NORMAL)  # sealed: readers catching up get read-ahead again
            self.wrote = nxt.start
            logger.info("commitlog rolled to {} ({} bytes left blank)", nxt.path, remaining)
            self.current = nxt
            return nxt, 0
        if mf is not self.current:
            # The first append to this segment in this process (after a restart): advised
            # only now, so that recovery's scan of it still had read-ahead.
            mf.advise(MADV_RANDOM)
            self.current = mf
        return mf, pos

    def _new_segment(self, start: int) -> MappedFile:
        mf = self.segments.create(start)
        mf.advise(MADV_RANDOM)  # before any page of it is touched (see MappedFile.advise)
        return mf

    # -- reading -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes | None:
        """``size`` bytes at ``offset``, or None when that range is gone or not yet written."""
        if offset + size > self.wrote:
            return None
        mf = self.segments.find(offset)
        if mf is None:
            return None
        pos = offset - mf.start
        try:
            return mf.mm[pos : pos + size]
        except CLOSED_ERRORS:  # closed under us by retention
            return None

    def read_record(self, offset: int) -> bytes | None:
        """The whole record that starts at ``offset``, or None when there is none."""
        head = self.read(offset, 8)
        if head is None:
            return None
        total, magic = SIZE_MAGIC.unpack(head)
        if magic != MESSAGE_MAGIC or total < HEADER_LEN:
            return None
        return self.read(offset, total)

    def store_timestamp_at(self, offset: int) -> int | None:
        """The store timestamp of the record at ``offset`` without reading the whole record."""
        raw = self.read(offset + STORE_TIMESTAMP_AT, 8)
        if raw is None:
            return None
        ts: int = STORE_TIMESTAMP.unpack(raw)[0]
        return ts

    # -- recovery ----------------------------------------------------------------------------
    def scan(self, start: int, visit: Callable[[int, bytes], None]) -> ScanOutcome:
        """Verify records from ``start`` on, calling ``visit(offset, record)`` for each sound one.

        Stops at the first zero length (the end), or at the first record with a bad length,
        magic or CRC (damage). ``start`` must be a record boundary or a segment start.
        """
        files = self.segments.files
        count = 0
        offset = start
        for mf in files:
            if mf.end <= offset:
                continue
            mm = mf.mm
            pos = max(offset - mf.start, 0)
            while True:
                if pos + 8 > mf.size:
                    return ScanOutcome(
                        mf.start + pos, count, "record header past segment end", mf.path
                    )
                total, magic = SIZE_MAGIC.unpack_from(mm, pos)
                if magic == BLANK_MAGIC:
                    if total != mf.size - pos:
                        return ScanOutcome(
                            mf.start + pos, count, "bad end-of-segment marker", mf.path
                        )
                    break  # on to the next segment
                if total == 0 and magic == 0:
                    return ScanOutcome(mf.start + pos, count)
                if (
                    magic != MESSAGE_MAGIC
                    or total < HEADER_LEN
                    or pos + total + END_MARKER_LEN > mf.size
                ):
                    return ScanOutcome(
                        mf.start + pos, count, f"bad length {total} or magic {magic:#010x}", mf.path
                    )
                record = mm[pos : pos + total]
                reason = verify(record)
                if reason is not None:
                    return ScanOutcome(mf.start + pos, count, reason, mf.path)
                visit(mf.start + pos, record)
                count += 1
                pos += total
            offset = mf.end
        last = files[-1].end if files else start
        return ScanOutcome(max(offset, last) if files else start, count)

    def cut(self, end: int, cut_dir: str | None) -> int:
        """Make ``end`` the log's end: keep the bytes past it aside, zero them, drop later segments.

        Returns the number of non-zero bytes cut. ``cut_dir`` None discards them.
        """
        cut_bytes = 0
        stamp = time.strftime("%Y%m%dT%H%M%S")
        mf = self.segments.find(end)
        if mf is not None:
            pos = end - mf.start
            tail_len = _nonzero_extent(mf, pos)
            if tail_len:
                cut_bytes += tail_len
                if cut_dir is not None:
                    os.makedirs(cut_dir, exist_ok=True)
                    path = os.path.join(cut_dir, f"{segment_name(end)}.{stamp}.tail")
                    with open(path, "wb") as fh:
                        fh.write(mf.mm[pos : pos + tail_len])
                        fh.flush()
                        os.fsync(fh.fileno())
                for z in range(pos, pos + tail_len, _ZERO_CHUNK):
                    n = min(_ZERO_CHUNK, pos + tail_len - z)
                    mf.mm[z : z + n] = bytes(n)
                mf.flush()
        for gone in self.segments.drop_after(mf.end if mf is not None else end):
            extent = _nonzero_extent(gone, 0)
            if not extent:  # an unused, all-zero segment: nothing to keep
                gone.destroy()
                continue
            cut_bytes += extent
            gone.close()
            if cut_dir is not None:
                os.makedirs(cut_dir, exist_ok=True)
                os.replace(
                    gone.path, os.path.join(cut_dir, f"{os.path.basename(gone.path)}.{stamp}")
                )
            else:
                os.unlink(gone.path)
        self.wrote = self.flushed = end
        self.current = None
        return cut_bytes

    # -- durability --------------------------------------------------------------------------
    def flush(self) -> int:
        """Make [flushed, wrote) durable, segment by segment; return the new flushed offset."""
        target = self.wrote
        flushed = self.flushed
        if target <= flushed:
            return flushed
        for mf in self.segments.files:
            if mf.end > flushed and mf.start < target:
                lo = max(flushed, mf.start) - mf.start
                hi = min(target, mf.end) - mf.start
                try:
                    mf.flush_range(lo, hi - lo)
                except CLOSED_ERRORS:  # closed by retention: nothing left to flush
                    pass
        self.flushed = target
        return target

    def close(self) -> None:
        """Unmap every segment."""
        self.segments.close()


def _nothing() -> None:
    return None


def _nonzero_extent(mf: MappedFile, pos: int) -> int:
    """Length of [pos, last non-zero byte] in the segment, 0 when the rest is all zeros."""
    mm = mf.mm
    end = mf.size
    # Walk backwards in chunks to find the last non-zero byte.
    hi = end
    while hi > pos:
        lo = max(pos, hi - _ZERO_CHUNK)
        chunk = mm[lo:hi]
        stripped = chunk.rstrip(b"\0")
        if stripped:
            return lo + len(stripped) - pos
        hi = lo
    return 0
