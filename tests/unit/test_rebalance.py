"""fabric.consumer.rebalance: the strategies of docs/PROTOCOL.md 13.5, exactly, and that the
shares of all members partition the queues."""

from __future__ import annotations

import random
import zlib

import pytest

from fabric.consumer.rebalance import (
    STRATEGIES,
    VIRTUAL_NODES,
    allocate,
    allocate_average,
    allocate_consistent_hash,
    check_strategy,
)
from fabric.message import MessageQueue


def queues(
    n: int, brokers: tuple[str, ...] = ("broker-a",), topic: str = "T"
) -> list[MessageQueue]:
    per = -(-n // len(brokers))
    found = [MessageQueue(topic, b, q) for b in brokers for q in range(per)]
    return found[:n]


def ids(k: int) -> list[str]:
    return [f"host@{100 + i}@0" for i in range(k)]


def test_average_matches_the_contract() -> None:
    qs = queues(8)
    members = ids(3)
    # n=8, k=3: 3, 3, 2 contiguous queues
    assert allocate_average(members[0], members, qs) == qs[0:3]
    assert allocate_average(members[1], members, qs) == qs[3:6]
    assert allocate_average(members[2], members, qs) == qs[6:8]


def test_average_with_more_members_than_queues() -> None:
    qs = queues(2)
    members = ids(4)
    shares = [allocate_average(m, members, qs) for m in members]
    assert shares == [[qs[0]], [qs[1]], [], []]


def test_average_sorts_its_inputs() -> None:
    qs = queues(6, ("broker-b", "broker-a"))
    members = ids(2)
    shuffled_q = list(reversed(qs))
    shuffled_ids = list(reversed(members))
    expected = sorted(qs, key=lambda q: (q.broker_name, q.queue_id))
    assert allocate_average(members[0], shuffled_ids, shuffled_q) == expected[:3]
    assert allocate_average(members[1], members, qs) == expected[3:]


def test_a_stranger_gets_nothing() -> None:
    for strategy in STRATEGIES.values():
        assert strategy("nobody", ids(2), queues(4)) == []


def test_consistent_hash_matches_the_contract() -> None:
    qs = queues(16, ("broker-a", "broker-b"))
    members = ids(3)
    ring = sorted(
        (zlib.crc32(f"{cid}-{k}".encode()), cid) for cid in members for k in range(VIRTUAL_NODES)
    )
    for mq in qs:
        h = zlib.crc32(f"{mq.topic}@{mq.broker_name}@{mq.queue_id}".encode())
        owner = next((cid for node, cid in ring if node >= h), ring[0][1])
        for cid in members:
            assert (mq in allocate_consistent_hash(cid, members, qs)) == (cid == owner)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("seed", range(30))
def test_every_strategy_partitions_the_queues(name: str, seed: int) -> None:
    rnd = random.Random(seed)
    brokers = tuple(f"broker-{c}" for c in "abc"[: rnd.randint(1, 3)])
    qs = queues(rnd.randint(0, 40), brokers, topic=f"T{seed}")
    members = [
        f"h{rnd.randint(0, 9)}@{rnd.randint(1, 99999)}@{i}" for i in range(rnd.randint(1, 9))
    ]
    shares = [allocate(name, cid, members, qs) for cid in members]
    owned = [mq for share in shares for mq in share]
    assert sorted(owned) == sorted(qs), "every queue exactly once"
    if name == "average" and qs:
        sizes = sorted(len(s) for s in shares)
        assert sizes[-1] - sizes[0] <= 1


def test_consistent_hash_moves_few_queues_when_a_member_joins() -> None:
    qs = queues(64, ("broker-a", "broker-b"))
    before = ids(4)
    after = [*before, "host@999@0"]
    moved = 0
    for cid in before:
        old = set(allocate_consistent_hash(cid, before, qs))
        new = set(allocate_consistent_hash(cid, after, qs))
        assert new <= old, "a member never gains a queue when another joins"
        moved += len(old - new)
    assert moved == len(allocate_consistent_hash("host@999@0", after, qs))


def test_strategy_names() -> None:
    assert check_strategy("average") == "average"
    assert check_strategy("consistent_hash") == "consistent_hash"
    with pytest.raises(ValueError, match="unknown allocation strategy"):
        check_strategy("round_robin")
