"""Per-queue consumption state of a push consumer: messages in flight, credits, commit offset.

One :class:`ProcessQueue` exists per open stream (RocketMQ has one per owned queue too).
It tracks, on the core's loop and without any I/O:

* the offsets pushed and not done yet, so that the **commit offset** is the oldest of
  them, or the stream's ``next_offset`` when every pushed message is done: it never
  passes a message that is not done (docs/PROTOCOL.md 13.7), whatever order concurrent
  listeners finish in;
* the **credits** owed to the broker: one message and its stored size for each message
  done (or skipped by the client-side tag re-check), handed out by :meth:`take_ack`;
* in ordered mode, the messages waiting for their turn: one message of the queue is in
  the listener (or waiting for its retry) at a time, in queue order.

Done offsets are found in amortised O(1): offsets arrive in increasing order and go to a
deque; the oldest entries are dropped from its head once done.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Callable, Iterable
from typing import Any

from fabric.consumer.listener import Dispatcher
from fabric.filters import TagFilter
from fabric.message import MessageExt, MessageQueue

__all__ = ["Ack", "ProcessQueue", "StreamState"]


class StreamState(enum.Enum):
    """Where a queue's stream is in its life."""

    #: CONSUME_OPEN sent, no reply yet (pushes may already arrive).
    OPENING = "opening"
    #: Open: pushes are taken and dispatched.
    OPEN = "open"
    #: Being handed over or shut down: nothing new is dispatched; in-flight work finishes.
    CLOSING = "closing"
    #: Gone (closed by the broker, or the connection lost): outcomes are ignored.
    DROPPED = "dropped"


#: ``(credit_msgs, credit_bytes, commit_offset)`` for one CONSUME_ACK.
Ack = tuple[int, int, int]


