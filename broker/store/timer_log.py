"""TimerLog: the append-only file set of fixed 48-byte timer records, sealed segment by segment.

The timer store (timer_wheel.py) writes one record per filing of a timed message and
links the records of one wheel slot into a chain through ``prev``. Records are never
changed once written. Segments are ``entries_per_file x 48`` bytes, named by the
20-digit TimerLog position of their first byte (mapped_file/segments helpers, as the
CommitLog). Positions are byte offsets; -1 means "none". Big-endian::

    off size field     type
      0    4  magic     uint32  ENTRY_MAGIC; SEAL_MAGIC for a segment's seal
      4    4  flags     uint32  FLAG_ROLLED: re-added by the wheel, not by add()
      8    8  due_s     int64   second (since the epoch) the message is due
     16    8  fire_s    int64   the wheel second it is filed under
     24    8  phys      int64   CommitLog offset of the %TIMER% record
     32    8  prev      int64   position of the previous record of the same slot, or -1
     40    4  size      uint32  size of the %TIMER% record in bytes
     44    4  crc32     uint32  zlib CRC32 of bytes [0, 44)

The last record of a full segment is its **seal**: ``fire_s`` holds the largest fire_s of
the segment's records and ``phys`` the smallest CommitLog offset (other fields zero, prev
-1). A segment whose seal's fire_s has been delivered holds nothing pending and is
deleted; the seals also give a lower bound of the CommitLog offsets still referenced,
without reading the records. A zero record is "not written yet" (files are preallocated).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Final, NamedTuple

from loguru import logger

from .mapped_file import CLOSED_ERRORS, MappedFile
from .segments import SegmentQueue

__all__ = [
    "ENTRY",
    "ENTRY_LEN",
    "ENTRY_MAGIC",
    "FLAG_ROLLED",
    "NO_POSITION",
    "SEAL_MAGIC",
    "TimerLog",
    "TimerRecord",
    "encode_record",
    "parse_record",
]

ENTRY_MAGIC: Final = 0xFAB17E01
SEAL_MAGIC: Final = 0xFAB17E5E
FLAG_ROLLED: Final = 0x1
ENTRY: Final = struct.Struct(">IIqqqqII")
ENTRY_LEN: Final = 48
assert struct.calcsize(ENTRY.format) == ENTRY_LEN
_HEAD: Final = struct.Struct(">IIqqqqI")  # the bytes the CRC covers
assert _HEAD.size == ENTRY_LEN - 4
NO_POSITION: Final = -1
_ZERO: Final = bytes(ENTRY_LEN)
_NO_PHYS: Final = 1 << 62
_crc32 = zlib.crc32


class TimerRecord(NamedTuple):
    """One decoded TimerLog record (see the module docstring)."""

    magic: int
    flags: int
    due: int
    fire: int
    phys: int
    prev: int
    size: int


def encode_record(
    magic: int, flags: int, due: int, fire: int, phys: int, prev: int, size: int
) -> bytes:
    """The 48 bytes of a record, CRC included."""
    head = _HEAD.pack(magic, flags, due, fire, phys, prev, size)
    return head + _crc32(head).to_bytes(4, "big")


def parse_record(raw: bytes) -> TimerRecord | str:
    """The record in ``raw`` (48 bytes) when its magic and CRC are sound, else why not."""
    *fields, crc = ENTRY.unpack(raw)
    if fields[0] not in (ENTRY_MAGIC, SEAL_MAGIC):
        return f"bad magic {fields[0]:#010x}"
    if _crc32(raw[: ENTRY_LEN - 4]) != crc:
        return "CRC mismatch"
    return TimerRecord(*fields)


class TimerLog:
    """Segments under ``directory``; ``end`` is where the next record goes.

    Not thread-safe by itself: the timer store calls it under its lock (``flush_range``
    excepted, which tolerates segments deleted under it).
    """

    def __init__(self, directory: str, entries_per_file: int) -> None:
        self.segments = SegmentQueue(directory, entries_per_file * ENTRY_LEN)
        self.file_size = entries_per_file * ENTRY_LEN
        #: Position of the next record, and the position up to which the log is durable.
        self.end = 0
        self.flushed = 0
        self._seals: dict[int, tuple[int, int]] = {}  # segment start -> (max fire, min phys)
        # The segment being written: largest fire and smallest phys so far (its future seal).
        self._fire = 0
        self._phys = _NO_PHYS
        self._measured: tuple[int, int, int] | None = None  # (start, fire, phys) from scan

    # -- opening -----------------------------------------------------------------------------
    def load(self) -> None:
        """Map the existing segments (``end`` is set by ``open_at`` after the scan)."""
        self.segments.load()

    @property
    def files(self) -> list[MappedFile]:
        """The segments, oldest first."""
        return self.segments.files

    @property
    def min_offset(self) -> int:
        """Position of the oldest record still stored."""
        return self.segments.min_offset

    def scan(
        self, start: int, visit: Callable[[int, TimerRecord], None]
    ) -> tuple[int, str | None, str]:
        """Verify records from ``start`` (a record position), calling ``visit`` on each entry.

        Returns (end, damage, path): ``end`` is the first zero record (``damage`` None) or
        the first bad one (``damage`` says why, ``path`` names its file).
        """
        pos = start
        for mf in self.files:
            if mf.end <= pos:
                continue
            if pos < mf.start:
                return pos, "gap before segment", mf.path
            mm, off, last = mf.mm, pos - mf.start, mf.size - ENTRY_LEN
            fire, phys, whole = 0, _NO_PHYS, off == 0
            while off < mf.size:
                raw = mm[off : off + ENTRY_LEN]
                if raw == _ZERO:
                    break
                rec = parse_record(raw)
                if isinstance(rec, str):
                    return mf.start + off, rec, mf.path
                if (rec.magic == SEAL_MAGIC) != (off == last):
                    return mf.start + off, "seal out of place", mf.path
                if rec.magic == SEAL_MAGIC:
                    self._seals[mf.start] = (rec.fire, rec.phys)
                else:
                    fire, phys = max(fire, rec.fire), min(phys, rec.phys)
                    visit(mf.start + off, rec)
                off += ENTRY_LEN
            self._measured = (mf.start, fire, phys) if whole else None
            if off < mf.size:
                return mf.start + off, None, ""
            pos = mf.end
        return pos, None, ""

    def cut(self, end: int) -> int:
        """Zero the log from ``end`` on and delete later segments; return the bytes cut."""
        cut = 0
        mf = self.segments.find(end)
        if mf is not None:
            off = end - mf.start
            cut += len(mf.mm[off:].rstrip(b"\0"))
            mf.mm[off:] = bytes(mf.size - off)
            mf.flush()
        for gone in self.segments.drop_after(mf.end if mf is not None else end):
            cut += len(gone.mm[:].rstrip(b"\0"))
            self._seals.pop(gone.start, None)
            gone.destroy()
        return cut

    def open_at(self, end: int, flushed: int) -> None:
        """Finish opening: appends go to ``end``; [flushed, end) is flushed by the next flush."""
        self.end, self.flushed = end, min(flushed, end)
        files = self.files
        for mf in files:
            if mf.start not in self._seals and mf is not files[-1]:
                seal = parse_record(mf.mm[mf.size - ENTRY_LEN :])
                if not isinstance(seal, str) and seal.magic == SEAL_MAGIC:
                    self._seals[mf.start] = (seal.fire, seal.phys)
        self._fire, self._phys = 0, _NO_PHYS
        last = files[-1] if files else None
        if last is None or last.start in self._seals:
            return
        if self._measured is not None and self._measured[0] == last.start:
            _start, self._fire, self._phys = self._measured
            return
        for off in range(0, min(end, last.end) - last.start, ENTRY_LEN):  # not scanned whole
            rec = parse_record(last.mm[off : off + ENTRY_LEN])
            if not isinstance(rec, str):
                self._fire, self._phys = max(self._fire, rec.fire), min(self._phys, rec.phys)

    # -- writing and reading -----------------------------------------------------------------
    def append(self, flags: int, due: int, fire: int, phys: int, prev: int, size: int) -> int:
        """Write one entry at ``end``; return its position. Seals and rolls segments."""
        pos = self.end
        mf = self.segments.last
        if mf is None or pos >= mf.end:
            mf = self._create(pos - pos % self.file_size)
        off = pos - mf.start
        if off == mf.size - ENTRY_LEN:  # the last record of a segment is its seal
            seal = (self._fire, self._phys)
            mf.mm[off:] = encode_record(SEAL_MAGIC, 0, 0, seal[0], seal[1], NO_POSITION, 0)
            self._seals[mf.start] = seal
            self._fire, self._phys = 0, _NO_PHYS
            mf = self._create(mf.end)
            pos, off = mf.start, 0
        mf.mm[off : off + ENTRY_LEN] = encode_record(
            ENTRY_MAGIC, flags, due, fire, phys, prev, size
        )
        self._fire, self._phys = max(self._fire, fire), min(self._phys, phys)
        self.end = pos + ENTRY_LEN
        return pos

    def _create(self, start: int) -> MappedFile:
        mf = self.segments.create(start)
        logger.info("timerlog segment created: {}", mf.path)
        return mf

    def read(self, pos: int) -> TimerRecord | None:
        """The entry at ``pos``; None (with a warning) when it is gone or damaged."""
        mf = self.segments.find(pos)
        if mf is None or pos >= self.end:
            return None
        off = pos - mf.start
        rec = parse_record(mf.mm[off : off + ENTRY_LEN])
        if isinstance(rec, str) or rec.magic != ENTRY_MAGIC:
            logger.warning(
                "timerlog record at offset {} in {} unreadable ({}): its chain is cut short; "
                "reset() the timer store and re-add from the CommitLog",
                pos,
                mf.path,
                rec if isinstance(rec, str) else "a seal",
            )
            return None
        return rec

    # -- durability and retention ------------------------------------------------------------
    def flush_range(self, flushed: int, end: int) -> None:
        """Make the records in [flushed, end) durable (segments deleted meanwhile are skipped)."""
        for mf in self.files:
            if mf.end > flushed and mf.start < end:
                lo = max(flushed, mf.start) - mf.start
                try:
                    mf.flush_range(lo, min(end, mf.end) - mf.start - lo)
                except CLOSED_ERRORS:
                    pass

    def delete_delivered(self, delivered_s: int) -> None:
        """Delete sealed, flushed segments whose records were all filed by ``delivered_s``."""
        while len(self.files) > 1:
            first = self.files[0]
            seal = self._seals.get(first.start)
            if seal is None or seal[0] > delivered_s or first.end > self.flushed:
                return
            self.segments.drop_first()
            del self._seals[first.start]
            first.destroy()
            logger.info("timerlog segment deleted: {}", first.path)

    @property
    def min_phys(self) -> int | None:
        """No record still stored points below this CommitLog offset (None: no record)."""
        floors = [phys for _fire, phys in self._seals.values()]
        if self._phys != _NO_PHYS:
            floors.append(self._phys)
        return min(floors) if floors else None

    def destroy_all(self) -> None:
        """Delete every segment (the timer store's reset)."""
        for mf in self.files:
            mf.destroy()
        self.segments.files = []
        self._seals.clear()
        self.end = self.flushed = 0
        self._fire, self._phys = 0, _NO_PHYS

    def close(self) -> None:
        """Unmap every segment."""
        self.segments.close()
