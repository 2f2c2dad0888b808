"""Derived files are rebuilt from the CommitLog (S2, S3): delete them, reopen, compare."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.store import MessageStore, tag_hash

from ._support import CQ_ENTRIES, Clock, fill, read_queue, small_config, snapshot_queues
from .conftest import Stores

TOPICS = ("orders", "payments")
QUEUES = 3
COUNT = 600


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def _queries(store: MessageStore) -> dict[str, list[list[int]]]:
    keys = [
        [m.physical_offset for m in store.query_by_key(TOPICS[i % 2], f"key-{i}")]
        for i in range(0, COUNT, 5)
    ]
    ids = [
        [m.physical_offset for m in store.query_by_uniq_id(TOPICS[i % 2], f"uid-{i}")]
        for i in range(0, COUNT, 5)
    ]
    return {"keys": keys, "ids": ids}


def _tagged(store: MessageStore) -> list[list[bytes]]:
    return [
        read_queue(store, topic, qid, tag_hashes={tag_hash("red")}) for topic, qid in store.queues()
    ]


@pytest.mark.parametrize("delete", [("consumequeue",), ("index",), ("consumequeue", "index")])
@pytest.mark.parametrize("crashed", [False, True], ids=["clean", "abort-marker"])
def test_deleted_derived_files_are_rebuilt(
    stores: Stores, root: Path, delete: tuple[str, ...], crashed: bool
) -> None:
    store = stores.open()
    fill(store, COUNT, topics=TOPICS, queues=QUEUES, tags=("red", "green", ""))
    assert store.stats().segments >= 4 and store.stats().index_files >= 4
    assert all(store.max_offset(t, q) > CQ_ENTRIES for t, q in store.queues())
    queues_before = snapshot_queues(store)
    queries_before = _queries(store)
    tagged_before = _tagged(store)
    store.close()
    cq_files_before = _files(root / "consumequeue")

    for name in delete:
        shutil.rmtree(root / name)
    if crashed:
        (root / "abort").write_bytes(b"running\n")
    again = stores.open()
    report = again.recovery
    assert report.abnormal is crashed
    assert report.cut_bytes == 0 and report.damage is None
    assert report.scanned_from == 0
    if "consumequeue" in delete:
        assert report.redispatched_queue == COUNT
        # The rebuilt files are the very same bytes.
        assert _files(root / "consumequeue") == cq_files_before
    else:
        assert report.redispatched_queue == 0
    if "index" in delete:
        assert report.redispatched_index == COUNT
    assert snapshot_queues(again) == queues_before
    assert _queries(again) == queries_before
    assert _tagged(again) == tagged_before
    # A third open finds nothing left to do.
    again.close()
    third = stores.open()
    assert (third.recovery.redispatched_queue, third.recovery.redispatched_index) == (0, 0)
    assert snapshot_queues(third) == queues_before
    assert _queries(third) == queries_before


def test_rebuild_after_retention_starts_at_the_log_minimum(stores: Stores, root: Path) -> None:
    clock = Clock()
    config = small_config(retention_ms=1_000)
    store = stores.open(config, clock=clock)
    fill(store, COUNT, topics=TOPICS, queues=QUEUES)
    clock.advance(10_000)
    fill(store, 100, topics=TOPICS, queues=QUEUES, start=COUNT)
    clock.advance(10)
    assert store.run_retention()
    assert store.min_physical_offset > 0
    queues_before = snapshot_queues(store)
    assert all(low > 0 for low, _, _ in queues_before.values())
    queries_before = _queries(store)
    store.close()

    shutil.rmtree(root / "consumequeue")
    shutil.rmtree(root / "index")
    again = stores.open(config, clock=clock)
    assert snapshot_queues(again) == queues_before
    assert _queries(again) == queries_before
    for (topic, qid), (low, _, _) in queues_before.items():
        first_file = min((root / "consumequeue" / topic / str(qid)).iterdir())
        assert int(first_file.name) == low * 20 - (low * 20) % (CQ_ENTRIES * 20)
