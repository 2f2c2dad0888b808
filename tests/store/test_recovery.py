"""Recovery (S5): a torn or corrupted CommitLog is cut at the damage; nothing before it is lost."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest

from broker.store import MessageStore, PutMessage, PutResult, decode_message
from broker.store.consume_queue import CQ_ENTRY_SIZE
from broker.store.record import HEADER_LEN

from ._support import (
    SEGMENT_SIZE,
    U64,
    fill,
    nonzero_len,
    put_ok,
    read_queue,
    segment_files,
    small_config,
    snapshot_queues,
    walk_segment,
)
from .conftest import StoreLog, Stores

COUNT = 500
TOPICS = ("T", "U")
QUEUES = 3

Written = list[tuple[PutMessage, PutResult]]


def _write(stores: Stores) -> Written:
    store = stores.open()
    puts = fill(store, COUNT, topics=TOPICS, queues=QUEUES, tags=("x", "y"))
    assert store.stats().segments >= 4
    store.close()
    return puts


def _segment_path(root: Path, index: int) -> Path:
    return root / "commitlog" / segment_files(root)[index]


def _expected_cut(root: Path, seg_index: int, damaged: bytes, original: bytes) -> tuple[int, int]:
    """Where recovery must end the log, and how many non-zero bytes it must cut.

    ``damaged`` is what segment ``seg_index`` holds after the test damaged it. The log ends
    at the first record (or marker) whose bytes changed; a record whose zero tail alone was
    truncated is intact and stays.
    """
    start = int(segment_files(root)[seg_index])
    records, marker = walk_segment(original)
    end_pos = None
    for pos, size in records:
        if damaged[pos : pos + size] != original[pos : pos + size]:
            end_pos = pos
            break
    if end_pos is None:
        assert marker is not None and damaged[marker : marker + 8] != original[marker : marker + 8]
        end_pos = marker
    cut = nonzero_len(damaged[end_pos:])
    for later in segment_files(root)[seg_index + 1 :]:
        cut += nonzero_len((root / "commitlog" / later).read_bytes())
    return start + end_pos, cut


def _check_recovered(
    store: MessageStore, puts: Written, end: int, store_log: StoreLog
) -> tuple[Written, Written]:
    """Assert the store holds exactly the records wholly below ``end``; return (kept, lost)."""
    kept = [(m, r) for m, r in puts if r.end_offset <= end]
    lost = [(m, r) for m, r in puts if r.end_offset > end]
    assert kept and lost
    assert all(r.physical_offset >= end for _, r in lost)
    assert store.max_physical_offset == end
    for msg, result in kept:
        got = store.get_message(result.physical_offset)
        assert got is not None, result
        assert (got.topic, got.queue_id, got.queue_offset, got.body, got.uniq_id) == (
            msg.topic,
            msg.queue_id,
            result.queue_offset,
            msg.body,
            msg.uniq_id,
        )
    for _, result in lost:
        assert store.get_record(result.physical_offset) is None
    # The ConsumeQueues hold the kept messages, in order, and nothing past the cut.
    kept_per_queue = Counter((m.topic, m.queue_id) for m, _ in kept)
    for topic in TOPICS:
        for qid in range(QUEUES):
            records = read_queue(store, topic, qid)
            assert store.max_offset(topic, qid) == kept_per_queue[(topic, qid)] == len(records)
            expected = [r.physical_offset for m, r in kept if (m.topic, m.queue_id) == (topic, qid)]
            assert [decode_message(raw).physical_offset for raw in records] == expected
    assert store.recovery.cq_entries_truncated == len(lost)
    for msg, _ in lost[:20]:
        assert store.query_by_uniq_id(msg.topic, msg.uniq_id) == []
        assert store.query_by_key(msg.topic, msg.keys[0]) == []
    for msg, result in kept[-20:]:
        [found] = store.query_by_uniq_id(msg.topic, msg.uniq_id)
        assert found.physical_offset == result.physical_offset
    return kept, lost


def _put_more_and_reopen(stores: Stores, store: MessageStore, kept: Written, end: int) -> None:
    """New puts after recovery land at the recovered end and survive a clean reopen."""
    per_queue = Counter((m.topic, m.queue_id) for m, _ in kept)
    more = []
    for i in range(30):
        msg = PutMessage(
            topic=TOPICS[i % 2], queue_id=i % QUEUES, body=b"after-%d" % i, uniq_id=f"after-{i}"
        )
        result = put_ok(store, msg)
        if i == 0:
            assert result.physical_offset == end
        assert result.queue_offset == per_queue[(msg.topic, msg.queue_id)]
        per_queue[(msg.topic, msg.queue_id)] += 1
        more.append((msg, result))
    before = snapshot_queues(store)
    store.close()
    again = stores.open()
    assert again.recovery.abnormal is False
    assert again.recovery.cut_bytes == 0 and again.recovery.damage is None
    assert snapshot_queues(again) == before
    for msg, result in more:
        [found] = again.query_by_uniq_id(msg.topic, msg.uniq_id)
        assert (found.physical_offset, found.body) == (result.physical_offset, msg.body)


def _check_cut_dir(root: Path, damaged: bytes, end: int, seg_start: int, cut_bytes: int) -> None:
    """The bytes cut off are kept in <root>/cut/ (the tail, and whole later segments)."""
    cut_dir = root / "cut"
    if cut_bytes == 0:
        assert not cut_dir.exists() or not any(cut_dir.iterdir())
        return
    kept = {p.name: p.read_bytes() for p in cut_dir.iterdir()}
    tail_len = nonzero_len(damaged[end - seg_start :])
    tails = {name: data for name, data in kept.items() if name.endswith(".tail")}
    if tail_len:
        [(name, data)] = tails.items()
        assert name.startswith(f"{end:020d}.")
        assert data == damaged[end - seg_start : end - seg_start + tail_len]
    else:
        assert tails == {}
    total = sum(nonzero_len(data) for data in kept.values())
    assert total == cut_bytes


@pytest.mark.parametrize(
    ("seed", "segment", "checkpoint"),
    [
        (1, -1, "kept"),
        (2, -1, "kept"),
        (3, -1, "kept"),
        (4, -1, "kept"),
        (5, -1, "deleted"),
        (6, -1, "deleted"),
        (7, -2, "kept"),
        (8, -2, "deleted"),
    ],
)
def test_truncated_log_is_cut_at_the_damage(
    stores: Stores, root: Path, store_log: StoreLog, seed: int, segment: int, checkpoint: str
) -> None:
    puts = _write(stores)
    path = _segment_path(root, segment)
    seg_index = segment_files(root).index(path.name)
    original = path.read_bytes()
    records, marker = walk_segment(original)
    written = marker + 8 if marker is not None else records[-1][0] + records[-1][1]
    cut_at = random.Random(seed).randrange(1, written)
    os.truncate(path, cut_at)  # a torn write: the file ends at cut_at
    damaged = original[:cut_at] + bytes(SEGMENT_SIZE - cut_at)
    (root / "abort").write_bytes(b"running\n")  # as a crash leaves it
    if checkpoint == "deleted":
        (root / "checkpoint").unlink()
    end, cut_bytes = _expected_cut(root, seg_index, damaged, original)

    store = stores.open()
    report = store.recovery
    assert report.abnormal is True
    assert report.end_offset == end
    assert report.cut_bytes == cut_bytes
    assert (report.damage is not None) == (nonzero_len(damaged[end - int(path.name) :]) > 0)
    if report.damage is not None:
        assert report.damage_path == str(path)
        assert any(str(path) in w and str(end) in w for w in store_log.messages("WARNING"))
    if checkpoint == "deleted":
        assert report.scanned_from == 0
    assert segment_files(root)[-1] == path.name
    _check_cut_dir(root, damaged, end, int(path.name), cut_bytes)
    kept, _ = _check_recovered(store, puts, end, store_log)
    _put_more_and_reopen(stores, store, kept, end)


FLIPS = {
    "total_size": lambda t, p: 2,
    "magic": lambda t, p: 5,
    "crc": lambda t, p: 9,
    "queue_offset": lambda t, p: 27,
    "store_timestamp": lambda t, p: 50,
    "body_length": lambda t, p: 113,
    "topic": lambda t, p: HEADER_LEN,
    "properties": lambda t, p: HEADER_LEN + t + p // 2,
    "body": lambda t, p: HEADER_LEN + t + p + 3,
}


@pytest.mark.parametrize("field", list(FLIPS))
@pytest.mark.parametrize(("segment", "crashed"), [(-1, False), (-2, True)], ids=["last", "prev"])
def test_flipped_byte_cuts_at_that_record(
    stores: Stores, root: Path, store_log: StoreLog, field: str, segment: int, crashed: bool
) -> None:
    puts = _write(stores)
    path = _segment_path(root, segment)
    seg_index = segment_files(root).index(path.name)
    seg_start = int(path.name)
    original = path.read_bytes()
    records, _ = walk_segment(original)
    pos, size = records[len(records) // 2]
    victim = decode_message(original[pos : pos + size])
    t_len = len(victim.topic.encode())
    p_len = size - HEADER_LEN - t_len - len(victim.body)
    at = pos + FLIPS[field](t_len, p_len)
    assert at < pos + size
    damaged = bytearray(original)
    damaged[at] ^= 0x40
    path.write_bytes(bytes(damaged))
    if crashed:
        (root / "abort").write_bytes(b"running\n")
    end, cut_bytes = _expected_cut(root, seg_index, bytes(damaged), original)
    assert end == seg_start + pos

    store = stores.open()
    report = store.recovery
    assert report.abnormal is crashed
    assert report.end_offset == end
    assert report.damage is not None and report.damage_path == str(path)
    assert report.cut_bytes == cut_bytes
    assert any(str(path) in w and str(end) in w for w in store_log.messages("WARNING"))
    _check_cut_dir(root, bytes(damaged), end, seg_start, cut_bytes)
    kept, _ = _check_recovered(store, puts, end, store_log)
    _put_more_and_reopen(stores, store, kept, end)


def test_cut_bytes_can_be_discarded(stores: Stores, root: Path) -> None:
    puts = _write(stores)
    path = _segment_path(root, -1)
    data = bytearray(path.read_bytes())
    records, _ = walk_segment(bytes(data))
    data[records[1][0] + HEADER_LEN] ^= 1
    path.write_bytes(bytes(data))
    store = stores.open(small_config(keep_cut_bytes=False))
    assert store.recovery.cut_bytes > 0
    assert not (root / "cut").exists()
    assert store.max_physical_offset == int(path.name) + records[1][0]
    assert store.get_message(puts[0][1].physical_offset) is not None


def _all_observable(store: MessageStore, puts: Written) -> object:
    return (
        snapshot_queues(store),
        [[m.physical_offset for m in store.query_by_key(m.topic, m.keys[0])] for m, _ in puts],
        [[m.physical_offset for m in store.query_by_uniq_id(m.topic, m.uniq_id)] for m, _ in puts],
    )


@pytest.mark.parametrize("damage", ["deleted", "garbage", "empty", "newer-slot-torn"])
@pytest.mark.parametrize("crashed", [False, True], ids=["clean", "abort-marker"])
def test_damaged_or_missing_checkpoint_recovers_everything(
    stores: Stores, root: Path, damage: str, crashed: bool
) -> None:
    store = stores.open()
    puts = fill(store, COUNT, topics=TOPICS, queues=QUEUES)
    assert store.stats().segments > store.config.recover_segments
    before = _all_observable(store, puts)
    store.close()
    cp = root / "checkpoint"
    if damage == "deleted":
        cp.unlink()
    elif damage == "garbage":
        cp.write_bytes(random.Random(9).randbytes(1024))
    elif damage == "empty":
        cp.write_bytes(b"")
    else:
        raw = bytearray(cp.read_bytes())
        # Tear the slot with the higher sequence number: the older one must be used.
        newer = max((0, 512), key=lambda at: U64.unpack_from(raw, at)[0])
        raw[newer + 30] ^= 0xFF
        cp.write_bytes(bytes(raw))
    if crashed:
        (root / "abort").write_bytes(b"running\n")
    again = stores.open()
    assert again.recovery.abnormal is crashed
    assert again.recovery.cut_bytes == 0 and again.recovery.damage is None
    if damage != "newer-slot-torn":
        assert again.recovery.scanned_from == 0  # no checkpoint: everything is re-dispatched
        assert again.recovery.redispatched_queue == COUNT
    assert _all_observable(again, puts) == before


def test_missing_checkpoint_redispatches_lost_queue_entries(stores: Stores, root: Path) -> None:
    """Queue entries that never reached the disk come back when no checkpoint vouches for them."""
    store = stores.open()
    puts = fill(store, COUNT, topics=TOPICS, queues=QUEUES)
    before = snapshot_queues(store)
    store.close()
    qdir = root / "consumequeue" / "T" / "0"
    last = max(qdir.iterdir())
    raw = bytearray(last.read_bytes())
    used = nonzero_len(bytes(raw))
    lost_entries = 10
    cut_from = (used // CQ_ENTRY_SIZE + 1 - lost_entries) * CQ_ENTRY_SIZE
    raw[cut_from:] = bytes(len(raw) - cut_from)
    last.write_bytes(bytes(raw))
    (root / "checkpoint").unlink()
    (root / "abort").write_bytes(b"running\n")
    again = stores.open()
    assert snapshot_queues(again) == before
    assert again.max_offset("T", 0) == sum(1 for m, _ in puts if (m.topic, m.queue_id) == ("T", 0))


def test_cut_records_leave_no_index_entries(stores: Stores, root: Path) -> None:
    """A producer retrying the messages lost in a crash must not find them indexed twice."""
    puts = _write(stores)
    path = _segment_path(root, -1)
    seg_start = int(path.name)
    records, _ = walk_segment(path.read_bytes())
    pos, _size = records[len(records) // 2]
    os.truncate(path, pos + 50)
    (root / "abort").write_bytes(b"running\n")
    store = stores.open()
    end = store.recovery.end_offset
    assert end == seg_start + pos
    lost = [(m, r) for m, r in puts if r.physical_offset >= end]
    assert lost
    # The producer did not get its acks, so it sends the same messages again.
    for msg, old in lost:
        again = put_ok(store, msg)
        assert again.physical_offset == old.physical_offset  # same layout as before the crash
    for msg, old in lost:
        by_id = store.query_by_uniq_id(msg.topic, msg.uniq_id)
        by_key = store.query_by_key(msg.topic, msg.keys[0])
        assert [m.physical_offset for m in by_id] == [old.physical_offset], msg.uniq_id
        assert [m.physical_offset for m in by_key] == [old.physical_offset], msg.keys


def test_index_file_torn_at_creation_does_not_prevent_open(stores: Stores, root: Path) -> None:
    """A crash between creating an index file and writing its header leaves it all zeros."""
    store = stores.open()
    puts = fill(store, 100, topics=TOPICS, queues=QUEUES)
    end = store.max_physical_offset
    store.close()
    newest = max((root / "index").iterdir())
    torn = root / "index" / f"{end:020d}"
    assert torn.name > newest.name
    # What MappedFile(create=True) leaves before _IndexFile writes the header: zeros.
    torn.write_bytes(bytes(newest.stat().st_size))
    (root / "abort").write_bytes(b"running\n")
    again = stores.open()
    assert again.recovery.abnormal is True
    for msg, result in puts:
        [found] = again.query_by_uniq_id(msg.topic, msg.uniq_id)
        assert found.physical_offset == result.physical_offset
    more = put_ok(again, PutMessage(topic="T", queue_id=0, body=b"after", uniq_id="after"))
    assert [m.physical_offset for m in again.query_by_uniq_id("T", "after")] == [
        more.physical_offset
    ]
