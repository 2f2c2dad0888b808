"""Helpers shared by the store suite: small configs, deterministic bodies, raw segment walks."""

from __future__ import annotations

import os
import random
import struct
import zlib
from collections.abc import Iterable
from typing import Any

from broker.store import (
    GetStatus,
    MessageStore,
    PutMessage,
    PutResult,
    PutStatus,
    StoreConfig,
)
from broker.store.record import BLANK_MAGIC, MESSAGE_MAGIC, SIZE_MAGIC

#: Small sizes so that CommitLog segments, ConsumeQueue files and index files all roll.
SEGMENT_SIZE = 128 * 1024
CQ_ENTRIES = 64
CQ_FILE_BYTES = CQ_ENTRIES * 20

#: A big-endian uint64 (the checkpoint's sequence number, for one).
U64 = struct.Struct(">Q")

#: A clean interval no test reaches: retention runs only when a test calls it.
NEVER_MS = 10**12


def small_config(**overrides: Any) -> StoreConfig:
    """A StoreConfig with small files and short intervals; keyword overrides win."""
    base: dict[str, Any] = {
        "segment_size": SEGMENT_SIZE,
        "max_message_size": 8 * 1024,
        "cq_entries_per_file": CQ_ENTRIES,
        "index_slots": 64,
        "index_entries": 256,
        "flush_interval_ms": 50,
        "checkpoint_interval_ms": 200,
        "clean_interval_ms": NEVER_MS,
    }
    base.update(overrides)
    return StoreConfig(**base)


