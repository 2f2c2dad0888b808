"""The client API for asyncio: the same names as ``fabric``, awaitable (SPEC I3).

::

    from fabric import ConsumeStatus, Message
    from fabric.aio import Producer, PullConsumer, PushConsumer

    async with Producer("group", nameservers="tcp://127.0.0.1:9876") as p:
        result = await p.send(Message("Topic", b"body"))
        future = p.send_async(Message("Topic", b"more"))   # an asyncio.Future
        await p.send_oneway(Message("Topic", b"log line"))

    async with TransactionProducer("group", nameservers=ns, checker=check) as tp:
        result = await tp.send_in_transaction(Message("Topic", b"order"), execute, order)

    async def on_message(msg):             # a coroutine function: awaited on the loop
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer("group", nameservers="tcp://127.0.0.1:9876")
    consumer.subscribe("Topic", "*", on_message)
    await consumer.start()
    ...
    await consumer.shutdown()

These classes run their core (fabric.sending, fabric.consumer.pull,
fabric.consumer.push_core) on the running loop itself: no I/O thread and no thread hop.
The sockets belong to that loop (the rule of fabric.iothread), so a client is used on
the loop that started it, and ``send_async`` callbacks run on that loop and must not
block. A PushConsumer's listener may be a coroutine function (awaited on the loop, at
most ``consume_threads`` at a time) or a plain function (called on worker threads); so
may a TransactionProducer's local transaction and checker.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, TypeVar

import zmq.asyncio
from loguru import logger

from fabric.consumer.listener import AsyncListener, Listener
from fabric.consumer.pull import (
    DEFAULT_MAX_NUMS,
    DEFAULT_PULL_TIMEOUT,
    PullConsumerCore,
    PullConsumerFront,
)
from fabric.consumer.push import PushConsumerFront
from fabric.consumer.push_core import PushConsumerCore
from fabric.message import Message, MessageQueue, PullResult, SendResult
from fabric.producer import ProducerFront
from fabric.protocol.codes import SendStatus, TransactionState
from fabric.sending import ProducerCore, SendCallback
from fabric.transaction import (
    LocalTransaction,
    TransactionCore,
    TransactionFront,
    TransactionSendResult,
)

__all__ = ["Producer", "PullConsumer", "PushConsumer", "TransactionProducer"]

_CLOSE_TIMEOUT: Final = 5.0


def _check_loop(loop: asyncio.AbstractEventLoop) -> None:
    if asyncio.get_running_loop() is not loop:
        raise RuntimeError("a fabric.aio client is used on the loop that started it")


CoreT = TypeVar("CoreT")
_FrontT = TypeVar("_FrontT", bound="_AsyncFront[Any]")


class _AsyncFront(Generic[CoreT]):
    """The life of an asyncio client on the caller's loop: start (build the core with its
    own zmq context), stop (close the core, destroy the context), async context manager.

    Subclasses set ``_noun`` (in errors) and ``_role`` (in log lines) and provide
    ``group``, ``nameservers``, ``_make_core`` and ``shutdown``.
    """

    _noun: ClassVar[str] = "client"
    _role: ClassVar[str] = "client"
    _core: CoreT | None = None
    _context: zmq.asyncio.Context | None = None
    group: str
    nameservers: list[str]

    async def _make_core(self, context: zmq.asyncio.Context) -> CoreT:
        raise NotImplementedError

    async def shutdown(self) -> None:
        raise NotImplementedError

    async def start(self: _FrontT) -> _FrontT:
        """Start on the running loop (connections are made on first use). Returns self."""
        if self._core is not None:
            raise RuntimeError(f"the {self._noun} is already started")
        context = zmq.asyncio.Context()
        try:
            self._core = await self._make_core(context)
        except BaseException:
            context.destroy(linger=0)
            raise
        self._context = context
        logger.info("{} {} started (nameservers {})", self._role, self.group, self.nameservers)
        return self

    async def _stop(self, close: Callable[[CoreT], Awaitable[object]]) -> None:
        """Close the core with ``close`` and destroy the context (every shutdown's tail)."""
        core, context = self._core, self._context
        if core is None:
            return
        self._core = self._context = None
        try:
            await close(core)
        finally:
            if context is not None:
                context.destroy(linger=0)
            logger.info("{} {} shut down", self._role, self.group)

    async def __aenter__(self: _FrontT) -> _FrontT:
        return self if self._core is not None else await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


class Producer(ProducerFront, _AsyncFront[ProducerCore]):
    """An asyncio producer; arguments as ``fabric.Producer``.

    Usage::

        async with Producer("group", nameservers="tcp://127.0.0.1:9876") as p:
            result = await p.send(Message("Topic", b"body"))
    """

    _noun = "producer"
    _role = "producer"

    def _started(self) -> ProducerCore:
        core = self._core
        if core is None:
            raise RuntimeError("the producer is not started")
        _check_loop(core.loop)
        return core

    async def send(
        self,
        msg: Message,
        *,
        sharding_key: str | None = None,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
    ) -> SendResult:
        """Send and wait for the outcome; as ``fabric.Producer.send``."""
        return await self.send_async(msg, sharding_key=sharding_key, queue=queue, timeout=timeout)

    def send_async(
        self,
        msg: Message,
        callback: SendCallback | None = None,
        *,
        sharding_key: str | None = None,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
    ) -> asyncio.Future[SendResult]:
        """Send without waiting; the future resolves to the SendResult.

        ``callback(result_or_exception)`` runs on the loop when the send is over. No
        backpressure here: the caller's loop decides how much it keeps in flight.
        """
        core = self._started()
        future: asyncio.Future[SendResult] = core.loop.create_future()
        item = core.prepare(
            msg, sink=future, callback=callback, key=sharding_key, queue=queue, timeout=timeout
        )
        core.wait_for_room(block=False)
        core.submit(item)
        return future

    async def send_oneway(
        self,
        msg: Message,
        *,
        sharding_key: str | None = None,
        queue: MessageQueue | None = None,
    ) -> None:
        """Send with no reply at all; returns at once."""
        core = self._started()
        item = core.prepare(msg, key=sharding_key, queue=queue, oneway=True)
        core.wait_for_room(block=False)
        core.submit(item)

    async def send_batch(
        self,
        msgs: Sequence[Message],
        *,
        sharding_key: str | None = None,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
    ) -> list[SendResult]:
        """Messages of one topic in one request to one queue; one SendResult each."""
        core = self._started()
        future: asyncio.Future[list[SendResult]] = core.loop.create_future()
        chunk = core.prepare_batch(
            msgs, sink=future, key=sharding_key, queue=queue, timeout=timeout
        )
        core.wait_for_room(len(chunk.items), block=False)
        core.submit(chunk)
        return await future

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every send made so far is over; False if ``timeout`` passed first."""
        core = self._started()
        return await core.flush(self._timeout(timeout))

    async def shutdown(self, timeout: float | None = None) -> None:
        """Let sends on their way finish (up to ``timeout``), then close. Idempotent."""
        limit = self._timeout(timeout)
        await self._stop(lambda core: core.close(limit))


class TransactionProducer(TransactionFront, Producer):
    """An asyncio producer of transactional messages; arguments as
    ``fabric.TransactionProducer``, ``send_in_transaction`` awaitable.

    ``execute`` and ``checker`` may be coroutine functions (awaited on the loop) or plain
    functions (called on worker threads, so that the loop keeps serving heartbeats).

    Usage::

        async def execute(msg, arg):
            await db.insert(arg)
            return TransactionState.COMMIT

        async with TransactionProducer("group", nameservers=ns, checker=check) as tp:
            result = await tp.send_in_transaction(Message("Orders", b"..."), execute, order)
    """

    _noun = "producer"
    _role = "transaction producer"
    _allow_async = True

    async def send_in_transaction(
        self,
        msg: Message,
        execute: LocalTransaction,
        arg: Any = None,
        *,
        timeout: float | None = None,
    ) -> TransactionSendResult:
        """Send ``msg`` as a half message, run ``execute(msg, arg)``, commit or roll back;
        as ``fabric.TransactionProducer.send_in_transaction``."""
        self._check_execute(execute)
        core = self._started()
        assert isinstance(core, TransactionCore)
        future: asyncio.Future[SendResult] = core.loop.create_future()
        item = core.prepare(msg, sink=future, timeout=timeout, transactional=True)
        core.wait_for_room(block=False)
        core.submit(item)
        half = await future
        if half.status is SendStatus.SEND_OK:
            named = self._with_id(msg, half)
            try:
                if inspect.iscoroutinefunction(execute):
                    value = await execute(named, arg)
                else:
                    value = await asyncio.to_thread(execute, named, arg)
                    if inspect.isawaitable(value):
                        value = await value
                state = self._state_after(value)
            except Exception as exc:
                state = self._failed(exc, half)
        else:  # stored, durability unknown: RocketMQ rolls back
            state = TransactionState.ROLLBACK
        await core.end_transaction(half, state, self._timeout(timeout))
        return self._result(half, state)


class PullConsumer(PullConsumerFront, _AsyncFront[PullConsumerCore]):
    """An asyncio pull consumer; arguments and methods as ``fabric.PullConsumer``, awaitable."""

    _noun = "consumer"
    _role = "pull consumer"

    def _started(self) -> PullConsumerCore:
        core = self._core
        if core is None:
            raise RuntimeError("the consumer is not started")
        _check_loop(core.client.loop)
        return core

    async def queues(self, topic: str) -> list[MessageQueue]:
        """The readable queues of ``topic``, asked of the NameServers now."""
        return await self._started().queues(topic)

    async def pull(
        self,
        mq: MessageQueue,
        offset: int,
        max_nums: int = DEFAULT_MAX_NUMS,
        timeout: float = DEFAULT_PULL_TIMEOUT,
        *,
        subscription: str = "*",
        max_bytes: int = 0,
    ) -> PullResult:
        """Read up to ``max_nums`` messages of ``mq`` from ``offset`` (long polling)."""
        return await self._started().pull(
            mq,
            offset,
            max_nums=max_nums,
            timeout=timeout,
            subscription=subscription,
            max_bytes=max_bytes,
        )

    async def commit(self, mq: MessageQueue, offset: int) -> None:
        """Commit the group's offset of ``mq`` (the next offset to consume)."""
        await self._started().commit(mq, offset)

    async def committed(self, mq: MessageQueue) -> int:
        """The group's committed offset of ``mq``; -1 when it never committed one."""
        return await self._started().committed(mq)

    async def min_offset(self, mq: MessageQueue) -> int:
        """The first offset of ``mq`` still stored."""
        return await self._started().min_offset(mq)

    async def max_offset(self, mq: MessageQueue) -> int:
        """One past the last offset of ``mq``."""
        return await self._started().max_offset(mq)

    async def offset_for_timestamp(self, mq: MessageQueue, timestamp_ms: int) -> int:
        """The first offset of ``mq`` stored at or after ``timestamp_ms``."""
        return await self._started().offset_for_timestamp(mq, timestamp_ms)

    async def shutdown(self) -> None:
        """Close the connections. Idempotent."""
        await self._stop(lambda core: asyncio.wait_for(core.close(), _CLOSE_TIMEOUT))


class PushConsumer(PushConsumerFront, _AsyncFront[PushConsumerCore]):
    """An asyncio push consumer; arguments as ``fabric.PushConsumer``, start and shutdown
    awaitable. A listener may be a coroutine function (awaited on the loop) or a plain
    function (called on worker threads)."""

    _noun = "consumer"
    _role = "push consumer"
    _allow_async = True

    def _started(self) -> PushConsumerCore:
        core = self._core
        if core is None:
            raise RuntimeError("the consumer is not started")
        _check_loop(core.loop)
        return core

    def subscribe(
        self,
        topic: str,
        expression: str | None = None,
        listener: Listener | AsyncListener | None = None,
        *,
        sql: str | None = None,
    ) -> None:
        """As ``fabric.PushConsumer.subscribe``; the listener may be a coroutine function.

        Subscribing after :meth:`start` takes effect at the next rebalance.
        """
        sub = self._subscription(topic, expression, listener, sql)
        self._subscriptions[topic] = sub
        core = self._core
        if core is not None:
            _check_loop(core.loop)
            core.subscribe(sub)

    async def start(self) -> PushConsumer:
        """Join the group, take this consumer's queues and start consuming. Returns self."""
        await super().start()
        core = self._started()
        try:
            await core.start()
        except BaseException:
            await self.shutdown()
            raise
        return self

    def assignment(self) -> list[MessageQueue]:
        """The queues this consumer consumes now (streams open), sorted."""
        return self._started().assignment()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Let listeners finish (up to ``timeout``, default ``shutdown_timeout``), commit,
        close the streams and leave the group. Idempotent."""
        core = self._core
        if core is None:
            return
        wait = self.options.shutdown_timeout if timeout is None else timeout
        limit = self._close_timeout(timeout)
        await self._stop(lambda c: asyncio.wait_for(c.close(wait), limit))
        for pool in core.dispatchers():
            await asyncio.to_thread(pool.join, _CLOSE_TIMEOUT)
