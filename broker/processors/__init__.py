"""Request processors: one request family per module, no sockets (RocketMQ's ``*Processor``).

A handler takes the parsed request envelope, its body frames and the peer's routing id,
and returns an :data:`Outcome` (the server encodes and sends it) or None: the request
is answered later through :class:`Replier` (a parked pull, a send waiting for its
SYNC_FLUSH), or never (ONEWAY). Errors are raised as ``fabric.errors.FabricError``
subclasses; the server maps them to a reply with ``fabric.errors.to_response``.

Everything runs on the broker's loop. :class:`BrokerContext` carries what the processors
share: the config, the store, the topic table, the committed offsets, the replier, the
arrival notices (broker.arrivals), the compiled filters (broker.reading), the queue locks
(broker.locks), the push streams (broker.push), the consumer groups (broker.consumers)
and the long-poll table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from broker.arrivals import Arrivals
from broker.config import BrokerConfig
from broker.consumers import ConsumerManager
from broker.locks import QueueLockTable
from broker.longpoll import LongPoll
from broker.offsets import ConsumerOffsets
from broker.push import Pusher, PushService
from broker.reading import FilterCache
from broker.store import MessageStore
from broker.topics import TopicTable, check_topic_name
from fabric.errors import InvalidNameError, ProtocolError, TopicNotExistError
from fabric.protocol.codes import ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import TopicConfig
from fabric.protocol.names import check_group

if TYPE_CHECKING:
    from broker.timers import TimerService

__all__ = [
    "BrokerContext",
    "Handler",
    "Outcome",
    "Replier",
    "TopicsChanged",
]

#: (response code, reply body or None for ``{}``, extra frames, remark).
Outcome = tuple[ResponseCode, msgspec.Struct | None, Sequence[Buffer], str]
#: handler(request envelope, body frames, peer routing id) -> Outcome, or None: answered later.
Handler = Callable[[Any, Sequence[Buffer], bytes], Outcome | None]

_GROUP_CACHE_LIMIT = 4096
_MAX_CLIENT_ID = 255


class Replier(Protocol):
    """Sends a reply later, from the loop (implemented by the server, which owns the socket)."""

    def reply(
        self,
        identity: bytes,
        request: Any,
        code: ResponseCode,
        body: msgspec.Struct | None = None,
        frames: Sequence[Buffer] = (),
        remark: str = "",
    ) -> None:
        """Answer ``request`` (nothing when it is ONEWAY) to the peer ``identity``."""
        ...


class TopicsChanged(Protocol):
    """Tells the NameServers that the topics changed (the registry's ``poke``)."""

    def __call__(self, then: Callable[[], None] | None = None) -> None:
        """Register again soon; ``then`` runs on the loop once that is done."""
        ...


class BrokerContext:
    """What the processors of one broker share.

    Args:
        config: the broker's configuration.
        store: the open MessageStore.
        topics: the topic table.
        offsets: the committed consumer offsets.
        replier: sends deferred replies.
        pusher: sends pushes (PUSH_MESSAGES, STREAM_CLOSED, NOTIFY_CONSUMER_IDS_CHANGED).
        loop: the broker's loop.
        broker_name: the name SendReply carries.
        msg_id_prefix: hex prefix of the offset message ids (store host and port).
        on_topics_changed: called after a topic is created, updated or deleted; its
            optional ``then`` runs once the NameServers were told (broker.registry).
    """

    def __init__(
        self,
        *,
        config: BrokerConfig,
        store: MessageStore,
        topics: TopicTable,
        offsets: ConsumerOffsets,
        replier: Replier,
        pusher: Pusher,
        loop: asyncio.AbstractEventLoop,
        broker_name: str,
        msg_id_prefix: str,
        on_topics_changed: TopicsChanged,
    ) -> None:
        self.config = config
        self.store = store
        self.topics = topics
        self.offsets = offsets
        self.replier = replier
        self.loop = loop
        self.broker_name = broker_name
        self.msg_id_prefix = msg_id_prefix
        self.on_topics_changed = on_topics_changed
        #: The send processor notifies it after each append; parked pulls and push
        #: streams wait on it.
        self.arrivals = Arrivals(loop)
        #: Compiled subscriptions (pull, push, heartbeat).
        self.filters = FilterCache()
        self.locks = QueueLockTable(config.lock_expiry, loop.time)
        self.consumers = ConsumerManager(
            loop, pusher, expiry=config.client_expiry, on_leave=self._client_left
        )
        self.push = PushService(
            loop,
            store,
            offsets,
            self.locks,
            self.arrivals,
            pusher,
            max_msgs=config.pull_max_msgs,
            max_bytes=config.pull_default_bytes,
            max_streams=config.max_push_streams,
            client_identity=self.consumers.identity,
        )
        #: Set by the pull processor (it owns the parked pulls).
        self.longpoll: LongPoll | None = None
        #: Timed and delayed messages (broker.timers); set by the server before the
        #: processors are built. Broker-made timed sends use ``timers.schedule``.
        self.timers: TimerService | None = None
        self._good_groups: set[str] = set()

    def _client_left(self, client_id: str, groups: frozenset[str] | None) -> None:
        """A client expired or unregistered: close its streams, free its locks (13.2)."""
        self.push.close_client(client_id, groups, "client_expired")
        self.locks.release_client(client_id, groups)

    def close(self) -> None:
        """Shutdown: close every push stream (STREAM_CLOSED ``shutdown``), stop the timers."""
        self.push.shutdown()
        self.consumers.close()

    def check_group(self, group: str) -> None:
        """Raise InvalidNameError (INVALID_GROUP_NAME) for a bad group name (cached)."""
        if group in self._good_groups:
            return
        problem = check_group(group)
        if problem is not None:
            raise InvalidNameError(problem, code=ResponseCode.INVALID_GROUP_NAME, name=group)
        if len(self._good_groups) < _GROUP_CACHE_LIMIT:
            self._good_groups.add(group)

    def require_topic(self, topic: str, group: str | None = None) -> TopicConfig:
        """The config of an existing topic, checking in the order of PROTOCOL.md 7.0.

        INVALID_TOPIC_NAME, then INVALID_GROUP_NAME (when ``group`` is given), then
        TOPIC_NOT_EXIST.
        """
        config = self.topics.get(topic)
        if config is None:
            check_topic_name(topic)
        if group is not None:
            self.check_group(group)
        if config is None:
            raise TopicNotExistError(f"topic {topic} does not exist on {self.broker_name}")
        return config

    def check_client_id(self, client_id: str) -> None:
        """Raise ProtocolError (MALFORMED_REQUEST) unless ``client_id`` has 1..255 characters."""
        if not 0 < len(client_id) <= _MAX_CLIENT_ID:
            raise ProtocolError(f"client_id must have 1..{_MAX_CLIENT_ID} characters")

    def check_read_queue(self, config: TopicConfig, queue_id: int) -> None:
        """Raise ProtocolError (MALFORMED_REQUEST) unless 0 <= queue_id < read_queue_nums."""
        if not 0 <= queue_id < config.read_queue_nums:
            raise ProtocolError(
                f"queue_id {queue_id} is outside 0..{config.read_queue_nums - 1} "
                f"(read queues of topic {config.topic})"
            )
