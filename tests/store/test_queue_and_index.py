"""ConsumeQueue reads (S2) and Index queries (S3): limits, statuses, tag filters, keys, times."""

from __future__ import annotations

import random
import threading
import zlib

import pytest

from broker.store import GetStatus, MessageStore, PutMessage, PutResult, decode_message, tag_hash

from ._support import CQ_ENTRIES, Clock, colliding_text, put_ok, read_queue, small_config
from .conftest import Stores

TAGS = ("A", "B", "C")
COUNT = 300
STEP_MS = 100
SHARED_EVERY = 20


def _message(i: int, topic: str = "Q") -> PutMessage:
    keys = [f"k{i}"]
    if i % SHARED_EVERY == 0:
        keys.append("shared")
    return PutMessage(
        topic=topic,
        queue_id=0,
        body=(f"body-{i}|".encode() * 200)[: 400 + (i * 37) % 1200],
        tags=TAGS[i % 3],
        keys=keys,
        uniq_id=f"id-{i}",
    )


def _populate(store: MessageStore, clock: Clock) -> list[PutResult]:
    """COUNT messages in Q/0 (100 ms apart), and look-alikes in other queues and topics."""
    results = []
    for i in range(COUNT):
        results.append(put_ok(store, _message(i)))
        if i % 10 == 0:
            put_ok(store, _message(i, topic="Other"))  # same keys and ids, another topic
            put_ok(store, PutMessage(topic="Q", queue_id=1, body=b"q1", keys=[f"k{i}"]))
        clock.advance(STEP_MS)
    return results


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def populated(stores: Stores, clock: Clock) -> tuple[MessageStore, list[PutResult]]:
    store = stores.open(small_config(), clock=clock)
    return store, _populate(store, clock)


def test_max_count_and_next_offset(populated: tuple[MessageStore, list[PutResult]]) -> None:
    store, results = populated
    got = store.get_messages("Q", 0, 0, max_count=10)
    assert got.status is GetStatus.FOUND
    assert (got.next_offset, got.min_offset, got.max_offset) == (10, 0, COUNT)
    assert [decode_message(r).queue_offset for r in got.records] == list(range(10))
    # Across a ConsumeQueue file boundary (64 entries per file).
    got = store.get_messages("Q", 0, CQ_ENTRIES - 3, max_count=7)
    assert [decode_message(r).queue_offset for r in got.records] == list(
        range(CQ_ENTRIES - 3, CQ_ENTRIES + 4)
    )
    assert got.next_offset == CQ_ENTRIES + 4
    # Near the end: fewer than asked, next_offset is the max.
    got = store.get_messages("Q", 0, COUNT - 5, max_count=32)
    assert len(got.records) == 5 and got.next_offset == COUNT
    assert [decode_message(r).physical_offset for r in got.records] == [
        r.physical_offset for r in results[-5:]
    ]


def test_max_bytes(populated: tuple[MessageStore, list[PutResult]]) -> None:
    store, results = populated
    sizes = [r.size for r in results]
    budget = sum(sizes[10:13])
    got = store.get_messages("Q", 0, 10, max_count=32, max_bytes=budget)
    assert len(got.records) == 3 and got.next_offset == 13
    got = store.get_messages("Q", 0, 10, max_count=32, max_bytes=budget + sizes[13] - 1)
    assert len(got.records) == 3 and got.next_offset == 13
    got = store.get_messages("Q", 0, 10, max_count=32, max_bytes=budget + sizes[13])
    assert len(got.records) == 4 and got.next_offset == 14
    # A budget smaller than one record still returns that record (progress is guaranteed).
    got = store.get_messages("Q", 0, 10, max_count=32, max_bytes=1)
    assert len(got.records) == 1 and got.next_offset == 11
    assert sum(len(r) for r in got.records) == sizes[10]


def test_statuses(populated: tuple[MessageStore, list[PutResult]]) -> None:
    store, _ = populated
    none = store.get_messages("Q", 7, 0)
    assert (none.status, none.next_offset, none.records) == (GetStatus.NO_MESSAGE_IN_QUEUE, 0, [])
    assert store.get_messages("nope", 0, 5).status is GetStatus.NO_MESSAGE_IN_QUEUE
    one = store.get_messages("Q", 0, COUNT)
    assert (one.status, one.next_offset, one.max_offset) == (
        GetStatus.OFFSET_OVERFLOW_ONE,
        COUNT,
        COUNT,
    )
    badly = store.get_messages("Q", 0, COUNT + 50)
    assert (badly.status, badly.next_offset) == (GetStatus.OFFSET_OVERFLOW_BADLY, COUNT)
    nomatch = store.get_messages("Q", 0, 0, tag_hashes={tag_hash("Z")})
    assert (nomatch.status, nomatch.next_offset, nomatch.records) == (
        GetStatus.NO_MATCHED_MESSAGE,
        COUNT,
        [],
    )
    # A bounded scan moves next_offset exactly past the entries it looked at.
    partial = store.get_messages("Q", 0, 5, tag_hashes={tag_hash("Z")}, max_count=1, max_scan=40)
    assert (partial.status, partial.next_offset) == (GetStatus.NO_MATCHED_MESSAGE, 45)


