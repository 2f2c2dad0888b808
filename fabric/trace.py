"""Message trace (SPEC M21): a client's trace events, batched and sent to ``%TRACE%``.

docs/PROTOCOL.md 14.6 is the contract. A producer or push consumer created with
``trace=True`` owns one :class:`TraceDispatcher` on its loop; the untraced path costs one
attribute check (``core.tracer is None``). The dispatcher:

* **collects** :class:`TraceEvent` values from any thread (:meth:`TraceDispatcher.add`
  appends to a deque, the one structure shared with the loop);
* **batches** them: a batch is sent when ``batch_max`` (100) events are waiting (the
  thread that adds the 100th wakes the loop once) and on a loop timer every
  ``interval`` (1 s), so no event waits longer than that; no busy loop, no task per event;
* **bounds memory**: past ``max_pending`` (10,000) waiting events, new ones are dropped
  and counted (:attr:`TraceDispatcher.dropped`), with one WARNING per interval at most;
* **sends** each batch as ONE message to ``%TRACE%`` (auto-created by the broker on first
  send): ``keys`` the traced message ids, deduplicated in order, body a MessagePack array
  of event maps; ONEWAY, through an internal ProducerCore (group :data:`TRACE_GROUP`, its
  own ClientCore on the same loop) that has no tracer, so trace records are never traced;
* **flushes** what is pending at shutdown and gives the internal producer a bounded time
  (:data:`CLOSE_TIMEOUT`) to hand it to the broker.

:func:`decode_events` and :func:`sort_events` are what ``Admin.trace`` uses to read a
message's trace back (QUERY_MESSAGE on ``%TRACE%`` by its id, 14.5).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import msgspec
from loguru import logger

from fabric.client import ClientCore
from fabric.message import Message, SendResult
from fabric.sending import ProducerCore, ProducerOptions

__all__ = [
    "BATCH_INTERVAL",
    "BATCH_MAX_EVENTS",
    "CLOSE_TIMEOUT",
    "COMMIT",
    "CONSUME",
    "DLQ",
    "MAX_PENDING",
    "RETRY",
    "ROLLBACK",
    "SEND",
    "STORE",
    "TRACE_GROUP",
    "TRACE_TOPIC",
    "TraceDispatcher",
    "TraceEvent",
    "TraceSender",
    "batch_keys",
    "decode_events",
    "describe_event",
    "encode_events",
    "now_ms",
    "open_tracer",
    "process_client_id",
    "sort_events",
]

#: The topic trace records go to (an ordinary topic, auto-created on first send).
TRACE_TOPIC: Final = "%TRACE%"
#: The producer group of the internal trace producer.
TRACE_GROUP: Final = "FABRIC_TRACE"
#: Most events in one trace record.
BATCH_MAX_EVENTS: Final = 100
#: Seconds an event waits at most before its batch is sent.
BATCH_INTERVAL: Final = 1.0
#: Events waiting beyond this are dropped (and counted).
MAX_PENDING: Final = 10_000
#: Seconds the internal producer gets at shutdown to hand the last batches over.
CLOSE_TIMEOUT: Final = 1.0

# Event types (docs/PROTOCOL.md 14.6). ``store`` is reserved for a broker-side event.
SEND: Final = "send"
STORE: Final = "store"
CONSUME: Final = "consume"
RETRY: Final = "retry"
DLQ: Final = "dlq"
COMMIT: Final = "commit"
ROLLBACK: Final = "rollback"

# Ties of timestamp (ms) sort in the order a message lives them.
_RANK: Final = {SEND: 0, STORE: 1, COMMIT: 2, ROLLBACK: 2, CONSUME: 3, RETRY: 4, DLQ: 5}
_HOST: Final = socket.gethostname()[:200] or "localhost"


class TraceEvent(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One thing that happened to one message, as a trace record's body holds it (a map).

    ``timestamp`` is when it started (ms since the epoch): a send's prepare, a listener's
    call; ``cost_ms`` how long it took until its outcome. Unknown numbers are -1, unknown
    strings empty.
    """

    #: ``send``, ``consume``, ``retry``, ``dlq``, ``commit`` or ``rollback`` (``store``
    #: is reserved for brokers).
    type: str
    #: The traced message's id (its uniq id).
    msg_id: str
    #: The message's topic (a retried message's original topic).
    topic: str = ""
    #: The producer or consumer group.
    group: str = ""
    #: The client that wrote the event.
    client_id: str = ""
    #: ms since the epoch when it started.
    timestamp: int = 0
    #: SendStatus name (``SEND_OK``, ``FLUSH_DISK_TIMEOUT``, ...), ``ONEWAY``, a
    #: ConsumeStatus name, ``OK``, or the class name of the exception that ended it.
    status: str = ""
    #: ms from the start to the outcome.
    cost_ms: int = 0
    #: The broker name, the queue id and the queue offset (-1: unknown).
    broker: str = ""
    queue_id: int = -1
    queue_offset: int = -1


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(list[TraceEvent])


