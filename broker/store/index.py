"""Persisted hash index: find CommitLog offsets of messages by key and by unique id.

Each index file holds a header, a slot table and an entry area (big-endian)::

    header (40 bytes)
      0   8  begin_timestamp   int64  store time of the first indexed record (ms)
      8   8  end_timestamp     int64  store time of the last indexed record (ms)
     16   8  begin_phys        int64  CommitLog offset of the first indexed record
     24   8  end_phys          int64  CommitLog offset this file covers up to (exclusive)
     32   4  slot_count        int32
     36   4  entry_count       int32  entries used, counting the unused entry 0
    slots (slot_count x 4 bytes): uint32 number of the newest entry whose hash falls in
        the slot (hash % slot_count), 0 for none
    entries (entry_capacity x 20 bytes), entry 0 unused:
      0   4  key_hash          uint32 CRC32 of the UTF-8 index key
      4   8  phys              int64  CommitLog offset of the record
     12   4  time_diff         int32  seconds from begin_timestamp to the record's store time
     16   4  prev              uint32 the previous entry in the same slot, 0 for none

Index keys are ``topic + "#" + key`` for each message key and ``topic + "\\x01" + uniq_id``
for the unique id. Hashes collide, so callers verify each hit against the record.
Files are named by the 20-digit ``begin_phys`` of the first record they index; a full
file is sealed and a new one started. The index is derived data: the dispatcher
rebuilds it from the CommitLog.
"""

from __future__ import annotations

import array
import os
import struct
import sys
import zlib
from collections.abc import Callable
from typing import Final

from loguru import logger

from .mapped_file import CLOSED_ERRORS, MappedFile, segment_name

__all__ = ["IndexService", "key_of", "uniq_key_of"]

INDEX_HEADER: Final = struct.Struct(">qqqqii")
INDEX_HEADER_LEN: Final = 40
assert INDEX_HEADER.size == INDEX_HEADER_LEN
INDEX_ENTRY: Final = struct.Struct(">IqiI")
INDEX_ENTRY_LEN: Final = 20
assert INDEX_ENTRY.size == INDEX_ENTRY_LEN
_U32: Final = struct.Struct(">I")
_crc32 = zlib.crc32
_pack_entry = INDEX_ENTRY.pack_into
_pack_u32 = _U32.pack_into
_unpack_u32 = _U32.unpack_from
#: A query follows a slot's chain at most this far (bounds the work of a hot slot).
MAX_CHAIN_WALK: Final = 100_000


def key_of(topic: str, key: str) -> bytes:
    """The index key of a message key."""
    return f"{topic}#{key}".encode()


def uniq_key_of(topic: str, uniq_id: str) -> bytes:
    """The index key of a unique message id."""
    return f"{topic}\x01{uniq_id}".encode()


