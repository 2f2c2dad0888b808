"""Backpressure (S7) and the store's guards: size limits, a full disk, the lock, a closed store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker.store import (
    FlushMode,
    MessageStore,
    PutMessage,
    PutStatus,
    StoreLockedError,
    decode_message,
)

from ._refusing_disk import refusing_config
from ._support import (
    DiskRatio,
    body_for,
    fill,
    put_ok,
    read_queue,
    segment_files,
    small_config,
    snapshot_queues,
    walk_segment,
)
from .conftest import StoreLog, Stores

MAX_BODY = 8 * 1024


def _commitlog_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "commitlog").iterdir())}


def test_oversized_body_is_illegal_and_nothing_is_stored(stores: Stores) -> None:
    store = stores.open()
    put_ok(store, PutMessage(topic="t", queue_id=0, body=b"first"))
    end, flushed = store.max_physical_offset, store.max_offset("t", 0)
    result = store.put(PutMessage(topic="t", queue_id=0, body=b"x" * (MAX_BODY + 1), uniq_id="big"))
    assert result.status is PutStatus.MESSAGE_ILLEGAL
    assert not result.ok and result.physical_offset == -1
    assert str(MAX_BODY) in result.message
    assert (store.max_physical_offset, store.max_offset("t", 0)) == (end, flushed)
    assert store.query_by_uniq_id("t", "big") == []
    # The limit itself is accepted.
    at_limit = put_ok(store, PutMessage(topic="t", queue_id=0, body=b"y" * MAX_BODY))
    assert at_limit.physical_offset == end


def test_other_refusals(stores: Stores) -> None:
    store = stores.open(small_config(max_properties_size=64))
    end = store.max_physical_offset
    props = store.put(PutMessage(topic="t", queue_id=0, body=b"", properties={"k": "v" * 100}))
    assert props.status is PutStatus.PROPERTIES_SIZE_EXCEEDED
    no_topic = store.put(PutMessage(topic="", queue_id=0, body=b"x"))
    assert no_topic.status is PutStatus.MESSAGE_ILLEGAL
    assert store.max_physical_offset == end
    assert store.queues() == []


@pytest.mark.parametrize("mode", list(FlushMode), ids=lambda m: m.value)
def test_full_disk_refuses_puts_and_touches_nothing(
    stores: Stores, root: Path, store_log: StoreLog, mode: FlushMode
) -> None:
    store_log.allow(r"disk .* full")
    disk = DiskRatio(0.50)
    store = stores.open(small_config(flush_mode=mode), disk_usage=disk)
    fill(store, 300, topics=("a", "b"), queues=2)
    assert store.wait_flushed(store.max_physical_offset, 10)
    queues_before = snapshot_queues(store)
    files_before = _commitlog_bytes(root)
    end = store.max_physical_offset

    disk.ratio = 0.95  # disk_full_ratio is 0.90
    assert store.check_disk() == 0.95
    assert store.disk_full and store.stats().disk_full
    refused = store.put(PutMessage(topic="a", queue_id=0, body=b"no room", uniq_id="refused"))
    assert refused.status is PutStatus.SERVICE_NOT_AVAILABLE
    assert "disk" in refused.message
    batch = store.put_batch([PutMessage(topic="b", queue_id=1, body=b"no") for _ in range(3)])
    assert [r.status for r in batch] == [PutStatus.SERVICE_NOT_AVAILABLE] * 3
    assert store.max_physical_offset == end
    assert snapshot_queues(store) == queues_before
    assert _commitlog_bytes(root) == files_before  # byte-identical
    assert store.query_by_uniq_id("a", "refused") == []
    assert any("full" in line for line in store_log.messages("ERROR"))

    disk.ratio = 0.89
    store.check_disk()
    assert not store.disk_full
    back = put_ok(store, PutMessage(topic="a", queue_id=0, body=b"room again"))
    assert back.physical_offset == end
    assert back.queue_offset == queues_before[("a", 0)][1]
    store.close()
    again = stores.open(small_config(flush_mode=mode), disk_usage=disk)
    assert again.max_physical_offset == back.end_offset


def test_full_disk_at_open_refuses_at_once(stores: Stores, store_log: StoreLog) -> None:
    store_log.allow(r"disk .* full")
    store = stores.open(disk_usage=DiskRatio(0.99))
    assert store.disk_full
    assert store.put(PutMessage(topic="t", queue_id=0, body=b"x")).status is (
        PutStatus.SERVICE_NOT_AVAILABLE
    )


def test_second_store_on_the_same_directory_is_refused(stores: Stores, root: Path) -> None:
    store = stores.open()
    put_ok(store, PutMessage(topic="t", queue_id=0, body=b"mine"))
    with pytest.raises(StoreLockedError) as info:
        MessageStore(str(root), small_config())
    assert info.value.path == str(root)
    # The first store is unharmed, and once it is closed the directory can be opened again.
    put_ok(store, PutMessage(topic="t", queue_id=0, body=b"still mine"))
    store.close()
    again = stores.open()
    assert again.max_offset("t", 0) == 2


def test_store_locked_by_another_process(stores: Stores, root: Path) -> None:
    code = (
        "import sys\n"
        "from broker.store import MessageStore, StoreConfig, StoreLockedError\n"
        "try:\n"
        "    MessageStore(sys.argv[1], StoreConfig(segment_size=128 * 1024,"
        " max_message_size=8 * 1024))\n"
        "except StoreLockedError:\n"
        "    sys.exit(3)\n"
        "sys.exit(0)\n"
    )
    holder = stores.open()
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)])
    try:
        assert proc.wait(timeout=30) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert holder.put(PutMessage(topic="t", queue_id=0, body=b"x")).ok


def test_put_after_close(stores: Stores) -> None:
    store = stores.open()
    put_ok(store, PutMessage(topic="t", queue_id=0, body=body_for(1)))
    store.close()
    result = store.put(PutMessage(topic="t", queue_id=0, body=b"late"))
    assert result.status is PutStatus.STORE_CLOSED
    batch = store.put_batch([PutMessage(topic="t", queue_id=0, body=b"late")])
    assert [r.status for r in batch] == [PutStatus.STORE_CLOSED]
    store.close()  # idempotent


@pytest.mark.parametrize("scenario", ["segment", "index", "queue"])
def test_disk_refusing_a_new_file(stores: Stores, root: Path, scenario: str) -> None:
    """The disk refuses space for a new file: the put is refused cleanly, or fully stored.

    Either way it answers with a PutStatus (never an exception), and the log, the queues
    and the index still agree afterwards.
    """
    script = Path(__file__).with_name("_refusing_disk.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), scenario],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode(errors="replace")
    report = json.loads(out)
    refused = report["refused"]
    assert refused["status"] in ("SERVICE_NOT_AVAILABLE", "PUT_OK"), refused
    if refused["status"] == "SERVICE_NOT_AVAILABLE":
        assert report["end_refused"] == report["end_before"], "refused, yet stored"
    assert report["space_back"]["status"] == "PUT_OK"

    store = stores.open(refusing_config(scenario))
    assert store.recovery.damage is None
    # Every record in the log is in its queue exactly once, and found by its unique id.
    in_log: list[tuple[int, int, int]] = []
    for name in segment_files(root):
        data = (root / "commitlog" / name).read_bytes()
        for pos, size in walk_segment(data)[0]:
            m = decode_message(data[pos : pos + size])
            in_log.append((m.queue_id, m.queue_offset, m.physical_offset))
            if m.uniq_id:
                found = store.query_by_uniq_id("t", m.uniq_id)
                assert [f.physical_offset for f in found] == [m.physical_offset], m.uniq_id
    in_queues = [
        (m.queue_id, m.queue_offset, m.physical_offset)
        for qid in (0, 1)
        for m in map(decode_message, read_queue(store, "t", qid))
    ]
    assert sorted(in_queues) == sorted(in_log)
    assert len({(q, o) for q, o, _ in in_log}) == len(in_log), "queue offset used twice"
