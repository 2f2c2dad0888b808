"""Push consumption: CONSUME_OPEN, CONSUME_ACK and CONSUME_CLOSE (docs/PROTOCOL.md section 13.3).

This module checks the requests, works out where a stream starts and takes the queue
lock of an exclusive stream; broker.push owns the streams and pushes their records.

CONSUME_OPEN checks, in the order of section 13.3: the checks of 7.0 (topic name, group
name, the topic exists, READ permission, queue id), the other values
(MALFORMED_REQUEST), the filter (SUBSCRIPTION_PARSE_FAILED), the lock of an exclusive
stream (QUEUE_LOCKED), room for one more stream (SYSTEM_BUSY). The start offset is
``offset``, or with ``-1`` the group's committed offset, else ``consume_from``; then
clamped to the queue's [min, max].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fabric.errors import (
    NoPermissionError,
    ProtocolError,
    QueueLockedError,
    ServerBusyError,
    StreamNotFoundError,
)
from fabric.protocol.codes import ConsumeFrom, Perm, ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import (
    ConsumeAckRequest,
    ConsumeCloseRequest,
    ConsumeOpenReply,
    ConsumeOpenRequest,
    Empty,
)

from . import BrokerContext, Outcome

__all__ = ["MAX_WINDOW_BYTES", "MAX_WINDOW_MSGS", "ConsumeProcessor", "start_offset"]

#: Largest initial window a stream may ask for, in messages.
MAX_WINDOW_MSGS: Final = 65536
#: Largest initial window a stream may ask for, in bytes.
MAX_WINDOW_BYTES: Final = 2**31
_MAX_STREAM_ID: Final = 2**63 - 1
_READ: Final = int(Perm.READ)
_CONSUME_FROM: Final = frozenset(int(c) for c in ConsumeFrom)
_EMPTY: Final = Empty()
_SUCCESS: Final = ResponseCode.SUCCESS


def start_offset(ctx: BrokerContext, topic: str, queue_id: int, to: int, timestamp: int) -> int:
    """The offset ConsumeFrom ``to`` names in a queue now (LAST: max, FIRST: min, TIMESTAMP)."""
    store = ctx.store
    if to == ConsumeFrom.FIRST_OFFSET:
        return store.min_offset(topic, queue_id)
    if to == ConsumeFrom.TIMESTAMP:
        return store.offset_for_timestamp(topic, queue_id, timestamp)
    return store.max_offset(topic, queue_id)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ProtocolError(f"{name} must be in {low}..{high}, got {value}")


class ConsumeProcessor:
    """The stream requests of push consumers."""

    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx

    def open(
        self, request: ConsumeOpenRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """CONSUME_OPEN: check, find the start offset, open the stream; ConsumeOpenReply."""
        ctx = self._ctx
        b = request.body
        group = b.consumer_group
        config = ctx.require_topic(b.topic, group)
        if not config.perm & _READ:
            raise NoPermissionError(f"topic {b.topic} is not readable (perm {config.perm})")
        ctx.check_read_queue(config, b.queue_id)
        ctx.check_client_id(b.client_id)
        _check_range("stream_id", b.stream_id, 1, _MAX_STREAM_ID)
        _check_range("window_msgs", b.window_msgs, 1, MAX_WINDOW_MSGS)
        _check_range("window_bytes", b.window_bytes, 1, MAX_WINDOW_BYTES)
        if b.offset < -1:
            raise ProtocolError(
                f"offset must be >= 0, or -1 for the committed offset; got {b.offset}"
            )
        if b.consume_from not in _CONSUME_FROM:
            raise ProtocolError(f"consume_from must be 0, 1 or 2, got {b.consume_from}")
        flt = ctx.filters.get(b.filter_type, b.expression, exact_tags=True)
        push = ctx.push
        if len(push) >= push.max_streams and push.get(identity, b.stream_id) is None:
            raise ServerBusyError(f"{push.max_streams} push streams are open on this broker")
        if b.exclusive:
            if not ctx.locks.lock(group, b.client_id, b.topic, b.queue_id):
                holder = ctx.locks.holder(group, b.topic, b.queue_id)
                raise QueueLockedError(
                    f"queue {b.queue_id} of topic {b.topic} is locked by client {holder} "
                    f"of group {group}"
                )
            push.close_exclusive(group, b.topic, b.queue_id, b.client_id)
        store = ctx.store
        low = store.min_offset(b.topic, b.queue_id)
        high = store.max_offset(b.topic, b.queue_id)
        offset = b.offset
        if offset < 0:
            committed = ctx.offsets.query(group, b.topic, b.queue_id)
            if committed is None:
                offset = start_offset(ctx, b.topic, b.queue_id, b.consume_from, b.timestamp)
            else:
                offset = committed
        offset = min(max(offset, low), high)
        push.open(
            identity,
            b.stream_id,
            group=group,
            client_id=b.client_id,
            topic=b.topic,
            queue_id=b.queue_id,
            offset=offset,
            window_msgs=b.window_msgs,
            window_bytes=b.window_bytes,
            filter=flt,
            exclusive=b.exclusive,
            commit=b.commit,
        )
        return (
            _SUCCESS,
            ConsumeOpenReply(start_offset=offset, min_offset=low, max_offset=high),
            (),
            "",
        )

    def ack(self, request: ConsumeAckRequest, bodies: Sequence[Buffer], identity: bytes) -> Outcome:
        """CONSUME_ACK: credit, commit; STREAM_NOT_FOUND when the stream is not open here."""
        b = request.body
        if b.credit_msgs < 0 or b.credit_bytes < 0:
            raise ProtocolError(
                "credit_msgs and credit_bytes must be >= 0, "
                f"got {b.credit_msgs} and {b.credit_bytes}"
            )
        if not self._ctx.push.ack(
            identity, b.stream_id, b.credit_msgs, b.credit_bytes, b.commit_offset
        ):
            raise StreamNotFoundError(f"stream {b.stream_id} is not open on this connection")
        return _SUCCESS, _EMPTY, (), ""

    def close(
        self, request: ConsumeCloseRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """CONSUME_CLOSE: commit, close, maybe unlock; STREAM_NOT_FOUND when not open here."""
        b = request.body
        if not self._ctx.push.close_stream(identity, b.stream_id, b.commit_offset, b.unlock):
            raise StreamNotFoundError(f"stream {b.stream_id} is not open on this connection")
        return _SUCCESS, _EMPTY, (), ""
