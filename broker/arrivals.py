"""Arrival notices: the send path tells whoever waits on a queue that a message was stored there.

Two kinds of waiter sleep until a message reaches their queue: pulls parked by long
polling (broker.longpoll) and push streams that are caught up (broker.push). Nothing
polls. After each successful append the send processor calls
:meth:`Arrivals.notify` (topic, queue id); when somebody waits on that queue, the queue
is marked and one wake-up is scheduled on the loop (``call_soon``). The wake-up hands
each marked queue to every watcher waiting on it, once: several appends to one queue
within a loop iteration cost one wake-up, and the appends of a batch cost one notice.

Watchers register a live container of the queues they wait on (a dict they keep up to
date) and a wake function; the check on the hot path is one ``in`` per watcher.

Everything runs on the broker's loop; nothing here is thread-safe, nothing needs to be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

from loguru import logger

__all__ = ["Arrivals", "QueueKey"]

#: (topic, queue id).
QueueKey = tuple[str, int]


class Arrivals:
    """Coalesced "a message arrived in this queue" wake-ups for the broker's waiters.

    Args:
        loop: the broker's loop; wake-ups run there.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watchers: list[tuple[Collection[QueueKey], Callable[[QueueKey], None]]] = []
        self._dirty: set[QueueKey] = set()
        self._scheduled = False
        #: Wake-ups run since the start (one per marked queue and loop iteration).
        self.wakeups = 0

    def watch(self, waiting: Collection[QueueKey], wake: Callable[[QueueKey], None]) -> None:
        """Register a watcher.

        Args:
            waiting: the queues it waits on now, a live container it keeps up to date
                (its dict of waiters by queue).
            wake: called on the loop with a queue in ``waiting`` after a message
                arrived there; exceptions are logged.
        """
        self._watchers.append((waiting, wake))

    def notify(self, topic: str, queue_id: int) -> None:
        """A message was appended to (topic, queue_id): wake its waiters soon. Hot path."""
        watchers = self._watchers
        for waiting, _ in watchers:
            if waiting:
                break
        else:
            return  # nobody waits on any queue: the common case under load
        key = (topic, queue_id)
        if key in self._dirty:
            return
        for waiting, _ in watchers:
            if key in waiting:
                break
        else:
            return
        self._dirty.add(key)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        for key in dirty:
            self.wakeups += 1
            for waiting, wake in self._watchers:
                if key in waiting:
                    try:
                        wake(key)
                    except Exception:
                        logger.exception("arrivals: waking the waiters of {} failed", key)