class Clock:
    """An injectable clock (ms since the epoch) that only moves when a test moves it."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class DiskRatio:
    """An injectable disk-usage function whose answer a test sets."""

    def __init__(self, ratio: float = 0.10) -> None:
        self.ratio = ratio

    def __call__(self, path: str) -> float:
        return self.ratio


def body_for(seq: int, size: int | None = None) -> bytes:
    """A deterministic body for message ``seq``, with zero bytes in it, 0..1500 bytes long."""
    rng = random.Random(seq)
    if size is None:
        size = rng.randrange(0, 1500)
    return rng.randbytes(size)


def put_ok(store: MessageStore, msg: PutMessage) -> PutResult:
    """Put one message and insist that it was stored."""
    result = store.put(msg)
    assert result.status is PutStatus.PUT_OK, result
    return result


def fill(
    store: MessageStore,
    count: int,
    *,
    topics: Iterable[str] = ("T",),
    queues: int = 1,
    start: int = 0,
    tags: Iterable[str] = ("",),
    body_size: int | None = None,
) -> list[tuple[PutMessage, PutResult]]:
    """Put ``count`` messages round-robin over topics, queues and tags; return them with results."""
    topics_l, tags_l = list(topics), list(tags)
    out = []
    for i in range(start, start + count):
        msg = PutMessage(
            topic=topics_l[i % len(topics_l)],
            queue_id=(i // len(topics_l)) % queues,
            body=body_for(i, body_size),
            tags=tags_l[i % len(tags_l)],
            keys=[f"key-{i}"],
            uniq_id=f"uid-{i}",
        )
        out.append((msg, put_ok(store, msg)))
    return out


def read_queue(
    store: MessageStore, topic: str, queue_id: int, start: int | None = None, **kwargs: Any
) -> list[bytes]:
    """Every record of a queue from ``start`` (default: its minimum) to its end, raw."""
    offset = store.min_offset(topic, queue_id) if start is None else start
    records: list[bytes] = []
    for _ in range(100_000):
        got = store.get_messages(topic, queue_id, offset, **kwargs)
        if got.status is not GetStatus.FOUND:
            assert got.status in (
                GetStatus.OFFSET_OVERFLOW_ONE,
                GetStatus.NO_MESSAGE_IN_QUEUE,
                GetStatus.NO_MATCHED_MESSAGE,
            ), got
            if got.status is GetStatus.NO_MATCHED_MESSAGE and got.next_offset < got.max_offset:
                offset = got.next_offset
                continue
            return records
        assert got.next_offset > offset
        records.extend(got.records)
        offset = got.next_offset
    raise AssertionError("read_queue did not reach the end of the queue")


def snapshot_queues(store: MessageStore) -> dict[tuple[str, int], tuple[int, int, list[bytes]]]:
    """(min offset, max offset, every record) of every queue."""
    return {
        (topic, qid): (
            store.min_offset(topic, qid),
            store.max_offset(topic, qid),
            read_queue(store, topic, qid),
        )
        for topic, qid in store.queues()
    }


def segment_files(root: str | os.PathLike[str]) -> list[str]:
    """Names of the CommitLog segment files, oldest first."""
    directory = os.path.join(root, "commitlog")
    return sorted(n for n in os.listdir(directory) if len(n) == 20 and n.isdigit())


def walk_segment(data: bytes) -> tuple[list[tuple[int, int]], int | None]:
    """Walk one segment's bytes record by record.

    Returns the (position, size) of each record and the position of the end-of-segment
    marker (None when the segment ends in zeros instead).
    """
    records: list[tuple[int, int]] = []
    pos = 0
    while pos + 8 <= len(data):
        total, magic = SIZE_MAGIC.unpack_from(data, pos)
        if magic == BLANK_MAGIC:
            assert total == len(data) - pos, (pos, total)
            return records, pos
        if total == 0 and magic == 0:
            break
        assert magic == MESSAGE_MAGIC, (pos, hex(magic))
        records.append((pos, total))
        pos += total
    assert not data[pos:].strip(b"\0"), f"non-zero bytes after the last record at {pos}"
    return records, None


def nonzero_len(data: bytes) -> int:
    """Length of ``data`` up to and including its last non-zero byte."""
    return len(data.rstrip(b"\0"))


def crc32_forge(prefix: bytes, target: int) -> bytes | None:
    """Four bytes ``x`` with ``zlib.crc32(prefix + x) == target``, or None if none exists.

    CRC32 is affine over GF(2) in the appended bytes, so the 32 unknown bits solve a
    32x32 linear system (Gaussian elimination on the bit columns).
    """
    base = zlib.crc32(prefix + bytes(4))
    columns = []
    for bit in range(32):
        x = (1 << bit).to_bytes(4, "little")
        columns.append(zlib.crc32(prefix + x) ^ base)
    want = target ^ base
    # Rows: one per output bit; each row is (32-bit mask of input bits, wanted output bit).
    rows = []
    for out_bit in range(32):
        mask = 0
        for in_bit, col in enumerate(columns):
            if col >> out_bit & 1:
                mask |= 1 << in_bit
        rows.append([mask, want >> out_bit & 1])
    solution = 0
    pivots: list[tuple[int, int]] = []
    r = 0
    for col in range(32):
        pivot = next((i for i in range(r, 32) if rows[i][0] >> col & 1), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        for i in range(32):
            if i != r and rows[i][0] >> col & 1:
                rows[i][0] ^= rows[r][0]
                rows[i][1] ^= rows[r][1]
        pivots.append((r, col))
        r += 1
    if any(mask == 0 and bit for mask, bit in rows):
        return None
    for row, col in pivots:
        if rows[row][1]:
            solution |= 1 << col
    forged = solution.to_bytes(4, "little")
    return forged if zlib.crc32(prefix + forged) == target else None


def colliding_text(prefix: bytes, target: int, stem: str) -> str:
    """An ASCII string ``s`` (starting with ``stem``) with ``crc32(prefix + s) == target``."""
    for n in range(10_000):
        head = f"{stem}{n}-".encode()
        tail = crc32_forge(prefix + head, target)
        if tail is not None and all(0x20 <= b < 0x7F for b in tail):
            return (head + tail).decode("ascii")
    raise AssertionError("no printable CRC32 collision found")
