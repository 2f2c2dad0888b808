"""Store behaviours the broker relies on, each first found missing by the broker's tests."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from broker.store import FlushMode, PutMessage, PutStatus, decode_message

from ._support import put_ok, small_config
from .conftest import Stores


def test_out_of_range_field_refuses_that_message_only(stores: Stores) -> None:
    store = stores.open()
    batch = [
        PutMessage(topic="T", queue_id=0, body=b"first"),
        PutMessage(topic="T", queue_id=0, body=b"bad", flag=2**40),
        PutMessage(topic="T", queue_id=0, body=b"third", born_host="not-a-host:1"),
        PutMessage(topic="T", queue_id=0, body=b"fourth"),
    ]
    results = store.put_batch(batch)
    assert [r.status for r in results] == [
        PutStatus.PUT_OK,
        PutStatus.MESSAGE_ILLEGAL,
        PutStatus.MESSAGE_ILLEGAL,
        PutStatus.PUT_OK,
    ]
    assert "bad field value" in results[1].message
    got = store.get_messages("T", 0, 0, 10)
    assert [decode_message(r).body for r in got.records] == [b"first", b"fourth"]
    assert [decode_message(r).queue_offset for r in got.records] == [0, 1]


def test_deleted_topic_is_not_revived_by_crash_recovery(
    stores: Stores, root: Path, tmp_path: Path
) -> None:
    # No housekeeping checkpoint during the test: only delete_topic's own can help.
    store = stores.open(small_config(checkpoint_interval_ms=3_600_000))
    for i in range(20):
        put_ok(store, PutMessage(topic="Gone", queue_id=i % 2, body=b"x%d" % i))
    put_ok(store, PutMessage(topic="Kept", queue_id=0, body=b"k"))
    assert store.delete_topic("Gone") == 2
    # The files of the open store, abort marker included, are what a crash leaves.
    crashed = tmp_path / "crashed"
    shutil.copytree(root, crashed)
    reopened = stores.open(small_config(), root=crashed)
    assert reopened.recovery.abnormal
    assert [q for q in reopened.queues() if q[0] == "Gone"] == []
    assert reopened.max_offset("Kept", 0) == 1


def test_sync_flush_flushes_appends_nobody_waits_for(stores: Stores) -> None:
    store = stores.open(small_config(flush_mode=FlushMode.SYNC_FLUSH, flush_interval_ms=50))
    flushed = threading.Event()
    result = store.append(PutMessage(topic="T", queue_id=0, body=b"oneway"))
    assert result.status is PutStatus.PUT_OK
    store.add_flush_listener(lambda offset: flushed.set() if offset >= result.end_offset else None)
    # Nobody called request_flush or wait_flushed: the interval flush must cover it.
    assert flushed.wait(5.0) or store.flushed_offset >= result.end_offset
    assert store.flushed_offset >= result.end_offset
