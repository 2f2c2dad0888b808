"""Blocking requests on sockets owned by the calling thread: the fast path of ``Producer.send``.

Why it exists (issue 3): a blocking send that goes through the client's IOThread crosses
two thread hops, caller to loop and loop back to caller, and on a busy two-core machine
each hop costs tens of microseconds of wake-up and GIL hand-over. That alone was more
than a sync send's whole budget (1.5x a raw DEALER/ROUTER round trip). Here the calling
thread sends the request and waits for the reply itself, on a DEALER of its own.

The threading rule (fabric.iothread) still holds: every socket here is created, used and
closed by one thread at a time. Each thread gets a :class:`_Channel` (its DEALERs, one
per broker address) guarded by a lock that only its own thread takes while it sends;
:meth:`DirectRequester.close` takes that lock before closing the channel's sockets, so a
close from another thread never touches a socket in use (the lock is the memory barrier
ZeroMQ asks for when a socket changes threads). A thread that exits leaves its channel
behind; the next new channel closes the channels of dead threads.

What the fast path does not do, on purpose: retries, route lookups, waiting for a
lost connection to come back. A new socket waits for its first connect (or refusal);
after that, when the socket has no live connection (IMMEDIATE=1 makes the send fail at
once) :meth:`DirectRequester.request` raises :class:`NotConnectedError` and nothing was
sent; the caller then takes the IOThread path, which knows how to wait and retry.
Each DEALER has a ZeroMQ monitor, read between 50 ms slices of the wait for a reply: a
server that goes away while a request waits fails it within a slice with
ConnectionClosedError, as the IOThread's connections do (fabric.transport).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, cast

import msgspec
import zmq
from loguru import logger
from zmq.utils.monitor import parse_monitor_message

from fabric.errors import (
    ConnectionClosedError,
    FabricError,
    MessageTooLargeError,
    ProtocolError,
    RequestTimeoutError,
)
from fabric.protocol.codes import RequestCode
from fabric.protocol.frames import (
    Buffer,
    FrameError,
    FrameTooLargeError,
    Reply,
    encode_request,
    parse_reply,
)
from fabric.transport import send_message

__all__ = ["DirectRequester", "NotConnectedError"]

_HWM: Final = 1000
# Monitor events that mean the server went away.
_DOWN: Final = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CLOSED
_UP: Final = zmq.EVENT_HANDSHAKE_SUCCEEDED
_EVENTS: Final = _UP | _DOWN
_NOBLOCK: Final = int(zmq.NOBLOCK)
_POLLIN: Final = int(zmq.POLLIN)
# Seconds a waiting request sleeps in poll before it reads the monitor's events.
_SLICE: Final = 0.05
# Seconds close() waits for one thread's request to finish before giving up on it.
_CLOSE_WAIT: Final = 5.0
_RCVMORE: Final = int(zmq.RCVMORE)
_EVENTS_OPT: Final = int(zmq.EVENTS)
_COPY_THRESHOLD: Final = zmq.COPY_THRESHOLD
# The Cython-level calls (see fabric.transport; sends go through its send_message):
# Socket.poll builds a Poller per call, and recv_multipart/getsockopt add checks and
# flag arithmetic; on the path of a blocking send these were ~15 us of the client's CPU
# per round trip.
_raw_recv: Final = cast("Callable[[zmq.Socket[Any], int], bytes]", zmq.backend.Socket.recv)
_raw_get: Final = cast("Callable[[zmq.Socket[Any], int], int]", zmq.backend.Socket.get)
_zmq_poll: Final = cast(
    "Callable[[list[tuple[zmq.Socket[Any], int]], int], list[Any]]", zmq.zmq_poll
)


class NotConnectedError(ConnectionClosedError):
    """The calling thread's socket has no live connection to the server; nothing was sent."""


class _Link:
    """One DEALER to one server, and the PAIR that receives its monitor events."""

    __slots__ = ("address", "ids", "monitor", "socket")

    def __init__(self, context: zmq.Context[Any], address: str) -> None:
        self.address = address
        self.ids: Iterator[int] = itertools.count(1)
        socket: zmq.Socket[Any] = context.socket(zmq.DEALER)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.IMMEDIATE, 1)
            socket.setsockopt(zmq.SNDHWM, _HWM)
            socket.setsockopt(zmq.RCVHWM, _HWM)
            self.monitor: zmq.Socket[Any] = socket.get_monitor_socket(_EVENTS)
            socket.connect(address)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise ConnectionClosedError(f"cannot connect: {exc.strerror}", address=address) from exc
        self.socket = socket

    def wait_up(self, timeout: float) -> bool:
        """Wait for a new link's first verdict: True once connected, False if refused."""
        deadline = time.monotonic() + timeout
        monitor = self.monitor
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not monitor.poll(int(remaining * 1000) + 1, _POLLIN):
                return False
            event = parse_monitor_message(monitor.recv_multipart())["event"]
            if event & _DOWN:
                return False
            if event & _UP:
                return True

    def has_events(self) -> bool:
        """True when monitor events are waiting (an option read, cheaper than a poll)."""
        return bool(_raw_get(self.monitor, _EVENTS_OPT) & _POLLIN)

    def went_down(self) -> bool:
        """Read the monitor events waiting; True if one says the server went away."""
        down = False
        monitor = self.monitor
        while monitor.poll(0, _POLLIN):
            event = parse_monitor_message(monitor.recv_multipart())["event"]
            if event & _DOWN:
                down = True
        return down

    def close(self) -> None:
        try:
            self.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


class _Channel:
    """The links of one thread; ``lock`` is held while that thread uses them."""

    __slots__ = ("closed", "links", "lock", "thread")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.lock = threading.Lock()
        self.links: dict[str, _Link] = {}
        self.closed = False

    def close(self) -> None:
        self.closed = True
        links, self.links = self.links, {}
        for link in links.values():
            link.close()