def now_ms() -> int:
    """Wall-clock ms since the epoch."""
    return int(time.time() * 1000)


def encode_events(events: Sequence[TraceEvent]) -> bytes:
    """A trace record's body: a MessagePack array of event maps."""
    return _ENCODER.encode(events)


def decode_events(body: bytes | bytearray | memoryview) -> list[TraceEvent]:
    """The events of a trace record's body.

    Raises:
        msgspec.DecodeError: not a MessagePack array of event maps (ValidationError too).
    """
    return _DECODER.decode(body)


def batch_keys(events: Iterable[TraceEvent]) -> list[str]:
    """The keys of a trace record: its events' message ids, each once, in order."""
    return list(dict.fromkeys(e.msg_id for e in events if e.msg_id))


def sort_events(events: Iterable[TraceEvent]) -> list[TraceEvent]:
    """Events by timestamp; ties in the order a message lives them (send before consume)."""
    return sorted(events, key=lambda e: (e.timestamp, _RANK.get(e.type, 9)))


def describe_event(event: TraceEvent) -> str:
    """One line for an event (``fabric admin message trace``)."""
    when = datetime.datetime.fromtimestamp(event.timestamp / 1000, datetime.timezone.utc)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    queue = f"{event.broker or '-'}#{event.queue_id}" if event.queue_id >= 0 else "-"
    return (
        f"{stamp} {event.type} {event.status or '-'} {event.msg_id} topic={event.topic or '-'} "
        f"group={event.group or '-'} client={event.client_id or '-'} queue={queue} "
        f"offset={event.queue_offset} cost={event.cost_ms}ms"
    )


def process_client_id() -> str:
    """A client id for a client that has none of its own: ``host@pid``."""
    return f"{_HOST}@{os.getpid()}"


class TraceSender(Protocol):
    """Where a dispatcher's trace records go (the internal producer; a fake in tests)."""

    def send(self, msg: Message) -> None:
        """Hand one trace record over, oneway (on the loop). May raise."""
        ...

    async def close(self, timeout: float) -> None:
        """Let what was handed over leave (up to ``timeout``), then close."""
        ...


class _ProducerSender:
    """A :class:`TraceSender` over an untraced ProducerCore with its own ClientCore."""

    def __init__(self, core: ProducerCore) -> None:
        self.core = core

    def send(self, msg: Message) -> None:
        core = self.core
        item = core.prepare(msg, oneway=True)
        core.wait_for_room(block=False)
        core.submit(item)

    async def close(self, timeout: float) -> None:
        await self.core.close(timeout)


