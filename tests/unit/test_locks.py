"""QueueLockTable: one holder per (group, topic, queue), expiry, renewal, release (13.4)."""

from __future__ import annotations

import pytest

from broker.locks import QueueLockTable


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(clock: FakeClock) -> QueueLockTable:
    return QueueLockTable(30.0, clock)


def test_one_holder_per_queue_and_group(table: QueueLockTable) -> None:
    assert table.lock("g", "a", "T", 0)
    assert table.lock("g", "a", "T", 0)  # renewing is taking again
    assert not table.lock("g", "b", "T", 0)
    assert table.lock("g", "b", "T", 1)
    assert table.lock("other", "b", "T", 0)  # groups lock apart
    assert table.holder("g", "T", 0) == "a"
    assert table.holder("g", "T", 1) == "b"
    assert table.holder("g", "T", 2) is None
    assert table.held_by("b") == [("g", "T", 1), ("other", "T", 0)]


def test_batch_takes_what_is_free_in_request_order(table: QueueLockTable) -> None:
    assert table.lock_batch("g", "a", [("T", 2), ("T", 0)]) == [("T", 2), ("T", 0)]
    got = table.lock_batch("g", "b", [("T", 0), ("T", 1), ("T", 2), ("U", 0), ("T", 1)])
    assert got == [("T", 1), ("U", 0)]
    assert table.lock_batch("g", "a", [("T", 0), ("T", 1)]) == [("T", 0)]


def test_locks_expire_unless_renewed(table: QueueLockTable, clock: FakeClock) -> None:
    table.lock("g", "a", "T", 0)
    table.lock("g", "a", "T", 1)
    clock.now += 20
    table.lock("g", "a", "T", 1)  # renewed: 30 s from now
    clock.now += 10.5
    assert table.holder("g", "T", 0) is None
    assert table.holder("g", "T", 1) == "a"
    assert table.held_by("a") == [("g", "T", 1)]
    assert table.lock("g", "b", "T", 0)  # an expired lock passes to another client
    assert not table.lock("g", "b", "T", 1)
    assert table.held_by("a") == [("g", "T", 1)]
    clock.now += 20
    assert table.lock("g", "b", "T", 1)


def test_unlock_only_frees_the_holders_own_locks(table: QueueLockTable) -> None:
    table.lock_batch("g", "a", [("T", 0), ("T", 1)])
    assert not table.unlock("g", "b", "T", 0)
    assert table.unlock_batch("g", "a", [("T", 0), ("T", 5)]) == 1
    assert table.holder("g", "T", 0) is None
    assert table.holder("g", "T", 1) == "a"
    assert table.lock("g", "b", "T", 0)


def test_release_client_and_delete_topic(table: QueueLockTable) -> None:
    table.lock_batch("g", "a", [("T", 0), ("U", 0)])
    table.lock("h", "a", "T", 0)
    table.lock("g", "b", "T", 1)
    assert table.release_client("a", {"g"}) == 2
    assert table.held_by("a") == [("h", "T", 0)]
    assert table.release_client("a") == 1
    assert table.release_client("a") == 0
    assert table.held_by("a") == []
    assert table.delete_topic("T") == 1
    assert table.holder("g", "T", 1) is None
    assert len(table) == 0


def test_prune_drops_expired_entries(table: QueueLockTable, clock: FakeClock) -> None:
    for queue_id in range(10):
        table.lock("g", f"c{queue_id}", "T", queue_id)
    clock.now += 15
    table.lock("g", "c0", "T", 0)
    clock.now += 20
    assert table.prune() == 9
    assert len(table) == 1
    assert table.held_by("c0") == [("g", "T", 0)]
    assert table.held_by("c1") == []


def test_the_table_stays_bounded_without_prune_calls(clock: FakeClock) -> None:
    table = QueueLockTable(1.0, clock)
    for i in range(5000):
        table.lock("g", "a", "T", i)
        clock.now += 0.01  # only the last 100 or so are live at any time
    assert len(table) <= 2048


def test_expiry_must_be_positive(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        QueueLockTable(0.0, clock)
