"""Queue locks of consumer groups (LOCK_BATCH_MQ / UNLOCK_BATCH_MQ): one holder per queue at a time.

Ordered consumption needs each queue consumed by one member of a group at a time
(docs/PROTOCOL.md section 13.4). A lock is keyed by (group, topic, queue id) and held by
one client id until it expires (``expiry`` seconds after it was last taken or renewed),
its holder gives it up, or the holder leaves the group (expiry or UNREGISTER_CLIENT:
:meth:`QueueLockTable.release_client`).

Expired locks are not swept by a timer: a lock is checked against the clock whenever it
is asked for, and expired entries are dropped from memory (:meth:`QueueLockTable.prune`)
whenever the table has doubled since the last prune, so it never holds more than twice
the locks that are live.

Pure data structure: no sockets, no loop. Time comes from a :class:`Clock` (the broker's
loop clock, or a fake in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Final

__all__ = ["Clock", "LockKey", "QueueLockTable"]

#: Seconds, monotonic: ``time.monotonic`` or ``loop.time``.
Clock = Callable[[], float]
#: (consumer group, topic, queue id).
LockKey = tuple[str, str, int]

_NO_GROUPS: Final[frozenset[str]] = frozenset()
_PRUNE_AT: Final = 1024


class _Lock:
    __slots__ = ("client_id", "expires")

    def __init__(self, client_id: str, expires: float) -> None:
        self.client_id = client_id
        self.expires = expires


class QueueLockTable:
    """Who holds which queue lock, per consumer group.

    Args:
        expiry: seconds a lock lasts unless renewed (``lock_expiry``, default 30 s).
        clock: the time source (monotonic seconds).
    """

    def __init__(self, expiry: float, clock: Clock = time.monotonic) -> None:
        if not expiry > 0:
            raise ValueError(f"lock expiry must be > 0, got {expiry}")
        self.expiry = expiry
        self._clock = clock
        self._locks: dict[LockKey, _Lock] = {}
        self._by_client: dict[str, set[LockKey]] = {}
        self._next_prune = _PRUNE_AT

    def __len__(self) -> int:
        """Locks in the table, expired ones included until they are pruned."""
        return len(self._locks)

    # -- taking and giving up -----------------------------------------------------------

    def lock(self, group: str, client_id: str, topic: str, queue_id: int) -> bool:
        """Take or renew one lock: True when ``client_id`` holds it now.

        The lock is taken when it is free, expired or already this client's; False
        when another client holds it and it has not expired.
        """
        return self._take((group, topic, queue_id), client_id, self._clock())

    def lock_batch(
        self, group: str, client_id: str, queues: Iterable[tuple[str, int]]
    ) -> list[tuple[str, int]]:
        """Take or renew the lock of each (topic, queue id); those now held, in request order."""
        now = self._clock()
        held: list[tuple[str, int]] = []
        seen: set[tuple[str, int]] = set()
        for topic, queue_id in queues:
            if (topic, queue_id) in seen:
                continue
            seen.add((topic, queue_id))
            if self._take((group, topic, queue_id), client_id, now):
                held.append((topic, queue_id))
        return held

    def _take(self, key: LockKey, client_id: str, now: float) -> bool:
        current = self._locks.get(key)
        if current is not None:
            if current.client_id == client_id:
                current.expires = now + self.expiry
                return True
            if current.expires > now:
                return False
            self._forget(key, current.client_id)
        if len(self._locks) >= self._next_prune:
            self.prune()
            self._next_prune = max(_PRUNE_AT, 2 * len(self._locks))
        self._locks[key] = _Lock(client_id, now + self.expiry)
        self._by_client.setdefault(client_id, set()).add(key)
        return True

    def unlock(self, group: str, client_id: str, topic: str, queue_id: int) -> bool:
        """Give up one lock when ``client_id`` holds it; True when it did."""
        key = (group, topic, queue_id)
        current = self._locks.get(key)
        if current is None or current.client_id != client_id:
            return False
        del self._locks[key]
        self._forget(key, client_id)
        return True

    def unlock_batch(self, group: str, client_id: str, queues: Iterable[tuple[str, int]]) -> int:
        """Give up the locks of these queues that ``client_id`` holds; how many."""
        return sum(self.unlock(group, client_id, topic, queue_id) for topic, queue_id in queues)

    def _forget(self, key: LockKey, client_id: str) -> None:
        keys = self._by_client.get(client_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_client[client_id]

    # -- queries --------------------------------------------------------------------------

    def holder(self, group: str, topic: str, queue_id: int) -> str | None:
        """The client holding the lock now, or None (free or expired)."""
        current = self._locks.get((group, topic, queue_id))
        if current is None or current.expires <= self._clock():
            return None
        return current.client_id

    def held_by(self, client_id: str) -> list[LockKey]:
        """The unexpired locks of ``client_id``, sorted."""
        now = self._clock()
        keys = self._by_client.get(client_id, ())
        return sorted(key for key in keys if self._locks[key].expires > now)

    # -- bulk release ---------------------------------------------------------------------

    def release_client(self, client_id: str, groups: Collection[str] | None = None) -> int:
        """Free the locks ``client_id`` holds (in ``groups`` only, when given); how many.

        Called when the client expires or unregisters.
        """
        keys = self._by_client.get(client_id)
        if not keys:
            return 0
        wanted = _NO_GROUPS if groups is None else groups
        freed = [key for key in keys if groups is None or key[0] in wanted]
        for key in freed:
            del self._locks[key]
            keys.discard(key)
        if not keys:
            del self._by_client[client_id]
        return len(freed)

    def delete_topic(self, topic: str) -> int:
        """Free every lock on a queue of ``topic`` (it was deleted); how many."""
        gone = [key for key in self._locks if key[1] == topic]
        for key in gone:
            self._forget(key, self._locks.pop(key).client_id)
        return len(gone)

    def prune(self) -> int:
        """Drop the expired locks from memory; how many."""
        now = self._clock()
        gone = [key for key, lock in self._locks.items() if lock.expires <= now]
        for key in gone:
            self._forget(key, self._locks.pop(key).client_id)
        return len(gone)