class DirectRequester:
    """Request and wait for the reply on a DEALER owned by the calling thread.

    Thread-safe: each thread uses its own sockets. Sockets come from a context of the
    requester's own, made on first use and terminated by :meth:`close`.
    """

    def __init__(self) -> None:
        self._context: zmq.Context[Any] | None = None
        # The calling thread's channel (a new thread never sees an old thread's), and
        # every channel, for close().
        self._local = threading.local()
        self._channels: list[_Channel] = []
        self._registry = threading.Lock()
        self._closed = False

    def request(
        self,
        address: str,
        code: RequestCode,
        body: msgspec.Struct,
        bodies: Sequence[Buffer],
        timeout: float,
    ) -> Reply:
        """Send one request to ``address`` and wait up to ``timeout`` seconds for its reply.

        Raises:
            NotConnectedError: no live connection yet (or any more); nothing was sent.
            ConnectionClosedError: the server went away with the request in flight, or
                the requester is closed.
            RequestTimeoutError: no reply in time; the server may have processed it.
            MessageTooLargeError: the request is over a protocol limit; nothing was sent.
            ProtocolError: the reply cannot be parsed.
        """
        channel: _Channel | None = getattr(self._local, "channel", None)
        if channel is None:
            channel = self._new_channel()
        with channel.lock:
            if channel.closed:
                raise ConnectionClosedError("the client is shut down", address=address)
            link = channel.links.get(address)
            if link is None:
                link = channel.links[address] = _Link(self._context_now(), address)
                # A new socket connects in the background: wait for it (a refused
                # connect is known in milliseconds) rather than give up on it at once.
                if not link.wait_up(timeout):
                    raise NotConnectedError("cannot connect to the server", address=address)
            return self._round_trip(link, code, body, bodies, timeout)

    def _round_trip(
        self,
        link: _Link,
        code: RequestCode,
        body: msgspec.Struct,
        bodies: Sequence[Buffer],
        timeout: float,
    ) -> Reply:
        address = link.address
        request_id = next(link.ids)
        try:
            frames = encode_request(code, request_id, body, bodies)
        except FrameTooLargeError as exc:
            raise MessageTooLargeError(
                exc.remark, size=exc.size, limit=exc.limit, address=address
            ) from exc
        if link.has_events():
            link.went_down()  # events from before this request say nothing about it
        socket = link.socket
        try:
            # Refused (EAGAIN) at the first frame with no connection (IMMEDIATE), or at
            # a later one when the connection broke meanwhile: nothing went out then.
            sent = send_message(socket, frames, _COPY_THRESHOLD)
        except zmq.ZMQError as exc:
            raise ConnectionClosedError(f"cannot write: {exc.strerror}", address=address) from exc
        if not sent:
            raise NotConnectedError("no connection to the server", address=address)
        deadline = time.monotonic() + timeout
        polled = [(socket, _POLLIN)]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeoutError(
                    f"no reply within {timeout}s", timeout=timeout, address=address
                )
            # Only the DEALER is polled (one socket polls faster than two); the monitor
            # is read between slices, so a vanished server is noticed within a slice.
            if _zmq_poll(polled, int(min(remaining, _SLICE) * 1000) + 1):
                reply = self._read(socket, request_id, address)
                if reply is not None:
                    return reply
            elif link.went_down():
                raise ConnectionClosedError(
                    "the server went away with the request in flight", address=address
                )

    @staticmethod
    def _read(socket: zmq.Socket[Any], request_id: int, address: str) -> Reply | None:
        """The reply to ``request_id``, or None for a late reply to an earlier request."""
        frames = [_raw_recv(socket, _NOBLOCK)]
        while _raw_get(socket, _RCVMORE):
            frames.append(_raw_recv(socket, _NOBLOCK))
        try:
            reply = parse_reply(frames)
        except FrameError as exc:
            if exc.request_id not in (request_id, None):
                return None
            raise ProtocolError(f"bad reply: {exc.remark}", address=address) from None
        return reply if reply.request_id == request_id else None

    def _context_now(self) -> zmq.Context[Any]:
        with self._registry:
            if self._closed:
                raise ConnectionClosedError("the client is shut down")
            if self._context is None:
                self._context = zmq.Context()
            return self._context

    def _new_channel(self) -> _Channel:
        thread = threading.current_thread()
        with self._registry:
            if self._closed:
                raise ConnectionClosedError("the client is shut down")
            for other in [c for c in self._channels if not c.thread.is_alive()]:
                self._channels.remove(other)
                with other.lock:  # free: its thread is gone
                    other.close()
            channel = self._local.channel = _Channel(thread)
            self._channels.append(channel)
            return channel

    def close(self, timeout: float = _CLOSE_WAIT) -> None:
        """Close every thread's sockets, each once its request in flight (if any) is over.

        Safe from any thread and idempotent. A thread still sending after ``timeout``
        keeps its sockets (and the context stays open); that is logged.
        """
        with self._registry:
            self._closed = True
            channels, self._channels = self._channels, []
            context, self._context = self._context, None
        stuck = 0
        for channel in channels:
            if channel.lock.acquire(timeout=timeout):
                try:
                    channel.close()
                finally:
                    channel.lock.release()
            else:
                channel.closed = True
                stuck += 1
        if context is None:
            return
        if stuck:
            logger.warning("{} thread(s) still sending at close; their sockets stay open", stuck)
            return
        try:
            context.term()
        except zmq.ZMQError as exc:  # pragma: no cover - term after closing every socket
            raise FabricError(f"cannot close the direct-send context: {exc}") from exc
