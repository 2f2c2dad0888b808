"""The checkpoint: how far the CommitLog is flushed and the derived files are durable.

The file ``<root>/checkpoint`` holds two 64-byte slots, at byte 0 and byte 512, written
alternately so that a torn write leaves the other one intact. Each slot (big-endian)::

      0   8  sequence           int64  increases with every write; the higher valid slot wins
      8   8  log_flushed        int64  CommitLog offset known durable
     16   8  cq_safe            int64  every record below it is in the ConsumeQueues, durably
     24   8  index_safe         int64  every record below it is in the Index, durably
     32   8  log_end            int64  CommitLog end at the time of writing
     40   8  written_at         int64  ms since the epoch
     48  12  reserved           zeros
     60   4  crc32              uint32 CRC32 of bytes [0, 60)
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from typing import Final

import msgspec

__all__ = ["Checkpoint", "CheckpointFile"]

_SLOT: Final = struct.Struct(">qqqqqq12xI")
_SLOT_LEN: Final = 64
assert _SLOT.size == _SLOT_LEN
_SLOT_AT: Final = (0, 512)


class Checkpoint(msgspec.Struct, frozen=True):
    """One checkpoint record."""

    sequence: int = 0
    log_flushed: int = 0
    cq_safe: int = 0
    index_safe: int = 0
    log_end: int = 0
    written_at: int = 0


class CheckpointFile:
    """Reads the newest valid slot and writes the next one in place, with fdatasync."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._sequence = 0

    def read(self) -> Checkpoint | None:
        """The newest valid checkpoint, or None when neither slot is valid."""
        best: Checkpoint | None = None
        for at in _SLOT_AT:
            raw = os.pread(self._fd, _SLOT_LEN, at)
            if len(raw) != _SLOT_LEN:
                continue
            *fields, crc = _SLOT.unpack(raw)
            if zlib.crc32(raw[:60]) != crc or fields[0] <= 0:
                continue
            cp = Checkpoint(*fields)
            if best is None or cp.sequence > best.sequence:
                best = cp
        if best is not None:
            self._sequence = best.sequence
        return best

    def write(self, log_flushed: int, cq_safe: int, index_safe: int, log_end: int) -> None:
        """Write and fdatasync a new checkpoint into the older slot."""
        self._sequence += 1
        seq = self._sequence
        body = _SLOT.pack(
            seq, log_flushed, cq_safe, index_safe, log_end, int(time.time() * 1000), 0
        )[:60]
        raw = body + struct.pack(">I", zlib.crc32(body))
        os.pwrite(self._fd, raw, _SLOT_AT[seq % 2])
        os.fdatasync(self._fd)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
