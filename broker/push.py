"""Push streams: records pushed to consumers while their credit window is open (PROTOCOL.md 13.3).

A stream is one queue pushed to one connection. It is keyed by (routing id, stream id)
and knows its group, client, queue, filter, the offset of its next read, the
``next_offset`` last pushed, and its window: messages and bytes it may still push,
never more than its initial size. The window is open while both are above zero.

**The pump.** Streams with work are in one run queue, served round robin by a loop
callback (:meth:`PushService._pump`): each turn reads one batch for one stream as a pull
would (broker.reading: ``pull_max_msgs`` records, ``pull_default_bytes`` bytes, capped
by the window; at least one record while the window is open), filters it, and sends ONE
PUSH_MESSAGES with the records as stored, one per frame. A callback does a bounded
amount of work (:data:`_PUMP_READS` reads or :data:`_PUMP_BYTES` bytes) and then yields
to the loop, so a fast stream cannot starve requests, timers or other streams.

**States.** A stream is QUEUED (in the run queue), WAITING (caught up: parked on its
queue until broker.arrivals says a message was stored there, no polling), NO_CREDIT
(window closed: an ack reopens it), BLOCKED (ZeroMQ refused the last push: its peer's
queue is full or the peer is gone; a timer retries with backoff, 50 ms doubling to 1 s)
or CLOSED. A refused push changes nothing: the records are read again from the store
on the retry. A stream whose peer is gone is dropped once its client is no longer a
live member heard on that connection (broker.consumers).

**Offsets.** A read that only skipped filtered records moves the stream's offset without
pushing; when the stream then catches up it pushes a PUSH_MESSAGES with no record so the
consumer can commit past them. Acks commit the group's offset (when the stream commits),
never above the ``next_offset`` last pushed.

Pushes are shaped like replies: ``[code, 1, stream_id, RESPONSE|PUSH, remark, body]``
(:func:`encode_push`). Everything runs on the broker's loop; the socket is reached only
through a :class:`Pusher` (the server). Nothing is logged per message.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Final, Protocol, TypeVar

import msgspec
from loguru import logger

from broker.offsets import ConsumerOffsets
from broker.store import GetStatus, MessageStore
from fabric.errors import ServerBusyError
from fabric.protocol.codes import PROTOCOL_VERSION, Flag, RequestCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import PushBody, StreamClosedBody

from .arrivals import Arrivals, QueueKey
from .locks import QueueLockTable
from .reading import QueueFilter, read_queue

__all__ = [
    "Delivery",
    "PushService",
    "Pusher",
    "Stream",
    "StreamState",
    "encode_push",
]

#: Reads one pump callback does at most before it yields to the loop.
_PUMP_READS: Final = 32
#: Bytes one pump callback pushes at most before it yields to the loop.
_PUMP_BYTES: Final = 4 * 1024 * 1024
#: First and longest wait before a refused push is tried again (seconds).
_RETRY_FIRST: Final = 0.05
_RETRY_MAX: Final = 1.0

_K = TypeVar("_K")
_PUSH_FLAGS: Final = int(Flag.RESPONSE | Flag.PUSH)
_encoder: Final = msgspec.msgpack.Encoder()
_FOUND: Final = GetStatus.FOUND

#: Why a stream was closed, for the STREAM_CLOSED remark (the reason itself is the body).
_REMARKS: Final = {
    "offset_reset": "the group's offsets of the topic were reset",
    "topic_deleted": "the topic was deleted",
    "queue_removed": "the topic's update took this queue out of its readable queues",
    "topic_unreadable": "the topic's update took away its read permission",
    "lock_lost": "another client of the group took the queue's lock",
    "client_expired": "the client left the group (expired or unregistered)",
    "replaced": "the stream id was opened again on another connection",
    "shutdown": "the broker is shutting down",
}


class Delivery(enum.IntEnum):
    """What became of a message handed to the ROUTER socket."""

    SENT = 0
    #: The peer's queue is full (high-water mark): try again later.
    BUSY = 1
    #: The peer is not connected (EHOSTUNREACH), or the socket is closed.
    GONE = 2


class Pusher(Protocol):
    """Hands a message to a peer without waiting (the server, which owns the socket)."""

    def push(self, identity: bytes, frames: Sequence[Buffer]) -> Delivery:
        """Send ``frames`` to the peer ``identity`` now, or say why not."""
        ...


def encode_push(
    code: RequestCode,
    stream_id: int,
    body: msgspec.Struct,
    *,
    remark: str = "",
    frames: Sequence[Buffer] = (),
) -> list[Buffer]:
    """The frames of a push: ``[code, 1, stream_id, RESPONSE|PUSH, remark, body]`` + frames."""
    header = _encoder.encode((int(code), PROTOCOL_VERSION, stream_id, _PUSH_FLAGS, remark, body))
    return [header, *frames]


class StreamState(enum.IntEnum):
    """Where a stream is in the pump's cycle (see the module docstring)."""

    QUEUED = 0
    WAITING = 1
    NO_CREDIT = 2
    BLOCKED = 3
    CLOSED = 4


