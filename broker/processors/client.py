"""Clients and groups: HEARTBEAT, UNREGISTER_CLIENT, GET_CONSUMER_LIST_BY_GROUP, queue locks.

The state lives in broker.consumers (members, expiry, notifications) and broker.locks
(LOCK_BATCH_MQ / UNLOCK_BATCH_MQ); this module checks the requests and answers them
(docs/PROTOCOL.md sections 7.6, 13.2 and 13.4).

A HEARTBEAT's consumer groups are the names in ``consumer_groups`` and the ``group`` of
each ConsumerData in ``consumers``; every subscription's filter must compile
(SUBSCRIPTION_PARSE_FAILED otherwise), so that a bad expression fails when the consumer
starts, not when it opens its first stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fabric.errors import ProtocolError
from fabric.protocol.codes import MessageModel, ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import (
    ConsumerData,
    ConsumerListReply,
    Empty,
    GetConsumerListRequest,
    HeartbeatRequest,
    LockBatchReply,
    LockBatchRequest,
    QueueRef,
    UnlockBatchRequest,
    UnregisterClientRequest,
)

from . import BrokerContext, Outcome

__all__ = ["ClientProcessor"]

#: Most groups (producer and consumer) one HEARTBEAT or UNREGISTER_CLIENT may name.
_MAX_GROUPS: Final = 1024
#: Most subscriptions of one consumer in a HEARTBEAT.
_MAX_SUBSCRIPTIONS: Final = 1024
#: Most queues in one LOCK_BATCH_MQ / UNLOCK_BATCH_MQ.
_MAX_LOCK_QUEUES: Final = 16384
_MODELS: Final = frozenset(int(m) for m in MessageModel)
_EMPTY: Final = Empty()
_SUCCESS: Final = ResponseCode.SUCCESS


class ClientProcessor:
    """Client heartbeats, group membership and queue locks."""

    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx

    def heartbeat(
        self, request: HeartbeatRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """HEARTBEAT: record the client, its groups and its subscriptions."""
        ctx = self._ctx
        b = request.body
        self._check_client_groups(
            b.client_id, b.producer_groups, b.consumer_groups, "heartbeat", len(b.consumers)
        )
        consumers = {group: ConsumerData(group=group) for group in b.consumer_groups}
        for data in b.consumers:
            self._check_consumer(data)
            consumers[data.group] = data
        ctx.consumers.heartbeat(b.client_id, identity, b.producer_groups, consumers)
        return _SUCCESS, _EMPTY, (), ""

    def _check_client_groups(
        self,
        client_id: str,
        producer_groups: Sequence[str],
        consumer_groups: Sequence[str],
        per: str,
        more: int = 0,
    ) -> None:
        """The checks HEARTBEAT and UNREGISTER_CLIENT open with, in this order.

        The client id; at most _MAX_GROUPS groups (``more`` counts groups named
        elsewhere in the request), the error saying "per ``per``"; each group name.
        """
        ctx = self._ctx
        ctx.check_client_id(client_id)
        if len(producer_groups) + len(consumer_groups) + more > _MAX_GROUPS:
            raise ProtocolError(f"at most {_MAX_GROUPS} groups per {per}")
        for group in (*producer_groups, *consumer_groups):
            ctx.check_group(group)

    def _check_consumer(self, data: ConsumerData) -> None:
        ctx = self._ctx
        ctx.check_group(data.group)
        if data.model not in _MODELS:
            raise ProtocolError(
                f"model must be 0 (CLUSTERING) or 1 (BROADCASTING), got {data.model}"
            )
        if len(data.subscriptions) > _MAX_SUBSCRIPTIONS:
            raise ProtocolError(f"at most {_MAX_SUBSCRIPTIONS} subscriptions per consumer")
        for sub in data.subscriptions:
            ctx.filters.get(sub.filter_type, sub.expression, exact_tags=True)

    def unregister(
        self, request: UnregisterClientRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """UNREGISTER_CLIENT: the client leaves the groups named (every group when none)."""
        b = request.body
        self._check_client_groups(b.client_id, b.producer_groups, b.consumer_groups, "request")
        self._ctx.consumers.unregister(b.client_id, b.producer_groups, b.consumer_groups)
        return _SUCCESS, _EMPTY, (), ""

    def consumer_list(
        self, request: GetConsumerListRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """GET_CONSUMER_LIST_BY_GROUP: the live members, sorted."""
        group = request.body.consumer_group
        self._ctx.check_group(group)
        return _SUCCESS, ConsumerListReply(client_ids=self._ctx.consumers.members(group)), (), ""

    def lock_batch(
        self, request: LockBatchRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """LOCK_BATCH_MQ: take or renew each lock that is free, expired or this client's."""
        ctx = self._ctx
        b = request.body
        group = b.consumer_group
        self._check_queues(b.queues)
        for queue in b.queues:
            ctx.check_read_queue(ctx.require_topic(queue.topic, group), queue.queue_id)
        ctx.check_group(group)
        ctx.check_client_id(b.client_id)
        locked = ctx.locks.lock_batch(group, b.client_id, ((q.topic, q.queue_id) for q in b.queues))
        for topic, queue_id in locked:
            ctx.push.close_exclusive(group, topic, queue_id, b.client_id)
        reply = LockBatchReply(locked=[QueueRef(topic=t, queue_id=q) for t, q in locked])
        return _SUCCESS, reply, (), ""

    def unlock_batch(
        self, request: UnlockBatchRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """UNLOCK_BATCH_MQ: give up the locks this client holds among the queues named."""
        ctx = self._ctx
        b = request.body
        self._check_queues(b.queues)
        ctx.check_group(b.consumer_group)
        ctx.check_client_id(b.client_id)
        ctx.locks.unlock_batch(
            b.consumer_group, b.client_id, ((q.topic, q.queue_id) for q in b.queues)
        )
        return _SUCCESS, _EMPTY, (), ""

    @staticmethod
    def _check_queues(queues: list[QueueRef]) -> None:
        if len(queues) > _MAX_LOCK_QUEUES:
            raise ProtocolError(f"at most {_MAX_LOCK_QUEUES} queues per request")
