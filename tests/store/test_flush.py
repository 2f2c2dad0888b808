"""Flushing (S4): SYNC_FLUSH acks after the fsync, group commit, FLUSH_DISK_TIMEOUT, ASYNC_FLUSH."""

from __future__ import annotations

import threading
import time

import pytest

from broker.store import FlushMode, GetStatus, PutMessage, PutResult, PutStatus, decode_message

from ._support import body_for, put_ok, read_queue, small_config
from .conftest import Stores

SYNC = small_config(flush_mode=FlushMode.SYNC_FLUSH)
ASYNC = small_config(flush_mode=FlushMode.ASYNC_FLUSH)
WAIT_S = 10.0


def test_sync_put_returns_only_once_flushed(stores: Stores) -> None:
    store = stores.open(SYNC)
    for i in range(200):
        result = put_ok(store, PutMessage(topic="s", queue_id=i % 3, body=body_for(i)))
        assert store.flushed_offset >= result.end_offset
    assert store.stats().flushed_offset == store.max_physical_offset


def test_sync_group_commit_serves_many_puts_per_flush(stores: Stores) -> None:
    def slow_disk() -> None:
        time.sleep(0.002)  # simulates a 2 ms fsync (a fault seam, not synchronisation)

    store = stores.open(SYNC, before_flush=slow_disk)
    threads_n, per_thread = 16, 25
    start = threading.Barrier(threads_n)
    failures: list[str] = []
    results: list[PutResult] = []
    lock = threading.Lock()

    def writer(t: int) -> None:
        start.wait(timeout=WAIT_S)
        for i in range(per_thread):
            r = store.put(PutMessage(topic="g", queue_id=t, body=b"%d-%d" % (t, i)))
            flushed = store.flushed_offset
            with lock:
                results.append(r)
                if r.status is not PutStatus.PUT_OK or flushed < r.end_offset:
                    failures.append(f"{r} flushed={flushed}")

    flushes_before = store.stats().flushes
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=WAIT_S * 3)
        assert not th.is_alive()
    assert failures == []
    puts = threads_n * per_thread
    assert len(results) == puts
    flushes = store.stats().flushes - flushes_before
    assert 0 < flushes <= puts // 2, f"{flushes} flushes for {puts} puts: no group commit"
    for t in range(threads_n):
        bodies = [decode_message(raw).body for raw in read_queue(store, "g", t)]
        assert bodies == [b"%d-%d" % (t, i) for i in range(per_thread)]


def test_flush_disk_timeout_keeps_the_message(stores: Stores) -> None:
    disk = threading.Event()
    entered = threading.Event()

    def stuck_disk() -> None:
        entered.set()
        assert disk.wait(timeout=WAIT_S), "test never released the disk"

    store = stores.open(
        small_config(flush_mode=FlushMode.SYNC_FLUSH, sync_flush_timeout_ms=200),
        before_flush=stuck_disk,
    )
    try:
        began = time.monotonic()
        result = store.put(PutMessage(topic="slow", queue_id=0, body=b"late", uniq_id="late-1"))
        waited = time.monotonic() - began
        assert result.status is PutStatus.FLUSH_DISK_TIMEOUT
        assert result.ok
        assert entered.is_set()
        assert 0.15 <= waited < 5.0
        assert store.flushed_offset < result.end_offset
        # Stored and readable all the same.
        got = store.get_messages("slow", 0, 0)
        assert got.status is GetStatus.FOUND and len(got.records) == 1
        [msg] = store.query_by_uniq_id("slow", "late-1")
        assert msg.body == b"late" and msg.physical_offset == result.physical_offset
        batch = store.put_batch(
            [PutMessage(topic="slow", queue_id=0, body=b"b%d" % i) for i in range(3)]
        )
        assert [r.status for r in batch] == [PutStatus.FLUSH_DISK_TIMEOUT] * 3
        assert store.max_offset("slow", 0) == 4
    finally:
        disk.set()
    assert store.wait_flushed(store.max_physical_offset, WAIT_S)
    assert put_ok(store, PutMessage(topic="slow", queue_id=0, body=b"fast again")).ok
    store.close()


def test_async_put_does_not_wait_for_the_disk(stores: Stores) -> None:
    disk = threading.Event()

    def stuck_disk() -> None:
        assert disk.wait(timeout=WAIT_S), "test never released the disk"

    store = stores.open(ASYNC, before_flush=stuck_disk)
    try:
        results = [
            put_ok(store, PutMessage(topic="a", queue_id=0, body=b"x" * 100)) for _ in range(50)
        ]
        assert store.flushed_offset < results[-1].end_offset
    finally:
        disk.set()
    assert store.wait_flushed(results[-1].end_offset, WAIT_S)
    assert store.flushed_offset >= results[-1].end_offset