class Stream:
    """One open push stream."""

    __slots__ = (
        "backoff",
        "bytes_left",
        "client_id",
        "commit",
        "exclusive",
        "filter",
        "group",
        "identity",
        "key",
        "msgs_left",
        "next_offset",
        "pushed_offset",
        "queue_id",
        "state",
        "stream_id",
        "timer",
        "topic",
        "window_bytes",
        "window_msgs",
    )

    def __init__(
        self,
        identity: bytes,
        stream_id: int,
        *,
        group: str,
        client_id: str,
        topic: str,
        queue_id: int,
        offset: int,
        window_msgs: int,
        window_bytes: int,
        filter: QueueFilter,
        exclusive: bool,
        commit: bool,
    ) -> None:
        self.identity = identity
        self.stream_id = stream_id
        self.group = group
        self.client_id = client_id
        self.topic = topic
        self.queue_id = queue_id
        self.key: QueueKey = (topic, queue_id)
        #: Where the next read starts (past every record looked at, filtered ones too).
        self.next_offset = offset
        #: The ``next_offset`` of the last push (acks never commit past it).
        self.pushed_offset = offset
        self.window_msgs = window_msgs
        self.window_bytes = window_bytes
        self.msgs_left = window_msgs
        self.bytes_left = window_bytes
        self.filter = filter
        self.exclusive = exclusive
        self.commit = commit
        self.state = StreamState.NO_CREDIT
        self.timer: asyncio.TimerHandle | None = None
        self.backoff = 0.0

    @property
    def window_open(self) -> bool:
        """True while the stream may push: messages and bytes left are both above zero."""
        return self.msgs_left > 0 and self.bytes_left > 0

    def __repr__(self) -> str:
        return (
            f"<Stream {self.stream_id} {self.group}@{self.topic}:{self.queue_id} "
            f"{self.state.name} next={self.next_offset} window={self.msgs_left}/{self.bytes_left}>"
        )


