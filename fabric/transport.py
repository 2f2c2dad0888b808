"""The library's ZeroMQ boundary: client DEALER connections with request-id futures, server ROUTERs.

A :class:`Connection` is one DEALER socket connected to one server's ROUTER. It lives on
one asyncio loop (an IOThread's, see fabric.iothread for the threading rule), has one
reader task that matches replies to requests by request id through a dict of futures,
and one writer path (``send_multipart`` on the same loop). Many requests are in flight
at once; each has its own deadline. :class:`BlockingConnection` is the same for
blocking code: it owns (or shares) an IOThread and hands every call to it.

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
import itertools
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

import msgspec
import zmq
import zmq.asyncio
from loguru import logger

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
    "bind_router",
    "send_to",
]

T = TypeVar("T")

#: Seconds a request waits for its reply unless told otherwise.
DEFAULT_TIMEOUT: Final = 3.0
_DEFAULT_HWM: Final = 10_000
# Seconds allowed for opening and closing a BlockingConnection, on top of request deadlines.
_START_TIMEOUT: Final = 5.0
# Ids start at 1 so that 0 never looks like "unset" in a capture.
_FIRST_REQUEST_ID: Final = 1


def _too_large(exc: FrameError, address: str | None) -> FabricError:
    if isinstance(exc, FrameTooLargeError):
        return MessageTooLargeError(exc.remark, size=exc.size, limit=exc.limit, address=address)
    return from_response(exc.code, exc.remark, address=address)


class Connection:
    """One DEALER connection to one server; create, use and close it on one running loop.

    Args:
        context: the zmq asyncio context (an IOThread's, in a client).
        endpoint: the server's ROUTER endpoint, e.g. ``"tcp://127.0.0.1:9876"``.
        timeout: default seconds a request waits for its reply.
        hwm: send and receive high-water marks (messages).
        routing_id: an explicit ZeroMQ routing id (default: one chosen by libzmq).

    Raises:
        RuntimeError: created outside a running asyncio loop.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        hwm: int = _DEFAULT_HWM,
        routing_id: bytes | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.endpoint = endpoint
        self.timeout = timeout
        self._ids = itertools.count(_FIRST_REQUEST_ID)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._closed = False
        socket = context.socket(zmq.DEALER)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.IMMEDIATE, 1)
            socket.setsockopt(zmq.SNDHWM, hwm)
            socket.setsockopt(zmq.RCVHWM, hwm)
            if routing_id is not None:
                socket.setsockopt(zmq.ROUTING_ID, routing_id)
            socket.connect(endpoint)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise TransportError(f"cannot connect: {exc.strerror}", address=endpoint) from exc
        self._socket = socket
        self._reader = loop.create_task(self._read_loop(), name=f"fabric-read {endpoint}")

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._pending)

    # -- the reader ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        socket = self._socket
        while True:
            try:
                frames = await socket.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if self._closed or exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                    return
                logger.exception("connection {}: receive failed", self.endpoint)
                continue
            try:
                self._dispatch(frames)
            except Exception:
                logger.exception("connection {}: cannot dispatch a reply", self.endpoint)

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
            ConnectionClosedError: the connection closed first.
        """
        request_id = next(self._ids)
        frames = self._encode(code, request_id, body, bodies, 0)
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        deadline = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(self._send_and_wait(frames, waiter), deadline)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"no reply to {code.name} within {deadline}s",
                timeout=deadline,
                address=self.endpoint,
            ) from None
        finally:
            self._pending.pop(request_id, None)

    async def _send_and_wait(self, frames: list[Buffer], waiter: asyncio.Future[Reply]) -> Reply:
        await self._send(frames)
        return await waiter

    async def _send(self, frames: list[Buffer]) -> None:
        try:
            await self._socket.send_multipart(frames)
        except zmq.ZMQError as exc:
            if self._closed or exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                raise ConnectionClosedError("connection is closed", address=self.endpoint) from exc
            raise TransportError(f"send failed: {exc}", address=self.endpoint) from exc

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
        deadline = self.timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self._send(frames), deadline)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(
                f"could not send {code.name} within {deadline}s",
                timeout=deadline,
                address=self.endpoint,
            ) from None

    # -- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the reader, fail what is in flight, close the socket (linger 0). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(
                    ConnectionClosedError("connection closed", address=self.endpoint)
                )
        self._pending.clear()
        self._socket.close(linger=0)

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
        raise TransportError(f"cannot bind: {exc.strerror}", address=endpoint) from exc
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