class TraceDispatcher:
    """Collects a client's trace events and sends them in batches (see the module doc).

    Create it on its loop, then :meth:`start`; :meth:`add` and the ``on_*`` helpers may be
    called from any thread; :meth:`close` on the loop.

    Args:
        loop: the client's loop.
        sender: where batches go.
        group: the client's group (written into events made by the helpers).
        client_id: the client's id (likewise).
        batch_max: most events per trace record.
        interval: seconds between two timer flushes (the longest an event waits).
        max_pending: events kept waiting at most; more are dropped and counted.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sender: TraceSender,
        *,
        group: str,
        client_id: str,
        batch_max: int = BATCH_MAX_EVENTS,
        interval: float = BATCH_INTERVAL,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if batch_max < 1 or max_pending < 1 or not interval > 0:
            raise ValueError("batch_max and max_pending must be >= 1, interval > 0")
        self.loop = loop
        self.sender = sender
        self.group = group
        self.client_id = client_id
        self.batch_max = batch_max
        self.interval = interval
        self.max_pending = max_pending
        #: Events dropped because ``max_pending`` were waiting (or after close).
        self.dropped = 0
        #: Trace records handed to the sender, and events in them.
        self.records = 0
        self.events = 0
        self._dropped_logged = 0
        self._send_failed = False
        self._pending: collections.deque[TraceEvent] = collections.deque()
        self._wake_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # -- any thread ---------------------------------------------------------------------

    def add(self, event: TraceEvent) -> None:
        """Queue one event; never blocks, never raises (drops beyond ``max_pending``)."""
        pending = self._pending
        if self._closed or len(pending) >= self.max_pending:
            self.dropped += 1  # approximate across threads; only a statistic
            return
        pending.append(event)
        # Append first, then test the flag (cleared by the loop before it drains): an
        # event is either drained by a wake-up already scheduled or schedules one.
        if len(pending) >= self.batch_max and not self._wake_pending:
            self._wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._flush_full)
            except RuntimeError:  # the loop is closed: the client is gone
                pass

    def on_send(self, topic: str, msg_id: str, started_ms: int, outcome: object) -> None:
        """A ``send`` event: ``outcome`` a SendResult, None (oneway) or an exception."""
        cost = max(0, now_ms() - started_ms)
        if isinstance(outcome, SendResult):
            queue = outcome.queue
            event = TraceEvent(
                type=SEND,
                msg_id=msg_id,
                topic=topic,
                group=self.group,
                client_id=self.client_id,
                timestamp=started_ms,
                status=outcome.status.name,
                cost_ms=cost,
                broker=queue.broker_name,
                queue_id=queue.queue_id,
                queue_offset=outcome.queue_offset,
            )
        else:
            event = TraceEvent(
                type=SEND,
                msg_id=msg_id,
                topic=topic,
                group=self.group,
                client_id=self.client_id,
                timestamp=started_ms,
                status="ONEWAY" if outcome is None else type(outcome).__name__,
                cost_ms=cost,
            )
        self.add(event)

    def on_event(
        self,
        kind: str,
        msg_id: str,
        topic: str,
        status: str,
        started_ms: int,
        cost_ms: int,
        broker: str = "",
        queue_id: int = -1,
        queue_offset: int = -1,
    ) -> None:
        """An event of this client's group and id (consume, retry, dlq, commit, rollback)."""
        self.add(
            TraceEvent(
                type=kind,
                msg_id=msg_id,
                topic=topic,
                group=self.group,
                client_id=self.client_id,
                timestamp=started_ms,
                status=status,
                cost_ms=cost_ms,
                broker=broker,
                queue_id=queue_id,
                queue_offset=queue_offset,
            )
        )

    def pending(self) -> int:
        """Events waiting for their batch."""
        return len(self._pending)

    # -- the loop -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the flush timer (on the loop)."""
        if self._timer is None and not self._closed:
            self._timer = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            self.flush()
            dropped = self.dropped
            if dropped > self._dropped_logged:
                logger.warning(
                    "trace of {}: {} event(s) dropped ({} waiting at most)",
                    self.group,
                    dropped - self._dropped_logged,
                    self.max_pending,
                )
                self._dropped_logged = dropped
            self._send_failed = False  # log a failing sender once per interval too
        except Exception:  # the timer must keep running
            logger.exception("trace of {}: flush failed", self.group)
        if not self._closed:
            self._timer = self.loop.call_later(self.interval, self._tick)

    def _flush_full(self) -> None:
        self._wake_pending = False
        pending = self._pending
        while len(pending) >= self.batch_max:
            self._send_batch(self.batch_max)

    def flush(self) -> None:
        """Send every waiting event now, ``batch_max`` per record (on the loop)."""
        pending = self._pending
        while pending:
            self._send_batch(self.batch_max)

    def _send_batch(self, limit: int) -> None:
        pending = self._pending
        batch: list[TraceEvent] = []
        try:
            while len(batch) < limit:
                batch.append(pending.popleft())
        except IndexError:
            pass
        if not batch:
            return
        msg = Message(TRACE_TOPIC, encode_events(batch), keys=batch_keys(batch))
        try:
            self.sender.send(msg)
        except Exception as exc:  # shut down, no room, ...: trace is best effort
            self.dropped += len(batch)
            self._dropped_logged += len(batch)  # said here, not again by the timer
            if not self._send_failed:
                self._send_failed = True
                logger.warning(
                    "trace of {}: cannot send {} event(s): {!r}", self.group, len(batch), exc
                )
            return
        self.records += 1
        self.events += len(batch)

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop the timer, send what is waiting, close the sender (bounded). Idempotent."""
        if self._closed:
            return
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        try:
            self.flush()
        finally:
            self._closed = True
            await self.sender.close(timeout)


def open_tracer(
    context: Any,
    nameservers: Sequence[str],
    *,
    group: str,
    client_id: str | None = None,
    timeout: float,
    route_refresh: float,
) -> TraceDispatcher:
    """A started TraceDispatcher with its internal producer, on the running loop.

    Args:
        context: the zmq asyncio context of the loop.
        nameservers: NameServer endpoints (those of the traced client).
        group: the traced client's group.
        client_id: the traced client's id (default ``host@pid``).
        timeout: seconds a request of the internal producer waits.
        route_refresh: seconds between two route refreshes.
    """
    client = ClientCore(context, nameservers, timeout=timeout, route_refresh=route_refresh)
    client.start()
    options = ProducerOptions(send_timeout=timeout, direct_send=False).check()
    core = ProducerCore(client, TRACE_GROUP, options)
    tracer = TraceDispatcher(
        client.loop,
        _ProducerSender(core),
        group=group,
        client_id=client_id or process_client_id(),
    )
    tracer.start()
    return tracer
