"""PullConsumer: the application pulls from a queue at an offset and commits offsets itself.

SPEC M9, M13 (client side). RocketMQ's ``DefaultMQPullConsumer``: list a topic's queues,
pull a queue from an offset (with long polling: the broker holds a pull on an empty
queue until a message arrives or the timeout passes), and commit the group's offset of
a queue to the broker, where it persists. Which consumer reads which queue is the
application's business here; the push consumer (a later issue) rebalances.

:class:`PullConsumerCore` does the work on one loop; :class:`PullConsumer` is the
blocking front (``fabric.aio.PullConsumer`` the asyncio one). Pulls go to the master
of the queue's broker name, or to its lowest live slave while there is no master.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from fabric.client import BlockingFront, ClientCore
from fabric.errors import (
    InvalidNameError,
    MessageIllegalError,
    OffsetNotFoundError,
    ProtocolError,
    TransportError,
    from_response,
)
from fabric.message import MessageExt, MessageQueue, PullResult
from fabric.protocol.codes import PullStatus, RequestCode, ResponseCode, pull_status_for
from fabric.protocol.frames import FrameError
from fabric.protocol.messages import (
    CommitConsumerOffsetBody,
    Empty,
    OffsetReply,
    PullMessageBody,
    PullReply,
    QueryConsumerOffsetBody,
    QueueOffsetBody,
    SearchOffsetBody,
)
from fabric.protocol.names import check_group
from fabric.protocol.records import RecordError
from fabric.routing import DEFAULT_ROUTE_REFRESH, parse_nameservers
from fabric.transport import DEFAULT_TIMEOUT

__all__ = ["DEFAULT_PULL_TIMEOUT", "PullConsumer", "PullConsumerCore", "PullConsumerFront"]

#: Seconds a pull on an empty queue waits for a message (long polling) unless told.
DEFAULT_PULL_TIMEOUT: Final = 5.0
#: Most messages one pull returns unless told (RocketMQ ``pullBatchSize`` is 32 for pulls).
DEFAULT_MAX_NUMS: Final = 32
_FOUND: Final = PullStatus.FOUND


def _check_queue(mq: MessageQueue) -> None:
    if not isinstance(mq, MessageQueue):
        raise TypeError(f"expected a MessageQueue, got {type(mq).__name__}")


class PullConsumerCore:
    """The pull consumer's work on one loop (create it there).

    Args:
        client: routes and broker connections on this loop.
        group: the consumer group (offsets are committed under it).
        request_timeout: seconds a broker gets to answer, on top of a pull's long poll.
        verify_crc: check each record's CRC32 (the broker checked it when storing).
    """

    def __init__(
        self,
        client: ClientCore,
        group: str,
        *,
        request_timeout: float = DEFAULT_TIMEOUT,
        verify_crc: bool = False,
    ) -> None:
        self.client = client
        self.group = group
        self.routes = client.routes
        self.request_timeout = request_timeout
        self.verify_crc = verify_crc

    async def queues(self, topic: str) -> list[MessageQueue]:
        """The readable queues of ``topic``, asked of the NameServers now.

        Raises:
            NoRouteError: no NameServer knows the topic.
        """
        route = await self.routes.fetch(topic)
        return list(route.read_queues)

    async def _call(
        self, mq: MessageQueue, code: RequestCode, body: msgspec.Struct, reply_type: type[Any]
    ) -> Any:
        address = await self.routes.broker_address(mq.topic, mq.broker_name, master=True)
        try:
            return await self.client.connection(address).call(code, body, reply_type)
        except TransportError:
            self.routes.refresh_soon(mq.topic)
            raise

    async def pull(
        self,
        mq: MessageQueue,
        offset: int,
        *,
        max_nums: int = DEFAULT_MAX_NUMS,
        timeout: float = DEFAULT_PULL_TIMEOUT,
        subscription: str = "*",
        max_bytes: int = 0,
    ) -> PullResult:
        """Read up to ``max_nums`` messages of ``mq`` from ``offset`` (see PullConsumer.pull)."""
        _check_queue(mq)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if max_nums < 1:
            raise ValueError(f"max_nums must be >= 1, got {max_nums}")
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        address = await self.routes.broker_address(mq.topic, mq.broker_name, master=False)
        body = PullMessageBody(
            consumer_group=self.group,
            topic=mq.topic,
            queue_id=mq.queue_id,
            queue_offset=offset,
            max_msgs=max_nums,
            max_bytes=max_bytes,
            suspend_timeout_ms=round(timeout * 1000),
            subscription=subscription,
        )
        conn = self.client.connection(address)
        try:
            reply = await conn.request(
                RequestCode.PULL_MESSAGE, body, timeout=timeout + self.request_timeout
            )
        except TransportError:
            self.routes.refresh_soon(mq.topic)
            raise
        status = pull_status_for(reply.code)
        if status is None:
            raise from_response(reply.code, reply.remark, address=address)
        try:
            outcome = reply.decode(PullReply)
        except FrameError as exc:
            raise ProtocolError(f"bad pull reply: {exc.remark}", address=address) from None
        messages: list[MessageExt] = []
        if status is _FOUND:
            broker = mq.broker_name
            verify = self.verify_crc
            try:
                messages = [MessageExt.decode(frame, broker, verify) for frame in reply.frames]
            except RecordError as exc:
                raise ProtocolError(f"bad record in a pull reply: {exc}", address=address) from None
            except MessageIllegalError as exc:
                exc.address = address
                raise
        return PullResult(
            status, outcome.next_offset, outcome.min_offset, outcome.max_offset, messages
        )

    async def commit(self, mq: MessageQueue, offset: int) -> None:
        """Store the group's offset of ``mq`` (the next offset to consume) on its broker."""
        _check_queue(mq)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        body = CommitConsumerOffsetBody(
            consumer_group=self.group, topic=mq.topic, queue_id=mq.queue_id, offset=offset
        )
        await self._call(mq, RequestCode.COMMIT_CONSUMER_OFFSET, body, Empty)

    async def committed(self, mq: MessageQueue) -> int:
        """The group's committed offset of ``mq``, or -1 when it never committed one."""
        _check_queue(mq)
        body = QueryConsumerOffsetBody(
            consumer_group=self.group, topic=mq.topic, queue_id=mq.queue_id
        )
        try:
            reply: OffsetReply = await self._call(
                mq, RequestCode.QUERY_CONSUMER_OFFSET, body, OffsetReply
            )
        except OffsetNotFoundError:
            return -1
        return reply.offset

    async def min_offset(self, mq: MessageQueue) -> int:
        """The offset of the first message of ``mq`` still stored."""
        _check_queue(mq)
        body = QueueOffsetBody(topic=mq.topic, queue_id=mq.queue_id)
        reply: OffsetReply = await self._call(mq, RequestCode.GET_MIN_OFFSET, body, OffsetReply)
        return reply.offset

    async def max_offset(self, mq: MessageQueue) -> int:
        """One past the offset of the last message of ``mq``."""
        _check_queue(mq)
        body = QueueOffsetBody(topic=mq.topic, queue_id=mq.queue_id)
        reply: OffsetReply = await self._call(mq, RequestCode.GET_MAX_OFFSET, body, OffsetReply)
        return reply.offset

    async def offset_for_timestamp(self, mq: MessageQueue, timestamp_ms: int) -> int:
        """The first offset of ``mq`` stored at or after ``timestamp_ms`` (ms since the epoch)."""
        _check_queue(mq)
        body = SearchOffsetBody(topic=mq.topic, queue_id=mq.queue_id, timestamp=timestamp_ms)
        reply: OffsetReply = await self._call(
            mq, RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, body, OffsetReply
        )
        return reply.offset

    async def close(self) -> None:
        """Close the connections."""
        await self.client.close()


