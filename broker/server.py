"""BrokerServer: the ROUTER socket, the store and the timers on one asyncio loop (thin controller).

The loop that runs :meth:`BrokerServer.start` owns the ROUTER socket (the threading rule
of fabric.iothread). The socket's descriptor is registered with ``loop.add_reader``: no
task and no future per request. The reader receives with non-blocking calls until the
socket is empty (or a burst is done, then it reschedules itself so timers and deferred
replies run), parses frame 0 with the one request decoder (fabric.protocol.frames),
looks the handler up in the dispatch table (broker.dispatch) and sends the handler's
reply without ever waiting on a slow client (non-blocking sends; a client that is gone
or not reading loses its reply, counted in :attr:`BrokerServer.undelivered`).

Deferred replies (a pull parked by long polling, a send waiting for SYNC_FLUSH) go out
through :meth:`BrokerServer.reply`, and pushes to consumers (PUSH_MESSAGES, STREAM_CLOSED,
NOTIFY_CONSUMER_IDS_CHANGED) through :meth:`BrokerServer.push`, from callbacks on the
same loop; a push ZeroMQ refuses (the peer's queue full, the peer gone) is reported to
its sender, which retries or drops it (broker.push). The store's flush
thread reaches the loop only through ``loop.call_soon_threadsafe``, once per flush.

Bad input never stops the loop (SPEC X3): a request whose id can be recovered gets an
error reply; anything else is dropped and counted, with at most one warning per second.
Background work (registration, offset persistence, timers) catches and logs its own
failures and carries on.

Files under the data directory: ``store/`` (the MessageStore), ``store/timer/`` (the timer
store of broker.timers), ``config/topics.json`` (broker.topics) and
``config/offsets.json`` (broker.offsets).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import msgspec
import zmq
import zmq.asyncio
from loguru import logger

from broker.store import MessageStore
from broker.store.record import encode_host
from fabric.errors import FabricError, to_response
from fabric.protocol.codes import Flag, ResponseCode
from fabric.protocol.frames import Buffer, FrameError, encode_reply, parse_request, request_code
from fabric.protocol.messages import RegisterBrokerBody
from fabric.transport import bind_router

from .config import BrokerConfig
from .dispatch import Dispatcher, Processors, build_dispatcher
from .offsets import ConsumerOffsets
from .processors import BrokerContext
from .processors.send import SyncFlushWaiters
from .push import Delivery
from .registry import Registry
from .timers import TimerService
from .topics import TopicTable

__all__ = ["BrokerServer"]

_ONEWAY: Final = int(Flag.ONEWAY)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_RCVMORE: Final = int(zmq.RCVMORE)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_MORE: Final = int(zmq.SNDMORE) | _NOBLOCK
# The Cython-level socket calls, as fabric.transport uses them: Socket.send_multipart and
# recv_multipart add per-frame type checks and flag arithmetic (~2 us a frame against
# ~0.3 us), and a SEND_BATCH_MESSAGE or a push carries hundreds of frames.
_raw_send: Final = cast("Callable[..., object]", zmq.backend.Socket.send)
_raw_recv: Final = zmq.backend.Socket.recv
_raw_get: Final = cast("Callable[[zmq.Socket[bytes], int], int]", zmq.backend.Socket.get)
_COPY_THRESHOLD: Final = zmq.COPY_THRESHOLD
# Messages handled per loop iteration before the reader yields to timers and callbacks,
# and the most time one iteration reads for (big batches: let flushed replies go out).
_BURST: Final = 256
_BURST_SECONDS: Final = 0.005
# SYNC_FLUSH: most unflushed bytes the loop flushes itself once it has read every request
# (one msync of a few pages, ~0.1-0.2 ms here); more goes to the store's flush thread, so
# a long msync never stalls the loop.
_INLINE_FLUSH_BYTES: Final = 64 * 1024
# Seconds the loop leaves all flushing to the flush thread after an inline flush failed.
_INLINE_FLUSH_BACKOFF: Final = 1.0
# Seconds between two reads of the socket that no FD edge asked for (BrokerServer._recheck).
_RECHECK_S: Final = 0.1
# Milliseconds the socket keeps trying to deliver the last replies when it closes.
_CLOSE_LINGER_MS: Final = 500
_WILDCARDS: Final = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "*": "127.0.0.1"}


class _BadInputLog:
    """Counts dropped or refused input; logs at most one warning per ``interval`` seconds."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.total = 0
        self._suppressed = 0
        self._last = -interval

    def __call__(self, what: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        logger.warning("bad input: {}{}", what, more)
        self._last = now
        self._suppressed = 0


def _send_frames(socket: zmq.Socket[bytes], identity: bytes, frames: Sequence[Buffer]) -> None:
    """Send ``identity`` then ``frames`` (at least one) as one message, without waiting.

    Only the identity frame can fail (zmq.Again: the peer's queue is full; EHOSTUNREACH:
    the peer is gone, ROUTER_MANDATORY): once it is taken, ZeroMQ takes the whole
    message. Frames of 64 KiB or more are sent zero-copy, smaller ones copied, as
    ``send_multipart(copy=False)`` does.
    """
    send = _raw_send
    send(socket, identity, _MORE)
    last = len(frames) - 1
    for i in range(last):
        frame = frames[i]
        send(socket, frame, _MORE, len(frame) < _COPY_THRESHOLD)
    frame = frames[last]
    send(socket, frame, _NOBLOCK, len(frame) < _COPY_THRESHOLD)


def _split_endpoint(endpoint: str) -> tuple[str, str, str]:
    """``tcp://host:port`` -> ("tcp", "host", "port")."""
    transport, _, rest = endpoint.partition("://")
    host, _, port = rest.rpartition(":")
    return transport, host, port


def advertised_address(endpoint: str) -> str:
    """The endpoint clients can connect to: a wildcard host becomes the loopback address."""
    transport, host, port = _split_endpoint(endpoint)
    if host in _WILDCARDS:
        return f"{transport}://{_WILDCARDS[host]}:{port}"
    return endpoint


def _store_host(address: str) -> str:
    """``tcp://1.2.3.4:5`` -> ``1.2.3.4:5`` when it is an IP address, else ``""``."""
    transport, host, port = _split_endpoint(address)
    candidate = f"{host}:{port}"
    if transport != "tcp":
        return ""
    try:
        encode_host(candidate)
    except ValueError:
        return ""
    return candidate


def _msg_id_prefix(store_host: str) -> str:
    """RocketMQ's offsetMsgId prefix: the address (4 bytes for IPv4, 16 for IPv6) and port."""
    packed, port = encode_host(store_host) if store_host else (bytes(16), 0)
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        packed = packed[12:]
    return f"{packed.hex().upper()}{port:08X}"


class BrokerServer:
    """Serves producers and consumers from one store; registers with the NameServers.

    Args:
        config: the broker's configuration (validated).
        context: the zmq asyncio context; by default the server makes (and terminates) its own.
    """

    def __init__(self, config: BrokerConfig, *, context: zmq.asyncio.Context | None = None) -> None:
        self.config = config
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        self._socket: zmq.asyncio.Socket | None = None
        self._raw: zmq.Socket[bytes] | None = None
        self._endpoint: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._socket_closed = False
        self._drain_scheduled = False
        self._fd: int | None = None
        self._bad_input = _BadInputLog()
        self._offset_timer: asyncio.TimerHandle | None = None
        self._recheck_timer: asyncio.TimerHandle | None = None
        self._offset_write: asyncio.Future[None] | None = None
        self.store: MessageStore | None = None
        self.topics: TopicTable | None = None
        self.offsets: ConsumerOffsets | None = None
        self.processors: Processors | None = None
        self.registry: Registry | None = None
        self.timers: TimerService | None = None
        self._dispatch = Dispatcher()
        self._waiters: SyncFlushWaiters | None = None
        self._inline_flush_after = 0.0
        #: The endpoint registered with the NameServers.
        self.address = ""
        #: Replies that could not be delivered (client gone or not reading).
        self.undelivered = 0

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (the real port when ``bind`` said 0)."""
        if self._endpoint is None:
            raise RuntimeError("BrokerServer not started")
        return self._endpoint

    @property
    def bad_input(self) -> int:
        """Requests dropped or refused as malformed since the start."""
        return self._bad_input.total

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> str:
        """Bind, open the store, start serving and registering; return the bound endpoint.

        Raises:
            TransportError: the bind failed.
            StoreError: the store cannot be opened (e.g. another broker holds the directory).
            ValueError: the topic or offset table on disk cannot be read.
        """
        config = self.config
        loop = self._loop = asyncio.get_running_loop()
        self._socket, self._endpoint = bind_router(self._context, config.bind)
        self._raw = zmq.Socket.shadow(self._socket.underlying)
        if config.advertise:
            self.address = config.advertise
        else:
            self.address = advertised_address(self._endpoint)
            if self.address != self._endpoint:
                logger.warning(
                    "bound to {}: registering {} (set --advertise for other hosts)",
                    self._endpoint,
                    self.address,
                )
        store_host = _store_host(self.address)
        try:
            self.topics = TopicTable(os.path.join(config.config_dir, "topics.json"))
            self.offsets = ConsumerOffsets(os.path.join(config.config_dir, "offsets.json"))
            self.store = MessageStore(config.store_dir, config.store_config(store_host))
        except BaseException:
            self._close_socket(0)
            raise
        store = self.store
        if config.flush == "sync":
            self._waiters = SyncFlushWaiters(
                loop, self, store.config.sync_flush_timeout_ms / 1000, _INLINE_FLUSH_BYTES
            )
            self._waiters.flushed = store.flushed_offset
            store.add_flush_listener(self._flush_listener)
        self.registry = Registry(
            self._context,
            config.nameservers,
            self._registration,
            interval=config.heartbeat_interval,
            timeout=config.register_timeout,
        )
        ctx = BrokerContext(
            config=config,
            store=store,
            topics=self.topics,
            offsets=self.offsets,
            replier=self,
            pusher=self,
            loop=loop,
            broker_name=config.broker_name,
            msg_id_prefix=_msg_id_prefix(store_host),
            on_topics_changed=self.registry.poke,
        )
        self.topics.on_system_topic_created = self.registry.poke
        try:
            self.timers = ctx.timers = TimerService(
                store,
                ctx.arrivals,
                loop,
                levels=config.delay_levels,
                max_delay=config.timer_max_delay,
                sync_flush=config.flush == "sync",
                topic_exists=lambda topic: ctx.topics.get(topic) is not None,
            )
            self.timers.start()
        except BaseException:
            if self.timers is not None:
                await self.timers.close()
            store.close()
            self._close_socket(0)
            raise
        self.processors = Processors(ctx, self._waiters)
        self._dispatch = build_dispatcher(self.processors)
        self._fd = cast(int, self._raw.getsockopt(zmq.FD))
        loop.add_reader(self._fd, self._on_readable)
        self._schedule_drain()  # requests may be queued already: the edge has passed
        self._offset_timer = loop.call_later(config.offset_persist_interval, self._persist_offsets)
        self._recheck_timer = loop.call_later(_RECHECK_S, self._recheck)
        self.registry.start()
        if config.nameservers:
            # READY should mean "clients can find me": wait for the first registration
            # round (bounded: a NameServer that does not answer costs register_timeout).
            try:
                await asyncio.wait_for(
                    self.registry.first_round.wait(), config.register_timeout + 1.0
                )
            except asyncio.TimeoutError:
                logger.warning("first registration round not over; serving anyway")
        logger.info(
            "broker {}/{} listening on {} ({} topics, {}, data {})",
            config.cluster_name,
            config.broker_name,
            self._endpoint,
            len(self.topics),
            store.config.flush_mode.value,
            config.data_dir,
        )
        if not config.nameservers:
            logger.warning("no nameserver configured: clients cannot discover this broker")
        return self._endpoint

    async def close(self) -> None:
        """Stop accepting, answer what waits, unregister, persist, close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._offset_timer is not None:
            self._offset_timer.cancel()
        if self._recheck_timer is not None:
            self._recheck_timer.cancel()
        store = self.store
        if self.processors is not None:
            # Before the socket closes (with a linger): every stream hears STREAM_CLOSED.
            self.processors.ctx.close()
            self.processors.close()  # transaction checks (broker.transactions)
            released = self.processors.pull.longpoll.release_all()
            if released:
                logger.info("answered {} parked pulls", released)
        if self._waiters is not None and store is not None:
            last = self._waiters.last_end
            if last:
                store.wait_flushed(last, self._waiters.timeout)
            self._waiters.release(store.flushed_offset)
        if self.registry is not None:
            try:
                await self.registry.close()
            except Exception:
                logger.exception("broker: unregistering failed")
        if self._offset_write is not None:
            try:
                await self._offset_write
            except Exception:
                pass  # logged by its callback; persisted again below
        if self.offsets is not None:
            try:
                self.offsets.persist()
            except Exception:
                logger.exception("broker: cannot write the consumer offsets")
        if self.timers is not None:
            await self.timers.close()
        if store is not None:
            store.close()
        self._close_socket(_CLOSE_LINGER_MS)
        if self._own_context:
            self._context.term()
        logger.info("broker stopped")

    def _close_socket(self, linger: int) -> None:
        if self._socket is not None and not self._socket_closed:
            self._socket_closed = True
            self._socket.close(linger=linger)

    # -- the reader ---------------------------------------------------------------------

    def _on_readable(self) -> None:
        """The socket's descriptor fired (or a drain was scheduled): handle what is queued.

        ZeroMQ's descriptor is edge-triggered: it fires once when the socket's state
        changes, and any operation on the socket (a send included) may consume that
        edge. So the reader goes on until ZMQ_EVENTS says nothing is left to read;
        replies sent outside it schedule another drain (:meth:`_schedule_drain`); and
        after a full burst it reschedules itself, letting timers and callbacks run.
        """
        self._drain_scheduled = False
        raw = self._raw
        if raw is None or self._closed:
            return  # closing: no new request is read
        drained = self._drain(raw)
        if self._waiters is not None and self._waiters.wanted > self._waiters.flushed:
            self._flush_wanted(inline=drained)
        if not drained:
            self._schedule_drain()

    def _drain(self, raw: zmq.Socket[bytes]) -> bool:
        """Handle up to a burst of requests; True when the socket has nothing more to read."""
        handle = self._on_message
        # Frames arrive as bytes (a copy), which is what the store takes; for bodies that
        # is one memcpy, the same as a zero-copy Frame followed by ``.bytes``.
        recv = _raw_recv
        get = _raw_get
        clock = time.monotonic
        until = clock() + _BURST_SECONDS
        try:
            for _ in range(_BURST):
                try:
                    frames = [recv(raw, _NOBLOCK)]
                except zmq.Again:
                    return True
                while get(raw, _RCVMORE):
                    frames.append(recv(raw, _NOBLOCK))
                handle(frames)
                # Cheaper than a receive that fails with EAGAIN; it also re-arms the edge.
                if not get(raw, _EVENTS) & _POLLIN:
                    return True
                if clock() > until:
                    break
        except zmq.ZMQError as exc:
            if self._socket_closed or exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                return True
            logger.exception("broker: receive failed")
        except Exception:
            logger.exception("broker: the reader failed; it carries on")
        return False

    def _flush_wanted(self, *, inline: bool) -> None:
        """SYNC_FLUSH: make durable what this burst's sends asked for, and answer them.

        ``inline`` (every waiting request was read): flush on the loop when it is small
        and the flush thread is idle, and answer at once; otherwise the flush thread
        does it and its listener answers (broker.store.flush).
        """
        waiters = self._waiters
        store = self.store
        assert waiters is not None and store is not None
        wanted = waiters.wanted
        flushed: int | None = None
        if inline and time.monotonic() >= self._inline_flush_after:
            try:
                flushed = store.flush_inline(wanted, _INLINE_FLUSH_BYTES)
            except Exception as exc:
                # A failing disk: leave it to the flush thread (which retries and logs)
                # for a while, so the loop neither retries it nor logs it per burst.
                self._inline_flush_after = time.monotonic() + _INLINE_FLUSH_BACKOFF
                logger.warning(
                    "broker: flush on the loop failed ({}); the flush thread retries", exc
                )
        if flushed is None:
            waiters.asked = wanted
            store.request_flush(wanted)
        else:
            self._on_flushed(flushed)

    def _recheck(self) -> None:
        """Timer: read the socket now and then, whatever its FD said.

        The safety net of the edge-triggered FD (as fabric.transport's Connection has):
        every path looks again after it may have taken an edge, but an edge lost anyway
        would leave requests unread until some other peer's message made a new one.
        Ten looks a second cost nothing measurable.
        """
        loop = self._loop
        if loop is None or self._closed:
            return
        self._recheck_timer = loop.call_later(_RECHECK_S, self._recheck)
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _on_message(self, frames: list[bytes]) -> None:
        """Handle one request; never raises."""
        try:
            if len(frames) < 2:
                self._bad_input("a message with no header frame")
                return
            identity = frames[0]
            try:
                request, bodies = parse_request(frames[1:])
            except FrameError as exc:
                self._bad_input(exc.remark)
                if exc.request_id is not None and not exc.flags & _ONEWAY:
                    self._deliver(
                        identity, encode_reply(exc.request_id, exc.code, remark=exc.remark)
                    )
                return
            handler = self._dispatch.handler(request)
            try:
                if handler is None:
                    raise FabricError(
                        f"the broker does not handle {request_code(request).name}",
                        code=ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
                    )
                outcome = handler(request, bodies, identity)
            except FabricError as exc:
                code, remark = to_response(exc)
                outcome = (code, None, (), remark)
            except Exception as exc:
                logger.exception("broker: {} failed", type(request).__name__)
                code, remark = to_response(exc)
                outcome = (code, None, (), remark)
            if outcome is None or request.flags & _ONEWAY:
                return
            code, body, data, remark = outcome
            self._deliver(
                identity, encode_reply(request.request_id, code, body, remark=remark, frames=data)
            )
        except Exception:
            logger.exception("broker: failed to handle a message")

    # -- replies ------------------------------------------------------------------------

    def _deliver(self, identity: bytes, frames: list[Buffer]) -> None:
        """Send one reply without waiting; count it when the peer is gone or not reading."""
        if self._socket_closed or self._raw is None:
            return
        try:
            _send_frames(self._raw, identity, frames)
        except zmq.Again:
            self.undelivered += 1
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self.undelivered += 1
            else:
                logger.warning("broker: cannot send a reply: {}", exc)

    def push(self, identity: bytes, frames: Sequence[Buffer]) -> Delivery:
        """Hand a push to the socket without waiting; say whether it went, or why not."""
        if self._socket_closed or self._raw is None:
            return Delivery.GONE
        # Any send attempt, a refused one too, may consume the descriptor's edge for an
        # incoming request: look again soon (a busy stream retries for as long as its
        # peer's queue is full, and requests must still be read meanwhile).
        self._schedule_drain()
        try:
            _send_frames(self._raw, identity, frames)
        except zmq.Again:
            return Delivery.BUSY
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                logger.warning("broker: cannot send a push: {}", exc)
            return Delivery.GONE
        return Delivery.SENT

    def reply(
        self,
        identity: bytes,
        request: Any,
        code: ResponseCode,
        body: msgspec.Struct | None = None,
        frames: Sequence[Buffer] = (),
        remark: str = "",
    ) -> None:
        """Send a deferred reply (long poll, SYNC_FLUSH) from a callback on the loop."""
        if request.flags & _ONEWAY:
            return
        self._deliver(
            identity, encode_reply(request.request_id, code, body, remark=remark, frames=frames)
        )
        # This send may have consumed the descriptor's edge for an incoming request.
        self._schedule_drain()

    # -- SYNC_FLUSH ---------------------------------------------------------------------

    def _flush_listener(self, offset: int) -> None:
        # The store's flush thread: hand the offset to the loop, nothing else.
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._on_flushed, offset)
        except RuntimeError:
            pass  # the loop closed between the check and the call

    def _on_flushed(self, offset: int) -> None:
        if self._waiters is not None:
            try:
                self._waiters.on_flushed(offset)
            except Exception:
                logger.exception("broker: answering flushed sends failed")

    # -- background ---------------------------------------------------------------------

    def _registration(self) -> RegisterBrokerBody:
        config = self.config
        assert self.topics is not None
        return RegisterBrokerBody(
            cluster_name=config.cluster_name,
            broker_name=config.broker_name,
            broker_id=config.broker_id,
            broker_addr=self.address,
            topics=self.topics.list(),
            data_version=self.topics.data_version,
            heartbeat_timeout_ms=config.heartbeat_timeout_ms,
        )

    def _persist_offsets(self) -> None:
        """Timer: write the committed offsets in a worker thread when they changed."""
        loop = self._loop
        offsets = self.offsets
        assert loop is not None and offsets is not None
        self._offset_timer = loop.call_later(
            self.config.offset_persist_interval, self._persist_offsets
        )
        if not offsets.dirty or self._offset_write is not None:
            return
        try:
            data = offsets.snapshot()
            self._offset_write = loop.run_in_executor(None, offsets.write, data)
            self._offset_write.add_done_callback(self._offsets_written)
        except Exception:
            offsets.mark_dirty()
            logger.exception("broker: cannot start writing the consumer offsets")

    def _offsets_written(self, future: asyncio.Future[None]) -> None:
        self._offset_write = None
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and self.offsets is not None:
            self.offsets.mark_dirty()
            logger.error("broker: cannot write the consumer offsets: {}", exc)