class _IndexFile:
    """One index file (see the module docstring for its layout)."""

    __slots__ = (
        "begin_phys",
        "begin_ts",
        "capacity",
        "count",
        "end_phys",
        "end_ts",
        "mf",
        "slots",
    )

    def __init__(self, mf: MappedFile, slots: int, capacity: int, *, fresh: bool) -> None:
        self.mf = mf
        self.slots = slots
        self.capacity = capacity
        if fresh:
            self.begin_ts = self.end_ts = 0
            self.begin_phys = self.end_phys = mf.start
            self.count = 1
            self.write_header()
        else:
            (self.begin_ts, self.end_ts, self.begin_phys, self.end_phys, file_slots, count) = (
                INDEX_HEADER.unpack_from(mf.mm, 0)
            )
            if file_slots != slots:
                raise ValueError(f"{mf.path}: slot count {file_slots}, configured {slots}")
            self.count = max(count, 1)

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    def write_header(self) -> None:
        INDEX_HEADER.pack_into(
            self.mf.mm,
            0,
            self.begin_ts,
            self.end_ts,
            self.begin_phys,
            self.end_phys,
            self.slots,
            self.count,
        )

    def _entry_pos(self, n: int) -> int:
        return INDEX_HEADER_LEN + self.slots * 4 + n * INDEX_ENTRY_LEN

    def add(self, key: bytes, phys: int, store_ts: int) -> None:
        h = zlib.crc32(key)
        mm = self.mf.mm
        slot_pos = INDEX_HEADER_LEN + (h % self.slots) * 4
        prev = _U32.unpack_from(mm, slot_pos)[0]
        n = self.count
        if n == 1:
            self.begin_ts = store_ts
        INDEX_ENTRY.pack_into(
            mm,
            INDEX_HEADER_LEN + self.slots * 4 + n * INDEX_ENTRY_LEN,
            h,
            phys,
            (store_ts - self.begin_ts) // 1000,
            prev,
        )
        _U32.pack_into(mm, slot_pos, n)
        self.count = n + 1
        self.end_ts = store_ts

    def lookup(self, key: bytes, begin_ms: int, end_ms: int, limit: int, out: list[int]) -> None:
        """Append to ``out`` the offsets of entries matching ``key``, newest first."""
        h = zlib.crc32(key)
        mm = self.mf.mm
        n = _U32.unpack_from(mm, INDEX_HEADER_LEN + (h % self.slots) * 4)[0]
        walked = 0
        while 0 < n < self.count and len(out) < limit and walked < MAX_CHAIN_WALK:
            eh, phys, tdiff, prev = INDEX_ENTRY.unpack_from(mm, self._entry_pos(n))
            ts = self.begin_ts + tdiff * 1000
            if eh == h and begin_ms - 1000 < ts <= end_ms + 1000:
                out.append(phys)
            if prev >= n:  # a chain only points backwards; anything else is damage
                break
            n = prev
            walked += 1

    def truncate_from(self, phys: int) -> int:
        """Forget the entries of records at or past ``phys``; return how many were dropped.

        Entries are in CommitLog order, so the survivors are a prefix found by binary search;
        slots that pointed into the dropped part are walked back along their chains.
        """
        mm = self.mf.mm
        lo, hi = 1, self.capacity
        while lo < hi:  # first entry that is empty or at/after phys
            mid = (lo + hi) // 2
            eh, ephys, _t, _p = INDEX_ENTRY.unpack_from(mm, self._entry_pos(mid))
            if (eh or ephys) and ephys < phys:
                lo = mid + 1
            else:
                hi = mid
        keep = lo
        dropped = max(self.count - keep, 0)
        start, stop = INDEX_HEADER_LEN, INDEX_HEADER_LEN + self.slots * 4
        table = array.array("I", mm[start:stop])
        if sys.byteorder == "little":
            table.byteswap()
        changed = False
        for i, n in enumerate(table):
            if n >= keep:
                while n >= keep:
                    n = (
                        INDEX_ENTRY.unpack_from(mm, self._entry_pos(n))[3]
                        if n < self.capacity
                        else 0
                    )
                table[i] = n
                changed = True
        if changed:
            if sys.byteorder == "little":
                table.byteswap()
            mm[start:stop] = table.tobytes()
        tail = self._entry_pos(keep)
        end = self._entry_pos(self.capacity)
        for z in range(tail, end, 1 << 20):
            n = min(1 << 20, end - z)
            mm[z : z + n] = bytes(n)
        self.count = keep
        self.end_phys = phys
        self.write_header()
        return dropped