def test_offset_too_small_after_retention(stores: Stores, clock: Clock) -> None:
    store = stores.open(small_config(retention_ms=60_000), clock=clock)
    _populate(store, clock)
    assert store.stats().segments >= 3
    clock.advance(3_600_000)
    drops = store.run_retention()
    assert drops
    low = store.min_offset("Q", 0)
    assert 0 < low < COUNT
    got = store.get_messages("Q", 0, 0)
    assert (got.status, got.next_offset, got.min_offset, got.records) == (
        GetStatus.OFFSET_TOO_SMALL,
        low,
        low,
        [],
    )
    assert store.get_messages("Q", 0, low - 1).status is GetStatus.OFFSET_TOO_SMALL
    first = store.get_messages("Q", 0, low, max_count=1)
    assert first.status is GetStatus.FOUND
    assert decode_message(first.records[0]).queue_offset == low


@pytest.mark.parametrize(
    "wanted", [{"A"}, {"B"}, {"C"}, {"A", "C"}, {"A", "B", "C"}], ids=lambda w: "".join(sorted(w))
)
def test_tag_filter_returns_exactly_the_matching_messages(
    populated: tuple[MessageStore, list[PutResult]], wanted: set[str]
) -> None:
    store, _ = populated
    hashes = {tag_hash(t) for t in wanted}
    got = read_queue(store, "Q", 0, start=0, tag_hashes=hashes, max_count=7)
    offsets = [decode_message(r).queue_offset for r in got]
    assert offsets == [i for i in range(COUNT) if TAGS[i % 3] in wanted]
    assert all(decode_message(r).tags in wanted for r in got)
    # max_count counts matching records; next_offset follows the last one returned.
    page = store.get_messages("Q", 0, 0, max_count=4, tag_hashes=hashes)
    matching = [i for i in range(COUNT) if TAGS[i % 3] in wanted][:4]
    assert [decode_message(r).queue_offset for r in page.records] == matching
    assert page.next_offset == matching[-1] + 1


def test_query_by_key_newest_first_across_index_files(
    populated: tuple[MessageStore, list[PutResult]],
) -> None:
    store, results = populated
    assert store.stats().index_files >= 3
    shared = [results[i].physical_offset for i in range(0, COUNT, SHARED_EVERY)]
    found = store.query_by_key("Q", "shared", max_num=100)
    assert [m.physical_offset for m in found] == shared[::-1]
    assert all("shared" in m.keys and m.topic == "Q" for m in found)
    stamps = [m.store_timestamp for m in found]
    assert stamps == sorted(stamps, reverse=True)
    newest3 = store.query_by_key("Q", "shared", max_num=3)
    assert [m.physical_offset for m in newest3] == shared[::-1][:3]
    # A key held by messages in two queues of the topic: both, newest first.
    both = store.query_by_key("Q", "k20")
    assert [(m.queue_id, m.body) for m in both] == [(1, b"q1"), (0, _message(20).body)]
    for i in (0, 1, 137, COUNT - 1):
        [m] = [m for m in store.query_by_key("Q", f"k{i}") if m.queue_id == 0]
        assert m.body == _message(i).body and m.physical_offset == results[i].physical_offset


def test_query_by_key_time_window(populated: tuple[MessageStore, list[PutResult]]) -> None:
    store, results = populated
    stamps = {i: results[i].store_timestamp for i in range(0, COUNT, SHARED_EVERY)}
    lo, hi = stamps[40], stamps[100]
    found = store.query_by_key("Q", "shared", begin_ms=lo, end_ms=hi)
    assert [m.store_timestamp for m in found] == [stamps[i] for i in (100, 80, 60, 40)]
    assert store.query_by_key("Q", "shared", begin_ms=lo + 1, end_ms=hi - 1) == found[1:3]


def test_query_by_uniq_id(populated: tuple[MessageStore, list[PutResult]]) -> None:
    store, results = populated
    for i in (0, 1, 63, 64, 200, COUNT - 1):
        [m] = store.query_by_uniq_id("Q", f"id-{i}")
        assert (m.uniq_id, m.body, m.physical_offset) == (
            f"id-{i}",
            _message(i).body,
            results[i].physical_offset,
        )
    [other] = store.query_by_uniq_id("Other", "id-10")
    assert other.topic == "Other"
    assert store.query_by_uniq_id("Other", "id-11") == []
    assert store.query_by_uniq_id("Q", "id-missing") == []
    assert store.query_by_uniq_id("Nope", "id-1") == []


