"""The NameServer core: one ROUTER socket and one asyncio loop serving the route table.

The loop that runs :meth:`NameServer.start` owns the socket (fabric.iothread states the
rule). It receives one request at a time, decodes frame 0 with the one request decoder
(fabric.protocol.frames), dispatches on the envelope type with ``match`` and replies
without ever waiting on a slow client. Brokers expire through a timer set at the
earliest deadline in the table: no polling, no periodic scan.

Bad input never stops the loop (SPEC X3): a request whose id can be recovered gets an
error reply (MALFORMED_REQUEST, VERSION_NOT_SUPPORTED, REQUEST_CODE_NOT_SUPPORTED,
MESSAGE_ILLEGAL, ...); anything else is dropped and counted, with at most one warning
per second in the log.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import msgspec
import zmq
import zmq.asyncio
from loguru import logger

from fabric.errors import (
    BrokerNotRegisteredError,
    FabricError,
    InvalidNameError,
    NoRouteError,
    ProtocolError,
    to_response,
)
from fabric.protocol.codes import DEFAULT_BROKER_EXPIRY, Flag, ResponseCode
from fabric.protocol.frames import FrameError, encode_reply, parse_request, request_code
from fabric.protocol.messages import (
    MAX_QUEUE_NUMS,
    BrokerHeartbeatRequest,
    Empty,
    GetAllTopicListRequest,
    GetClusterInfoRequest,
    GetRouteInfoRequest,
    RegisterBrokerBody,
    RegisterBrokerReply,
    RegisterBrokerRequest,
    Request,
    TopicList,
    UnregisterBrokerRequest,
)
from fabric.protocol.names import check_name, check_topic
from fabric.transport import bind_router, send_to

from .routes import BrokerKey, RouteTable

__all__ = ["DEFAULT_BIND", "NameServer"]

#: RocketMQ's NameServer port, on loopback: safe on a fresh machine.
DEFAULT_BIND: Final = "tcp://127.0.0.1:9876"

_EMPTY: Final = Empty()


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


class NameServer:
    """Serves REGISTER_BROKER, BROKER_HEARTBEAT, UNREGISTER_BROKER and the route lookups.

    Args:
        bind: the ROUTER endpoint; port 0 picks a free port (see :attr:`endpoint`).
        expiry: seconds after its last registration or heartbeat when a broker is dropped
            (a broker may ask for another value in REGISTER_BROKER).
        context: the zmq context; by default the server makes (and terminates) its own.
    """

    def __init__(
        self,
        bind: str = DEFAULT_BIND,
        *,
        expiry: float = DEFAULT_BROKER_EXPIRY,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.bind = bind
        self.expiry = expiry
        self.table = RouteTable(default_ttl=expiry)
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        self._socket: zmq.asyncio.Socket | None = None
        self._endpoint: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._bad_input = _BadInputLog()
        #: Replies that could not be delivered (client gone or not reading).
        self.undelivered = 0

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (the real port when ``bind`` said 0)."""
        if self._endpoint is None:
            raise RuntimeError("NameServer not started")
        return self._endpoint

    @property
    def bad_input(self) -> int:
        """Requests dropped or refused as malformed since the start."""
        return self._bad_input.total

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> str:
        """Bind and start serving on the running loop; return the bound endpoint.

        Raises:
            TransportError: the bind failed.
        """
        self._socket, self._endpoint = bind_router(self._context, self.bind)
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="nameserver")
        logger.info("nameserver listening on {} (broker expiry {}s)", self._endpoint, self.expiry)
        return self._endpoint

    async def close(self) -> None:
        """Stop serving and close the socket (linger 0). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._socket is not None:
            self._socket.close(linger=0)
        if self._own_context:
            self._context.term()
        logger.info("nameserver stopped")

    # -- the loop -----------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._socket is not None
        socket = self._socket
        while True:
            try:
                frames = await socket.recv_multipart()
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if self._closed or exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                    return
                logger.exception("nameserver: receive failed")
                continue
            try:
                await self._on_message(frames)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("nameserver: failed to handle a message")

    async def _on_message(self, frames: list[bytes]) -> None:
        assert self._socket is not None
        identity = frames[0]
        if len(frames) < 2:
            self._bad_input("a message with no header frame")
            return
        try:
            request, _bodies = parse_request(frames[1:])
        except FrameError as exc:
            self._bad_input(exc.remark)
            if exc.request_id is not None and not exc.flags & Flag.ONEWAY:
                reply = encode_reply(exc.request_id, exc.code, remark=exc.remark)
                await self._send(identity, reply)
            return
        logger.opt(lazy=True).trace("<<- {}", lambda: request)
        try:
            code, body = self._handle(request, asyncio.get_running_loop().time())
            remark = ""
        except FabricError as exc:
            code, remark = to_response(exc)
            body = None
        except Exception as exc:
            logger.exception("nameserver: {} failed", type(request).__name__)
            code, remark = to_response(exc)
            body = None
        if request.flags & Flag.ONEWAY:
            return
        logger.opt(lazy=True).trace("->> {} {}", lambda: code.name, lambda: remark)
        await self._send(identity, encode_reply(request.request_id, code, body, remark=remark))

    async def _send(self, identity: bytes, frames: list[bytes | bytearray | memoryview]) -> None:
        assert self._socket is not None
        if not await send_to(self._socket, identity, frames):
            self.undelivered += 1

    # -- requests -----------------------------------------------------------------------

    def _handle(self, request: Request, now: float) -> tuple[ResponseCode, msgspec.Struct]:
        """Answer one request; raises a FabricError for an error reply."""
        table = self.table
        match request:
            case RegisterBrokerRequest(body=body):
                _validate_registration(body)
                old = table.get(BrokerKey(body.broker_name, body.broker_id))
                update = table.register(body, now)
                self._schedule_expiry()
                # The periodic re-registration of an unchanged broker is not news.
                changed = old is None or (old.broker_addr, old.version) != (
                    body.broker_addr,
                    body.data_version,
                )
                logger.log(
                    "INFO" if changed else "DEBUG",
                    "registered broker {}/{} id {} at {} ({} topics, version {})",
                    body.cluster_name,
                    body.broker_name,
                    body.broker_id,
                    body.broker_addr,
                    len(body.topics),
                    body.data_version,
                )
                return ResponseCode.SUCCESS, RegisterBrokerReply(
                    expiry_ms=round(update.entry.ttl * 1000)
                )
            case BrokerHeartbeatRequest(body=body):
                key = BrokerKey(body.broker_name, body.broker_id)
                if table.heartbeat(key, body.broker_addr, body.data_version, now) is None:
                    raise BrokerNotRegisteredError(
                        f"broker {body.broker_name} id {body.broker_id} at {body.broker_addr} "
                        f"version {body.data_version} is not registered here"
                    )
                return ResponseCode.SUCCESS, _EMPTY
            case UnregisterBrokerRequest(body=body):
                key = BrokerKey(body.broker_name, body.broker_id)
                if table.unregister(key, body.broker_addr) is not None:
                    logger.info(
                        "unregistered broker {} id {} at {}",
                        body.broker_name,
                        body.broker_id,
                        body.broker_addr,
                    )
                    self._schedule_expiry()
                return ResponseCode.SUCCESS, _EMPTY
            case GetRouteInfoRequest(body=body):
                problem = check_topic(body.topic)
                if problem is not None:
                    raise InvalidNameError(
                        problem, code=ResponseCode.INVALID_TOPIC_NAME, name=body.topic
                    )
                route = table.route(body.topic)
                if route is None:
                    raise NoRouteError(f"no route for topic {body.topic}")
                return ResponseCode.SUCCESS, route
            case GetClusterInfoRequest():
                return ResponseCode.SUCCESS, table.cluster_info()
            case GetAllTopicListRequest():
                return ResponseCode.SUCCESS, TopicList(topics=table.topic_names())
            case _:
                raise FabricError(
                    f"the nameserver does not handle {request_code(request).name}",
                    code=ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
                )

    # -- expiry -------------------------------------------------------------------------

    def _schedule_expiry(self) -> None:
        """Keep one timer at the table's earliest deadline."""
        deadline = self.table.next_deadline()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return  # it fires first, then reschedules
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer, deadline)

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        try:
            # asyncio may fire a timer up to its clock resolution early.
            now = max(asyncio.get_running_loop().time(), deadline)
            for update in self.table.expire(now):
                entry = update.entry
                logger.info(
                    "broker {} id {} at {} expired (no heartbeat for {}s)",
                    entry.broker_name,
                    entry.broker_id,
                    entry.broker_addr,
                    entry.ttl,
                )
            self._schedule_expiry()
        except Exception:
            logger.exception("nameserver: expiry failed")


def _validate_registration(body: RegisterBrokerBody) -> None:
    for value, kind in ((body.cluster_name, "cluster"), (body.broker_name, "broker")):
        problem = check_name(value, kind)
        if problem is not None:
            raise ProtocolError(problem)
    if body.broker_id < 0:
        raise ProtocolError(f"broker_id must be >= 0, got {body.broker_id}")
    if not body.broker_addr:
        raise ProtocolError("broker_addr is empty")
    if body.heartbeat_timeout_ms < 0:
        raise ProtocolError("heartbeat_timeout_ms must be >= 0")
    for config in body.topics:
        problem = check_topic(config.topic)
        if problem is not None:
            raise InvalidNameError(problem, code=ResponseCode.INVALID_TOPIC_NAME, name=config.topic)
        for nums in (config.read_queue_nums, config.write_queue_nums):
            if not 0 <= nums <= MAX_QUEUE_NUMS:
                raise ProtocolError(
                    f"topic {config.topic}: queue count {nums} is outside 0..{MAX_QUEUE_NUMS}"
                )
