"""CommitLog segments (S1): rolling, 20-digit names, end-of-segment markers, reads by offset."""

from __future__ import annotations

from pathlib import Path

from broker.store import GetStatus, MessageStore, PutMessage, decode_message
from broker.store.record import BLANK_MAGIC, BLANK_MARKER, HEADER_LEN, verify

from ._support import SEGMENT_SIZE, body_for, fill, put_ok, segment_files, walk_segment
from .conftest import Stores


def test_segments_roll_and_are_named_by_start_offset(stores: Stores, root: Path) -> None:
    store = stores.open()
    puts = fill(store, 700, queues=3, tags=("a", "b"))
    end = store.max_physical_offset
    assert end > 4 * SEGMENT_SIZE
    stats = store.stats()
    names = segment_files(root)
    assert stats.segments == len(names) == end // SEGMENT_SIZE + 1
    for i, name in enumerate(names):
        assert len(name) == 20 and name.isdigit()
        assert int(name) == i * SEGMENT_SIZE  # multiples of the segment size, no gaps
        assert (root / "commitlog" / name).stat().st_size == SEGMENT_SIZE
    # Every message is readable by queue and by physical offset.
    for msg, result in puts:
        got = store.get_message(result.physical_offset)
        assert got is not None
        assert (got.topic, got.queue_id, got.body, got.keys) == (
            msg.topic,
            msg.queue_id,
            msg.body,
            msg.keys,
        )
        assert got.queue_offset == result.queue_offset
        page = store.get_messages(msg.topic, msg.queue_id, result.queue_offset, max_count=1)
        assert page.status is GetStatus.FOUND
        assert page.records == [store.get_record(result.physical_offset)]


def test_records_never_span_segments_and_markers_end_segments(stores: Stores, root: Path) -> None:
    store = stores.open()
    puts = fill(store, 600, queues=2)
    results = {r.physical_offset: r.size for _, r in puts}
    store.close()

    names = segment_files(root)
    assert len(names) >= 4
    walked: dict[int, int] = {}
    for i, name in enumerate(names):
        start = int(name)
        data = (root / "commitlog" / name).read_bytes()
        records, marker = walk_segment(data)
        for pos, size in records:
            walked[start + pos] = size
            assert pos + size <= SEGMENT_SIZE
            assert verify(data[pos : pos + size]) is None
            assert decode_message(data[pos : pos + size]).physical_offset == start + pos
        if i < len(names) - 1:
            # A sealed segment ends with [remaining][BLANK_MAGIC] right after its last record,
            # and the record that did not fit went to the next segment instead.
            assert marker is not None, f"segment {name} has no end marker"
            last_pos, last_size = records[-1]
            assert marker == last_pos + last_size
            remaining = SEGMENT_SIZE - marker
            assert data[marker : marker + 8] == BLANK_MARKER.pack(remaining, BLANK_MAGIC)
            assert not data[marker + 8 :].strip(b"\0")
            next_first = int(names[i + 1])
            assert results[next_first] + 8 > remaining, "a record that fitted was moved"
        else:
            assert marker is None
    assert walked == results


def _leave_gap(store: MessageStore, segment_end: int, overhead: int) -> int:
    """Put 4 KiB bodies until the room left before ``segment_end`` suits one 4..8 KiB record."""
    wrote = store.max_physical_offset
    while segment_end - wrote > 8 * 1024 + overhead + 8:
        wrote = put_ok(store, PutMessage(topic="t", queue_id=0, body=b"y" * 4096)).end_offset
    return segment_end - wrote


def test_record_must_leave_room_for_the_end_marker(stores: Stores, root: Path) -> None:
    store = stores.open()
    overhead = put_ok(store, PutMessage(topic="t", queue_id=0, body=b"x")).size - 1
    # Segment 0: a record one byte too large to leave 8 bytes for the marker rolls over.
    gap = _leave_gap(store, SEGMENT_SIZE, overhead)
    too_big = put_ok(store, PutMessage(topic="t", queue_id=0, body=b"z" * (gap - 8 - overhead + 1)))
    assert too_big.physical_offset == SEGMENT_SIZE
    # Segment 1: a record that leaves exactly 8 bytes stays; the next one rolls.
    gap1 = _leave_gap(store, 2 * SEGMENT_SIZE, overhead)
    exact = put_ok(store, PutMessage(topic="t", queue_id=0, body=b"e" * (gap1 - 8 - overhead)))
    assert exact.end_offset == 2 * SEGMENT_SIZE - 8
    after = put_ok(store, PutMessage(topic="t", queue_id=0, body=b""))
    assert after.physical_offset == 2 * SEGMENT_SIZE
    store.close()
    names = segment_files(root)
    seg0 = (root / "commitlog" / names[0]).read_bytes()
    seg1 = (root / "commitlog" / names[1]).read_bytes()
    marker0 = SEGMENT_SIZE - gap
    assert seg0[marker0 : marker0 + 8] == BLANK_MARKER.pack(gap, BLANK_MAGIC)
    assert seg1[-8:] == BLANK_MARKER.pack(8, BLANK_MAGIC)
    assert walk_segment(seg0)[1] == marker0
    assert walk_segment(seg1)[1] == SEGMENT_SIZE - 8


def test_largest_body_fits_and_reads_back(stores: Stores) -> None:
    store = stores.open()
    big = body_for(1, 8 * 1024)
    results = [put_ok(store, PutMessage(topic="big", queue_id=0, body=big)) for _ in range(40)]
    for r in results:
        got = store.get_message(r.physical_offset)
        assert got is not None and got.body == big
        assert r.physical_offset // SEGMENT_SIZE == (r.end_offset - 1) // SEGMENT_SIZE
        assert r.size == HEADER_LEN + 3 + 8 * 1024


def test_get_by_offset_outside_the_log_is_none(stores: Stores) -> None:
    store = stores.open()
    assert store.get_message(0) is None
    r = put_ok(store, PutMessage(topic="t", queue_id=0, body=b"abc"))
    assert store.get_record(r.end_offset) is None
    assert store.get_record(r.physical_offset + 1) is None
    assert store.get_record(10 * SEGMENT_SIZE) is None
    assert store.get_message(r.physical_offset) is not None


def _advised_random(path: Path) -> bool | None:
    """Whether the mapping of ``path`` in this process has VM_RAND_READ ("rr" in smaps)."""
    current: str | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 6:
            current = fields[5]
        elif line.startswith("VmFlags:") and current == str(path):
            return "rr" in fields[1:]
    return None


def test_only_the_segment_being_written_is_advised_random(stores: Stores, root: Path) -> None:
    # MADV_RANDOM keeps the write segment in single pages, so a SYNC_FLUSH msync writes
    # one page, not a large folio (see MappedFile.advise); sealed segments read ahead.
    store = stores.open()
    fill(store, 700, queues=3)
    names = segment_files(root)
    assert len(names) > 2
    flags = [_advised_random(root / "commitlog" / name) for name in names]
    assert flags[-1] is True
    assert flags[:-1] == [False] * (len(names) - 1)
    store.close()
    # Reopened: recovery scans the last segment with read-ahead; the first append advises it.
    reopened = stores.open()
    assert _advised_random(root / "commitlog" / names[-1]) is False
    put_ok(reopened, PutMessage(topic="t", queue_id=0, body=b"after the restart"))
    assert _advised_random(root / "commitlog" / segment_files(root)[-1]) is True
    assert _advised_random(root / "commitlog" / names[0]) is False
    reopened.close()
