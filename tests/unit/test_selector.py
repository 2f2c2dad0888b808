"""fabric.selector: round robin, latency fault avoidance with recovery, sharding-key stability."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter

import pytest

from fabric.message import MessageQueue
from fabric.selector import LatencyFaultTolerance, QueueSelector, queue_for_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queues(*brokers: str, n: int = 4) -> list[MessageQueue]:
    return [MessageQueue("T", b, q) for b in brokers for q in range(n)]


def selector(clock: Clock, **kwargs: object) -> QueueSelector:
    faults = LatencyFaultTolerance(clock, **kwargs)  # type: ignore[arg-type]
    return QueueSelector(faults, random.Random(7))


def test_round_robin_visits_every_queue_evenly() -> None:
    sel = selector(Clock())
    qs = queues("a", "b")
    picks = [sel.select("T", qs) for _ in range(8 * 50)]
    assert Counter(picks) == dict.fromkeys(qs, 50)
    # consecutive picks are consecutive queues
    i = qs.index(picks[0])
    assert picks[:8] == [qs[(i + k) % 8] for k in range(8)]


def test_each_topic_has_its_own_position() -> None:
    sel = selector(Clock())
    qs = queues("a")
    other = [MessageQueue("U", "a", q) for q in range(4)]
    first = sel.select("T", qs)
    sel.select("U", other)
    assert sel.select("T", qs) == qs[(qs.index(first) + 1) % 4]


def test_a_failed_broker_is_avoided_until_it_recovers() -> None:
    clock = Clock()
    sel = selector(clock, failure_isolation=10.0)
    qs = queues("a", "b")
    assert sel.faults.update("a", 0.0, failed=True) == 10.0
    assert not sel.faults.available("a")
    assert {sel.select("T", qs).broker_name for _ in range(20)} == {"b"}
    clock.now += 9.9
    assert {sel.select("T", qs).broker_name for _ in range(20)} == {"b"}
    clock.now += 0.2  # recovery time passed
    assert sel.faults.available("a")
    assert {sel.select("T", qs).broker_name for _ in range(20)} == {"a", "b"}


def test_slow_brokers_are_avoided_for_longer_the_slower_they_are() -> None:
    clock = Clock()
    faults = LatencyFaultTolerance(clock)
    assert faults.update("a", 0.05) == 0.0
    assert faults.available("a")
    assert faults.update("a", 0.6) == 2.0
    assert faults.update("b", 2.0) == 5.0
    assert faults.update("c", 20.0) == 30.0
    assert set(faults.isolated()) == {"a", "b", "c"}
    # a fast success means the broker has recovered
    assert faults.update("a", 0.01) == 0.0 and faults.available("a")


def test_retry_avoids_the_broker_that_just_failed() -> None:
    sel = selector(Clock())
    qs = queues("a", "b")
    for _ in range(16):
        assert sel.select("T", qs, avoid="a").broker_name == "b"


def test_when_every_broker_is_isolated_a_queue_is_still_chosen() -> None:
    clock = Clock()
    sel = selector(clock)
    qs = queues("a", "b")
    sel.faults.update("a", 0, failed=True)
    sel.faults.update("b", 0, failed=True)
    assert {sel.select("T", qs, avoid="a").broker_name for _ in range(8)} == {"b"}
    assert {sel.select("T", qs).broker_name for _ in range(8)} == {"a", "b"}
    # only one broker, and it just failed: use it anyway
    assert sel.select("T", queues("a"), avoid="a").broker_name == "a"


def test_fault_tolerance_can_be_turned_off() -> None:
    sel = selector(Clock(), enabled=False)
    sel.faults.update("a", 0, failed=True)
    assert sel.faults.available("a")
    assert {sel.select("T", queues("a", "b")).broker_name for _ in range(8)} == {"a", "b"}


def test_empty_queue_lists_are_refused() -> None:
    with pytest.raises(ValueError):
        selector(Clock()).select("T", [])
    with pytest.raises(ValueError):
        queue_for_key([], "k")


def test_sharding_key_is_stable_and_spreads() -> None:
    qs = queues("a", "b")
    assert queue_for_key(qs, "order-42") == queue_for_key(list(qs), "order-42")
    spread = Counter(queue_for_key(qs, f"order-{i}") for i in range(4000))
    assert len(spread) == 8 and min(spread.values()) > 350


def test_sharding_key_is_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; CRC32 is not.
    code = (
        "from fabric.message import MessageQueue\n"
        "from fabric.selector import queue_for_key\n"
        "qs = [MessageQueue('T', b, q) for b in 'ab' for q in range(4)]\n"
        "print(','.join(str(qs.index(queue_for_key(qs, f'k{i}'))) for i in range(50)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    qs = queues("a", "b")
    assert out == ",".join(str(qs.index(queue_for_key(qs, f"k{i}"))) for i in range(50))