class PushService:
    """Every push stream of one broker, and the pump that feeds them.

    Args:
        loop: the broker's loop.
        store: the MessageStore to read from.
        offsets: the committed offsets acks write to.
        locks: the queue locks (CONSUME_CLOSE with ``unlock``).
        arrivals: the arrival notices that wake WAITING streams.
        pusher: sends pushes (the server).
        max_msgs: most records in one push (the pull limit).
        max_bytes: most bytes in one push (the pull default), one record at least.
        max_streams: most streams open at once.
        client_identity: the routing id of a client's last HEARTBEAT, or None when it is
            not a live member of any group (a stream whose peer is gone is dropped
            unless its client is still live on that connection).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        store: MessageStore,
        offsets: ConsumerOffsets,
        locks: QueueLockTable,
        arrivals: Arrivals,
        pusher: Pusher,
        *,
        max_msgs: int,
        max_bytes: int,
        max_streams: int,
        client_identity: Callable[[str], bytes | None],
    ) -> None:
        self._loop = loop
        self._store = store
        self._offsets = offsets
        self._locks = locks
        self._pusher = pusher
        self._max_msgs = max_msgs
        self._max_bytes = max_bytes
        self.max_streams = max_streams
        self._client_identity = client_identity
        self._streams: dict[tuple[bytes, int], Stream] = {}
        self._by_client: dict[str, set[Stream]] = {}
        self._by_queue: dict[QueueKey, set[Stream]] = {}
        self._waiting: dict[QueueKey, set[Stream]] = {}
        self._run: deque[Stream] = deque()
        self._scheduled = False
        self._closed = False
        arrivals.watch(self._waiting, self._on_arrival)
        #: Records pushed since the start.
        self.pushed = 0
        #: Pushes ZeroMQ refused (peer busy or gone) since the start.
        self.refused = 0

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, identity: bytes, stream_id: int) -> Stream | None:
        """The stream ``stream_id`` of connection ``identity``, or None."""
        return self._streams.get((identity, stream_id))

    def streams(self) -> list[Stream]:
        """Every open stream."""
        return list(self._streams.values())

    # -- requests -------------------------------------------------------------------------

    def open(
        self,
        identity: bytes,
        stream_id: int,
        *,
        group: str,
        client_id: str,
        topic: str,
        queue_id: int,
        offset: int,
        window_msgs: int,
        window_bytes: int,
        filter: QueueFilter,
        exclusive: bool,
        commit: bool,
    ) -> Stream:
        """Open a stream (the request was checked) and start pushing after this callback.

        A stream with the same id on this connection is replaced silently. A stream of
        the same client with the same id, group and queue on another connection (the
        client reconnected) is closed with ``replaced``.

        Raises:
            ServerBusyError: ``max_streams`` streams are open already.
        """
        old = self._streams.get((identity, stream_id))
        if old is not None:
            self._close(old, None)
        for other in list(self._by_client.get(client_id, ())):
            if (
                other.stream_id == stream_id
                and other.group == group
                and other.key == (topic, queue_id)
            ):
                self._close(other, "replaced")
        if len(self._streams) >= self.max_streams:
            raise ServerBusyError(f"{self.max_streams} push streams are open on this broker")
        stream = Stream(
            identity,
            stream_id,
            group=group,
            client_id=client_id,
            topic=topic,
            queue_id=queue_id,
            offset=offset,
            window_msgs=window_msgs,
            window_bytes=window_bytes,
            filter=filter,
            exclusive=exclusive,
            commit=commit,
        )
        self._streams[(identity, stream_id)] = stream
        self._by_client.setdefault(client_id, set()).add(stream)
        self._by_queue.setdefault(stream.key, set()).add(stream)
        self._enqueue(stream)
        return stream

    def ack(
        self,
        identity: bytes,
        stream_id: int,
        credit_msgs: int,
        credit_bytes: int,
        commit_offset: int,
    ) -> bool:
        """CONSUME_ACK: reopen the window, commit, pump; False when the stream is not open."""
        stream = self._streams.get((identity, stream_id))
        if stream is None:
            return False
        stream.msgs_left = min(stream.window_msgs, stream.msgs_left + credit_msgs)
        stream.bytes_left = min(stream.window_bytes, stream.bytes_left + credit_bytes)
        self._commit(stream, commit_offset)
        if stream.state is StreamState.NO_CREDIT and stream.window_open:
            self._enqueue(stream)
        return True

    def close_stream(
        self, identity: bytes, stream_id: int, commit_offset: int, unlock: bool
    ) -> bool:
        """CONSUME_CLOSE: commit, end the stream, maybe unlock; False when it is not open."""
        stream = self._streams.get((identity, stream_id))
        if stream is None:
            return False
        self._commit(stream, commit_offset)
        self._close(stream, None)
        if unlock:
            self._locks.unlock(stream.group, stream.client_id, stream.topic, stream.queue_id)
        return True

    def _commit(self, stream: Stream, offset: int) -> None:
        if offset >= 0 and stream.commit:
            self._offsets.commit(
                stream.group, stream.topic, stream.queue_id, min(offset, stream.pushed_offset)
            )

    # -- closing by the broker ------------------------------------------------------------

    def close_client(self, client_id: str, groups: Collection[str] | None, reason: str) -> int:
        """Close the streams of ``client_id`` (in ``groups`` only, when given); how many."""
        doomed = [
            s for s in self._by_client.get(client_id, ()) if groups is None or s.group in groups
        ]
        for stream in doomed:
            self._close(stream, reason)
        return len(doomed)

    def close_topic(
        self, topic: str, reason: str, group: str | None = None, from_queue: int = 0
    ) -> int:
        """Close the streams of ``topic`` (of ``group`` only, when given; on queues
        ``from_queue`` and up only); how many."""
        doomed = [
            s
            for key, streams in self._by_queue.items()
            if key[0] == topic and key[1] >= from_queue
            for s in streams
            if group is None or s.group == group
        ]
        for stream in doomed:
            self._close(stream, reason)
        return len(doomed)

    def close_exclusive(self, group: str, topic: str, queue_id: int, holder: str) -> int:
        """``holder`` took the queue's lock: close other clients' exclusive streams on it."""
        doomed = [
            s
            for s in self._by_queue.get((topic, queue_id), ())
            if s.exclusive and s.group == group and s.client_id != holder
        ]
        for stream in doomed:
            self._close(stream, "lock_lost")
        return len(doomed)

    def close_all(self, reason: str) -> int:
        """Close every stream, telling each peer ``reason``; how many (shutdown)."""
        doomed = list(self._streams.values())
        for stream in doomed:
            self._close(stream, reason)
        return len(doomed)

    def shutdown(self) -> None:
        """Close every stream (``shutdown``) and stop pumping. Idempotent."""
        if self._closed:
            return
        count = self.close_all("shutdown")
        self._closed = True
        self._run.clear()
        if count or self.refused:
            logger.info(
                "push: closed {} streams; {} records pushed, {} pushes refused (peer busy or gone)",
                count,
                self.pushed,
                self.refused,
            )

    def _close(self, stream: Stream, reason: str | None) -> None:
        if stream.state is StreamState.CLOSED:
            return
        if stream.state is StreamState.WAITING:
            self._unwait(stream)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        stream.state = StreamState.CLOSED  # the run queue skips it
        key = (stream.identity, stream.stream_id)
        if self._streams.get(key) is stream:
            del self._streams[key]
        _discard(self._by_client, stream.client_id, stream)
        _discard(self._by_queue, stream.key, stream)
        logger.debug("push: closed {} ({})", stream, reason or "by the client")
        if reason is not None:
            # Best effort: a peer that is gone or not reading misses it, and finds out
            # when its acks get STREAM_NOT_FOUND.
            body = StreamClosedBody(reason=reason)
            remark = _REMARKS.get(reason, "")
            self._pusher.push(
                stream.identity,
                encode_push(RequestCode.STREAM_CLOSED, stream.stream_id, body, remark=remark),
            )

    # -- the pump -------------------------------------------------------------------------

    def _enqueue(self, stream: Stream) -> None:
        state = stream.state
        if state is StreamState.QUEUED or state is StreamState.CLOSED or self._closed:
            return
        if state is StreamState.WAITING:
            self._unwait(stream)
        stream.state = StreamState.QUEUED
        self._run.append(stream)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._pump)

    def _wait(self, stream: Stream) -> None:
        stream.state = StreamState.WAITING
        waiting = self._waiting.get(stream.key)
        if waiting is None:
            waiting = self._waiting[stream.key] = set()
        waiting.add(stream)

    def _unwait(self, stream: Stream) -> None:
        _discard(self._waiting, stream.key, stream)

    def _on_arrival(self, key: QueueKey) -> None:
        """A message was stored in queue ``key``: its waiting streams go back to work."""
        streams = self._waiting.pop(key, None)
        if not streams:
            return
        run = self._run
        for stream in streams:
            stream.state = StreamState.QUEUED
            run.append(stream)
        self._schedule()

    def _pump(self) -> None:
        """One bounded round of pushes, streams in turn; reschedules itself when work is left."""
        self._scheduled = False
        if self._closed:
            return
        run = self._run
        reads = 0
        spent = 0
        while run and reads < _PUMP_READS and spent < _PUMP_BYTES:
            stream = run.popleft()
            if stream.state is not StreamState.QUEUED:
                continue  # closed while queued
            if not stream.window_open:
                stream.state = StreamState.NO_CREDIT
                continue
            reads += 1
            try:
                spent += self._pump_one(stream)
            except Exception:
                logger.exception("push: pumping {} failed; retrying later", stream)
                self._block(stream)
        if run:
            self._schedule()

    def _pump_one(self, stream: Stream) -> int:
        """Read one batch for ``stream`` and push it; the bytes pushed."""
        r = read_queue(
            self._store,
            stream.topic,
            stream.queue_id,
            stream.next_offset,
            min(stream.msgs_left, self._max_msgs),
            min(stream.bytes_left, self._max_bytes),
            stream.filter,
        )
        if r.status is _FOUND:
            records = r.records
            body = PushBody(next_offset=r.next_offset, max_offset=r.max_offset)
            frames = encode_push(RequestCode.PUSH_MESSAGES, stream.stream_id, body, frames=records)
            if not self._send(stream, frames):
                return 0
            size = sum(map(len, records))
            stream.msgs_left -= len(records)
            stream.bytes_left -= size
            stream.next_offset = stream.pushed_offset = r.next_offset
            self.pushed += len(records)
            if not stream.window_open:
                stream.state = StreamState.NO_CREDIT
            elif r.next_offset >= r.max_offset:
                self._wait(stream)
            else:
                self._run.append(stream)
            return size
        # Nothing to push: filtered out, removed by retention, out of range, or the end.
        stream.next_offset = r.next_offset
        if r.next_offset < r.max_offset:
            self._run.append(stream)  # more entries to look at
            return 0
        if stream.pushed_offset != stream.next_offset:
            # Caught up after skipping records: say so, the consumer commits past them.
            body = PushBody(next_offset=stream.next_offset, max_offset=r.max_offset)
            if not self._send(
                stream, encode_push(RequestCode.PUSH_MESSAGES, stream.stream_id, body)
            ):
                return 0
            stream.pushed_offset = stream.next_offset
        self._wait(stream)
        return 0

    def _send(self, stream: Stream, frames: list[Buffer]) -> bool:
        """Push ``frames`` for ``stream``; on refusal block or drop it and return False."""
        delivery = self._pusher.push(stream.identity, frames)
        if delivery is Delivery.SENT:
            stream.backoff = 0.0
            return True
        self.refused += 1
        if delivery is Delivery.GONE and self._client_identity(stream.client_id) != stream.identity:
            # The peer is gone and its client is not live on that connection: nobody
            # will read this stream again (a client reopens streams when it reconnects).
            self._close(stream, None)
        else:
            self._block(stream)
        return False

    def _block(self, stream: Stream) -> None:
        stream.state = StreamState.BLOCKED
        stream.backoff = min(max(stream.backoff * 2, _RETRY_FIRST), _RETRY_MAX)
        stream.timer = self._loop.call_later(stream.backoff, self._unblock, stream)

    def _unblock(self, stream: Stream) -> None:
        stream.timer = None
        if stream.state is StreamState.BLOCKED:
            stream.state = StreamState.NO_CREDIT  # the pump checks the window again
            self._enqueue(stream)


def _discard(index: dict[_K, set[Stream]], key: _K, stream: Stream) -> None:
    streams = index.get(key)
    if streams is not None:
        streams.discard(stream)
        if not streams:
            del index[key]
