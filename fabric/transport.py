"""The library's ZeroMQ boundary: client DEALER connections with request-id futures, server ROUTERs.

A :class:`Connection` is one DEALER socket connected to one server's ROUTER. It lives on
one asyncio loop (an IOThread's, see fabric.iothread for the threading rule), has one
reader that matches replies to requests by request id through a dict of waiters, and
one writer path on the same loop. Many requests are in flight at once; each has its
own deadline. :class:`BlockingConnection` is the same for blocking code: it owns (or
shares) an IOThread and hands every call to it.

The DEALER is a plain (not zmq.asyncio) socket that the connection drives itself: one
``loop.add_reader`` callback on the socket's ZeroMQ FD reads every reply there is and
resolves its waiter directly, and writes go straight to the socket, queueing in an
outbox only when it would block. pyzmq's asyncio socket costs a future, a task step and
enum arithmetic per message; without them a request-reply round trip on the loop is as
fast as a blocking one (about 60 us less per round trip, measured on loopback).

Two request styles share the same table of waiters: :meth:`Connection.request` is a
coroutine (one asyncio future per request), and :meth:`Connection.request_callback`
calls a plain function with the reply or the error, with no coroutine, task or future
per request: the producer's hot path (issue 3: many sends in flight, one loop).

A broker may also send messages that answer no request (docs/PROTOCOL.md section 13.1):
they have Flag.PUSH set beside RESPONSE, and go to the ``on_push`` callback given to
the connection, never to the table of waiters. Telling them apart costs one bit test on
the header the reader parses anyway.

With ``monitor=True`` a connection watches its socket's ZeroMQ monitor events: when the
server goes away (EVENT_DISCONNECTED, or a failed connect attempt) every request in flight
fails at once with ConnectionClosedError instead of waiting for its deadline, and new
requests fail fast until the connection is back (a producer then retries on another
broker at once, SPEC C6). A server killed with SIGKILL is noticed in milliseconds.

Servers call :func:`bind_router` for their ROUTER socket and :func:`send_to` to reply.

Socket options, and why:

* DEALER ``IMMEDIATE=1``: a request waits (within its deadline) until the connection is
  up, instead of being queued for a server that may never come back and delivered long
  after its caller gave up.
* ``LINGER=0`` everywhere: closing never waits for unsent messages.
* ROUTER ``ROUTER_MANDATORY=1``: a reply to a vanished client is an error we count
  instead of a silent drop; replies are sent with ``NOBLOCK`` so one slow client never
  stalls the server loop.
* ROUTER ``MAXMSGSIZE``: a frame over MAX_REQUEST_BYTES disconnects its sender before it
  is buffered; frames under it but over the protocol limits get a MESSAGE_ILLEGAL reply.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, TypeVar, cast

import msgspec
import zmq
import zmq.asyncio
from loguru import logger
from zmq.utils.monitor import parse_monitor_message

from fabric.errors import (
    ConnectionClosedError,
    FabricError,
    MessageTooLargeError,
    ProtocolError,
    RequestTimeoutError,
    TransportError,
    from_response,
)
from fabric.iothread import IOThread
from fabric.protocol.codes import Flag, RequestCode, ResponseCode
from fabric.protocol.frames import (
    MAX_REQUEST_BYTES,
    Buffer,
    FrameError,
    FrameTooLargeError,
    Reply,
    encode_request,
    parse_reply,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "BlockingConnection",
    "Connection",
    "PushCallback",
    "bind_router",
    "send_message",
    "send_to",
]

T = TypeVar("T")

#: Seconds a request waits for its reply unless told otherwise.
DEFAULT_TIMEOUT: Final = 3.0
_DEFAULT_HWM: Final = 10_000
#: Seconds between two looks at a socket while something waits on it (Connection._arm_recheck).
RECHECK_S: Final = 0.02
# Seconds allowed for opening and closing a BlockingConnection, on top of request deadlines.
_START_TIMEOUT: Final = 5.0
# Ids start at 1 so that 0 never looks like "unset" in a capture.
_FIRST_REQUEST_ID: Final = 1


#: What :meth:`Connection.request_callback` hands its callback: the reply, or the error.
ReplyCallback = Callable[["Reply | FabricError"], object]
#: ``on_push(code, stream_id, body, frames)``: a frame with Flag.PUSH (a RequestCode, the
#: stream id or 0, the body still encoded, the frames after frame 0).
PushCallback = Callable[[int, int, msgspec.Raw, list[Buffer]], object]
_PUSH: Final = int(Flag.PUSH)

# Monitor events: the connection is up / the server went away / a connect attempt failed.
_UP: Final = zmq.EVENT_HANDSHAKE_SUCCEEDED
_DOWN: Final = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED

# The Cython-level socket calls with int flags. Socket.send_multipart and
# recv_multipart add per-frame type checks and IntFlag arithmetic: the raw send is about
# six times cheaper per frame (0.33 against 2.1 us for 1 KiB frames, pyzmq 27), which
# matters when one SEND_BATCH_MESSAGE carries hundreds of body frames.
_raw_send: Final = cast("Callable[..., object]", zmq.backend.Socket.send)
_raw_recv: Final = zmq.backend.Socket.recv
# get(option) is int for the integer options used here.
_raw_get: Final = cast("Callable[[zmq.Socket[Any], int], int]", zmq.backend.Socket.get)
_MORE: Final = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_LAST: Final = int(zmq.NOBLOCK)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_EVENTS: Final = int(zmq.EVENTS)
_RCVMORE: Final = int(zmq.RCVMORE)
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)


def _too_large(exc: FrameError, address: str | None) -> FabricError:
    if isinstance(exc, FrameTooLargeError):
        return MessageTooLargeError(exc.remark, size=exc.size, limit=exc.limit, address=address)
    return from_response(exc.code, exc.remark, address=address)


class _Waiter(Protocol):
    """What the reader resolves: an asyncio future, or a :class:`_CallbackWaiter`."""

    def done(self) -> bool: ...

    def set_result(self, result: Reply, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Outgoing:
    """A message the socket would not take yet (EAGAIN), waiting in the outbox."""

    __slots__ = ("cancelled", "frames", "written")

    def __init__(self, frames: list[Buffer]) -> None:
        self.frames = frames
        self.cancelled = False
        #: Resolved (None) once written; made only for a sender that waits for it.
        self.written: asyncio.Future[None] | None = None

    def cancel(self) -> None:
        """Never write it (its request is over)."""
        self.cancelled = True
        if self.written is not None and not self.written.done():
            self.written.cancel()


class _CallbackWaiter:
    """A waiter that calls a plain function once, with the reply or the error."""

    __slots__ = ("_callback", "_done", "outgoing", "timer")

    def __init__(self, callback: ReplyCallback) -> None:
        self._callback = callback
        self._done = False
        self.timer: asyncio.TimerHandle | None = None
        self.outgoing: _Outgoing | None = None

    def done(self) -> bool:
        return self._done

    def _finish(self) -> None:
        self._done = True
        if self.timer is not None:
            self.timer.cancel()
        if self.outgoing is not None:
            self.outgoing.cancel()  # not written yet (no connection): make sure it never is

    def set_result(self, result: Reply, /) -> None:
        if not self._done:
            self._finish()
            self._callback(result)

    def set_exception(self, exception: BaseException, /) -> None:
        if not self._done:
            self._finish()
            assert isinstance(exception, FabricError)
            self._callback(exception)


def send_message(
    socket: zmq.Socket[Any], frames: Sequence[Buffer], copy_threshold: int | None = None
) -> bool:
    """Send ``frames`` as one message without waiting; False when it was refused (EAGAIN).

    A DEALER refuses a message at its first frame when no peer can take it (high-water
    mark, or no connection with IMMEDIATE). It can also refuse a later frame, when the
    connection breaks while the message is being written: libzmq (``lb_t::sendpipe``)
    then discards the frames it took and drops the rest of the message as it comes.
    The rest is handed over here, so that the socket's next message starts clean, and
    False means in both cases that nothing of the message went out: it may be sent
    again whole.

    Frames of ``copy_threshold`` bytes or more (after the first) go zero-copy; None
    copies every frame.

    Raises:
        zmq.ZMQError: any other failure (the socket is closed or broken).
    """
    last = len(frames) - 1
    try:
        _raw_send(socket, frames[0], _MORE if last else _LAST)
    except zmq.Again:
        return False
    for i in range(1, last + 1):
        frame = frames[i]
        copy = copy_threshold is None or len(frame) < copy_threshold
        try:
            _raw_send(socket, frame, _MORE if i < last else _LAST, copy)
        except zmq.Again:
            for j in range(i + 1, last + 1):
                try:
                    _raw_send(socket, frames[j], _MORE if j < last else _LAST)
                except zmq.Again:
                    pass
            return False
    return True


class Connection:
    """One DEALER connection to one server; create, use and close it on one running loop.

    Args:
        context: the zmq context of the loop's thread (an IOThread's, in a client).
        endpoint: the server's ROUTER endpoint, e.g. ``"tcp://127.0.0.1:9876"``.
        timeout: default seconds a request waits for its reply.
        hwm: send and receive high-water marks (messages).
        routing_id: an explicit ZeroMQ routing id (default: one chosen by libzmq).
        monitor: watch the connection and fail requests at once when the server goes
            away (see the module docstring).
        on_push: called on the loop with each frame the server pushes (Flag.PUSH);
            without it such frames are dropped.

    Raises:
        RuntimeError: created outside a running asyncio loop.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        hwm: int = _DEFAULT_HWM,
        routing_id: bytes | None = None,
        monitor: bool = False,
        on_push: PushCallback | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._on_push = on_push
        self.endpoint = endpoint
        self.timeout = timeout
        self._ids = itertools.count(_FIRST_REQUEST_ID)
        self._pending: dict[int, _Waiter] = {}
        self._closed = False
        # Set by the monitor while the server is known to be away; requests fail fast.
        self._down = False
        self._monitor: zmq.asyncio.Socket | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Messages the socket would not take yet, oldest first (see _write).
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        # A call of _on_events is scheduled (after a write consumed the FD's edge).
        self._check_scheduled = False
        # The safety net of the edge-triggered FD (see _arm_recheck).
        self._recheck: asyncio.TimerHandle | None = None
        # Set by a lingering close(): resolved when the outbox is empty.
        self._drained: asyncio.Future[None] | None = None
        # A plain socket: this class drives it from the loop itself (module docstring).
        socket: zmq.Socket[Any] = context.socket(zmq.DEALER, socket_class=zmq.Socket)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.IMMEDIATE, 1)
            socket.setsockopt(zmq.SNDHWM, hwm)
            socket.setsockopt(zmq.RCVHWM, hwm)
            if routing_id is not None:
                socket.setsockopt(zmq.ROUTING_ID, routing_id)
            if monitor:
                # Before connect, so that the first connect attempt is seen too.
                # The monitor's PAIR comes from the asyncio context: awaited in _watch.
                self._monitor = cast(zmq.asyncio.Socket, socket.get_monitor_socket(_UP | _DOWN))
            socket.connect(endpoint)
            self._fd: int = _raw_get(socket, zmq.FD)
        except zmq.ZMQError as exc:
            if self._monitor is not None:
                socket.disable_monitor()
                self._monitor.close(linger=0)
            socket.close(linger=0)
            raise TransportError(f"cannot connect: {exc.strerror}", address=endpoint) from exc
        self._socket = socket
        loop.add_reader(self._fd, self._on_events)
        if self._monitor is not None:
            self._watcher = loop.create_task(
                self._watch(self._monitor), name=f"fabric-monitor {endpoint}"
            )

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    @property
    def down(self) -> bool:
        """True while the monitor knows the server is away (always False without a monitor)."""
        return self._down

    # -- the monitor --------------------------------------------------------------------

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            try:
                event = parse_monitor_message(await monitor.recv_multipart())["event"]
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError:
                return  # closed under us
            except Exception:
                logger.exception("connection {}: bad monitor event", self.endpoint)
                continue
            if event & _UP:
                if self._down:
                    logger.info("connection {}: server is back", self.endpoint)
                self._down = False
                self._schedule_check()  # the outbox may be writable now
            elif event & _DOWN:
                if not self._down:
                    logger.debug("connection {}: server away ({})", self.endpoint, event)
                self._down = True
                self._fail_all("the server went away")

    def _fail_all(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionClosedError(why, address=self.endpoint))

    # -- the reader ---------------------------------------------------------------------

    def _on_events(self) -> None:
        """The socket's FD is readable: handle every reply there is, and write the outbox.

        The ZeroMQ FD is edge-triggered: it signals that the socket's events *may* have
        changed, and stays quiet until they change again. So this reads until the
        socket says POLLIN no more, and any write made elsewhere is followed by a look
        at the events (see :meth:`_write`), since a write can consume the edge a reply
        rides on.
        """
        self._check_scheduled = False
        if self._closed:
            return
        socket = self._socket
        try:
            while True:
                events = _raw_get(socket, _EVENTS)
                if events & _POLLIN:
                    frames = [_raw_recv(socket, _NOBLOCK)]
                    while _raw_get(socket, _RCVMORE):
                        frames.append(_raw_recv(socket, _NOBLOCK))
                    try:
                        self._dispatch(frames)
                    except Exception:
                        logger.exception("connection {}: cannot dispatch a reply", self.endpoint)
                elif self._outbox and events & _POLLOUT:
                    if not self._flush_outbox():
                        # The refused send processed the socket's commands, so it may
                        # have taken the edge of a reply that arrived meanwhile: look
                        # again for input before leaving.
                        if _raw_get(socket, _EVENTS) & _POLLIN:
                            continue
                        return
                else:
                    return
        except zmq.Again:
            return
        except zmq.ZMQError as exc:
            if self._closed or exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                return
            logger.exception("connection {}: receive failed", self.endpoint)

    def _arm_recheck(self) -> None:
        """Look at the socket again in RECHECK_S while anything waits on it.

        The zmq FD is edge-triggered: an edge consumed where nobody looked (inside a
        send that met EAGAIN, say) never comes back, and a message in the outbox or a
        reply would then wait for the next unrelated event. Every path here is written
        to look again after it may have taken an edge; this timer, armed only while a
        message waits in the outbox or a request waits for its reply, bounds what a
        missed edge can cost to RECHECK_S instead of a request timeout. (A CI run saw
        a oneway send on a new connection wait 10 s once. The likelier cause of that
        was found later and fixed in :meth:`send_oneway`: the message had been
        written, but its waiter was made too late to be told.)
        """
        if self._recheck is None and not self._closed:
            self._recheck = self._loop.call_later(RECHECK_S, self._on_recheck)

    def _on_recheck(self) -> None:
        self._recheck = None
        if self._closed or not (self._outbox or self._pending):
            return
        self._on_events()
        if self._outbox or self._pending:
            self._arm_recheck()

    def _schedule_check(self) -> None:
        if not self._check_scheduled and not self._closed:
            self._check_scheduled = True
            self._loop.call_soon(self._on_events)

    def _dispatch(self, frames: list[bytes]) -> None:
        try:
            reply = parse_reply(frames)
        except FrameError as exc:
            waiter = self._pending.pop(exc.request_id, None) if exc.request_id is not None else None
            if waiter is not None and not waiter.done():
                waiter.set_exception(ProtocolError(exc.remark, address=self.endpoint))
            else:
                logger.warning("connection {}: dropped a bad reply: {}", self.endpoint, exc)
            return
        if reply.flags & _PUSH:
            if self._on_push is not None:
                self._on_push(reply.code, reply.request_id, reply.body, reply.frames)
            else:
                logger.debug("connection {}: dropped a push ({})", self.endpoint, reply.code)
            return
        waiter = self._pending.pop(reply.request_id, None)
        if waiter is None or waiter.done():
            # Its request timed out or was cancelled: nobody is waiting any more.
            logger.debug("connection {}: late reply {}", self.endpoint, reply)
            return
        waiter.set_result(reply)

    # -- the writer path ----------------------------------------------------------------

    def _encode(
        self,
        code: RequestCode,
        request_id: int,
        body: msgspec.Struct,
        bodies: Sequence[Buffer],
        flags: int,
    ) -> list[Buffer]:
        if self._closed:
            raise ConnectionClosedError("connection is closed", address=self.endpoint)
        try:
            return encode_request(code, request_id, body, bodies, flags=flags)
        except FrameError as exc:
            raise _too_large(exc, self.endpoint) from exc

    def _write(self, frames: list[Buffer]) -> _Outgoing | None:
        """Write one message now (None), or queue it until the socket takes it.

        A message is refused with EAGAIN at its first frame (high-water mark, or no
        connection with IMMEDIATE) or, when the connection breaks while it is being
        written, at a later one; libzmq then takes back the frames it had accepted
        (``lb_t::sendpipe``), so the whole message is unsent either way
        (:func:`send_message`). It then waits in the outbox, and later messages queue
        behind it, in order; :meth:`_on_events` writes them when the socket can take
        them.

        Raises:
            ConnectionClosedError: the socket is closed or broken.
        """
        if not self._outbox:
            socket = self._socket
            try:
                sent = send_message(socket, frames)
            except zmq.ZMQError as exc:
                raise ConnectionClosedError(
                    f"cannot write: {exc.strerror}", address=self.endpoint
                ) from exc
            if sent:
                # The send may have taken the FD's edge: asking for EVENTS processes
                # what the socket was told, and a reply already there needs a read now
                # (no new edge will come for it). Otherwise the next reply makes one.
                if _raw_get(socket, _EVENTS) & _POLLIN:
                    self._schedule_check()
                return None
            # A refused send takes the FD's edge as a successful one does (it processes
            # the socket's commands first): if that made the socket readable or
            # writable, no new edge will say so. (Behind a non-empty outbox nothing was
            # sent, so there is nothing to look at again.)
            if _raw_get(socket, _EVENTS) & (_POLLIN | _POLLOUT):
                self._schedule_check()
        outgoing = _Outgoing(frames)
        self._outbox.append(outgoing)
        self._arm_recheck()
        return outgoing

    def _flush_outbox(self) -> bool:
        """Write what the outbox holds, in order; False when the socket is full again."""
        outbox = self._outbox
        socket = self._socket
        while outbox:
            outgoing = outbox[0]
            if outgoing.cancelled:
                outbox.popleft()
                continue
            if not send_message(socket, outgoing.frames):
                return False
            outbox.popleft()
            if outgoing.written is not None and not outgoing.written.done():
                outgoing.written.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        return True

    async def request(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        bodies: Sequence[Buffer] = (),
        *,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request and wait for its reply, whatever its response code.

        Args:
            code: the request code.
            body: the request body Struct (fabric.protocol.messages.BODY_TYPES[code]).
            bodies: raw body frames (SEND_MESSAGE: one; SEND_BATCH_MESSAGE: one each).
            timeout: seconds to wait; default the connection's.

        Raises:
            MessageTooLargeError: a frame over its limit (nothing was sent).
            RequestTimeoutError: no reply in time (the request may have been processed).
            ConnectionClosedError: the connection closed first, or the server is away.
        """
        request_id = next(self._ids)
        frames = self._encode(code, request_id, body, bodies, 0)
        if self._down:
            raise ConnectionClosedError("the server is away", address=self.endpoint)
        waiter: asyncio.Future[Reply] = self._loop.create_future()
        self._pending[request_id] = waiter
        self._arm_recheck()
        deadline = self.timeout if timeout is None else timeout
        outgoing: _Outgoing | None = None
        try:
            outgoing = self._write(frames)
            return await asyncio.wait_for(waiter, deadline)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"no reply to {code.name} within {deadline}s",
                timeout=deadline,
                address=self.endpoint,
            ) from None
        finally:
            self._pending.pop(request_id, None)
            if outgoing is not None:
                outgoing.cancel()

    async def call(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        reply_type: type[T],
        bodies: Sequence[Buffer] = (),
        *,
        timeout: float | None = None,
    ) -> T:
        """Send one request; return its SUCCESS reply body decoded as ``reply_type``.

        Raises:
            FabricError: the subclass ``from_response`` maps a non-SUCCESS code to, or any
                error of :meth:`request`.
        """
        reply = await self.request(code, body, bodies, timeout=timeout)
        if reply.code != ResponseCode.SUCCESS:
            raise from_response(reply.code, reply.remark, address=self.endpoint)
        try:
            return reply.decode(reply_type)
        except FrameError as exc:
            raise ProtocolError(exc.remark, address=self.endpoint) from None

    def request_callback(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        bodies: Sequence[Buffer],
        callback: ReplyCallback,
        *,
        timeout: float | None = None,
    ) -> None:
        """Send one request; call ``callback`` once with its Reply or a FabricError.

        The callback-style twin of :meth:`request` for hot paths: no coroutine, task or
        future per request, one timer for its deadline. The callback runs on the loop,
        never inside this call, and must not block. Errors that the reply carries are
        not raised: the callback gets the Reply, whatever its code.

        Errors given to the callback: RequestTimeoutError (no reply in time; a request
        not yet written by then is never written), ConnectionClosedError (closed, or the
        server went away).

        Raises:
            MessageTooLargeError: a frame over its limit (nothing was sent, no callback).
        """
        request_id = next(self._ids)
        frames = self._encode(code, request_id, body, bodies, 0)
        loop = self._loop
        if self._down:
            error = ConnectionClosedError("the server is away", address=self.endpoint)
            loop.call_soon(callback, error)
            return
        try:
            outgoing = self._write(frames)
        except ConnectionClosedError as exc:
            loop.call_soon(callback, exc)
            return
        waiter = _CallbackWaiter(callback)
        waiter.outgoing = outgoing
        self._pending[request_id] = waiter
        self._arm_recheck()
        deadline = self.timeout if timeout is None else timeout
        waiter.timer = loop.call_later(deadline, self._expire, request_id, code, deadline)

    def _expire(self, request_id: int, code: RequestCode, deadline: float) -> None:
        waiter = self._pending.pop(request_id, None)
        if waiter is not None:
            waiter.set_exception(
                RequestTimeoutError(
                    f"no reply to {code.name} within {deadline}s",
                    timeout=deadline,
                    address=self.endpoint,
                )
            )

    def send_oneway_nowait(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        bodies: Sequence[Buffer] = (),
        *,
        timeout: float | None = None,
    ) -> bool:
        """Hand a ONEWAY request to ZeroMQ without waiting; False when the server is away.

        A message that cannot be written within ``timeout`` (no connection) is dropped,
        as oneway messages may be.

        Raises:
            MessageTooLargeError: a frame over its limit (nothing was sent).
        """
        frames = self._encode(code, next(self._ids), body, bodies, int(Flag.ONEWAY))
        if self._down:
            return False
        try:
            outgoing = self._write(frames)
        except ConnectionClosedError:
            return False
        if outgoing is not None:
            deadline = self.timeout if timeout is None else timeout
            self._loop.call_later(deadline, outgoing.cancel)
        return True

    async def send_oneway(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        bodies: Sequence[Buffer] = (),
        *,
        timeout: float | None = None,
    ) -> None:
        """Send a request with the ONEWAY flag: no reply, not even an error.

        Returns once the message is handed to ZeroMQ; ``timeout`` bounds the wait for a
        connection (RequestTimeoutError when it passes).
        """
        frames = self._encode(code, next(self._ids), body, bodies, int(Flag.ONEWAY))
        outgoing = self._write(frames)
        if outgoing is None:
            return
        deadline = self.timeout if timeout is None else timeout
        # Made now, before anything can run: a flush scheduled by _write may write the
        # message before a coroutine made here would start, and would then find no
        # future to resolve (the send then waited for its whole timeout).
        written = outgoing.written = self._loop.create_future()
        try:
            await asyncio.wait_for(written, deadline)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"could not send {code.name} within {deadline}s",
                timeout=deadline,
                address=self.endpoint,
            ) from None
        finally:
            outgoing.cancel()

    # -- closing ------------------------------------------------------------------------

    async def close(self, linger: float = 0.0) -> None:
        """Fail what is in flight, stop reading, close the socket. Idempotent.

        Args:
            linger: seconds given to messages already handed over and not answered by
                nature (ONEWAY requests) to reach the server: the outbox is written out
                first, then the socket closes with this ZeroMQ linger. 0 drops them.
        """
        if self._closed:
            return
        if linger > 0 and self._outbox and not self._down:
            self._drained = self._loop.create_future()
            self._schedule_check()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), linger)
            except asyncio.TimeoutError:
                pass
        self._closed = True
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        try:
            self._loop.remove_reader(self._fd)
        except (OSError, ValueError, RuntimeError):
            pass  # the loop is closing, or the fd is gone already
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
        self._fail_all("connection closed")
        for outgoing in self._outbox:
            outgoing.cancel()
        self._outbox.clear()
        if self._monitor is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
        self._socket.close(linger=round(linger * 1000) if linger > 0 else 0)

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class BlockingConnection:
    """A :class:`Connection` for blocking code; every call runs on an IOThread.

    Args:
        endpoint: the server's ROUTER endpoint.
        io: the IOThread to use; by default the connection starts (and stops) its own.
        timeout: default seconds a request waits for its reply.
    """

    def __init__(
        self, endpoint: str, *, io: IOThread | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._own_io = io is None
        self._io = IOThread(name=f"fabric-io {endpoint}").start() if io is None else io
        try:
            self._conn = self._io.run(self._open(), timeout=_START_TIMEOUT)
        except BaseException:
            if self._own_io:
                self._io.stop()
            raise

    async def _open(self) -> Connection:
        conn = Connection(self._io.context, self.endpoint, timeout=self.timeout)
        self._io.on_stop(conn.close)
        return conn

    def _wait(self, timeout: float | None) -> float:
        # The blocking wait outlives the request's own deadline, so the request's
        # RequestTimeoutError (with its address) is what the caller sees.
        return (self.timeout if timeout is None else timeout) + _START_TIMEOUT

    def request(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        bodies: Sequence[Buffer] = (),
        *,
        timeout: float | None = None,
    ) -> Reply:
        """Blocking :meth:`Connection.request`."""
        coro = self._conn.request(code, body, bodies, timeout=timeout)
        return self._io.run(coro, timeout=self._wait(timeout))

    def call(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        reply_type: type[T],
        bodies: Sequence[Buffer] = (),
        *,
        timeout: float | None = None,
    ) -> T:
        """Blocking :meth:`Connection.call`."""
        coro = self._conn.call(code, body, reply_type, bodies, timeout=timeout)
        return self._io.run(coro, timeout=self._wait(timeout))

    def send_oneway(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        bodies: Sequence[Buffer] = (),
        *,
        timeout: float | None = None,
    ) -> None:
        """Blocking :meth:`Connection.send_oneway`."""
        coro = self._conn.send_oneway(code, body, bodies, timeout=timeout)
        self._io.run(coro, timeout=self._wait(timeout))

    def close(self) -> None:
        """Close the connection, and the IOThread when it is this connection's own."""
        if self._own_io:
            self._io.stop()
            return
        if not self._conn.closed:
            self._io.run(self._close(), timeout=_START_TIMEOUT)

    async def _close(self) -> None:
        self._io.forget(self._conn.close)
        await self._conn.close()

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# Server side
# ---------------------------------------------------------------------------------------


def bind_router(
    context: zmq.asyncio.Context,
    endpoint: str,
    *,
    hwm: int = _DEFAULT_HWM,
    max_message_size: int = MAX_REQUEST_BYTES,
) -> tuple[zmq.asyncio.Socket, str]:
    """Create a ROUTER socket bound to ``endpoint``; return it and the endpoint it got.

    With port 0 (``tcp://127.0.0.1:0``) or ``*`` the OS picks a free port, and the
    returned endpoint names it (``tcp://127.0.0.1:41234``). Call it on the loop that
    will own the socket.

    Raises:
        TransportError: the bind failed (address in use, bad endpoint); the socket is closed.
    """
    socket = context.socket(zmq.ROUTER)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.SNDHWM, hwm)
        socket.setsockopt(zmq.RCVHWM, hwm)
        socket.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        socket.bind(endpoint)
        real = socket.getsockopt_string(zmq.LAST_ENDPOINT)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise TransportError(
            f"cannot bind: {zmq.strerror(exc.errno or 0)}", address=endpoint
        ) from exc
    return socket, real


async def send_to(socket: zmq.asyncio.Socket, identity: bytes, frames: Sequence[Any]) -> bool:
    """Send ``frames`` to the peer ``identity`` of a ROUTER without ever waiting.

    Returns:
        True when sent; False when the peer is gone (EHOSTUNREACH) or not reading (its
        queue is at the high-water mark). The caller decides whether that is worth a log.
    """
    try:
        await socket.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise
    return True
