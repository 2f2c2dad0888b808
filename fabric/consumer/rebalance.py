"""Queue allocation strategies of a consumer group: average and consistent hash (pure functions).

docs/PROTOCOL.md section 13.5 is the contract: every member of a CLUSTERING group runs
the same strategy on the same inputs (the group's client ids, the topic's readable
queues) and takes its own share, so the shares of all members partition the queues
without any coordination beyond the member list the brokers keep.

* :func:`allocate_average` (the default; RocketMQ ``AllocateMessageQueueAveragely``):
  with ``n`` queues and ``k`` members, member ``i`` of the sorted ids gets ``n // k``
  queues, one more when ``i < n % k``, as one contiguous run.
* :func:`allocate_consistent_hash` (RocketMQ ``AllocateMessageQueueConsistentHash``):
  10 virtual nodes per member on a ring of CRC32 values; a queue goes to the first node
  at or after its own CRC32. A member joining or leaving moves only the queues next to
  its nodes, at the price of a less even spread.

Both take the inputs in any order and sort them first (client ids by their UTF-8 bytes,
queues by broker name then queue id), so callers cannot disagree by accident.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Callable, Sequence
from typing import Final

from fabric.message import MessageQueue

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "VIRTUAL_NODES",
    "AllocateStrategy",
    "allocate",
    "allocate_average",
    "allocate_consistent_hash",
    "check_strategy",
]

#: Virtual nodes of each member on the consistent-hash ring.
VIRTUAL_NODES: Final = 10
#: The strategy a consumer uses unless told otherwise.
DEFAULT_STRATEGY: Final = "average"

#: ``strategy(client_id, client_ids, queues) -> the queues client_id owns``.
AllocateStrategy = Callable[[str, Sequence[str], Sequence[MessageQueue]], list[MessageQueue]]


def _sorted_ids(client_ids: Sequence[str]) -> list[str]:
    # Byte order of the UTF-8 encoding, as GET_CONSUMER_LIST_BY_GROUP sorts them.
    return sorted(set(client_ids), key=lambda cid: cid.encode())


def _sorted_queues(queues: Sequence[MessageQueue]) -> list[MessageQueue]:
    return sorted(set(queues), key=lambda q: (q.broker_name.encode(), q.queue_id))


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def allocate_average(
    client_id: str, client_ids: Sequence[str], queues: Sequence[MessageQueue]
) -> list[MessageQueue]:
    """The contiguous run of ``queues`` that ``client_id`` owns under the average strategy.

    Args:
        client_id: the member asking.
        client_ids: every live member of the group (``client_id`` among them).
        queues: the topic's readable queues.

    Returns:
        The member's queues, sorted; empty when it is not a member or is beyond the
        number of queues.
    """
    ids = _sorted_ids(client_ids)
    if client_id not in ids:
        return []
    ordered = _sorted_queues(queues)
    n, k = len(ordered), len(ids)
    i = ids.index(client_id)
    base, extra = divmod(n, k)
    count = base + (1 if i < extra else 0)
    start = i * base + min(i, extra)
    return ordered[start : start + count]


def _ring(client_ids: Sequence[str]) -> tuple[list[int], list[str]]:
    """The ring's node hashes, ascending, and the member owning each node."""
    nodes = sorted(
        (_crc(f"{cid}-{k}"), cid.encode(), cid) for cid in client_ids for k in range(VIRTUAL_NODES)
    )
    return [h for h, _, _ in nodes], [cid for _, _, cid in nodes]


def allocate_consistent_hash(
    client_id: str, client_ids: Sequence[str], queues: Sequence[MessageQueue]
) -> list[MessageQueue]:
    """The queues ``client_id`` owns under the consistent-hash strategy.

    Each member has :data:`VIRTUAL_NODES` nodes at ``crc32("<client_id>-<k>")``; the
    queue ``<topic>@<broker_name>@<queue_id>`` goes to the first node at or after its
    CRC32, wrapping around. Two nodes with the same hash are ordered by client id.
    """
    ids = _sorted_ids(client_ids)
    if client_id not in ids:
        return []
    hashes, owners = _ring(ids)
    mine: list[MessageQueue] = []
    for mq in _sorted_queues(queues):
        h = _crc(f"{mq.topic}@{mq.broker_name}@{mq.queue_id}")
        i = bisect.bisect_left(hashes, h)
        if owners[i % len(owners)] == client_id:
            mine.append(mq)
    return mine


#: Strategy name -> function.
STRATEGIES: Final[dict[str, AllocateStrategy]] = {
    "average": allocate_average,
    "consistent_hash": allocate_consistent_hash,
}


def check_strategy(name: str) -> str:
    """``name`` when it names a strategy.

    Raises:
        ValueError: an unknown strategy.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown allocation strategy {name!r}: expected one of {list(STRATEGIES)}"
        )
    return name


def allocate(
    strategy: str, client_id: str, client_ids: Sequence[str], queues: Sequence[MessageQueue]
) -> list[MessageQueue]:
    """Run the strategy named ``strategy`` (``"average"`` or ``"consistent_hash"``).

    Raises:
        ValueError: an unknown strategy.
    """
    return STRATEGIES[check_strategy(strategy)](client_id, client_ids, queues)
