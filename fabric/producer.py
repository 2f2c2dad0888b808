"""The blocking Producer (RocketMQ ``DefaultMQProducer``): sync, async, oneway and batch sends.

The send path itself, with its design notes, is fabric.sending; this module is the
front that applications use: it checks arguments, runs a ProducerCore on its own
IOThread (fabric.client.LoopRunner) and waits for outcomes. ``fabric.aio.Producer`` is
the same front for asyncio code.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any

from fabric.client import BlockingFront, ClientCore, LoopRunner, new_future
from fabric.direct import DirectRequester
from fabric.errors import InvalidNameError
from fabric.message import (
    DEFAULT_COMPRESS_LEVEL,
    DEFAULT_COMPRESS_THRESHOLD,
    Message,
    MessageQueue,
    SendResult,
)
from fabric.protocol.codes import ResponseCode
from fabric.protocol.frames import MAX_MESSAGE_BYTES
from fabric.protocol.names import check_group
from fabric.routing import DEFAULT_ROUTE_REFRESH, parse_nameservers
from fabric.selector import DEFAULT_FAILURE_ISOLATION
from fabric.sending import ProducerCore, ProducerOptions, SendCallback
from fabric.trace import open_tracer
from fabric.transport import DEFAULT_TIMEOUT

__all__ = ["Producer", "ProducerFront"]


class ProducerFront:
    """Arguments and checks shared by the blocking and the asyncio Producer."""

    def __init__(
        self,
        group: str,
        nameservers: str | Sequence[str],
        *,
        send_timeout: float = DEFAULT_TIMEOUT,
        retries: int = 2,
        compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD,
        compress_level: int = DEFAULT_COMPRESS_LEVEL,
        max_message_size: int = MAX_MESSAGE_BYTES,
        batch_max_messages: int = 256,
        batch_max_bytes: int = 1024 * 1024,
        max_in_flight: int = 10_000,
        fault_tolerance: bool = True,
        failure_isolation: float = DEFAULT_FAILURE_ISOLATION,
        route_refresh: float = DEFAULT_ROUTE_REFRESH,
        direct_send: bool = True,
        trace: bool = False,
    ) -> None:
        problem = check_group(group)
        if problem is not None:
            raise InvalidNameError(problem, code=ResponseCode.INVALID_GROUP_NAME, name=str(group))
        self.group = group
        self.nameservers = parse_nameservers(nameservers)
        self.options = ProducerOptions(
            send_timeout=send_timeout,
            retries=retries,
            compress_threshold=compress_threshold,
            compress_level=compress_level,
            max_message_size=max_message_size,
            batch_max_messages=batch_max_messages,
            batch_max_bytes=batch_max_bytes,
            max_in_flight=max_in_flight,
            fault_tolerance=fault_tolerance,
            failure_isolation=failure_isolation,
            route_refresh=route_refresh,
            direct_send=direct_send,
            trace=bool(trace),
        ).check()

    async def _make_core(self, context: Any) -> ProducerCore:
        client = ClientCore(
            context,
            self.nameservers,
            timeout=self.options.send_timeout,
            route_refresh=self.options.route_refresh,
        )
        client.start()
        core = ProducerCore(client, self.group, self.options)
        self._attach_tracer(core, context)
        return core

    def _attach_tracer(self, core: ProducerCore, context: Any) -> None:
        """Give ``core`` its tracer when ``trace`` is on (on the core's loop)."""
        if self.options.trace:
            core.tracer = open_tracer(
                context,
                self.nameservers,
                group=self.group,
                client_id=getattr(self, "client_id", None),
                timeout=self.options.send_timeout,
                route_refresh=self.options.route_refresh,
            )

    def _timeout(self, timeout: float | None) -> float:
        return self.options.send_timeout if timeout is None else timeout

    def __repr__(self) -> str:
        return f"<{type(self).__name__} group={self.group!r} nameservers={self.nameservers}>"


class Producer(ProducerFront, BlockingFront[ProducerCore]):
    """A blocking producer (RocketMQ ``DefaultMQProducer``); thread-safe.

    Args:
        group: the producer group.
        nameservers: ``"ep1;ep2"``, ``"ep1,ep2"`` or a list of NameServer endpoints.
        send_timeout: seconds a send may take, retries included.
        retries: extra attempts after a failed one (on another broker when possible).
        compress_threshold: bodies longer than this are zlib-compressed (negative: never).
        compress_level: the zlib level.
        max_message_size: largest body accepted, before compression.
        batch_max_messages: most messages in one coalesced request.
        batch_max_bytes: most bytes in one coalesced request.
        max_in_flight: most async sends on their way before ``send_async`` blocks.
        fault_tolerance: avoid brokers that recently failed or were slow.
        failure_isolation: seconds a failed broker is avoided.
        route_refresh: seconds between two route refreshes.
        direct_send: a blocking :meth:`send` talks to the broker on a socket of the
            calling thread (one per thread and broker, fabric.direct), which saves two
            thread hops per send; False sends through the I/O thread like the rest.

    Raises:
        InvalidNameError: a bad group name.
        ValueError: a bad option or no NameServer.

    Usage::

        with Producer("group", nameservers="tcp://127.0.0.1:9876") as p:
            result = p.send(Message("Topic", b"body"))

    Callbacks given to :meth:`send_async` run on the producer's I/O thread: they must
    not block (a blocking send from a callback raises RuntimeError).
    """

    _noun = "producer"
    _role = "producer"
    _thread_prefix = "fabric-producer"
    _direct: DirectRequester | None = None

    def start(self) -> Producer:
        """Start the I/O thread (connections are made on first use). Returns self."""
        super().start()
        if self.options.direct_send:
            self._direct = DirectRequester()
        return self

    def send(
        self,
        msg: Message,
        *,
        sharding_key: str | None = None,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
    ) -> SendResult:
        """Send and wait for the outcome (SPEC M2).

        Args:
            msg: the message.
            sharding_key: send to the queue of this key (per-key order, SPEC M6).
            queue: send to this queue.
            timeout: seconds, retries included (default ``send_timeout``).

        Returns:
            The SendResult; its status may be FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT or
            SLAVE_NOT_AVAILABLE: the message is stored, its durability not confirmed.

        Raises:
            FabricError: the last attempt's error (RequestTimeoutError, ServerBusyError,
                MessageIllegalError, ...), or a bad message found before sending.
        """
        core, runner = self._started()
        item = core.prepare(msg, key=sharding_key, queue=queue, timeout=timeout)
        return self._send_item(core, runner, item, timeout)

    def _send_item(
        self, core: ProducerCore, runner: LoopRunner, item: Any, timeout: float | None
    ) -> SendResult:
        """Send a prepared message and wait: direct first, else (or to retry) on the loop."""
        direct = self._direct
        if direct is not None and not runner.io.in_loop_thread():
            if core.tracer is None:
                result = core.send_direct(item, direct)
            else:
                result = core.send_direct_traced(item, direct)
            if result is not None:
                return result
        future: concurrent.futures.Future[SendResult] = new_future()
        item.sink = future
        core.wait_for_room(block=False)
        core.submit_threadsafe(item)
        return runner.wait(future, self._timeout(timeout))

    def send_async(
        self,
        msg: Message,
        callback: SendCallback | None = None,
        *,
        sharding_key: str | None = None,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
    ) -> concurrent.futures.Future[SendResult]:
        """Send without waiting (SPEC M3); the future resolves to the SendResult.

        ``callback(result_or_exception)`` runs on the I/O thread when the send is over.
        Blocks only while ``max_in_flight`` messages are on their way.
        """
        core, runner = self._started()
        future: concurrent.futures.Future[SendResult] = new_future()
        item = core.prepare(
            msg, sink=future, callback=callback, key=sharding_key, queue=queue, timeout=timeout
        )
        core.wait_for_room(block=not runner.io.in_loop_thread())
        core.submit_threadsafe(item)
        return future

    def send_oneway(
        self,
        msg: Message,
        *,
        sharding_key: str | None = None,
        queue: MessageQueue | None = None,
    ) -> None:
        """Send with no reply at all (SPEC M4): returns at once, and nothing says if it arrived."""
        core, runner = self._started()
        item = core.prepare(msg, key=sharding_key, queue=queue, oneway=True)
        core.wait_for_room(block=not runner.io.in_loop_thread())
        core.submit_threadsafe(item)

    def send_batch(
        self,
        msgs: Sequence[Message],
        *,
        sharding_key: str | None = None,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
    ) -> list[SendResult]:
        """Send messages of one topic in one request to one queue (SPEC M5).

        Returns:
            One SendResult per message, in order; each is stored as its own message.

        Raises:
            MessageIllegalError: no message, over MAX_BATCH_MESSAGES, or several topics.
            FabricError: as :meth:`send`.
        """
        core, runner = self._started()
        future: concurrent.futures.Future[list[SendResult]] = new_future()
        chunk = core.prepare_batch(
            msgs, sink=future, key=sharding_key, queue=queue, timeout=timeout
        )
        core.wait_for_room(len(chunk.items), block=False)
        core.submit_threadsafe(chunk)
        return runner.wait(future, self._timeout(timeout))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every send made so far is over; False if ``timeout`` passed first."""
        core, runner = self._started()
        limit = self._timeout(timeout)
        return runner.run(core.flush(limit), limit)

    def shutdown(self, timeout: float | None = None) -> None:
        """Let sends on their way finish (up to ``timeout``), then close. Idempotent."""
        core = self._core
        if core is None or self._runner is None:
            return
        limit = self._timeout(timeout)
        core.closing = True
        direct, self._direct = self._direct, None
        try:
            if direct is not None:
                direct.close(limit)
        finally:
            self._stop(lambda: core.close(limit), limit + 1.0)
