"""PushConsumer: the broker pushes a queue's messages to a listener; groups, rebalance, acks.

SPEC M10-M14, M18; docs/PROTOCOL.md section 13. RocketMQ's ``DefaultMQPushConsumer``:
the application subscribes topics with a tag or SQL filter and a listener, and the
consumer does the rest: it joins its group (heartbeats), takes its share of the queues
(rebalance: average or consistent hash; every queue in BROADCASTING), opens one stream
per queue with a window of ``prefetch`` messages, calls the listener for each message
and commits offsets as messages are done. Ordered consumption (``orderly=True``) hands a
queue's messages to the listener one at a time, in queue order, under a broker-side
lock.

:class:`PushConsumerFront` holds the arguments and subscriptions shared with
``fabric.aio.PushConsumer``; :class:`PushConsumer` is the blocking front, which runs the
core (fabric.consumer.push_core) on its own I/O thread and the listeners on a pool of
``consume_threads`` worker threads.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

from fabric.client import GRACE, BlockingFront, ClientCore
from fabric.consumer.listener import ConsumeStatus
from fabric.consumer.offset_store import LocalOffsetStore
from fabric.consumer.options import (
    DEFAULT_OFFSET_STORE_DIR,
    DEFAULT_PREFETCH,
    DEFAULT_PREFETCH_BYTES,
    DEFAULT_REBALANCE_INTERVAL,
    Position,
    PushConsumerOptions,
    parse_position,
)
from fabric.consumer.push_core import PushConsumerCore
from fabric.consumer.rebalance import DEFAULT_STRATEGY
from fabric.consumer.subscription import Subscription, make_subscription
from fabric.errors import InvalidNameError
from fabric.message import MessageExt, MessageQueue
from fabric.protocol.codes import (
    DEFAULT_CLIENT_HEARTBEAT_INTERVAL,
    DEFAULT_LOCK_EXPIRY,
    ConsumeFrom,
    MessageModel,
    ResponseCode,
)
from fabric.protocol.names import check_group
from fabric.routing import DEFAULT_ROUTE_REFRESH, parse_nameservers
from fabric.trace import open_tracer
from fabric.transport import DEFAULT_TIMEOUT

__all__ = ["ConsumeStatus", "PushConsumer", "PushConsumerFront", "new_client_id"]

#: The instance name BROADCASTING consumers use when given none (RocketMQ's "DEFAULT"):
#: a restarted consumer finds its offset file under it.
DEFAULT_INSTANCE_NAME: Final = "DEFAULT"
_instances = itertools.count()
_HOST: Final = socket.gethostname()[:200] or "localhost"


def new_client_id(instance_name: str = "") -> str:
    """A client id unique per process and consumer: ``host@pid@n`` (``@instance`` added)."""
    cid = f"{_HOST}@{os.getpid()}@{next(_instances)}"
    return f"{cid}@{instance_name}" if instance_name else cid


class PushConsumerFront:
    """Arguments, checks and subscriptions shared by the blocking and asyncio PushConsumer.

    Args: see :class:`PushConsumer`.
    """

    #: fabric.aio allows coroutine listeners.
    _allow_async = False

    def __init__(
        self,
        group: str,
        nameservers: str | Sequence[str],
        *,
        model: MessageModel = MessageModel.CLUSTERING,
        orderly: bool = False,
        prefetch: int = DEFAULT_PREFETCH,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
        consume_from: Position = ConsumeFrom.LAST_OFFSET,
        allocation: str = DEFAULT_STRATEGY,
        consume_threads: int = 8,
        reconsume_delay: float = 1.0,
        max_reconsume_times: int = -1,
        heartbeat_interval: float = DEFAULT_CLIENT_HEARTBEAT_INTERVAL,
        rebalance_interval: float = DEFAULT_REBALANCE_INTERVAL,
        lock_expiry: float = DEFAULT_LOCK_EXPIRY,
        release_timeout: float = 5.0,
        orderly_release_timeout: float = 60.0,
        shutdown_timeout: float = 10.0,
        offset_store_dir: str = DEFAULT_OFFSET_STORE_DIR,
        offset_persist_interval: float = 5.0,
        instance_name: str = "",
        request_timeout: float = DEFAULT_TIMEOUT,
        route_refresh: float = DEFAULT_ROUTE_REFRESH,
        verify_crc: bool = False,
        trace: bool = False,
    ) -> None:
        problem = check_group(group) if isinstance(group, str) else "the group must be a str"
        if problem is not None:
            raise InvalidNameError(problem, code=ResponseCode.INVALID_GROUP_NAME, name=str(group))
        start, timestamp = parse_position(consume_from)
        self.group = group
        self.nameservers = parse_nameservers(nameservers)
        self.options = PushConsumerOptions(
            model=MessageModel(model),
            orderly=bool(orderly),
            prefetch=prefetch,
            prefetch_bytes=prefetch_bytes,
            consume_threads=consume_threads,
            consume_from=start,
            consume_timestamp=timestamp,
            allocation=allocation,
            heartbeat_interval=heartbeat_interval,
            rebalance_interval=rebalance_interval,
            lock_expiry=lock_expiry,
            reconsume_delay=reconsume_delay,
            max_reconsume_times=max_reconsume_times,
            release_timeout=release_timeout,
            orderly_release_timeout=orderly_release_timeout,
            shutdown_timeout=shutdown_timeout,
            offset_store_dir=offset_store_dir,
            offset_persist_interval=offset_persist_interval,
            instance_name=instance_name,
            request_timeout=request_timeout,
            route_refresh=route_refresh,
            verify_crc=verify_crc,
            trace=bool(trace),
        ).check()
        self.client_id = new_client_id(instance_name)
        self._subscriptions: dict[str, Subscription] = {}

    def _subscription(
        self,
        topic: str,
        expression: str | None,
        listener: Callable[[MessageExt], Any] | None,
        sql: str | None,
    ) -> Subscription:
        return make_subscription(
            topic, expression, listener, sql=sql, allow_async=self._allow_async
        )

    def _offset_store(self) -> LocalOffsetStore | None:
        if not self.options.broadcasting:
            return None
        instance = self.options.instance_name or DEFAULT_INSTANCE_NAME
        return LocalOffsetStore(self.options.offset_store_dir, self.group, instance)

    async def _make_core(self, context: Any) -> PushConsumerCore:
        if not self._subscriptions:
            raise RuntimeError("subscribe to a topic before start()")
        options = self.options
        client = ClientCore(
            context,
            self.nameservers,
            timeout=options.request_timeout,
            route_refresh=options.route_refresh,
        )
        client.start()
        core = PushConsumerCore(
            client, self.group, self.client_id, options, self._subscriptions, self._offset_store()
        )
        if options.trace:
            core.tracer = open_tracer(
                context,
                self.nameservers,
                group=self.group,
                client_id=self.client_id,
                timeout=options.request_timeout,
                route_refresh=options.route_refresh,
            )
        return core

    def _close_timeout(self, timeout: float | None) -> float:
        """What closing may take: listeners, then the closing requests."""
        wait = self.options.shutdown_timeout if timeout is None else timeout
        return wait + 3 * self.options.request_timeout

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} group={self.group!r} client_id={self.client_id!r} "
            f"nameservers={self.nameservers}>"
        )


class PushConsumer(PushConsumerFront, BlockingFront[PushConsumerCore]):
    """A blocking push consumer (RocketMQ ``DefaultMQPushConsumer``); thread-safe.

    Args:
        group: the consumer group.
        nameservers: ``"ep1;ep2"``, ``"ep1,ep2"`` or a list of NameServer endpoints.
        model: CLUSTERING (each queue to one member; offsets on the broker) or
            BROADCASTING (every member gets every message; offsets in a local file).
        orderly: ordered consumption: one message of a queue at a time, in queue order,
            by one member, under a broker-side queue lock.
        prefetch: the window per queue in messages: how many the broker pushes before
            acks reopen it.
        prefetch_bytes: the window per queue in bytes.
        consume_from: where a group with no committed offset starts: ``"latest"``
            (default), ``"earliest"``, a timestamp in ms, an ISO time, a datetime, or a
            ConsumeFrom.
        allocation: ``"average"`` (default) or ``"consistent_hash"``.
        consume_threads: worker threads calling listeners.
        reconsume_delay: seconds before a message whose listener returned
            RECONSUME_LATER (or raised) is consumed again locally: in BROADCASTING and
            ordered mode, and in CLUSTERING when the send-back to the broker fails.
            CLUSTERING consumers send failed messages back to the broker, which delivers
            them again through the group's retry topic after a growing delay (10 s, 30 s,
            1 min, ...) and moves them to ``%DLQ%<group>`` after ``max_reconsume_times``.
        max_reconsume_times: deliveries a failing message gets before it becomes a dead
            letter; -1: the broker's default (16) in CLUSTERING, retry for ever in
            ordered mode (set it to send a message that keeps failing to the DLQ).
        heartbeat_interval: seconds between two heartbeats to each broker.
        rebalance_interval: seconds between two periodic rebalances.
        lock_expiry: seconds a queue lock lasts on the broker (ordered mode renews it
            every third of that).
        release_timeout: concurrent mode: seconds a queue handed over to another member
            waits for its listeners before it commits and closes.
        orderly_release_timeout: ordered mode: seconds a queue handed over waits for the
            message in its listener (order is kept while it does); past it the queue is
            handed over anyway, with a warning: the next owner may run the queue's
            next messages beside the stuck one, and consumes that one again.
        shutdown_timeout: seconds :meth:`shutdown` waits for listeners by default.
        offset_store_dir: BROADCASTING: the directory of the local offset files.
        offset_persist_interval: BROADCASTING: seconds between two writes of the file.
        instance_name: a stable name for this consumer (BROADCASTING: its offset file is
            ``<offset_store_dir>/<group>@<instance_name>.json``; default ``DEFAULT``).
        request_timeout: seconds a broker or NameServer gets to answer.
        route_refresh: seconds between two route refreshes.
        verify_crc: check each record's CRC32.
        trace: send trace events to ``%TRACE%`` (SPEC M21, fabric.trace): ``consume`` per
            message after its listener, ``retry`` per send-back, ``dlq`` when the
            send-back is known to make it a dead letter.

    Raises:
        InvalidNameError: a bad group name.
        ValueError: a bad option or no NameServer.

    Usage::

        def listener(msg: MessageExt) -> ConsumeStatus:
            print(msg.body)
            return ConsumeStatus.CONSUME_SUCCESS

        c = PushConsumer("group", nameservers="tcp://127.0.0.1:9876")
        c.subscribe("Topic", "TagA || TagB", listener)
        c.start()
        ...
        c.shutdown()
    """

    _noun = "consumer"
    _role = "push consumer"
    _thread_prefix = "fabric-push"

    def subscribe(
        self,
        topic: str,
        expression: str | None = None,
        listener: Callable[[MessageExt], ConsumeStatus] | None = None,
        *,
        sql: str | None = None,
    ) -> None:
        """Consume ``topic``'s messages matching a tag expression or ``sql`` with ``listener``.

        Args:
            topic: the topic.
            expression: a tag expression: ``"*"`` (default) or tags joined by ``||``.
            listener: ``listener(msg) -> ConsumeStatus``, called on a worker thread.
            sql: an SQL92 expression over the message's properties (and ``TAGS``).

        Raises:
            InvalidFilterError: the expression does not parse (the message says where).
            InvalidNameError: a bad topic name.
            TypeError: no listener, or a coroutine function (see fabric.aio).
        """
        sub = self._subscription(topic, expression, listener, sql)
        self._subscriptions[topic] = sub
        if self._runner is not None and self._core is not None:
            core = self._core

            async def add() -> None:
                core.subscribe(sub)

            self._runner.run(add(), self._start_timeout())

    def _start_timeout(self) -> float:
        return self.options.request_timeout * (len(self.nameservers) + 3)

    def start(self) -> PushConsumer:
        """Join the group, take this consumer's queues and start consuming. Returns self.

        Raises:
            RuntimeError: no subscription, or started already.
            InvalidFilterError: a broker refused a subscription.
        """
        super().start()
        core, runner = self._started()
        try:
            runner.run(core.start(), self._start_timeout())
        except BaseException:
            self.shutdown()
            raise
        return self

    def assignment(self) -> list[MessageQueue]:
        """The queues this consumer consumes now (streams open), sorted."""
        core, runner = self._started()

        async def read() -> list[MessageQueue]:
            return core.assignment()

        return runner.run(read(), self.options.request_timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking messages, let listeners finish (up to ``timeout`` seconds, default
        ``shutdown_timeout``), commit, close the streams, leave the group. Idempotent."""
        core = self._core
        if core is None or self._runner is None:
            return
        wait = self.options.shutdown_timeout if timeout is None else timeout
        try:
            self._stop(lambda: core.close(wait), self._close_timeout(timeout))
        finally:
            self._core = None
            for pool in core.dispatchers():
                pool.join(GRACE)