def test_hash_collisions_are_verified(populated: tuple[MessageStore, list[PutResult]]) -> None:
    store, results = populated
    assert store.query_by_key("Q", "not-a-key") == []
    assert store.query_by_key("Q", "") == []
    # True CRC32 collisions with stored index keys (``topic#key`` and ``topic\x01uniq``).
    twin_key = colliding_text(b"Q#", zlib.crc32(b"Q#k7"), "twin")
    assert zlib.crc32(f"Q#{twin_key}".encode()) == zlib.crc32(b"Q#k7")
    assert store.query_by_key("Q", twin_key) == []
    twin_id = colliding_text(b"Q\x01", zlib.crc32(b"Q\x01id-7"), "twin")
    assert store.query_by_uniq_id("Q", twin_id) == []
    # Stored under the colliding key, each is found alone.
    twin = put_ok(store, PutMessage(topic="Q", queue_id=2, body=b"twin", keys=[twin_key]))
    assert [m.physical_offset for m in store.query_by_key("Q", twin_key)] == [twin.physical_offset]
    assert [m.physical_offset for m in store.query_by_key("Q", "k7") if m.queue_id == 0] == [
        results[7].physical_offset
    ]


def test_offset_for_timestamp(populated: tuple[MessageStore, list[PutResult]]) -> None:
    store, results = populated
    first, last = results[0].store_timestamp, results[-1].store_timestamp
    assert store.offset_for_timestamp("Q", 0, 0) == 0
    assert store.offset_for_timestamp("Q", 0, first - 1) == 0
    assert store.offset_for_timestamp("Q", 0, first) == 0
    for i in (1, 63, 64, 65, 150, COUNT - 1):
        ts = results[i].store_timestamp
        assert store.offset_for_timestamp("Q", 0, ts) == i
        assert store.offset_for_timestamp("Q", 0, ts - STEP_MS // 2) == i  # between i-1 and i
    assert store.offset_for_timestamp("Q", 0, last + 1) == COUNT
    assert store.offset_for_timestamp("Q", 0, last + 10**9) == COUNT
    assert store.offset_for_timestamp("Q", 9, first) == 0


def _observe(store: MessageStore, results: list[PutResult]) -> dict[str, object]:
    """Everything the read API answers about the populated store."""
    return {
        "queues": store.queues(),
        "q0": read_queue(store, "Q", 0),
        "q1": read_queue(store, "Q", 1),
        "other": read_queue(store, "Other", 0),
        "bounds": [(store.min_offset(t, q), store.max_offset(t, q)) for t, q in store.queues()],
        "tagged": read_queue(store, "Q", 0, start=0, tag_hashes={tag_hash("B")}),
        "statuses": [
            store.get_messages("Q", 0, COUNT).status,
            store.get_messages("Q", 0, COUNT + 3).next_offset,
            store.get_messages("Q", 5, 0).status,
        ],
        "shared": [m.physical_offset for m in store.query_by_key("Q", "shared", max_num=100)],
        "keys": [
            [m.physical_offset for m in store.query_by_key("Q", f"k{i}")]
            for i in range(0, COUNT, 7)
        ],
        "ids": [
            [m.physical_offset for m in store.query_by_uniq_id("Q", f"id-{i}")]
            for i in range(0, COUNT, 7)
        ],
        "times": [store.offset_for_timestamp("Q", 0, r.store_timestamp - 1) for r in results[::9]],
        "max_physical": store.max_physical_offset,
    }


def test_everything_survives_close_and_reopen(stores: Stores, clock: Clock) -> None:
    store = stores.open(small_config(), clock=clock)
    results = _populate(store, clock)
    before = _observe(store, results)
    store.close()
    again = stores.open(small_config(), clock=clock)
    assert again.recovery.abnormal is False
    assert again.recovery.cut_bytes == 0
    assert _observe(again, results) == before
    # And the queues go on where they stopped.
    nxt = put_ok(again, _message(COUNT))
    assert nxt.queue_offset == COUNT
    assert nxt.physical_offset == before["max_physical"]


def test_queue_offsets_are_contiguous_across_many_queues_and_topics(stores: Stores) -> None:
    store = stores.open()
    topics = [f"topic-{t}" for t in range(5)]
    threads_n, per_thread = 4, 400
    results: dict[tuple[str, int], list[PutResult]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(per_thread):
                topic, qid = rng.choice(topics), rng.randrange(8)
                r = store.put(PutMessage(topic=topic, queue_id=qid, body=b"%d/%d" % (seed, i)))
                with lock:
                    results.setdefault((topic, qid), []).append(r)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
        assert not th.is_alive()
    assert errors == []
    assert sum(len(rs) for rs in results.values()) == threads_n * per_thread
    assert len(results) > 30
    before = {}
    for (topic, qid), rs in results.items():
        assert sorted(r.queue_offset for r in rs) == list(range(len(rs)))
        records = [decode_message(raw) for raw in read_queue(store, topic, qid)]
        assert [m.queue_offset for m in records] == list(range(len(rs)))
        phys = [m.physical_offset for m in records]
        assert phys == sorted(phys) == sorted(r.physical_offset for r in rs)
        assert (store.min_offset(topic, qid), store.max_offset(topic, qid)) == (0, len(rs))
        before[(topic, qid)] = phys
    assert set(store.queues()) == set(results)
    store.close()
    again = stores.open()
    for key, phys in before.items():
        assert [decode_message(raw).physical_offset for raw in read_queue(again, *key)] == phys
