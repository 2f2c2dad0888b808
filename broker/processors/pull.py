"""PULL_MESSAGE: read records from a queue, or park the pull until one arrives (long polling).

A pull reads with ``store.get_messages`` (offset, count, bytes, tag filter) and answers
the records as they are stored, one CommitLog record per reply frame. When there is
nothing to return yet (the offset is the queue's end, or everything after it was
filtered out) and the pull asks to wait, it is parked in broker.longpoll: the send
processor wakes it after an append to its queue, or its timer answers PULL_NOT_FOUND at
the deadline. docs/PROTOCOL.md section 7.4 is the contract.

Filters (fabric.filters, compiled once by broker.reading): with ``filter_type`` TAG,
``subscription`` is ``*`` (or empty) for everything, else tags separated by ``||``; the
store filters ConsumeQueue entries on the CRC32 of the tag without reading the skipped
records (and, as documented, does not tell two tags with the same CRC32 apart). With
SQL92 the records are read and their properties tested. An expression that does not
compile is answered SUBSCRIPTION_PARSE_FAILED.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from broker.longpoll import LongPoll, ParkedPull
from broker.reading import QueueFilter, read_queue
from broker.store import GetStatus
from fabric.errors import NoPermissionError, ProtocolError
from fabric.protocol.codes import Flag, Perm, ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import PullMessageRequest, PullReply

from . import BrokerContext, Outcome

__all__ = ["PullProcessor"]

_ONEWAY: Final = int(Flag.ONEWAY)
_READ: Final = int(Perm.READ)


class PullProcessor:
    """PULL_MESSAGE, and the owner of the long-poll table.

    Args:
        ctx: the broker's shared state; ``ctx.longpoll`` is set to this processor's table.
    """

    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx
        self._store = ctx.store
        config = ctx.config
        self._max_msgs = config.pull_max_msgs
        self._default_bytes = config.pull_default_bytes
        self._max_bytes = config.pull_max_bytes
        self._max_suspend = config.max_suspend_ms
        self._filters = ctx.filters
        self.longpoll = LongPoll(
            ctx.loop, ctx.arrivals, self._on_wake, self._on_timeout, config.max_parked_pulls
        )
        ctx.longpoll = self.longpoll

    def pull(
        self, request: PullMessageRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome | None:
        """PULL_MESSAGE: records, an offset status, or None when parked."""
        ctx = self._ctx
        b = request.body
        config = ctx.require_topic(b.topic, b.consumer_group)
        if not config.perm & _READ:
            raise NoPermissionError(f"topic {b.topic} is not readable (perm {config.perm})")
        ctx.check_read_queue(config, b.queue_id)
        if b.max_msgs <= 0:
            raise ProtocolError(f"max_msgs must be > 0, got {b.max_msgs}")
        if b.max_bytes < 0:
            raise ProtocolError(f"max_bytes must be >= 0, got {b.max_bytes}")
        if b.suspend_timeout_ms < 0:
            raise ProtocolError(f"suspend_timeout_ms must be >= 0, got {b.suspend_timeout_ms}")
        max_msgs = min(b.max_msgs, self._max_msgs)
        max_bytes = min(b.max_bytes, self._max_bytes) if b.max_bytes else self._default_bytes
        flt = self._filters.get(b.filter_type, b.subscription, exact_tags=False)
        if b.commit_offset >= 0:
            ctx.offsets.commit(b.consumer_group, b.topic, b.queue_id, b.commit_offset)
        outcome, next_offset = self._read(
            b.topic, b.queue_id, b.queue_offset, max_msgs, max_bytes, flt
        )
        if outcome is not None:
            return outcome
        suspend = min(b.suspend_timeout_ms, self._max_suspend)
        if suspend > 0 and not request.flags & _ONEWAY:
            waiter = ParkedPull(
                identity, request, (b.topic, b.queue_id), next_offset, max_msgs, max_bytes, flt
            )
            if self.longpoll.park(waiter, suspend / 1000.0):
                return None
        return self._not_found(b.topic, b.queue_id, next_offset)

    def _read(
        self,
        topic: str,
        queue_id: int,
        offset: int,
        max_msgs: int,
        max_bytes: int,
        flt: QueueFilter,
    ) -> tuple[Outcome | None, int]:
        """One read; (the outcome, or None: nothing yet, wait at the returned offset)."""
        r = read_queue(self._store, topic, queue_id, offset, max_msgs, max_bytes, flt)
        status = r.status
        if status is GetStatus.FOUND:
            reply = PullReply(
                next_offset=r.next_offset, min_offset=r.min_offset, max_offset=r.max_offset
            )
            return (ResponseCode.SUCCESS, reply, r.records, ""), r.next_offset
        if status is GetStatus.OFFSET_OVERFLOW_ONE:
            return None, offset
        if status is GetStatus.NO_MESSAGE_IN_QUEUE and offset == r.max_offset:
            return None, offset
        if status is GetStatus.NO_MATCHED_MESSAGE and r.next_offset >= r.max_offset:
            return None, r.next_offset  # filtered out up to the end: wait there
        reply = PullReply(
            next_offset=r.next_offset, min_offset=r.min_offset, max_offset=r.max_offset
        )
        if status in (GetStatus.NO_MATCHED_MESSAGE, GetStatus.MESSAGE_WAS_REMOVING):
            remark = (
                "no message matched the subscription; pull again from next_offset"
                if status is GetStatus.NO_MATCHED_MESSAGE
                else "messages were removed by retention; pull again from next_offset"
            )
            return (ResponseCode.PULL_RETRY_IMMEDIATELY, reply, (), remark), r.next_offset
        # OFFSET_TOO_SMALL, OFFSET_OVERFLOW_BADLY, NO_MESSAGE_IN_QUEUE off the end.
        remark = (
            f"offset {offset} is outside the queue's [{r.min_offset}, {r.max_offset}]; "
            f"continue at {r.next_offset}"
        )
        return (ResponseCode.PULL_OFFSET_MOVED, reply, (), remark), r.next_offset

    def _not_found(self, topic: str, queue_id: int, next_offset: int) -> Outcome:
        store = self._store
        reply = PullReply(
            next_offset=next_offset,
            min_offset=store.min_offset(topic, queue_id),
            max_offset=store.max_offset(topic, queue_id),
        )
        return ResponseCode.PULL_NOT_FOUND, reply, (), ""

    # -- long polling -------------------------------------------------------------------

    def _on_wake(self, waiter: ParkedPull) -> bool:
        topic, queue_id = waiter.key
        try:
            outcome, next_offset = self._read(
                topic, queue_id, waiter.offset, waiter.max_msgs, waiter.max_bytes, waiter.filter
            )
        except Exception as exc:
            self._ctx.replier.reply(
                waiter.identity,
                waiter.request,
                ResponseCode.SYSTEM_ERROR,
                remark=f"internal error: {type(exc).__name__}: {exc}",
            )
            raise
        if outcome is None:
            waiter.offset = next_offset
            return False
        code, body, frames, remark = outcome
        self._ctx.replier.reply(waiter.identity, waiter.request, code, body, frames, remark)
        return True

    def _on_timeout(self, waiter: ParkedPull) -> None:
        topic, queue_id = waiter.key
        code, body, frames, remark = self._not_found(topic, queue_id, waiter.offset)
        self._ctx.replier.reply(waiter.identity, waiter.request, code, body, frames, remark)
