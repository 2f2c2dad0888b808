"""The push consumer's work on its loop: membership, rebalance, streams, dispatch and acks.

docs/PROTOCOL.md section 13 is the contract. :class:`PushConsumerCore` lives on one
loop (the IOThread's for ``fabric.PushConsumer``, the caller's for
``fabric.aio.PushConsumer``), owns nothing but state, and talks to brokers through the
connections of its :class:`~fabric.client.ClientCore`, whose ``on_push`` hook brings it
the frames brokers push (Flag.PUSH):

* **Membership.** A HEARTBEAT naming the group and its subscriptions goes to every broker
  of every subscribed topic at start and every ``heartbeat_interval``; UNREGISTER_CLIENT
  at shutdown.
* **Rebalance** (fabric.consumer.rebalance) at start, on NOTIFY_CONSUMER_IDS_CHANGED and
  every ``rebalance_interval``, one at a time. A queue gained gets a stream (ordered:
  after LOCK_BATCH_MQ, exclusive); a queue lost stops dispatching, waits for its
  listeners (ordered: up to ``orderly_release_timeout``; concurrent: up to
  ``release_timeout``), commits and closes (ordered: unlocking). BROADCASTING owns
  every queue and never locks.
* **Streams** (fabric.consumer.process_queue): CONSUME_OPEN with a window of
  ``prefetch`` messages and ``prefetch_bytes`` bytes; pushed records are decoded and
  handed to a dispatcher (fabric.consumer.listener); finished messages turn into
  credits and a commit offset that never passes a message not done, sent as ONEWAY
  CONSUME_ACKs coalesced per queue, one per loop iteration at most. STREAM_CLOSED drops
  what the stream had in flight, uncommitted, and the next rebalance reopens it.
  Each rebalance also asks every open stream for a reply (a zero-credit CONSUME_ACK):
  a stream a restarted broker no longer knows is reopened.
* **Failures** (docs/PROTOCOL.md 14.2). RECONSUME_LATER (or a raised exception): a
  CLUSTERING consumer sends the message back to the broker it came from
  (CONSUMER_SEND_MSG_BACK), which delivers it again through ``%RETRY%<group>`` after a
  delay, or moves it to ``%DLQ%<group>`` after ``max_reconsume_times``; once the broker
  took it, the original is done and its queue moves on. A CLUSTERING consumer therefore
  subscribes ``%RETRY%<group>`` (all tags) by itself, and hands each retried message to
  the listener of its original topic. When the send-back fails, and always in
  BROADCASTING (RocketMQ has no retry topic there), the same message is retried locally
  after ``reconsume_delay`` and its queue's commit offset waits for it. Ordered mode
  retries locally, in place (the queue waits, as RocketMQ suspends it), and after
  ``max_reconsume_times`` local retries (when set; -1 retries for ever) sends the
  message to the DLQ (a send-back with ``max_reconsume_times`` 0) and moves on.
  Failures are logged at most once per queue every 10 s.
* **Trace** (SPEC M21, fabric.trace): with a ``tracer`` (``trace=True``), a ``consume``
  event per listener call (its status and time) and a ``retry`` (or, when the limit is
  known to be reached, ``dlq``) event per send-back; untraced, one attribute test.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import TYPE_CHECKING, Any, Final

import msgspec
from loguru import logger

from fabric.client import ClientCore
from fabric.consumer.listener import (
    ConsumeStatus,
    Dispatcher,
    Job,
    TaskDispatcher,
    ThreadDispatcher,
)
from fabric.consumer.membership import LOG_INTERVAL, GroupMembership, LogThrottle
from fabric.consumer.offset_store import LocalOffsetStore
from fabric.consumer.options import PushConsumerOptions
from fabric.consumer.process_queue import ProcessQueue, StreamState
from fabric.consumer.subscription import Subscription
from fabric.errors import (
    ConnectionClosedError,
    FabricError,
    MessageIllegalError,
    NoRouteError,
    QueueLockedError,
    StreamNotFoundError,
)
from fabric.filters import TagFilter
from fabric.message import MessageExt, MessageQueue
from fabric.protocol.codes import FilterType, RequestCode, ResponseCode
from fabric.protocol.frames import Buffer, FrameError, decode_body
from fabric.protocol.messages import (
    ConsumeAckBody,
    ConsumeCloseBody,
    ConsumeOpenBody,
    ConsumeOpenReply,
    ConsumerGroupBody,
    ConsumerSendBackBody,
    Empty,
    PushBody,
    StreamClosedBody,
    SubscriptionData,
)
from fabric.protocol.names import retry_topic
from fabric.protocol.records import RecordError

if TYPE_CHECKING:  # only the type: the front gives the core its tracer
    from fabric.trace import TraceDispatcher

__all__ = ["PushConsumerCore"]

#: Seconds before a rebalance that could not take every queue (lock held) tries again.
_RETRY_DELAY: Final = 0.5
_PUSH_MESSAGES: Final = int(RequestCode.PUSH_MESSAGES)
_STREAM_CLOSED: Final = int(RequestCode.STREAM_CLOSED)
_NOTIFY: Final = int(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED)
_SUCCESS: Final = ConsumeStatus.CONSUME_SUCCESS
_LATER: Final = ConsumeStatus.RECONSUME_LATER
#: STREAM_CLOSED reasons that mean the topic's route changed (docs/PROTOCOL.md 13).
_ROUTE_CHANGED: Final = frozenset({"topic_deleted", "queue_removed", "topic_unreadable"})


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unrouted(msg: MessageExt) -> ConsumeStatus:
    """The retry subscription's listener: never called (each retried message goes to the
    listener of its original topic)."""
    return _LATER


def _retry_subscription(topic: str) -> Subscription:
    """``%RETRY%<group>`` with every tag (docs/PROTOCOL.md 14.2)."""
    data = SubscriptionData(topic=topic, filter_type=int(FilterType.TAG), expression="*")
    return Subscription(topic, data, _unrouted, tag_filter=TagFilter())


async def _cancel(tasks: list[asyncio.Task[None]], timeout: float) -> None:
    """Cancel ``tasks`` and wait up to ``timeout`` for them to end.

    Bounded on purpose: on Python 3.11 ``asyncio.wait_for`` can swallow a cancellation
    that arrives as its inner future completes (CPython gh-86296), so a cancelled loop
    may run one more round; the loops also stop on the core's ``_closing`` flag.
    """
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout)


class PushConsumerCore:
    """A push consumer on one loop (create it there, then ``await start()``).

    Args:
        client: routes and broker connections on this loop; its ``on_push`` is taken.
        group: the consumer group.
        client_id: this consumer's id in the group (unique per process and instance).
        options: the checked options.
        subscriptions: topic -> subscription (checked already).
        store: BROADCASTING: the local offset store.
    """

    def __init__(
        self,
        client: ClientCore,
        group: str,
        client_id: str,
        options: PushConsumerOptions,
        subscriptions: dict[str, Subscription],
        store: LocalOffsetStore | None = None,
    ) -> None:
        self.client = client
        self.loop = client.loop
        self.routes = client.routes
        self.group = group
        self.client_id = client_id
        self.options = options
        self.subscriptions = dict(subscriptions)
        self.store = store
        self._clustering = not options.broadcasting
        self._locking = options.orderly and self._clustering
        #: CLUSTERING, not ordered: failed messages come back through this topic.
        self._retry_topic = retry_topic(group) if self._clustering and not options.orderly else ""
        if self._retry_topic:
            self.subscriptions[self._retry_topic] = _retry_subscription(self._retry_topic)
        #: CONSUMER_SEND_MSG_BACK requests in flight.
        self._send_backs: set[asyncio.Task[None]] = set()
        #: Broker names that took a send-back and are not in the retry topic's route yet.
        self._sent_back_to: set[str] = set()
        client.on_push = self._on_push
        self._throttle = LogThrottle(self.loop.time)
        self.membership = GroupMembership(
            client,
            group,
            client_id,
            model=options.model,
            orderly=options.orderly,
            allocation=options.allocation,
            throttle=self._throttle,
        )
        self._threads: ThreadDispatcher | None = None
        self._tasks: TaskDispatcher | None = None
        self._stream_ids = itertools.count(1)
        #: Queues this consumer consumes (an OPENING or OPEN stream each).
        self._queues: dict[MessageQueue, ProcessQueue] = {}
        #: Every stream this consumer may get pushes for, by id (CLOSING ones too).
        self._streams: dict[int, ProcessQueue] = {}
        self._releasing: dict[MessageQueue, asyncio.Task[None]] = {}
        self._dirty: set[ProcessQueue] = set()
        self._flush_scheduled = False
        self._wakeup = asyncio.Event()
        #: A NOTIFY_CONSUMER_IDS_CHANGED came: the next rebalance reads the routes again.
        self._routes_stale = False
        self._retry_soon = False
        self._heartbeat_due = False
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False
        #: Set by the front before start when the consumer traces (fabric.trace).
        self.tracer: TraceDispatcher | None = None

    # -- life ---------------------------------------------------------------------------

    def dispatchers(self) -> list[ThreadDispatcher]:
        """The thread pools the core started (the front joins them after the loop stops)."""
        return [self._threads] if self._threads is not None else []

    async def start(self) -> None:
        """Heartbeat, rebalance once, then keep doing both in the background.

        Raises:
            InvalidFilterError: a broker refused a subscription's expression.
            InvalidNameError: a broker refused the group name.
        """
        if self.store is not None:
            self.store.load()
        await self.membership.heartbeat(self.subscriptions, strict=True)
        await self._rebalance()
        spawn = self.loop.create_task
        self._loops.append(spawn(self._every(self.options.heartbeat_interval, self._heartbeat)))
        self._loops.append(spawn(self._rebalance_loop()))
        if self._locking:
            self._loops.append(spawn(self._every(self.options.lock_expiry / 3, self._renew_locks)))
        if self.store is not None:
            interval = self.options.offset_persist_interval
            self._loops.append(spawn(self._every(interval, self._persist)))

    def assignment(self) -> list[MessageQueue]:
        """The queues whose streams are open, sorted."""
        return sorted(mq for mq, pq in self._queues.items() if pq.state is StreamState.OPEN)

    def subscribe(self, sub: Subscription) -> None:
        """Add or replace a subscription while running (on the loop); the heartbeat and
        rebalance that follow at once take it up."""
        old = self.subscriptions.get(sub.topic)
        self.subscriptions[sub.topic] = sub
        if old is not None:
            for pq in [pq for mq, pq in self._queues.items() if mq.topic == sub.topic]:
                self._release(pq, "subscription changed")
        self._heartbeat_due = True
        self._wakeup.set()

    async def close(self, timeout: float) -> None:
        """Stop taking pushes, let listeners finish (up to ``timeout``), commit, close
        the streams, unregister and close the connections. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        await _cancel(self._loops, self.options.request_timeout)
        for pq in list(self._queues.values()):
            self._stop(pq, StreamState.CLOSING)
        self._queues.clear()
        busy = [pq for pq in self._streams.values() if pq.inflight > 0]
        if busy:
            try:
                idle = asyncio.gather(*(asyncio.shield(self._idle(pq)) for pq in busy))
                await asyncio.wait_for(idle, timeout)
            except asyncio.TimeoutError:
                logger.warning(
                    "push consumer {}: {} message(s) still in listeners after {}s; "
                    "they will be delivered again",
                    self.group,
                    sum(pq.inflight for pq in busy),
                    timeout,
                )
        await _cancel(list(self._releasing.values()), self.options.request_timeout)
        await _cancel(list(self._send_backs), self.options.request_timeout)
        self._flush_acks()
        streams = [pq for pq in self._streams.values() if pq.state is not StreamState.DROPPED]
        await asyncio.gather(*(self._close_stream(pq, unlock=self._locking) for pq in streams))
        if self.store is not None:
            try:
                self.store.persist()
            except OSError as exc:
                logger.warning("offset file {} cannot be written: {}", self.store.path, exc)
        await self.membership.unregister()
        if self._threads is not None:
            self._threads.stop()
        if self._tasks is not None:
            await self._tasks.cancel()
        await self.client.close()
        tracer, self.tracer = self.tracer, None
        if tracer is not None:  # its own producer and connections
            await tracer.close()

    async def _every(self, interval: float, work: Any) -> None:
        while not self._closing:
            await asyncio.sleep(interval)
            if self._closing:
                return
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("push consumer {}: background work failed", self.group)

    # -- rebalance ----------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        await self.membership.heartbeat(self.subscriptions, strict=False)

    async def _rebalance_loop(self) -> None:
        while not self._closing:
            delay = _RETRY_DELAY if self._retry_soon else self.options.rebalance_interval
            try:
                await asyncio.wait_for(self._wakeup.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            if self._closing:
                return
            try:
                await self._rebalance()
                await self._probe_streams()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("push consumer {}: rebalance failed", self.group)

    async def _rebalance(self) -> None:
        if self._closing:
            return
        self._retry_soon = False
        if self._heartbeat_due:
            self._heartbeat_due = False
            await self.membership.heartbeat(self.subscriptions, strict=False)
        if self._sent_back_to:
            await self._refresh_retry_route()
        if self._routes_stale:
            self._routes_stale = False
            await asyncio.gather(
                *(self._refetch_route(topic) for topic in self.subscriptions),
            )
        desired = await self.membership.assignment(self.subscriptions)
        dropped: list[MessageQueue] = []
        for mq, pq in list(self._queues.items()):
            if mq.topic not in self.subscriptions or (
                mq.topic in desired and mq not in desired[mq.topic]
            ):
                dropped.append(mq)
                self._release(pq, "rebalanced")
        wanted = sorted(mq for mine in desired.values() for mq in mine if mq not in self._queues)
        new = [mq for mq in wanted if mq not in self._releasing]
        if len(new) < len(wanted):
            self._retry_soon = True  # reopen once our own hand-over is done
        if self._locking and new:
            held, _ = await self.membership.lock(new)
            if len(held) < len(new):
                self._retry_soon = True  # the previous owner has not let go yet
            new = [mq for mq in new if mq in held]
        opened = await asyncio.gather(*(self._open(mq) for mq in new))
        gained = [mq for mq, ok in zip(new, opened, strict=True) if ok]
        if dropped or gained:
            logger.info(
                "push consumer {} ({}): +{} -{} queues, now {}",
                self.group,
                self.client_id,
                len(gained),
                len(dropped),
                ", ".join(str(q) for q in sorted(self._queues)) or "none",
            )

    async def _refetch_route(self, topic: str) -> None:
        """Read ``topic``'s route again (a failure leaves the cached one in place)."""
        try:
            await self.routes.fetch(topic)
        except FabricError as exc:
            self._throttle.warn(
                ("route", topic), "push consumer {}: cannot refresh the route of {}: {}",
                self.group, topic, exc,
            )  # fmt: skip

    async def _refresh_retry_route(self) -> None:
        """Ask for the retry topic's route again while a broker that took a send-back is
        not in it (the broker creates the topic on the first one, 14.2)."""
        route = self.routes.cached(self._retry_topic)
        if route is not None:
            self._sent_back_to -= {q.broker_name for q in route.read_queues}
            if not self._sent_back_to:
                return
        try:
            route = await self.routes.fetch(self._retry_topic)
        except NoRouteError:
            return  # the NameServers learn it with the broker's next registration
        self._sent_back_to -= {q.broker_name for q in route.read_queues}

    async def _renew_locks(self) -> None:
        pqs = [pq for pq in self._streams.values() if pq.state is not StreamState.DROPPED]
        if not pqs:
            return
        held, answered = await self.membership.lock([pq.mq for pq in pqs])
        for pq in pqs:
            if pq.mq in answered and pq.mq not in held and self._queues.get(pq.mq) is pq:
                logger.warning("push consumer {}: lost the lock of {}", self.group, pq.mq)
                self._release(pq, "lock lost", unlock=False)

    # -- streams ------------------------------------------------------------------------

    async def _open(self, mq: MessageQueue) -> bool:
        """Open a stream of ``mq``; True when it is open."""
        sub = self.subscriptions.get(mq.topic)
        if sub is None or self._closing:
            return False
        try:
            address = await self.routes.broker_address(mq.topic, mq.broker_name, master=False)
        except FabricError as exc:
            self._throttle.warn(
                ("open", mq), "push consumer {}: cannot open {}: {}", self.group, mq, exc
            )
            return False
        stream_id = next(self._stream_ids)
        if mq.topic == self._retry_topic:
            # Each retried message goes to its original topic's listener (_submit); the
            # queue's own listener and pool are those of a real subscription.
            sub = next((s for t, s in self.subscriptions.items() if t != mq.topic), sub)
            if sub.topic == mq.topic:
                return False  # nothing but the retry topic is subscribed
        pq = ProcessQueue(
            mq,
            stream_id,
            address,
            sub.listener,
            self._dispatcher(sub),
            orderly=self.options.orderly,
            tag_filter=sub.tag_filter if mq.topic != self._retry_topic else None,
        )
        # Registered before the request: pushes may be read before the reply is awaited.
        self._queues[mq] = pq
        self._streams[stream_id] = pq
        options = self.options
        body = ConsumeOpenBody(
            consumer_group=self.group,
            client_id=self.client_id,
            stream_id=stream_id,
            topic=mq.topic,
            queue_id=mq.queue_id,
            offset=self.store.get(mq) if self.store is not None else -1,
            consume_from=int(options.consume_from),
            timestamp=options.consume_timestamp,
            filter_type=sub.data.filter_type,
            expression=sub.data.expression,
            window_msgs=options.prefetch,
            window_bytes=options.prefetch_bytes,
            exclusive=self._locking,
            commit=self._clustering,
        )
        try:
            conn = self.client.connection(address)
            reply = await conn.call(RequestCode.CONSUME_OPEN, body, ConsumeOpenReply)
        except QueueLockedError:
            self._forget(pq)
            self._retry_soon = True
            return False
        except FabricError as exc:
            self._forget(pq)
            # The route may be stale (the broker went, or the topic's queues or its
            # permission changed): ask again, so the next rebalance uses the new one.
            self.routes.refresh_soon(mq.topic)
            self._throttle.warn(
                ("open", mq), "push consumer {}: cannot open {}: {}", self.group, mq, exc
            )
            return False
        except asyncio.CancelledError:
            self._forget(pq)
            raise
        if pq.state is not StreamState.OPENING:
            return False  # closed while opening (STREAM_CLOSED or shutdown)
        pq.opened(reply.start_offset)
        logger.debug("push consumer {}: {} open at offset {}", self.group, mq, reply.start_offset)
        if self._clustering:
            # Commit the start at once: a new group's LAST_OFFSET position must not move
            # on if this consumer dies before its first ack (messages would be skipped).
            self._mark_dirty(pq)
        return True

    def _forget(self, pq: ProcessQueue) -> None:
        """Drop ``pq`` from every table (its stream is gone or never was)."""
        for timer in pq.stop(StreamState.DROPPED):
            timer.cancel()
        if self._queues.get(pq.mq) is pq:
            del self._queues[pq.mq]
        self._streams.pop(pq.stream_id, None)
        self._dirty.discard(pq)
        if pq.idle_waiter is not None and not pq.idle_waiter.done():
            pq.idle_waiter.set_result(None)

    def _stop(self, pq: ProcessQueue, state: StreamState) -> None:
        for timer in pq.stop(state):
            timer.cancel()

    def _release(self, pq: ProcessQueue, why: str, *, unlock: bool | None = None) -> None:
        """Hand ``pq``'s queue over: stop dispatching, then (in a task) wait, commit, close."""
        if self._queues.get(pq.mq) is pq:
            del self._queues[pq.mq]
        self._stop(pq, StreamState.CLOSING)
        logger.debug("push consumer {}: releasing {} ({})", self.group, pq.mq, why)
        task = self.loop.create_task(
            self._released(pq, self._locking if unlock is None else unlock)
        )
        self._releasing[pq.mq] = task

    async def _released(self, pq: ProcessQueue, unlock: bool) -> None:
        try:
            if pq.inflight > 0 and self.options.orderly:
                await self._wait_ordered(pq)
            elif pq.inflight > 0:
                try:
                    await asyncio.wait_for(
                        asyncio.shield(self._idle(pq)), self.options.release_timeout
                    )
                except asyncio.TimeoutError:
                    self._throttle.warn(
                        ("release", pq.mq),
                        "push consumer {}: {} handed over with {} message(s) still in listeners",
                        self.group,
                        pq.mq,
                        pq.inflight,
                    )
            await self._close_stream(pq, unlock=unlock)
        finally:
            if self._releasing.get(pq.mq) is asyncio.current_task():
                del self._releasing[pq.mq]
            self._wakeup.set()

    async def _wait_ordered(self, pq: ProcessQueue) -> None:
        """Ordered: let the message in the listener finish before the hand-over, so that
        the next owner never runs the queue's next message beside it; but not for ever.

        The queue's lock is renewed meanwhile (its stream is still ours), so without a
        bound one stuck listener would keep the queue from the whole group.
        """
        idle = self._idle(pq)
        first = min(self.options.release_timeout, self.options.orderly_release_timeout)
        limit = self.options.orderly_release_timeout
        try:
            await asyncio.wait_for(asyncio.shield(idle), first)
            return
        except asyncio.TimeoutError:
            pass
        self._throttle.warn(
            ("release", pq.mq),
            "push consumer {}: {} waits for its ordered listener before the hand-over "
            "({:.0f}s so far, at most {:.0f}s)",
            self.group,
            pq.mq,
            first,
            limit,
        )
        try:
            await asyncio.wait_for(asyncio.shield(idle), max(0.0, limit - first))
        except asyncio.TimeoutError:
            logger.warning(
                "push consumer {}: the ordered listener of {} has run for over {:.0f}s; "
                "handing the queue over anyway: its next owner may run the next messages "
                "beside it, and consumes that message again",
                self.group,
                pq.mq,
                limit,
            )

    def _idle(self, pq: ProcessQueue) -> asyncio.Future[None]:
        """A future resolved once ``pq`` has nothing in listeners (shared: shield it)."""
        if pq.idle_waiter is None or pq.idle_waiter.done():
            pq.idle_waiter = self.loop.create_future()
            if pq.inflight <= 0:
                pq.idle_waiter.set_result(None)
        return pq.idle_waiter

    async def _close_stream(self, pq: ProcessQueue, *, unlock: bool) -> None:
        """Commit ``pq``'s offset and CONSUME_CLOSE its stream (a dropped one: nothing)."""
        if pq.state is StreamState.DROPPED:
            return
        self._streams.pop(pq.stream_id, None)
        self._dirty.discard(pq)
        pq.state = StreamState.DROPPED
        offset = pq.commit_offset()
        if self.store is not None:
            self.store.update(pq.mq, offset)
        commit = offset if self._clustering and offset >= 0 else -1
        body = ConsumeCloseBody(stream_id=pq.stream_id, commit_offset=commit, unlock=unlock)
        try:
            await self.client.connection(pq.address).call(RequestCode.CONSUME_CLOSE, body, Empty)
        except StreamNotFoundError:
            pass  # the broker closed it first (STREAM_CLOSED on its way)
        except FabricError as exc:
            self._throttle.warn(
                ("close", pq.mq), "push consumer {}: closing {}: {}", self.group, pq.mq, exc
            )

    async def _probe_streams(self) -> None:
        """Ask each open stream for a reply; drop those the broker no longer has."""
        pqs = [pq for pq in self._queues.values() if pq.state is StreamState.OPEN]

        async def probe(pq: ProcessQueue) -> None:
            try:
                conn = self.client.connection(pq.address)
                reply = await conn.request(
                    RequestCode.CONSUME_ACK, ConsumeAckBody(stream_id=pq.stream_id)
                )
            except ConnectionClosedError:
                gone = "the broker is away"
            except FabricError:
                return  # slow: try again next time
            else:
                if reply.code != ResponseCode.STREAM_NOT_FOUND:
                    return
                gone = "the broker no longer has it"
            if self._queues.get(pq.mq) is pq and pq.state is StreamState.OPEN:
                self._throttle.warn(
                    ("probe", pq.mq),
                    "push consumer {}: stream of {} lost ({}); reopening",
                    self.group,
                    pq.mq,
                    gone,
                )
                self._forget(pq)
                self._retry_soon = True

        await asyncio.gather(*(probe(pq) for pq in pqs))

    # -- pushes -------------------------------------------------------------------------

    def _on_push(self, code: int, stream_id: int, body: msgspec.Raw, frames: list[Buffer]) -> None:
        """A frame with Flag.PUSH arrived (called by the Connection, on the loop)."""
        try:
            if code == _PUSH_MESSAGES:
                self._on_messages(stream_id, body, frames)
            elif code == _STREAM_CLOSED:
                self._on_stream_closed(stream_id, decode_body(body, StreamClosedBody).reason)
            elif code == _NOTIFY:
                if decode_body(body, ConsumerGroupBody).consumer_group == self.group:
                    # The members changed, or a subscribed topic's queues did: read the
                    # routes again before the rebalance this wakes.
                    self._routes_stale = True
                    self._wakeup.set()
            else:
                logger.debug("push consumer {}: ignored push code {}", self.group, code)
        except FrameError as exc:
            self._throttle.warn(
                ("push", code), "push consumer {}: bad push {}: {}", self.group, code, exc
            )

    def _on_messages(self, stream_id: int, body: msgspec.Raw, frames: list[Buffer]) -> None:
        pq = self._streams.get(stream_id)
        if pq is None or not pq.accepting:
            return  # closing or closed: the records are read again by the next owner
        push = decode_body(body, PushBody)
        broker = pq.mq.broker_name
        verify = self.options.verify_crc
        msgs: list[MessageExt] = []
        for frame in frames:
            try:
                msgs.append(MessageExt.decode(frame, broker, verify))
            except (RecordError, MessageIllegalError) as exc:
                self._throttle.warn(
                    ("record", pq.mq),
                    "push consumer {}: skipped a bad record of {}: {}",
                    self.group,
                    pq.mq,
                    exc,
                )
        ready, due = pq.receive(msgs, push.next_offset)
        if len(ready) > 1 and pq.mq.topic != self._retry_topic:
            # The common case: one listener and one pool for the whole push.
            pq.inflight += len(ready)
            listener = pq.listener
            pq.dispatcher.submit_all([Job(pq, msg, listener) for msg in ready])
        else:
            for msg in ready:
                self._submit(pq, msg)
        if due:
            self._mark_dirty(pq)

    def _on_stream_closed(self, stream_id: int, reason: str) -> None:
        pq = self._streams.get(stream_id)
        if pq is None:
            return
        logger.info(
            "push consumer {}: broker closed the stream of {} ({})", self.group, pq.mq, reason
        )
        self._forget(pq)
        if reason in _ROUTE_CHANGED:
            self.routes.refresh_soon(pq.mq.topic)
        if not self._closing:
            self._retry_soon = True
            if reason != "lock_lost":
                self._wakeup.set()

    # -- dispatch -----------------------------------------------------------------------

    def _dispatcher(self, sub: Subscription) -> Dispatcher:
        """The pool that runs ``sub``'s listener (started on first use)."""
        if sub.is_async:
            if self._tasks is None:
                self._tasks = TaskDispatcher(self.loop, self.options.consume_threads, self._on_done)
            return self._tasks
        if self._threads is None:
            name = f"fabric-consume {self.group}"
            self._threads = ThreadDispatcher(
                self.loop, self.options.consume_threads, self._on_done, name
            )
        return self._threads

    def _submit(self, pq: ProcessQueue, msg: MessageExt) -> None:
        listener, dispatcher = pq.listener, pq.dispatcher
        if pq.mq.topic == self._retry_topic:
            # A retried message: reported under its original topic (MessageExt.from_record).
            sub = self.subscriptions.get(msg.topic)
            if sub is None or sub.topic == self._retry_topic:
                self._throttle.warn(
                    ("unsubscribed", pq.mq),
                    "push consumer {}: dropped a retried message of {}, a topic it does "
                    "not subscribe",
                    self.group,
                    msg.topic,
                )
                self._finished(pq, msg)
                return
            tags = sub.tag_filter
            if tags is not None and tags.tags and not tags.matches_tags(msg.tags):
                self._finished(pq, msg)  # the subscription changed since: not wanted now
                return
            listener, dispatcher = sub.listener, self._dispatcher(sub)
        pq.inflight += 1
        dispatcher.submit(Job(pq, msg, listener))

    def _finished(self, pq: ProcessQueue, msg: MessageExt) -> None:
        """``msg`` is done (consumed, sent back, or not wanted): ack it, go on (ordered)."""
        if pq.done(msg):
            self._mark_dirty(pq)
        if pq.orderly:
            pq.busy = False
            for nxt in pq.take_next():
                self._submit(pq, nxt)

    def _on_done(self, jobs: list[Job]) -> None:
        if self.tracer is not None:
            self._trace_consumed(jobs)
        for job in jobs:
            pq = job.source
            assert isinstance(pq, ProcessQueue)
            pq.settled()
            status = job.status
            if status is None or pq.state is StreamState.DROPPED:
                continue
            if status is _SUCCESS:
                self._finished(pq, job.msg)
                continue
            self._failed(pq, job)

    def _trace_consumed(self, jobs: list[Job]) -> None:
        """One ``consume`` trace event per job that ran (only when tracing)."""
        tracer = self.tracer
        if tracer is None:
            return
        now = _now_ms()
        for job in jobs:
            status = job.status
            if status is None:
                continue  # not run: no listener saw it
            pq = job.source
            assert isinstance(pq, ProcessQueue)
            msg = job.msg
            error = job.error
            cost = round(job.elapsed * 1000)
            tracer.on_event(
                "consume",
                msg.msg_id,
                msg.topic,
                status.name if error is None else type(error).__name__,
                now - cost,
                cost,
                pq.mq.broker_name,
                msg.queue_id,
                msg.queue_offset,
            )

    def _trace_sent_back(
        self, pq: ProcessQueue, msg: MessageExt, max_times: int, started: int, error: object
    ) -> None:
        """A ``retry`` trace event for a send-back, or ``dlq`` when it is known to make the
        message a dead letter (max_reconsume_times given and reached; with -1 the limit is
        the broker's, unknown here: traced as ``retry``)."""
        tracer = self.tracer
        if tracer is None:
            return
        dead = max_times == 0 or 0 < max_times <= msg.reconsume_times
        tracer.on_event(
            "dlq" if dead else "retry",
            msg.msg_id,
            msg.topic,
            "OK" if error is None else type(error).__name__,
            started,
            max(0, _now_ms() - started),
            pq.mq.broker_name,
            msg.queue_id,
            msg.queue_offset,
        )

    def _failed(self, pq: ProcessQueue, job: Job) -> None:
        pq.failures += 1
        now = self.loop.time()
        if now - pq.last_failure_log >= LOG_INTERVAL:
            error = job.error
            cause = f"{type(error).__name__}: {error}" if error is not None else "RECONSUME_LATER"
            logger.warning(
                "push consumer {}: {} message(s) of {} to consume again ({}; last at offset {})",
                self.group,
                pq.failures,
                pq.mq,
                cause,
                job.msg.queue_offset,
            )
            pq.failures = 0
            pq.last_failure_log = now
        if not pq.accepting:
            return  # handed over or shutting down: the next owner consumes it again
        msg = job.msg
        if not self._clustering:
            self._retry_later(pq, msg)  # BROADCASTING: no retry topic (as RocketMQ)
        elif not pq.orderly:
            self._send_back(pq, msg, self.options.max_reconsume_times)
        elif 0 <= self.options.max_reconsume_times <= msg.reconsume_times:
            self._send_back(pq, msg, 0)  # ordered, out of retries: to the DLQ
        else:
            self._retry_later(pq, msg)

    def _retry_later(self, pq: ProcessQueue, msg: MessageExt) -> None:
        """Consume ``msg`` again after ``reconsume_delay`` (13.7)."""
        pq.retries[msg.queue_offset] = self.loop.call_later(
            self.options.reconsume_delay, self._retry, pq, msg
        )

    def _send_back(self, pq: ProcessQueue, msg: MessageExt, max_times: int) -> None:
        """CONSUMER_SEND_MSG_BACK ``msg`` to its broker, in a task counted in flight (a
        queue handed over waits for it, so its commit can pass the message)."""
        pq.inflight += 1
        task = self.loop.create_task(self._sending_back(pq, msg, max_times))
        self._send_backs.add(task)
        task.add_done_callback(self._send_backs.discard)

    async def _sending_back(self, pq: ProcessQueue, msg: MessageExt, max_times: int) -> None:
        body = ConsumerSendBackBody(
            consumer_group=self.group,
            topic=pq.mq.topic,
            commitlog_offset=msg.commitlog_offset,
            msg_id=msg.msg_id,
            delay_level=0,
            max_reconsume_times=max_times,
        )
        started = _now_ms() if self.tracer is not None else 0
        try:
            conn = self.client.connection(pq.address)
            await conn.call(RequestCode.CONSUMER_SEND_MSG_BACK, body, Empty)
        except FabricError as exc:
            if self.tracer is not None:
                self._trace_sent_back(pq, msg, max_times, started, exc)
            if pq.accepting:
                self._throttle.warn(
                    ("send back", pq.mq),
                    "push consumer {}: cannot send a message of {} back ({}); "
                    "consuming it again here",
                    self.group,
                    pq.mq,
                    exc,
                )
                self._retry_later(pq, msg)
        else:
            if self.tracer is not None:
                self._trace_sent_back(pq, msg, max_times, started, None)
            if pq.state is not StreamState.DROPPED:
                self._finished(pq, msg)
            if self._retry_topic and max_times != 0:
                self._sent_back_to.add(pq.mq.broker_name)
        finally:
            pq.settled()

    def _retry(self, pq: ProcessQueue, msg: MessageExt) -> None:
        pq.retries.pop(msg.queue_offset, None)
        if pq.accepting:
            self._submit(pq, msgspec.structs.replace(msg, reconsume_times=msg.reconsume_times + 1))

    # -- acks and offsets ---------------------------------------------------------------

    def _mark_dirty(self, pq: ProcessQueue) -> None:
        self._dirty.add(pq)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        """One CONSUME_ACK per queue with credits or a new commit offset (ONEWAY)."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for pq in dirty:
            if pq.state is StreamState.DROPPED or self.client.closed:
                continue
            ack = pq.take_ack()
            if ack is None:
                continue
            credit_msgs, credit_bytes, commit = ack
            if self.store is not None and commit >= 0:
                self.store.update(pq.mq, commit)
            body = ConsumeAckBody(
                stream_id=pq.stream_id,
                credit_msgs=credit_msgs,
                credit_bytes=credit_bytes,
                commit_offset=commit if self._clustering else -1,
            )
            try:
                sent = self.client.connection(pq.address).send_oneway_nowait(
                    RequestCode.CONSUME_ACK, body
                )
            except FabricError:
                sent = False
            if not sent:
                pq.give_back(ack)  # the broker is away: owed with the next ack, or moot

    async def _persist(self) -> None:
        store = self.store
        if store is None:
            return
        try:
            await self.loop.run_in_executor(None, store.persist)
        except OSError as exc:
            self._throttle.warn(
                ("persist",), "offset file {} cannot be written: {}", store.path, exc
            )