class PullConsumerFront:
    """Arguments and checks shared by the blocking and the asyncio PullConsumer."""

    def __init__(
        self,
        group: str,
        nameservers: str | Sequence[str],
        *,
        request_timeout: float = DEFAULT_TIMEOUT,
        route_refresh: float = DEFAULT_ROUTE_REFRESH,
        verify_crc: bool = False,
    ) -> None:
        problem = check_group(group)
        if problem is not None:
            raise InvalidNameError(problem, code=ResponseCode.INVALID_GROUP_NAME, name=str(group))
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be > 0, got {request_timeout}")
        self.group = group
        self.nameservers = parse_nameservers(nameservers)
        self.request_timeout = request_timeout
        self.route_refresh = route_refresh
        self.verify_crc = verify_crc

    async def _make_core(self, context: Any) -> PullConsumerCore:
        client = ClientCore(
            context,
            self.nameservers,
            timeout=self.request_timeout,
            route_refresh=self.route_refresh,
        )
        client.start()
        return PullConsumerCore(
            client, self.group, request_timeout=self.request_timeout, verify_crc=self.verify_crc
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} group={self.group!r} nameservers={self.nameservers}>"


class PullConsumer(PullConsumerFront, BlockingFront[PullConsumerCore]):
    """A blocking pull consumer (RocketMQ ``DefaultMQPullConsumer``); thread-safe.

    Args:
        group: the consumer group.
        nameservers: ``"ep1;ep2"``, ``"ep1,ep2"`` or a list of NameServer endpoints.
        request_timeout: seconds a broker or NameServer gets to answer (a pull's long
            poll comes on top).
        route_refresh: seconds between two route refreshes.
        verify_crc: check each record's CRC32.

    Usage::

        with PullConsumer("group", nameservers="tcp://127.0.0.1:9876") as c:
            for mq in c.queues("Topic"):
                res = c.pull(mq, c.committed(mq) if c.committed(mq) >= 0 else 0)
                ...
                c.commit(mq, res.next_offset)
    """

    _noun = "consumer"
    _role = "pull consumer"
    _thread_prefix = "fabric-consumer"

    def _wait(self) -> float:
        # Route lookups may try each NameServer before the broker is asked.
        return self.request_timeout * (len(self.nameservers) + 1)

    def queues(self, topic: str) -> list[MessageQueue]:
        """The readable queues of ``topic``, asked of the NameServers now.

        Raises:
            NoRouteError: no NameServer knows the topic.
            InvalidNameError: a bad topic name.
        """
        core, runner = self._started()
        return runner.run(core.queues(topic), self._wait())

    def pull(
        self,
        mq: MessageQueue,
        offset: int,
        max_nums: int = DEFAULT_MAX_NUMS,
        timeout: float = DEFAULT_PULL_TIMEOUT,
        *,
        subscription: str = "*",
        max_bytes: int = 0,
    ) -> PullResult:
        """Read up to ``max_nums`` messages of ``mq`` from ``offset``.

        Args:
            mq: the queue.
            offset: the first offset to read.
            max_nums: at most this many messages.
            timeout: long polling: when nothing is there yet, the broker holds the pull
                up to this many seconds and answers as soon as a message arrives; 0
                answers at once.
            subscription: tag filter, ``"*"`` or tags joined by ``" || "``.
            max_bytes: stop once the records reach this many bytes (0: broker default).

        Returns:
            A PullResult: FOUND with messages; NO_NEW_MSG (nothing in time);
            NO_MATCHED_MSG (nothing matched the filter: pull again from next_offset);
            OFFSET_ILLEGAL (offset out of range: continue at next_offset).

        Raises:
            FabricError: an error reply, or no reply (TransportError).
        """
        core, runner = self._started()
        coro = core.pull(
            mq,
            offset,
            max_nums=max_nums,
            timeout=timeout,
            subscription=subscription,
            max_bytes=max_bytes,
        )
        return runner.run(coro, timeout + self._wait())

    def commit(self, mq: MessageQueue, offset: int) -> None:
        """Commit the group's offset of ``mq``: the next offset to consume (persisted)."""
        core, runner = self._started()
        runner.run(core.commit(mq, offset), self._wait())

    def committed(self, mq: MessageQueue) -> int:
        """The group's committed offset of ``mq``; -1 when it never committed one."""
        core, runner = self._started()
        return runner.run(core.committed(mq), self._wait())

    def min_offset(self, mq: MessageQueue) -> int:
        """The first offset of ``mq`` still stored."""
        core, runner = self._started()
        return runner.run(core.min_offset(mq), self._wait())

    def max_offset(self, mq: MessageQueue) -> int:
        """One past the last offset of ``mq``."""
        core, runner = self._started()
        return runner.run(core.max_offset(mq), self._wait())

    def offset_for_timestamp(self, mq: MessageQueue, timestamp_ms: int) -> int:
        """The first offset of ``mq`` stored at or after ``timestamp_ms``."""
        core, runner = self._started()
        return runner.run(core.offset_for_timestamp(mq, timestamp_ms), self._wait())

    def shutdown(self) -> None:
        """Close the connections and stop the I/O thread. Idempotent."""
        core = self._core
        if core is None:
            return
        self._stop(core.close, self.request_timeout)
