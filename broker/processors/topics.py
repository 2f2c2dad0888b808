"""CREATE_TOPIC, UPDATE_TOPIC, DELETE_TOPIC and LIST_TOPICS.

Each change is written to the topic table (atomically) before the reply, and triggers a
prompt re-registration with every NameServer, so routes follow within one round trip.
Deleting a topic also deletes its ConsumeQueues (``store.delete_topic``; the records
age out of the CommitLog), the committed offsets of every group for it and its queue
locks, answers its parked pulls and closes its push streams (``topic_deleted``).
Updating a topic closes the push streams it no longer allows (see ``update``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from loguru import logger

from fabric.protocol.codes import Perm, ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import (
    CreateTopicRequest,
    DeleteTopicRequest,
    Empty,
    ListTopicsRequest,
    TopicConfigList,
    UpdateTopicRequest,
)

from . import BrokerContext, Outcome

__all__ = ["TopicProcessor"]

_EMPTY: Final = Empty()
_SUCCESS: Final = ResponseCode.SUCCESS
_READ: Final = Perm.READ


class TopicProcessor:
    """Topic administration on one broker."""

    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx

    def create(
        self, request: CreateTopicRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """CREATE_TOPIC: TOPIC_ALREADY_EXISTS when it exists."""
        config = self._ctx.topics.create(request.body)
        self._ctx.on_topics_changed()
        return _SUCCESS, config, (), ""

    def update(
        self, request: UpdateTopicRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """UPDATE_TOPIC: replace the config; TOPIC_NOT_EXIST when it does not exist.

        Push streams the new config no longer allows are closed: all of the topic's when
        it lost its read permission (``topic_unreadable``), those on queues past the new
        ``read_queue_nums`` when it shrank (``queue_removed``). Their consumers' reopens
        are refused as CONSUME_OPEN refuses any such queue. When the readable queues or
        the read permission changed, the groups subscribed to the topic are notified
        once the NameServers were told (ConsumerManager.notify_topic).
        """
        ctx = self._ctx
        old = ctx.topics.get(request.body.topic)
        config = ctx.topics.update(request.body)
        topic = config.topic
        readable = config.perm & _READ
        if old is None or (
            old.read_queue_nums != config.read_queue_nums or old.perm & _READ != readable
        ):
            # Every group subscribed to the topic is told once the NameServers have the
            # new route, so that all its members rebalance on the same queues.
            ctx.on_topics_changed(then=lambda: ctx.consumers.notify_topic(topic))
        else:
            ctx.on_topics_changed()
        if not readable:
            closed = ctx.push.close_topic(topic, "topic_unreadable")
        else:
            closed = ctx.push.close_topic(topic, "queue_removed", from_queue=config.read_queue_nums)
        if closed:
            logger.info(
                "topic {}: closed {} push streams the update no longer allows", topic, closed
            )
        return _SUCCESS, config, (), ""

    def delete(
        self, request: DeleteTopicRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """DELETE_TOPIC: the topic, its queues and its committed offsets."""
        ctx = self._ctx
        topic = request.body.topic
        ctx.topics.delete(topic)
        queues = ctx.store.delete_topic(topic)
        # A checkpoint now, so that recovery after a crash never re-dispatches the
        # deleted topic's records into new ConsumeQueues (they are below cq_safe).
        ctx.store.checkpoint()
        groups = ctx.offsets.delete_topic(topic)
        if ctx.longpoll is not None:
            ctx.longpoll.release_topic(topic)
        ctx.push.close_topic(topic, "topic_deleted")
        ctx.locks.delete_topic(topic)
        logger.info(
            "topic {}: deleted {} queues and the offsets of {} groups", topic, queues, groups
        )
        ctx.on_topics_changed()
        return _SUCCESS, _EMPTY, (), ""

    def list(
        self, request: ListTopicsRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """LIST_TOPICS: every topic of this broker, sorted by name."""
        return _SUCCESS, TopicConfigList(topics=self._ctx.topics.list()), (), ""
