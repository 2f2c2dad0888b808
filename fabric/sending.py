"""The producer's send path on its loop: prepare, hand over, coalesce, send, retry, resolve.

SPEC M2-M8, C6. A :class:`ProducerCore` lives on one asyncio loop and owns the send
path; ``fabric.Producer`` is the blocking front that runs a core on its own IOThread,
``fabric.aio.Producer`` runs one on the caller's loop.

The send path, and why it looks like this (issue 3 sets 100,000 async sends/s from one
producer and a sync send close to a raw round trip):

1. **Prepare, in the caller's thread.** :meth:`ProducerCore.prepare` validates the
   message (topic name cached per topic, sizes checked before anything is written),
   gives it a unique id (SPEC M7; retries reuse it), compresses a body over the
   threshold (SPEC M8) and builds its wire entry. That CPU work never runs on the loop.
2. **One hop per burst.** The prepared send goes into a ``collections.deque``, and the
   loop is woken with ``call_soon_threadsafe`` only when no wake-up is pending already:
   a thread sending in a tight loop wakes the loop once per batch, not once per message.
   No coroutine, task or asyncio future is created per message.
3. **Coalesce what is waiting.** The loop drains the deque, groups the sends by topic
   (and queue, for sharding keys) and packs each group into SEND_BATCH_MESSAGE requests
   (up to ``batch_max_messages`` and ``batch_max_bytes``); a lone send goes as
   SEND_MESSAGE. Round robin picks one queue per request. Batching is never a wait:
   only what is already waiting is packed, so a single sync send leaves at once.
4. **Callbacks, not coroutines.** Each request is sent with
   :meth:`fabric.transport.Connection.request_callback`; its reply is fanned out to
   the futures of the messages it carried.
5. **Retries (SPEC M2, C6).** A failed request (no reply, connection lost, SYSTEM_BUSY,
   SYSTEM_ERROR, SERVICE_NOT_AVAILABLE, TOPIC_NOT_EXIST, NO_PERMISSION) is sent again,
   up to ``retries`` more times within ``send_timeout``, to a queue of another broker;
   the failed broker is avoided for a while (fabric.selector) and the route is asked
   for again. FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT and SLAVE_NOT_AVAILABLE are
   results (the message is stored), never retried. A coalesced request refused as a
   whole for a non-retryable reason (e.g. MESSAGE_ILLEGAL) is split, so each message
   gets its own answer.
   **Idempotent resends (docs/PROTOCOL.md 14.4).** When an attempt's outcome is unknown
   (no reply in time, or the connection lost with the request in flight: a
   TransportError), the message may be stored already; every later attempt of that
   request, the loop's retry of a failed direct attempt included, carries
   ``resend=True`` so that a broker that stored its uniq ids answers with the first
   result instead of storing them twice. A retry after a definite refusal (SYSTEM_BUSY
   and the like: nothing stored) keeps ``resend`` as it was.
6. **Backpressure.** At most ``max_in_flight`` messages are on their way; a blocking
   ``send_async`` beyond that waits for room.

7. **Sync sends skip the loop.** ``Producer.send`` (blocking) sends on a DEALER owned
   by the calling thread and waits for the reply there (fabric.direct): two thread
   hops fewer, which is most of the distance to a raw round trip. Only the first
   attempt goes that way; a send with no route or connection yet, and the retry of
   a failed attempt, take the loop path above (they carry their attempt count, the
   broker to avoid, and whether that attempt's outcome is unknown: ``resend``). A
   sync send with a sharding key goes direct only when no earlier send is still on
   the loop, so it never overtakes one.

Trace (SPEC M21): a core with a ``tracer`` (fabric.trace; None unless the producer was
made with ``trace=True``) gives it one ``send`` event per message when the message's
outcome is known, from the loop (``_succeed``, ``_fail``) or the direct path
(:meth:`ProducerCore.send_direct_traced`); untraced, that costs one attribute test.

Per-key order: sends with one ``sharding_key`` go to one queue (fabric.selector);
sync sends with a key are stored in the order they were made. Retries go to the same
queue, since another queue would break the order.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
from loguru import logger

from fabric.client import ClientCore
from fabric.direct import DirectRequester, NotConnectedError
from fabric.errors import (
    ConnectionClosedError,
    FabricError,
    InvalidNameError,
    MessageIllegalError,
    MessageTooLargeError,
    NoPermissionError,
    NoRouteError,
    ProtocolError,
    RequestTimeoutError,
    TransportError,
    from_response,
)
from fabric.message import (
    DEFAULT_COMPRESS_LEVEL,
    DEFAULT_COMPRESS_THRESHOLD,
    Message,
    MessageQueue,
    SendResult,
    compress_body,
    new_msg_id,
)
from fabric.protocol.codes import RequestCode, ResponseCode, SendStatus, SysFlag, send_status_for
from fabric.protocol.frames import (
    MAX_BATCH_MESSAGES,
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    Buffer,
    FrameError,
    Reply,
)
from fabric.protocol.messages import (
    BatchEntry,
    SendBatchBody,
    SendBatchReply,
    SendMessageBody,
    SendReply,
)
from fabric.protocol.names import check_topic
from fabric.routing import DEFAULT_ROUTE_REFRESH
from fabric.selector import (
    DEFAULT_FAILURE_ISOLATION,
    LatencyFaultTolerance,
    QueueSelector,
    queue_for_key,
)
from fabric.transport import DEFAULT_TIMEOUT

if TYPE_CHECKING:  # fabric.trace imports this module
    from fabric.trace import TraceDispatcher

__all__ = ["ProducerCore", "ProducerOptions", "SendCallback"]

#: What ``send_async`` calls when a send is over: its SendResult, or the exception.
SendCallback = Callable[[Any], object]
#: Where one send's outcome goes: a concurrent (blocking API) or asyncio (fabric.aio) future.
_Sink = concurrent.futures.Future[Any] | asyncio.Future[Any] | None

# Per-message header bytes besides tags, keys and properties (ids, field names, ints).
_ENTRY_OVERHEAD: Final = 96
_INVALID_STATE: Final = (concurrent.futures.InvalidStateError, asyncio.InvalidStateError)
# Seconds a graceful shutdown gives oneway sends already handed over to reach a broker.
_ONEWAY_LINGER: Final = 1.0
_PREPARED: Final = int(SysFlag.TRANSACTION_PREPARED)


class ProducerOptions(msgspec.Struct, kw_only=True, frozen=True):
    """How a producer sends; every field has a working default."""

    #: Seconds a send may take, retries included (RocketMQ ``sendMsgTimeout``, 3 s).
    send_timeout: float = DEFAULT_TIMEOUT
    #: Extra attempts after a failed one, each on another broker when there is one.
    retries: int = 2
    #: Bodies longer than this are zlib-compressed (SPEC M8); negative: never.
    compress_threshold: int = DEFAULT_COMPRESS_THRESHOLD
    compress_level: int = DEFAULT_COMPRESS_LEVEL
    #: Largest body accepted, before compression.
    max_message_size: int = MAX_MESSAGE_BYTES
    #: Most messages one coalesced request carries.
    batch_max_messages: int = 256
    #: Most body bytes (about) one coalesced request carries.
    batch_max_bytes: int = 1024 * 1024
    #: Most messages on their way at once; a blocking send_async waits beyond it.
    max_in_flight: int = 10_000
    #: Avoid brokers that recently failed or were slow (fabric.selector).
    fault_tolerance: bool = True
    #: Seconds a broker is avoided after a failure.
    failure_isolation: float = DEFAULT_FAILURE_ISOLATION
    #: Seconds between two route refreshes.
    route_refresh: float = DEFAULT_ROUTE_REFRESH
    #: Blocking sync sends use a socket of the calling thread (fabric.direct), not the loop.
    direct_send: bool = True
    #: Send a trace event per message to ``%TRACE%`` (SPEC M21, fabric.trace).
    trace: bool = False

    def check(self) -> ProducerOptions:
        """Raise ValueError for a value out of range; return self."""
        if not self.send_timeout > 0:
            raise ValueError(f"send_timeout must be > 0, got {self.send_timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not 0 < self.max_message_size <= MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_size must be in 1..{MAX_MESSAGE_BYTES}")
        if not 1 <= self.batch_max_messages <= MAX_BATCH_MESSAGES:
            raise ValueError(f"batch_max_messages must be in 1..{MAX_BATCH_MESSAGES}")
        if not 0 < self.batch_max_bytes <= MAX_REQUEST_BYTES // 2:
            raise ValueError(f"batch_max_bytes must be in 1..{MAX_REQUEST_BYTES // 2}")
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if not -1 <= self.compress_level <= 9:
            raise ValueError("compress_level must be in -1..9")
        return self


class _Send(msgspec.Struct, gc=False):
    """One prepared message on its way; retries send it as it is.

    A Struct with ``gc=False``: cheaper to make than a slots class, and never scanned by
    the cyclic GC (it cannot be part of a cycle: nothing it refers to refers back).
    """

    topic: str
    entry: BatchEntry
    payload: bytes
    #: Estimated bytes on the wire (body, properties, header overhead).
    size: int
    #: Loop time by which the send must be over.
    deadline: float
    sink: _Sink
    callback: SendCallback | None
    key: str | None
    queue: MessageQueue | None
    oneway: bool
    #: Attempts already made (a sync send that failed on the caller's own socket).
    attempts: int = 0
    #: The broker that failed that attempt, to avoid on the next one.
    avoid: str | None = None
    #: That attempt's outcome is unknown: send it again with ``resend`` (14.4).
    resend: bool = False


class _Chunk:
    """Sends that travel in one request: coalesced ones, or one user batch."""

    __slots__ = (
        "attempts",
        "avoid",
        "batch_callback",
        "batch_sink",
        "deadline",
        "items",
        "key",
        "oneway",
        "queue",
        "resend",
        "topic",
        "user_batch",
    )

    def __init__(
        self,
        topic: str,
        items: list[_Send],
        *,
        key: str | None = None,
        queue: MessageQueue | None = None,
        oneway: bool = False,
        batch_sink: _Sink = None,
        batch_callback: SendCallback | None = None,
        user_batch: bool = False,
    ) -> None:
        self.topic = topic
        self.items = items
        self.key = key
        self.queue = queue
        self.oneway = oneway
        self.batch_sink = batch_sink
        self.batch_callback = batch_callback
        self.deadline = min(item.deadline for item in items)
        self.attempts = 0
        self.avoid: str | None = None
        #: An attempt's outcome was unknown: later attempts set ``resend`` (14.4).
        self.resend = False
        #: A ``send_batch`` request: one request with one list result, never split.
        self.user_batch = user_batch


class ProducerCore:
    """The send path of one producer, on one loop (create it there).

    Args:
        client: routes and broker connections on this loop.
        group: the producer group.
        options: how to send.
    """

    def __init__(self, client: ClientCore, group: str, options: ProducerOptions) -> None:
        self.client = client
        self.group = group
        self.options = options
        self.loop = client.loop
        self.routes = client.routes
        self.faults = LatencyFaultTolerance(
            self.loop.time,
            failure_isolation=options.failure_isolation,
            enabled=options.fault_tolerance,
        )
        self.selector = QueueSelector(self.faults)
        self._topics_ok: set[str] = set()
        # Hand-off from any thread to the loop (see the module docstring, step 2).
        self._inbox: collections.deque[_Send | _Chunk] = collections.deque()
        self._wake_pending = False
        # Topic -> sends waiting for its route (kept in order), and the fetches running.
        self._parked: dict[str, list[_Send | _Chunk]] = {}
        self._fetches: set[asyncio.Task[None]] = set()
        # Messages accepted by the loop and not finished, and who waits for zero.
        self._outstanding = 0
        self._idle: asyncio.Future[None] | None = None
        # Backpressure: messages submitted (any thread) and finished (loop only).
        self._submitted = itertools.count(1)
        self.completed = 0
        self._room = threading.Condition()
        self._room_waiting = 0
        self.closing = False
        self._closed = False
        #: Set (on the loop, before the first send) when the producer traces (fabric.trace).
        self.tracer: TraceDispatcher | None = None

    # -- any thread ---------------------------------------------------------------------

    def prepare(
        self,
        msg: Message,
        *,
        sink: _Sink = None,
        callback: SendCallback | None = None,
        key: str | None = None,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
        oneway: bool = False,
        transactional: bool = False,
    ) -> _Send:
        """Validate, id, compress and encode ``msg`` (in the caller's thread).

        ``transactional`` makes it a half message (SysFlag TRANSACTION_PREPARED,
        docs/PROTOCOL.md 14.3): it is always sent alone, never coalesced, so that its
        reply (with the CommitLog offset END_TRANSACTION names) is its own.

        Raises:
            RuntimeError: the producer is shut down.
            InvalidNameError, MessageIllegalError, MessageTooLargeError: a bad message.
            TypeError, ValueError: a bad argument.
        """
        if self.closing:
            raise RuntimeError("the producer is shut down")
        if not isinstance(msg, Message):
            raise TypeError(f"expected a fabric.Message, got {type(msg).__name__}")
        topic = msg.topic
        if topic not in self._topics_ok:
            problem = check_topic(topic)
            if problem is not None:
                raise InvalidNameError(
                    problem, code=ResponseCode.INVALID_TOPIC_NAME, name=str(topic)
                )
            self._topics_ok.add(topic)
        options = self.options
        extra = msg.check_fields(options.max_message_size)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"sharding_key must be a str, got {type(key).__name__}")
        if queue is not None and (not isinstance(queue, MessageQueue) or queue.topic != topic):
            raise ValueError(f"queue {queue} is not a queue of topic {topic}")
        body = msg.body
        if type(body) is not bytes:
            body = bytes(body)
        payload, sysflag = compress_body(body, options.compress_threshold, options.compress_level)
        if transactional:
            sysflag |= _PREPARED
        entry = BatchEntry(
            tags=msg.tags,
            # A tuple where the Struct says list: msgspec encodes both as an array, and
            # a tuple of strings costs the cyclic GC nothing (see fabric.client._Future).
            keys=msg.keys,  # type: ignore[arg-type]
            uniq_id=msg.msg_id or new_msg_id(),
            properties=msg.properties,
            flag=msg.flag,
            sysflag=sysflag,
            born_timestamp=int(time.time() * 1000),
        )
        if msg.delay_level or msg.deliver_at is not None:  # checked by check_fields
            if transactional:
                raise MessageIllegalError(
                    "a transactional message cannot be delayed or timed",
                    code=ResponseCode.MESSAGE_ILLEGAL,
                )
            entry.delay_level, entry.deliver_at = msg.timing()
        deadline = self.loop.time() + (options.send_timeout if timeout is None else timeout)
        size = len(payload) + extra + _ENTRY_OVERHEAD
        return _Send(topic, entry, payload, size, deadline, sink, callback, key, queue, oneway)

    def prepare_batch(
        self,
        msgs: Sequence[Message],
        *,
        sink: _Sink = None,
        key: str | None = None,
        queue: MessageQueue | None = None,
        timeout: float | None = None,
        oneway: bool = False,
    ) -> _Chunk:
        """Prepare a user batch: one topic, one queue, one request (SPEC M5).

        Raises:
            MessageIllegalError: no message, more than MAX_BATCH_MESSAGES, or several topics.
            MessageTooLargeError: the request would be over MAX_REQUEST_BYTES.
        """
        msgs = list(msgs)
        if not msgs:
            raise MessageIllegalError("a batch needs at least one message")
        if len(msgs) > MAX_BATCH_MESSAGES:
            raise MessageIllegalError(
                f"{len(msgs)} messages in one batch, the limit is {MAX_BATCH_MESSAGES}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        topics = {m.topic for m in msgs if isinstance(m, Message)}
        if len(topics) > 1:
            raise MessageIllegalError(
                f"a batch has one topic, got {sorted(map(str, topics))}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        items = [
            self.prepare(m, key=key, queue=queue, timeout=timeout, oneway=oneway) for m in msgs
        ]
        total = sum(item.size for item in items)
        if total > MAX_REQUEST_BYTES:
            raise MessageTooLargeError(
                f"the batch is about {total} bytes, the limit is {MAX_REQUEST_BYTES}",
                size=total,
                limit=MAX_REQUEST_BYTES,
            )
        return _Chunk(
            items[0].topic,
            items,
            key=key,
            queue=queue,
            oneway=oneway,
            batch_sink=sink,
            user_batch=True,
        )

    def in_flight(self) -> int:
        """Messages handed to the loop and not finished yet (read from any thread)."""
        return self._outstanding + len(self._inbox)

    def send_direct(self, item: _Send, direct: DirectRequester) -> SendResult | None:
        """Send ``item`` on the calling thread's own socket and wait (step 7 of the module doc).

        Returns:
            The SendResult, or None when the loop must take the send: no route or
            connection yet, or a retryable failure (``item`` then carries the attempt
            and the broker to avoid; nothing more happens to it here).

        Raises:
            FabricError: a non-retryable refusal, or the last failure when no time is left.
        """
        topic = item.topic
        key = item.key
        if key is not None and self.in_flight():
            return None  # earlier async sends may hold this key: keep their order
        route = self.routes.cached(topic)
        if route is None or not route.write_queues or topic in self._parked:
            return None
        queues = route.write_queues
        if item.queue is not None:
            mq = item.queue
        elif key is not None:
            mq = queue_for_key(queues, key)
        else:
            mq = self.selector.select(topic, queues)
        broker = mq.broker_name
        address = self.routes.master(broker)
        if address is None:
            return None
        e = item.entry
        body = _single_body(self.group, topic, mq.queue_id, e, False)
        started = time.monotonic()
        remaining = item.deadline - started
        error: FabricError
        try:
            reply = direct.request(
                address, RequestCode.SEND_MESSAGE, body, (item.payload,), remaining
            )
        except NotConnectedError:
            return None
        except TransportError as exc:
            error = exc
            item.resend = True  # the broker may have stored it: the retry says so
        else:
            status = send_status_for(reply.code)
            if status is not None:
                self.faults.update(broker, time.monotonic() - started)
                try:
                    one = reply.decode(SendReply)
                except FrameError as exc:
                    raise ProtocolError(f"bad send reply: {exc.remark}", address=address) from None
                queue = _queue_of(mq, one.broker_name, one.queue_id)
                return SendResult(
                    status, one.msg_id or e.uniq_id, queue, one.queue_offset, one.commitlog_offset
                )
            error = from_response(reply.code, reply.remark, address=address)
            if not (error.retryable or isinstance(error, NoPermissionError)):
                raise error
        try:
            self.loop.call_soon_threadsafe(self._direct_failed, topic, broker, error)
        except RuntimeError:  # the loop is closed: the producer is shutting down
            raise error from None
        if self.options.retries < 1 or item.deadline <= time.monotonic():
            raise error
        item.attempts, item.avoid = 1, broker
        return None

    def send_direct_traced(self, item: _Send, direct: DirectRequester) -> SendResult | None:
        """:meth:`send_direct`, with a ``send`` trace event when it has an outcome."""
        tracer = self.tracer
        e = item.entry
        try:
            result = self.send_direct(item, direct)
        except Exception as exc:
            if tracer is not None:
                tracer.on_send(item.topic, e.uniq_id, e.born_timestamp, exc)
            raise
        if result is not None and tracer is not None:
            tracer.on_send(item.topic, e.uniq_id, e.born_timestamp, result)
        return result

    def _direct_failed(self, topic: str, broker: str, error: FabricError) -> None:
        self._note_failure(broker, error)
        self.routes.refresh_soon(topic, provisional=True)

    def submit_threadsafe(self, item: _Send | _Chunk) -> None:
        """Hand a prepared send to the loop from any thread (one wake-up per burst)."""
        self._inbox.append(item)
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._drain)

    def submit(self, item: _Send | _Chunk) -> None:
        """Hand a prepared send to the loop, from the loop itself (fabric.aio)."""
        self._inbox.append(item)
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon(self._drain)

    def wait_for_room(self, count: int = 1, *, block: bool = True) -> None:
        """Count ``count`` messages in; wait while more than max_in_flight are on their way.

        Waits at most ``send_timeout`` (every message on its way is finished by then,
        one way or another); never waits when ``block`` is False (on the loop).
        """
        submitted = 0
        for _ in range(count):
            submitted = next(self._submitted)
        limit = self.options.max_in_flight
        if not block or submitted - self.completed <= limit:
            return
        with self._room:
            self._room_waiting += 1
            try:
                self._room.wait_for(
                    lambda: submitted - self.completed <= limit or self.closing,
                    self.options.send_timeout,
                )
            finally:
                self._room_waiting -= 1

    # -- the loop: dispatch -------------------------------------------------------------

    def _drain(self) -> None:
        self._wake_pending = False
        inbox = self._inbox
        batch: list[_Send | _Chunk] = []
        try:
            while True:
                batch.append(inbox.popleft())
        except IndexError:
            pass
        if batch:
            self._outstanding += sum(len(i.items) if isinstance(i, _Chunk) else 1 for i in batch)
            self._dispatch(batch)

    def _dispatch(self, batch: list[_Send | _Chunk]) -> None:
        if self._closed:
            for item in batch:
                self._fail_item(item, RuntimeError("the producer is shut down"))
            return
        groups: dict[tuple[str, MessageQueue | None, bool], list[_Send]] = {}
        for item in batch:
            topic = item.topic
            if topic in self._parked:
                self._parked[topic].append(item)
                continue
            if isinstance(item, _Chunk):
                self._launch(item)
                continue
            # A retry of a direct send (its own request, its own count), or a half message
            # (its reply must be its own).
            if item.attempts or item.entry.sysflag & _PREPARED:
                chunk = _Chunk(topic, [item], key=item.key, queue=item.queue)
                chunk.attempts, chunk.avoid, chunk.resend = item.attempts, item.avoid, item.resend
                self._launch(chunk)
                continue
            queue = item.queue
            if queue is None and item.key is not None:
                route = self.routes.cached(topic)
                if route is None:
                    self._park(topic, [item])
                    continue
                if route.write_queues:
                    queue = item.queue = queue_for_key(route.write_queues, item.key)
            group = groups.get((topic, queue, item.oneway))
            if group is None:
                groups[(topic, queue, item.oneway)] = [item]
            else:
                group.append(item)
        for (topic, queue, oneway), items in groups.items():
            for chunk in self._chunks(topic, items, queue, oneway):
                self._launch(chunk)

    def _chunks(
        self, topic: str, items: list[_Send], queue: MessageQueue | None, oneway: bool
    ) -> Iterator[_Chunk]:
        max_n = self.options.batch_max_messages
        max_bytes = self.options.batch_max_bytes
        if len(items) == 1:
            yield _Chunk(topic, items, queue=queue, oneway=oneway)
            return
        part: list[_Send] = []
        size = 0
        for item in items:
            if part and (len(part) >= max_n or size + item.size > max_bytes):
                yield _Chunk(topic, part, queue=queue, oneway=oneway)
                part, size = [], 0
            part.append(item)
            size += item.size
        if part:
            yield _Chunk(topic, part, queue=queue, oneway=oneway)

    def _park(self, topic: str, items: list[_Send | _Chunk]) -> None:
        parked = self._parked.get(topic)
        if parked is not None:
            parked.extend(items)
            return
        self._parked[topic] = list(items)
        task = self.loop.create_task(self._fetch_route(topic), name=f"fabric-route {topic}")
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    async def _fetch_route(self, topic: str) -> None:
        error: BaseException | None = None
        try:
            await self.routes.get(topic, provisional=True)
        except Exception as exc:
            error = exc
        waiting = self._parked.pop(topic, [])
        if error is None:
            self._dispatch(waiting)
            return
        if not isinstance(error, FabricError):
            logger.opt(exception=error).warning("route of {}: lookup failed", topic)
        for item in waiting:
            self._fail_item(item, error)

    def _launch(self, chunk: _Chunk) -> None:
        topic = chunk.topic
        route = self.routes.cached(topic)
        if route is None or topic in self._parked:
            self._park(topic, [chunk])
            return
        now = self.loop.time()
        remaining = chunk.deadline - now
        if remaining <= 0:
            error = RequestTimeoutError(
                f"no outcome within {self.options.send_timeout}s", timeout=self.options.send_timeout
            )
            self._fail(chunk, error)
            return
        queues = route.write_queues
        if chunk.queue is not None:
            mq = chunk.queue
        elif not queues:
            self._fail(
                chunk,
                NoRouteError(f"topic {topic} has no writable queue", code=ResponseCode.NO_ROUTE),
            )
            return
        elif chunk.key is not None:
            mq = queue_for_key(queues, chunk.key)
        else:
            mq = self.selector.select(topic, queues, chunk.avoid)
        broker = mq.broker_name
        address = self.routes.master(broker)
        if address is None:
            self.routes.refresh_soon(topic)
            self._retry(chunk, broker, NoRouteError(f"no master of broker {broker} is known"))
            return
        items = chunk.items
        payloads: list[Buffer] = [item.payload for item in items]
        code: RequestCode
        body: msgspec.Struct
        if len(items) == 1 and not chunk.user_batch:
            code = RequestCode.SEND_MESSAGE
            body = _single_body(self.group, topic, mq.queue_id, items[0].entry, chunk.resend)
        else:
            # Packed (docs/PROTOCOL.md 7.3): one body frame for the whole batch. A frame
            # costs each side a socket call, and a batch carries up to 1024 messages.
            code = RequestCode.SEND_BATCH_MESSAGE
            body = SendBatchBody(
                producer_group=self.group,
                topic=topic,
                queue_id=mq.queue_id,
                messages=[item.entry for item in items],
                resend=chunk.resend,
                body_sizes=[len(p) for p in payloads],
            )
            payloads = [b"".join(payloads)]
        try:
            conn = self.client.connection(address)
            if chunk.oneway:
                sent = conn.send_oneway_nowait(code, body, payloads, timeout=remaining)
                if sent:
                    self._succeed(chunk, None)
                else:
                    self._note_failure(broker, "the server is away")
                    self._retry(
                        chunk, broker, ConnectionClosedError("the server is away", address=address)
                    )
                return
            conn.request_callback(
                code,
                body,
                payloads,
                lambda outcome: self._on_reply(chunk, mq, address, now, outcome),
                timeout=remaining,
            )
        except FabricError as exc:  # too large (nothing sent), or shut down
            if len(items) > 1 and not chunk.user_batch:
                self._split(chunk)
            else:
                self._fail(chunk, exc)

    # -- the loop: outcomes -------------------------------------------------------------

    def _on_reply(
        self,
        chunk: _Chunk,
        mq: MessageQueue,
        address: str,
        started: float,
        outcome: Reply | FabricError,
    ) -> None:
        try:
            self._handle_reply(chunk, mq, address, started, outcome)
        except Exception as exc:  # a bug here must not leave futures hanging
            logger.exception("producer {}: cannot handle a send reply", self.group)
            self._fail(chunk, exc)

    def _handle_reply(
        self,
        chunk: _Chunk,
        mq: MessageQueue,
        address: str,
        started: float,
        outcome: Reply | FabricError,
    ) -> None:
        broker = mq.broker_name
        if isinstance(outcome, FabricError):
            if isinstance(outcome, TransportError):
                chunk.resend = True  # no reply: it may be stored (14.4)
            self._note_failure(broker, outcome)
            self.routes.refresh_soon(chunk.topic, provisional=True)
            self._retry(chunk, broker, outcome)
            return
        reply = outcome
        status = send_status_for(reply.code)
        if status is None:
            error = from_response(reply.code, reply.remark, address=address)
            if error.retryable or isinstance(error, NoPermissionError):
                self._note_failure(broker, error)
                self.routes.refresh_soon(chunk.topic, provisional=True)
                self._retry(chunk, broker, error)
            elif len(chunk.items) > 1 and not chunk.user_batch:
                self._split(chunk)
            else:
                self._fail(chunk, error)
            return
        self.faults.update(broker, self.loop.time() - started)
        try:
            results = self._results(chunk, mq, status, reply)
        except FrameError as exc:
            self._fail(chunk, ProtocolError(f"bad send reply: {exc.remark}", address=address))
            return
        self._succeed(chunk, results)

    def _results(
        self, chunk: _Chunk, mq: MessageQueue, status: SendStatus, reply: Reply
    ) -> list[SendResult]:
        items = chunk.items
        if len(items) == 1 and not chunk.user_batch:
            one = reply.decode(SendReply)
            queue = _queue_of(mq, one.broker_name, one.queue_id)
            msg_id = one.msg_id or items[0].entry.uniq_id
            return [SendResult(status, msg_id, queue, one.queue_offset, one.commitlog_offset)]
        many = reply.decode(SendBatchReply)
        if len(many.queue_offsets) != len(items):
            raise FrameError(
                ResponseCode.MALFORMED_REQUEST,
                f"{len(many.queue_offsets)} offsets for {len(items)} messages",
            )
        queue = _queue_of(mq, many.broker_name, many.queue_id)
        ids = many.msg_ids if len(many.msg_ids) == len(items) else [i.entry.uniq_id for i in items]
        return [
            SendResult(status, msg_id, queue, offset)
            for msg_id, offset in zip(ids, many.queue_offsets, strict=True)
        ]

    def _note_failure(self, broker: str, why: object) -> None:
        was_available = self.faults.available(broker)
        seconds = self.faults.update(broker, 0.0, failed=True)
        if was_available and self.faults.enabled:
            logger.warning("broker {} failed ({}); avoided for {}s", broker, why, seconds)

    def _retry(self, chunk: _Chunk, broker: str, error: BaseException) -> None:
        chunk.attempts += 1
        if (
            self._closed
            or chunk.attempts > self.options.retries
            or chunk.deadline <= self.loop.time()
        ):
            self._fail(chunk, error)
            return
        chunk.avoid = broker
        self._launch(chunk)

    def _split(self, chunk: _Chunk) -> None:
        for item in chunk.items:
            single = _Chunk(
                chunk.topic, [item], queue=chunk.queue, key=chunk.key, oneway=chunk.oneway
            )
            single.attempts, single.resend = chunk.attempts, chunk.resend
            self._launch(single)

    def _succeed(self, chunk: _Chunk, results: list[SendResult] | None) -> None:
        items = chunk.items
        if self.tracer is not None:
            self._trace(chunk, results, None)
        if chunk.user_batch:
            _resolve(chunk.batch_sink, chunk.batch_callback, results, None)
        elif results is not None:
            for item, result in zip(items, results, strict=True):
                _resolve(item.sink, item.callback, result, None)
        else:
            for item in items:
                _resolve(item.sink, item.callback, None, None)
        self._finished(len(items))

    def _fail(self, chunk: _Chunk, error: BaseException) -> None:
        if self.tracer is not None:
            self._trace(chunk, None, error)
        if chunk.user_batch:
            _resolve(chunk.batch_sink, chunk.batch_callback, None, error)
        else:
            for item in chunk.items:
                _resolve(item.sink, item.callback, None, error)
        self._finished(len(chunk.items))

    def _fail_item(self, item: _Send | _Chunk, error: BaseException) -> None:
        if isinstance(item, _Chunk):
            self._fail(item, error)
        else:
            tracer = self.tracer
            if tracer is not None:
                e = item.entry
                tracer.on_send(item.topic, e.uniq_id, e.born_timestamp, error)
            _resolve(item.sink, item.callback, None, error)
            self._finished(1)

    def _trace(
        self, chunk: _Chunk, results: list[SendResult] | None, error: BaseException | None
    ) -> None:
        """One ``send`` trace event per message of ``chunk`` (only when tracing)."""
        tracer = self.tracer
        if tracer is None:
            return
        topic = chunk.topic
        for i, item in enumerate(chunk.items):
            e = item.entry
            outcome: object = error
            if error is None and results is not None and i < len(results):
                outcome = results[i]
            tracer.on_send(topic, e.uniq_id, e.born_timestamp, outcome)

    def _finished(self, count: int) -> None:
        self.completed += count
        if self._room_waiting:
            with self._room:
                self._room.notify_all()
        self._outstanding -= count
        if self._outstanding <= 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    # -- closing ------------------------------------------------------------------------

    async def flush(self, timeout: float) -> bool:
        """Wait until every message handed over so far is finished; False on timeout."""
        self._drain()
        if self._outstanding <= 0:
            return True
        self._idle = self.loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:
        """Stop taking sends, let those on their way finish (up to ``timeout``), close."""
        self.closing = True
        with self._room:
            self._room.notify_all()
        if not await self.flush(timeout):
            logger.warning(
                "producer {}: {} messages unfinished at shutdown", self.group, self._outstanding
            )
        self._closed = True
        tracer, self.tracer = self.tracer, None
        if tracer is not None:  # its own producer and connections: closed apart
            await tracer.close()
        fetches = list(self._fetches)
        for task in fetches:
            task.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        # Fails what is still in flight; oneway sends already handed over still leave.
        await self.client.close(linger=_ONEWAY_LINGER)
        self._drain()
        shut = RuntimeError("the producer is shut down")
        for topic in list(self._parked):
            for item in self._parked.pop(topic):
                self._fail_item(item, shut)


def _single_body(
    group: str, topic: str, queue_id: int, e: BatchEntry, resend: bool
) -> SendMessageBody:
    """The SEND_MESSAGE body of one prepared entry."""
    return SendMessageBody(
        producer_group=group,
        topic=topic,
        queue_id=queue_id,
        tags=e.tags,
        keys=e.keys,
        uniq_id=e.uniq_id,
        properties=e.properties,
        flag=e.flag,
        sysflag=e.sysflag,
        born_timestamp=e.born_timestamp,
        delay_level=e.delay_level,
        deliver_at=e.deliver_at,
        resend=resend,
    )


def _queue_of(mq: MessageQueue, broker_name: str, queue_id: int) -> MessageQueue:
    if (broker_name or mq.broker_name) == mq.broker_name and queue_id == mq.queue_id:
        return mq
    return MessageQueue(mq.topic, broker_name or mq.broker_name, queue_id)


def _resolve(
    sink: _Sink, callback: SendCallback | None, result: object, error: BaseException | None
) -> None:
    """Give one outcome to a future and a callback; never raises."""
    if sink is not None:
        try:
            if error is None:
                sink.set_result(result)
            else:
                sink.set_exception(error)
                if callback is not None and isinstance(sink, asyncio.Future):
                    sink.exception()  # the callback handles it: no "never retrieved" log
        except _INVALID_STATE:
            pass  # cancelled by its owner meanwhile
    if callback is not None:
        try:
            callback(result if error is None else error)
        except Exception:
            logger.exception("a send callback raised")
