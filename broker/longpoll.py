"""Parked pulls (long polling): woken when a message is appended to their queue, or at a deadline.

A pull that finds nothing new and asks to wait (``suspend_timeout_ms`` > 0) is parked here
under its (topic, queue id). Nothing polls: the table watches broker.arrivals, which the
send path notifies after each successful append and which calls :meth:`LongPoll.wake`
once per queue and loop iteration (several appends to the same queue cost one wake-up);
the wake-up hands each waiter of that queue back to the pull processor (``on_wake``),
which either answers it or leaves it parked (nothing matched its filter yet). Each
waiter has one ``loop.call_later`` timer at its deadline, which answers it with
``on_timeout``.

Everything here runs on the broker's loop; nothing is thread-safe, nothing needs to be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from loguru import logger

from .arrivals import Arrivals, QueueKey
from .reading import QueueFilter

__all__ = ["LongPoll", "ParkedPull"]


class ParkedPull:
    """One parked pull request and what it needs to be retried."""

    __slots__ = (
        "filter",
        "identity",
        "key",
        "max_bytes",
        "max_msgs",
        "offset",
        "request",
        "timer",
    )

    def __init__(
        self,
        identity: bytes,
        request: Any,
        key: QueueKey,
        offset: int,
        max_msgs: int,
        max_bytes: int,
        filter: QueueFilter,
    ) -> None:
        self.identity = identity
        #: The PullMessageRequest envelope (request id, flags, body).
        self.request = request
        self.key = key
        #: Where the next read starts (moves past messages the filter skipped).
        self.offset = offset
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self.filter = filter
        self.timer: asyncio.TimerHandle | None = None


class LongPoll:
    """The parked pulls of one broker, by queue.

    Args:
        loop: the broker's loop (timers run there).
        arrivals: the broker's arrival notices; the table watches them.
        on_wake: called with a waiter when its queue got a message; returns True when it
            answered the waiter (it leaves), False to keep it parked.
        on_timeout: called with a waiter whose deadline passed (it has left already).
        limit: most waiters parked at once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        arrivals: Arrivals,
        on_wake: Callable[[ParkedPull], bool],
        on_timeout: Callable[[ParkedPull], None],
        limit: int = 10_000,
    ) -> None:
        self._loop = loop
        self._on_wake = on_wake
        self._on_timeout = on_timeout
        self.limit = limit
        self._parked: dict[QueueKey, list[ParkedPull]] = {}
        self._count = 0
        arrivals.watch(self._parked, self.wake)

    def __len__(self) -> int:
        return self._count

    def park(self, waiter: ParkedPull, timeout: float) -> bool:
        """Park ``waiter`` until a message arrives in its queue or ``timeout`` seconds pass.

        Returns False (nothing parked) when :attr:`limit` waiters are parked already.
        """
        if self._count >= self.limit:
            return False
        self._parked.setdefault(waiter.key, []).append(waiter)
        self._count += 1
        waiter.timer = self._loop.call_later(timeout, self._expire, waiter)
        return True

    def wake(self, key: QueueKey) -> None:
        """A message arrived in queue ``key``: retry each of its waiters (from broker.arrivals)."""
        waiters = self._parked.pop(key, None)
        if not waiters:
            return
        self._count -= len(waiters)
        keep: list[ParkedPull] = []
        for waiter in waiters:
            try:
                answered = self._on_wake(waiter)
            except Exception:
                logger.exception("long poll: waking a pull failed")
                answered = True  # drop it: on_wake could not answer, do not retry forever
            if answered:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                    waiter.timer = None
            else:
                keep.append(waiter)
        if keep:
            self._parked.setdefault(key, []).extend(keep)
            self._count += len(keep)

    def _expire(self, waiter: ParkedPull) -> None:
        waiter.timer = None
        waiters = self._parked.get(waiter.key)
        if waiters is None:
            return
        try:
            waiters.remove(waiter)
        except ValueError:
            return  # answered already
        self._count -= 1
        if not waiters:
            del self._parked[waiter.key]
        try:
            self._on_timeout(waiter)
        except Exception:
            logger.exception("long poll: answering an expired pull failed")

    def release_topic(self, topic: str) -> int:
        """Answer the parked pulls of ``topic`` now (``on_timeout``), e.g. it was deleted."""
        keys = [key for key in self._parked if key[0] == topic]
        return self._release({key: self._parked.pop(key) for key in keys})

    def release_all(self) -> int:
        """Answer every parked pull now (``on_timeout``), e.g. at shutdown; how many."""
        # The dict itself stays: broker.arrivals watches it.
        parked = dict(self._parked)
        self._parked.clear()
        return self._release(parked)

    def _release(self, parked: dict[QueueKey, list[ParkedPull]]) -> int:
        count = 0
        for waiters in parked.values():
            self._count -= len(waiters)
            for waiter in waiters:
                if waiter.timer is not None:
                    waiter.timer.cancel()
                    waiter.timer = None
                count += 1
                try:
                    self._on_timeout(waiter)
                except Exception:
                    logger.exception("long poll: answering a released pull failed")
        return count
