"""Consumer and queue offsets: QUERY/COMMIT_CONSUMER_OFFSET, GET_MIN/MAX_OFFSET, SEARCH, RESET.

Every request names an existing topic (TOPIC_NOT_EXIST otherwise) and one of its read
queues (MALFORMED_REQUEST otherwise), except RESET_CONSUMER_OFFSET, which sets every read
queue of the topic and closes the group's push streams of it (``offset_reset``: their
consumers reopen them at the new offsets, PROTOCOL.md 13.6). Committed offsets live in
broker.offsets (written to disk by the server's persistence timer); queue offsets come
from the store's ConsumeQueues.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from loguru import logger

from fabric.errors import OffsetNotFoundError, ProtocolError
from fabric.protocol.codes import ConsumeFrom, ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import (
    CommitConsumerOffsetRequest,
    Empty,
    GetMaxOffsetRequest,
    GetMinOffsetRequest,
    OffsetReply,
    QueryConsumerOffsetRequest,
    QueueOffset,
    ResetOffsetReply,
    ResetOffsetRequest,
    SearchOffsetRequest,
)

from . import BrokerContext, Outcome
from .consume import start_offset

__all__ = ["OffsetProcessor"]

_EMPTY: Final = Empty()
_SUCCESS: Final = ResponseCode.SUCCESS
_CONSUME_FROM: Final = frozenset(int(c) for c in ConsumeFrom)


class OffsetProcessor:
    """The offset requests of one broker."""

    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx

    def _queue(self, topic: str, queue_id: int, group: str | None = None) -> None:
        ctx = self._ctx
        ctx.check_read_queue(ctx.require_topic(topic, group), queue_id)

    def query(
        self, request: QueryConsumerOffsetRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """QUERY_CONSUMER_OFFSET: the committed offset, or QUERY_NOT_FOUND."""
        b = request.body
        self._queue(b.topic, b.queue_id, b.consumer_group)
        offset = self._ctx.offsets.query(b.consumer_group, b.topic, b.queue_id)
        if offset is None:
            raise OffsetNotFoundError(
                f"group {b.consumer_group} has no committed offset "
                f"for topic {b.topic} queue {b.queue_id}"
            )
        return _SUCCESS, OffsetReply(offset=offset), (), ""

    def commit(
        self, request: CommitConsumerOffsetRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """COMMIT_CONSUMER_OFFSET: remember the group's next offset of one queue."""
        b = request.body
        self._queue(b.topic, b.queue_id, b.consumer_group)
        if b.offset < 0:
            raise ProtocolError(f"offset must be >= 0, got {b.offset}")
        self._ctx.offsets.commit(b.consumer_group, b.topic, b.queue_id, b.offset)
        return _SUCCESS, _EMPTY, (), ""

    def max_offset(
        self, request: GetMaxOffsetRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """GET_MAX_OFFSET: one past the queue's last message."""
        b = request.body
        self._queue(b.topic, b.queue_id)
        return _SUCCESS, OffsetReply(offset=self._ctx.store.max_offset(b.topic, b.queue_id)), (), ""

    def min_offset(
        self, request: GetMinOffsetRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """GET_MIN_OFFSET: the queue's first message still stored."""
        b = request.body
        self._queue(b.topic, b.queue_id)
        return _SUCCESS, OffsetReply(offset=self._ctx.store.min_offset(b.topic, b.queue_id)), (), ""

    def search(
        self, request: SearchOffsetRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """SEARCH_OFFSET_BY_TIMESTAMP: the first offset stored at or after the timestamp."""
        b = request.body
        self._queue(b.topic, b.queue_id)
        offset = self._ctx.store.offset_for_timestamp(b.topic, b.queue_id, b.timestamp)
        return _SUCCESS, OffsetReply(offset=offset), (), ""

    def reset(
        self, request: ResetOffsetRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """RESET_CONSUMER_OFFSET: set the group's offset of every read queue; close its streams."""
        ctx = self._ctx
        b = request.body
        config = ctx.require_topic(b.topic, b.consumer_group)
        if b.to not in _CONSUME_FROM:
            raise ProtocolError(f"to must be 0, 1 or 2 (ConsumeFrom), got {b.to}")
        offsets: list[QueueOffset] = []
        for queue_id in range(config.read_queue_nums):
            offset = start_offset(ctx, b.topic, queue_id, b.to, b.timestamp)
            ctx.offsets.commit(b.consumer_group, b.topic, queue_id, offset)
            offsets.append(QueueOffset(queue_id=queue_id, offset=offset))
        closed = ctx.push.close_topic(b.topic, "offset_reset", group=b.consumer_group)
        logger.info(
            "group {} topic {}: offsets reset to {} ({} streams closed)",
            b.consumer_group,
            b.topic,
            ConsumeFrom(b.to).name,
            closed,
        )
        return _SUCCESS, ResetOffsetReply(offsets=offsets), (), ""
