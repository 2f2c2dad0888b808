"""CREATE_TOPIC, UPDATE_TOPIC, DELETE_TOPIC and LIST_TOPICS.

Each change is written to the topic table (atomically) before the reply, and triggers a
prompt re-registration with every NameServer, so routes follow within one round trip.
Deleting a topic also deletes its ConsumeQueues (``store.delete_topic``; the records
age out of the CommitLog), the committed offsets of every group for it and its queue
locks, answers its parked pulls and closes its push streams (``topic_deleted``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from loguru import logger

from fabric.protocol.codes import ResponseCode
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
        """UPDATE_TOPIC: replace the config; TOPIC_NOT_EXIST when it does not exist."""
        config = self._ctx.topics.update(request.body)
        self._ctx.on_topics_changed()
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
