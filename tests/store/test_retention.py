"""Retention (S6): expired or, under disk pressure, oldest segments go, and derived files follow."""

from __future__ import annotations

import sys
import threading
import traceback
from collections import defaultdict
from pathlib import Path

import pytest

from broker.store import DroppedRange, GetStatus, MessageStore, PutMessage, PutResult

from ._support import (
    CQ_FILE_BYTES,
    SEGMENT_SIZE,
    Clock,
    DiskRatio,
    body_for,
    put_ok,
    read_queue,
    segment_files,
    small_config,
)
from .conftest import Stores

RETENTION_MS = 60_000
STEP_MS = 10
COUNT = 800
TOPICS = ("T", "U")
QUEUES = 3

Written = list[tuple[PutMessage, PutResult]]


def _write(store: MessageStore, clock: Clock) -> Written:
    out = []
    for i in range(COUNT):
        msg = PutMessage(
            topic=TOPICS[i % 2],
            queue_id=(i // 2) % QUEUES,
            body=body_for(i),
            keys=[f"key-{i}"],
            uniq_id=f"uid-{i}",
        )
        out.append((msg, put_ok(store, msg)))
        clock.advance(STEP_MS)
    assert store.stats().segments >= 6
    return out


def _first_stamp_of_segment(puts: Written, k: int) -> int:
    return min(r.store_timestamp for _, r in puts if r.physical_offset // SEGMENT_SIZE == k)


def _expected_minimums(puts: Written, log_min: int) -> dict[tuple[str, int], tuple[int, int]]:
    """Per queue: (first queue offset at or above log_min, max offset)."""
    per_queue: dict[tuple[str, int], list[PutResult]] = defaultdict(list)
    for m, r in puts:
        per_queue[(m.topic, m.queue_id)].append(r)
    return {
        key: (next(r.queue_offset for r in rs if r.physical_offset >= log_min), len(rs))
        for key, rs in per_queue.items()
    }


def _cq_files(root: Path, topic: str, qid: int) -> list[int]:
    return sorted(int(p.name) for p in (root / "consumequeue" / topic / str(qid)).iterdir())


def _index_files(root: Path) -> list[int]:
    return sorted(int(p.name) for p in (root / "index").iterdir())


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_expired_segments_and_derived_files_are_deleted(
    stores: Stores, root: Path, clock: Clock
) -> None:
    store = stores.open(small_config(retention_ms=RETENTION_MS), clock=clock)
    puts = _write(store, clock)
    names_before = segment_files(root)
    index_before = _index_files(root)
    assert store.run_retention() == []  # nothing has expired yet
    assert segment_files(root) == names_before

    # Segments 0 and 1 hold only records older than the retention time; segment 2 does not.
    clock.now = _first_stamp_of_segment(puts, 2) + RETENTION_MS + 1
    drops = store.run_retention()
    log_min = 2 * SEGMENT_SIZE
    assert segment_files(root) == names_before[2:]
    assert store.min_physical_offset == log_min == store.stats().min_offset
    expected = _expected_minimums(puts, log_min)
    assert sorted(drops, key=lambda d: (d.topic, d.queue_id)) == [
        DroppedRange(topic, qid, 0, low) for (topic, qid), (low, _) in sorted(expected.items())
    ]
    assert store.dropped == drops
    for (topic, qid), (low, high) in expected.items():
        assert (store.min_offset(topic, qid), store.max_offset(topic, qid)) == (low, high)
        for below in (0, low - 1):
            got = store.get_messages(topic, qid, below)
            assert (got.status, got.next_offset, got.min_offset, got.records) == (
                GetStatus.OFFSET_TOO_SMALL,
                low,
                low,
                [],
            )
        assert len(read_queue(store, topic, qid)) == high - low
        assert store.offset_for_timestamp(topic, qid, 0) == low
        # ConsumeQueue files that only held entries below the minimum are gone.
        first_file = low * 20 - (low * 20) % CQ_FILE_BYTES
        assert _cq_files(root, topic, qid) == list(
            range(first_file, (high - 1) * 20 + 1, CQ_FILE_BYTES)
        )
    # Index files that only indexed records below the minimum are gone.
    index_after = _index_files(root)
    assert len(index_after) < len(index_before)
    assert index_after == [f for f in index_before if f >= index_after[0]]
    assert index_after[0] <= log_min < index_after[1]
    assert store.stats().index_files == len(index_after)
    for msg, result in puts:
        found = store.query_by_uniq_id(msg.topic, msg.uniq_id)
        if result.physical_offset < log_min:
            assert found == []
            assert store.get_record(result.physical_offset) is None
        else:
            assert [m.physical_offset for m in found] == [result.physical_offset]
    # Running again without time passing removes nothing more.
    assert store.run_retention() == []


def test_active_segment_is_never_deleted(stores: Stores, root: Path, clock: Clock) -> None:
    store = stores.open(small_config(retention_ms=RETENTION_MS), clock=clock)
    puts = _write(store, clock)
    last = segment_files(root)[-1]
    clock.advance(100 * RETENTION_MS)
    store.run_retention()
    assert store.run_retention() == []
    assert segment_files(root) == [last]
    assert store.min_physical_offset == int(last)
    for msg, result in puts:
        if result.physical_offset >= int(last):
            got = store.get_message(result.physical_offset)
            assert got is not None and got.body == msg.body
    # Queues whose records all went are empty, and say where to go on from.
    for topic in TOPICS:
        for qid in range(QUEUES):
            low, high = store.min_offset(topic, qid), store.max_offset(topic, qid)
            page = store.get_messages(topic, qid, 0)
            if low == high:
                assert (page.status, page.next_offset) == (GetStatus.NO_MESSAGE_IN_QUEUE, high)
            else:
                assert (page.status, page.next_offset) == (GetStatus.OFFSET_TOO_SMALL, low)
    more = put_ok(store, PutMessage(topic="T", queue_id=0, body=b"after"))
    assert more.queue_offset == store.max_offset("T", 0) - 1
    assert store.get_message(more.physical_offset) is not None


def test_disk_pressure_deletes_oldest_even_if_not_expired(
    stores: Stores, root: Path, clock: Clock
) -> None:
    disk = DiskRatio(0.50)
    store = stores.open(small_config(), clock=clock, disk_usage=disk)  # 72 h retention
    puts = _write(store, clock)
    names = segment_files(root)
    assert store.run_retention() == []
    disk.ratio = 0.87  # past disk_clean_ratio (0.85), below disk_full_ratio (0.90)
    for gone in range(1, len(names)):
        drops = store.run_retention()
        assert drops, "one segment per round under disk pressure"
        assert segment_files(root) == names[gone:]
        assert store.min_physical_offset == int(names[gone])
    assert store.run_retention() == []  # the active segment stays, pressure or not
    assert segment_files(root) == names[-1:]
    assert store.disk_full is False
    put_ok(store, PutMessage(topic="T", queue_id=0, body=b"still accepted"))
    for msg, result in puts[-5:]:
        got = store.get_message(result.physical_offset)
        assert got is not None and got.body == msg.body


def test_housekeeping_thread_applies_retention(stores: Stores, clock: Clock) -> None:
    config = small_config(
        retention_ms=RETENTION_MS, clean_interval_ms=20, checkpoint_interval_ms=10
    )
    store = stores.open(config, clock=clock)
    dropped = threading.Event()
    heard: list[DroppedRange] = []

    def listener(ranges: list[DroppedRange]) -> None:
        heard.extend(ranges)
        if ranges:
            dropped.set()

    store.add_drop_listener(listener)
    _write(store, clock)
    clock.advance(100 * RETENTION_MS)
    assert dropped.wait(timeout=10), "housekeeping never ran retention"
    assert heard and all(d.from_offset < d.to_offset for d in heard)
    assert store.min_physical_offset > 0


def test_retention_survives_reopen(stores: Stores, clock: Clock) -> None:
    config = small_config(retention_ms=RETENTION_MS)
    store = stores.open(config, clock=clock)
    puts = _write(store, clock)
    clock.now = _first_stamp_of_segment(puts, 3) + RETENTION_MS + 1
    assert store.run_retention()
    log_min = store.min_physical_offset
    assert log_min == 3 * SEGMENT_SIZE
    expected = _expected_minimums(puts, log_min)
    store.close()

    again = stores.open(config, clock=clock)
    assert again.min_physical_offset == log_min
    for (topic, qid), (low, high) in expected.items():
        assert (again.min_offset(topic, qid), again.max_offset(topic, qid)) == (low, high), (
            topic,
            qid,
        )
        got = again.get_messages(topic, qid, 0)
        assert (got.status, got.next_offset) == (GetStatus.OFFSET_TOO_SMALL, low)
        first = again.get_messages(topic, qid, low, max_count=1)
        assert first.status is GetStatus.FOUND


def test_queries_racing_retention_never_raise(stores: Stores, root: Path) -> None:
    """Retention runs on the housekeeping thread while the broker queries the index."""
    errors: list[str] = []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # interleave the two threads finely
    try:
        for attempt in range(2):
            clock = Clock()
            config = small_config(retention_ms=1_000, index_entries=32)
            store = stores.open(config, root=root / str(attempt), clock=clock)
            puts = []
            for i in range(3000):
                msg = PutMessage(topic="T", queue_id=i % 2, body=body_for(i, 300), uniq_id=f"u{i}")
                puts.append(put_ok(store, msg))
                clock.advance(STEP_MS)
            firsts: dict[int, int] = {}
            for r in puts:
                firsts.setdefault(r.physical_offset // SEGMENT_SIZE, r.store_timestamp)
            stop = threading.Event()

            def query(store: MessageStore = store, stop: threading.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    try:
                        store.query_by_uniq_id("T", f"u{i % 3000}")
                        store.get_messages("T", i % 2, i % 1500, max_count=4)
                    except Exception as exc:  # reported by the test thread
                        where = traceback.extract_tb(exc.__traceback__)[-1]
                        errors.append(f"{type(exc).__name__}: {exc} at {where.name}:{where.lineno}")
                    i += 1

            reader = threading.Thread(target=query)
            reader.start()
            try:
                for k in sorted(firsts)[1:]:
                    clock.now = firsts[k] + 1_001  # expires exactly one more segment
                    store.run_retention()
            finally:
                stop.set()
                reader.join(timeout=30)
            assert not reader.is_alive()
            store.close()
    finally:
        sys.setswitchinterval(switch)
    assert errors == [], f"{len(errors)} reads failed during retention, first: {errors[0]}"


def test_retention_keeps_the_segments_at_or_past_the_floor(
    stores: Stores, root: Path, clock: Clock
) -> None:
    # The broker sets retention_floor to the timer store's min_commitlog_offset: pending
    # timed messages keep their segments however old they are.
    store = stores.open(small_config(retention_ms=RETENTION_MS), clock=clock)
    puts = _write(store, clock)
    names = segment_files(root)
    floor = SEGMENT_SIZE + 10  # inside segment 1: segment 0 may go, segment 1 may not
    store.retention_floor = lambda: floor
    clock.advance(100 * RETENTION_MS)
    store.run_retention()
    assert segment_files(root) == names[1:]
    assert store.min_physical_offset == SEGMENT_SIZE
    # No floor (no pending timer): everything expired goes, as before.
    store.retention_floor = lambda: None
    store.run_retention()
    assert len(segment_files(root)) == 1
    assert puts