def test_async_flush_catches_up_on_its_interval(stores: Stores) -> None:
    store = stores.open(small_config(flush_mode=FlushMode.ASYNC_FLUSH, flush_interval_ms=30))
    caught_up = threading.Event()
    target: list[int] = [1 << 62]

    def on_flush(offset: int) -> None:
        if offset >= target[0]:
            caught_up.set()

    store.add_flush_listener(on_flush)
    results = [
        put_ok(store, PutMessage(topic="a", queue_id=1, body=body_for(i))) for i in range(300)
    ]
    target[0] = results[-1].end_offset
    # No one asks for a flush: the interval alone must get there.
    assert caught_up.wait(timeout=WAIT_S)
    assert store.flushed_offset >= results[-1].end_offset
    assert store.wait_flushed(results[-1].end_offset, WAIT_S)


@pytest.mark.parametrize("mode", list(FlushMode), ids=lambda m: m.value)
def test_put_batch(stores: Stores, mode: FlushMode) -> None:
    store = stores.open(small_config(flush_mode=mode))
    put_ok(store, PutMessage(topic="b", queue_id=0, body=b"first"))
    msgs = [
        PutMessage(topic="b", queue_id=i % 2, body=body_for(i), uniq_id=f"b-{i}") for i in range(40)
    ]
    msgs.insert(5, PutMessage(topic="b", queue_id=0, body=b"x" * (8 * 1024 + 1)))  # refused
    results = store.put_batch(msgs)
    assert len(results) == len(msgs)
    assert results[5].status is PutStatus.MESSAGE_ILLEGAL
    ok = [r for i, r in enumerate(results) if i != 5]
    assert all(r.status is PutStatus.PUT_OK for r in ok)
    if mode is FlushMode.SYNC_FLUSH:
        assert store.flushed_offset >= max(r.end_offset for r in ok)
    # Contiguous, in order: physical offsets increase, queue offsets count up per queue.
    assert [r.physical_offset for r in ok] == sorted(r.physical_offset for r in ok)
    assert [r.queue_offset for r in ok[0::2]] == list(range(1, 21))
    assert [r.queue_offset for r in ok[1::2]] == list(range(20))
    for i, r in enumerate(ok):
        [m] = store.query_by_uniq_id("b", f"b-{i}")
        assert m.physical_offset == r.physical_offset and m.body == body_for(i)
    store.close()
    again = stores.open(small_config(flush_mode=mode))
    assert (again.max_offset("b", 0), again.max_offset("b", 1)) == (21, 20)


def test_close_flushes_everything(stores: Stores) -> None:
    store = stores.open(small_config(flush_mode=FlushMode.ASYNC_FLUSH, flush_interval_ms=60_000))
    last = None
    for i in range(100):
        last = put_ok(store, PutMessage(topic="c", queue_id=0, body=body_for(i)))
    assert last is not None
    store.close()
    again = stores.open()
    assert again.recovery.abnormal is False
    assert again.recovery.end_offset == last.end_offset
    assert again.flushed_offset == last.end_offset


def test_flush_inline_flushes_a_small_range_on_the_calling_thread(stores: Stores) -> None:
    flushers: list[str] = []

    def note_thread() -> None:
        flushers.append(threading.current_thread().name)

    store = stores.open(SYNC, before_flush=note_thread)
    result = store.append(PutMessage(topic="i", queue_id=0, body=b"x" * 1000))
    assert result.status is PutStatus.PUT_OK
    assert store.flushed_offset < result.end_offset
    flushed = store.flush_inline(result.end_offset, 64 * 1024)
    assert flushed is not None and flushed >= result.end_offset
    assert store.flushed_offset == flushed
    assert flushers == [threading.current_thread().name]
    # Nothing new: answered from the flushed offset, no second flush.
    assert store.flush_inline(result.end_offset, 64 * 1024) == flushed
    assert len(flushers) == 1


def test_flush_inline_leaves_a_large_range_to_the_flush_thread(stores: Stores) -> None:
    store = stores.open(SYNC)
    results = store.append_batch(
        [PutMessage(topic="i", queue_id=0, body=b"y" * 1000) for _ in range(10)]
    )
    end = results[-1].end_offset
    assert store.flush_inline(end, 4096) is None
    assert store.flushed_offset < end  # nothing flushed on this thread
    store.request_flush(end)
    assert store.wait_flushed(end, WAIT_S)


def test_flush_inline_gives_way_while_the_flush_thread_flushes(stores: Stores) -> None:
    disk = threading.Event()
    entered = threading.Event()

    def held_disk() -> None:
        if threading.current_thread().name == "store-flush":
            entered.set()
            assert disk.wait(WAIT_S)

    store = stores.open(SYNC, before_flush=held_disk)
    first = store.append(PutMessage(topic="i", queue_id=0, body=b"a"))
    store.request_flush(first.end_offset)
    assert entered.wait(WAIT_S)  # the thread is inside its flush
    second = store.append(PutMessage(topic="i", queue_id=0, body=b"b"))
    assert store.flush_inline(second.end_offset, 64 * 1024) is None
    disk.set()
    store.request_flush(second.end_offset)
    assert store.wait_flushed(second.end_offset, WAIT_S)