class IndexService:
    """The index files under ``<root>/index``, newest last."""

    def __init__(
        self,
        directory: str,
        slots: int,
        capacity: int,
        on_new_file: Callable[[MappedFile], None] | None = None,
    ) -> None:
        self.directory = directory
        self.slots = slots
        self.capacity = capacity
        self.file_size = INDEX_HEADER_LEN + slots * 4 + capacity * INDEX_ENTRY_LEN
        self.files: list[_IndexFile] = []
        self.dirty = False
        self._sealed: list[_IndexFile] = []
        self.on_new_file = on_new_file

    def load(self) -> None:
        """Map the existing files."""
        os.makedirs(self.directory, exist_ok=True)
        names = sorted(n for n in os.listdir(self.directory) if len(n) == 20 and n.isdigit())
        files = []
        for name in names:
            mf = MappedFile(
                os.path.join(self.directory, name), int(name), self.file_size, create=False
            )
            header = INDEX_HEADER.unpack_from(mf.mm, 0)
            if header[4] == 0 and header[5] == 0:
                # Created but its header never written (a crash right at creation): it holds
                # nothing; start it afresh (recovery re-indexes from the checkpoint).
                logger.warning("index file {} has no header; starting it empty", mf.path)
                files.append(_IndexFile(mf, self.slots, self.capacity, fresh=True))
                continue
            files.append(_IndexFile(mf, self.slots, self.capacity, fresh=False))
        self.files = files

    @property
    def covered(self) -> int:
        """The CommitLog offset the newest file says it covers up to (0 with no file)."""
        return self.files[-1].end_phys if self.files else 0

    def _active(self, phys: int) -> _IndexFile:
        files = self.files
        if files and not files[-1].full:
            return files[-1]
        start = phys
        if files:
            files[-1].write_header()
            self._sealed.append(files[-1])
            start = max(phys, files[-1].mf.start + 1)  # names stay unique and ordered
        path = os.path.join(self.directory, segment_name(start))
        mf = MappedFile(path, start, self.file_size, create=True)
        f = _IndexFile(mf, self.slots, self.capacity, fresh=True)
        self.files = [*files, f]
        if self.on_new_file is not None:
            self.on_new_file(mf)
        logger.info("index file created: {}", path)
        return f

    def put(self, topic: str, keys: list[str], uniq_id: str, phys: int, store_ts: int) -> None:
        """Index one record under each of its keys and its unique id."""
        files = self.files
        f = files[-1] if files and files[-1].count < self.capacity else self._active(phys)
        if uniq_id:
            # Inlined _IndexFile.add for the common case of one unique id per message.
            key = (topic + "\x01" + uniq_id).encode()
            h = _crc32(key)
            mm = f.mf.mm
            slots = f.slots
            slot_pos = INDEX_HEADER_LEN + (h % slots) * 4
            n = f.count
            if n == 1:
                f.begin_ts = store_ts
            _pack_entry(
                mm,
                INDEX_HEADER_LEN + slots * 4 + n * INDEX_ENTRY_LEN,
                h,
                phys,
                (store_ts - f.begin_ts) // 1000,
                _unpack_u32(mm, slot_pos)[0],
            )
            _pack_u32(mm, slot_pos, n)
            f.count = n + 1
            f.end_ts = store_ts
        for key_ in keys:
            if f.full:
                f = self._active(phys)
            f.add(f"{topic}#{key_}".encode(), phys, store_ts)
        self.dirty = True

    def mark_covered(self, phys: int) -> None:
        """Record that every record below ``phys`` has been given to the index."""
        if self.files:
            self.files[-1].end_phys = phys

    def lookup(self, key: bytes, limit: int, begin_ms: int = 0, end_ms: int = 1 << 62) -> list[int]:
        """CommitLog offsets whose index key hashes like ``key``, newest first (unverified)."""
        out: list[int] = []
        for f in reversed(self.files):
            if len(out) >= limit:
                break
            if f.count > 1 and f.end_ts + 1000 >= begin_ms and f.begin_ts - 1000 <= end_ms:
                try:
                    f.lookup(key, begin_ms, end_ms, limit, out)
                except CLOSED_ERRORS:  # unmapped by retention under us: those records are gone
                    continue
        return out

    def truncate_from(self, phys: int) -> None:
        """Forget everything indexed at or past ``phys`` (crash recovery)."""
        while self.files and self.files[-1].begin_phys >= phys and self.files[-1].mf.start >= phys:
            gone = self.files[-1]
            self.files = self.files[:-1]
            gone.mf.destroy()
        if self.files:
            dropped = self.files[-1].truncate_from(phys)
            if dropped:
                logger.info("index: dropped {} entries at or past offset {}", dropped, phys)

    def delete_below(self, log_min: int) -> int:
        """Delete files that only index records below ``log_min``; return how many."""
        deleted = 0
        files = self.files
        keep = 0
        while keep < len(files) - 1 and files[keep + 1].begin_phys <= log_min:
            keep += 1
        if keep:
            self.files = files[keep:]  # replaced, never mutated: readers keep their snapshot
            for gone in files[:keep]:
                gone.mf.destroy()
                deleted += 1
        return deleted

    def flush(self) -> None:
        """Write headers and fdatasync the files changed since the last flush."""
        sealed, self._sealed = self._sealed, []
        if not self.dirty and not sealed:
            return
        self.dirty = False
        targets = [f for f in sealed if f in self.files]
        if self.files:
            targets.append(self.files[-1])
        for f in targets:
            try:
                f.write_header()
                f.mf.flush()
            except CLOSED_ERRORS:  # deleted by retention meanwhile
                pass

    def close(self) -> None:
        """Unmap every file."""
        for f in self.files:
            f.mf.close()
        self.files = []