class ProcessQueue:
    """The state of one queue's stream.

    Args:
        mq: the queue.
        stream_id: the stream's id on its connection.
        address: the broker the stream is open on.
        listener: what consumes this queue's messages.
        dispatcher: where its jobs run.
        orderly: one message at a time, in queue order.
        tag_filter: re-check each record's tag exactly (a tag hash can collide); None for
            SQL subscriptions and ``*``.
    """

    __slots__ = (
        "_high",
        "_order",
        "_undone",
        "accepting",
        "acked_offset",
        "address",
        "buffer",
        "busy",
        "credit_bytes",
        "credit_msgs",
        "dispatcher",
        "failures",
        "idle_waiter",
        "inflight",
        "last_failure_log",
        "listener",
        "mq",
        "next_offset",
        "orderly",
        "retries",
        "state",
        "stream_id",
        "tag_filter",
    )

    def __init__(
        self,
        mq: MessageQueue,
        stream_id: int,
        address: str,
        listener: Callable[[MessageExt], Any],
        dispatcher: Dispatcher,
        *,
        orderly: bool = False,
        tag_filter: TagFilter | None = None,
    ) -> None:
        self.mq = mq
        self.stream_id = stream_id
        self.address = address
        self.listener = listener
        self.dispatcher = dispatcher
        self.orderly = orderly
        self.tag_filter = tag_filter if tag_filter is not None and tag_filter.tags else None
        self.state = StreamState.OPENING
        #: Read by worker threads before they call the listener.
        self.accepting = True
        #: The offset after the last record the broker looked at (-1: not known yet).
        self.next_offset = -1
        #: The commit offset last sent to the broker (-1: none yet).
        self.acked_offset = -1
        self.credit_msgs = 0
        self.credit_bytes = 0
        #: Jobs handed to a dispatcher and not back yet.
        self.inflight = 0
        #: Resolved when ``inflight`` drops to 0 (set by whoever waits for that).
        self.idle_waiter: asyncio.Future[None] | None = None
        #: Ordered: pushed messages waiting for their turn.
        self.buffer: collections.deque[MessageExt] = collections.deque()
        #: Ordered: a message is in the listener or waiting for its retry.
        self.busy = False
        #: Retry timers by offset (RECONSUME_LATER).
        self.retries: dict[int, asyncio.TimerHandle] = {}
        #: Failures since the last log line about them, and when that line was written.
        self.failures = 0
        self.last_failure_log = 0.0
        self._order: collections.deque[int] = collections.deque()
        self._undone: dict[int, int] = {}
        self._high = -1

    def __repr__(self) -> str:
        return f"<ProcessQueue {self.mq} stream={self.stream_id} {self.state.value}>"

    @property
    def undone(self) -> int:
        """Messages pushed and not done yet."""
        return len(self._undone)

    def opened(self, start_offset: int) -> None:
        """The CONSUME_OPEN reply arrived: the stream starts at ``start_offset``."""
        if self.state is StreamState.OPENING:
            self.state = StreamState.OPEN
        if self.next_offset < start_offset and not self._undone:
            self.next_offset = start_offset

    def receive(
        self, msgs: Iterable[MessageExt], next_offset: int
    ) -> tuple[list[MessageExt], bool]:
        """Track the messages of one push.

        Returns:
            The messages to hand to the listener now, and whether an ack is due (credit
            for skipped records, or a commit offset that moved).
        """
        due = False
        fresh: list[MessageExt] = []
        tag_filter = self.tag_filter
        for msg in msgs:
            offset = msg.queue_offset
            if offset <= self._high or offset in self._undone:
                # Pushed again (never expected): it is done or in flight already.
                self.credit_msgs += 1
                self.credit_bytes += msg.store_size
                due = True
                continue
            self._high = offset
            if tag_filter is not None and not tag_filter.matches_tags(msg.tags):
                # A tag-hash collision let it through: done without the listener.
                self.credit_msgs += 1
                self.credit_bytes += msg.store_size
                due = True
                continue
            self._order.append(offset)
            self._undone[offset] = msg.store_size
            fresh.append(msg)
        if next_offset > self.next_offset:
            self.next_offset = next_offset
            due = due or not self._undone
        if not self.orderly:
            return fresh, due
        self.buffer.extend(fresh)
        return self.take_next(), due

    def take_next(self) -> list[MessageExt]:
        """Ordered: the next message to consume, when none is in the listener."""
        if self.busy or not self.buffer or not self.accepting:
            return []
        self.busy = True
        return [self.buffer.popleft()]

    def done(self, msg: MessageExt) -> bool:
        """The listener finished ``msg`` (CONSUME_SUCCESS); False when it was not tracked."""
        size = self._undone.pop(msg.queue_offset, None)
        if size is None:
            return False
        self.credit_msgs += 1
        self.credit_bytes += size
        return True

    def commit_offset(self) -> int:
        """The oldest offset not done, or ``next_offset`` when all are (-1: nothing known)."""
        order, undone = self._order, self._undone
        while order and order[0] not in undone:
            order.popleft()
        return order[0] if order else self.next_offset

    def take_ack(self) -> Ack | None:
        """The credits owed and the commit offset when it moved; None when nothing is due.

        The credits are reset; the commit offset becomes the one last acked.
        """
        offset = self.commit_offset()
        commit = offset if offset > self.acked_offset else -1
        if not (self.credit_msgs or self.credit_bytes or commit >= 0):
            return None
        ack = (self.credit_msgs, self.credit_bytes, commit)
        self.credit_msgs = self.credit_bytes = 0
        if commit >= 0:
            self.acked_offset = commit
        return ack

    def give_back(self, ack: Ack) -> None:
        """An ack that could not be sent: owe its credits again, and its commit."""
        self.credit_msgs += ack[0]
        self.credit_bytes += ack[1]
        if ack[2] >= 0 and self.acked_offset == ack[2]:
            self.acked_offset = -1

    def stop(self, state: StreamState) -> list[asyncio.TimerHandle]:
        """Dispatch nothing more: CLOSING or DROPPED; returns the retry timers to cancel."""
        self.state = state
        self.accepting = False
        self.buffer.clear()
        timers = list(self.retries.values())
        self.retries.clear()
        return timers

    def settled(self) -> None:
        """A job came back: resolve the idle waiter when none is left in flight."""
        self.inflight -= 1
        if self.inflight <= 0 and self.idle_waiter is not None and not self.idle_waiter.done():
            self.idle_waiter.set_result(None)
