"""Connection internals the client relies on: callback requests, the monitor, the outbox, linger.

In-process ROUTERs on loopback, all sockets on one IOThread loop (the threading rule).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import zmq
import zmq.asyncio

from fabric import errors
from fabric.iothread import IOThread
from fabric.protocol import RequestCode, ResponseCode, encode_reply, parse_request
from fabric.protocol import messages as m
from fabric.protocol.frames import MAX_MESSAGE_BYTES, Reply
from fabric.transport import Connection, bind_router, send_to

T = TypeVar("T")
ROUTE = m.GetRouteInfoBody(topic="T")


@pytest.fixture
def io() -> Iterator[IOThread]:
    with IOThread(name="test-io") as thread:
        yield thread


def run(io: IOThread, make: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    async def main() -> T:
        return await make()

    return io.run(main(), timeout=timeout)


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


async def recv_request(router: zmq.asyncio.Socket) -> tuple[bytes, int, list[bytes]]:
    identity, *frames = await asyncio.wait_for(router.recv_multipart(), 5.0)
    request, bodies = parse_request(frames)
    return identity, request.request_id, [bytes(b) for b in bodies]


def collector() -> tuple[asyncio.Queue[Reply | errors.FabricError], Callable[[object], None]]:
    got: asyncio.Queue[Reply | errors.FabricError] = asyncio.Queue()
    return got, got.put_nowait  # type: ignore[return-value]


def test_request_callback(io: IOThread) -> None:
    async def main() -> None:
        router, endpoint = bind_router(io.context, "tcp://127.0.0.1:0")
        conn = Connection(io.context, endpoint, timeout=5.0)
        got, callback = collector()
        try:
            conn.request_callback(RequestCode.GET_ROUTE_INFO_BY_TOPIC, ROUTE, (), callback)
            identity, rid, _ = await recv_request(router)
            assert conn.in_flight == 1
            await send_to(router, identity, encode_reply(rid, ResponseCode.NO_ROUTE, remark="r"))
            reply = await asyncio.wait_for(got.get(), 5.0)
            assert isinstance(reply, Reply)
            assert (reply.code, reply.request_id, reply.remark) == (ResponseCode.NO_ROUTE, rid, "r")
            # no reply: the callback gets the timeout
            start = time.monotonic()
            conn.request_callback(
                RequestCode.GET_ROUTE_INFO_BY_TOPIC, ROUTE, (), callback, timeout=0.2
            )
            await recv_request(router)
            error = await asyncio.wait_for(got.get(), 5.0)
            assert isinstance(error, errors.RequestTimeoutError) and error.address == endpoint
            assert 0.15 < time.monotonic() - start < 3.0 and conn.in_flight == 0
            # too large: refused before anything is written, no callback
            with pytest.raises(errors.MessageTooLargeError):
                conn.request_callback(
                    RequestCode.SEND_MESSAGE,
                    m.SendMessageBody(producer_group="g", topic="T", queue_id=0),
                    [b"x" * (MAX_MESSAGE_BYTES + 1)],
                    callback,
                )
            assert got.empty()
        finally:
            await conn.close()
            router.close(linger=0)

    run(io, main)


def test_the_monitor_fails_requests_when_the_server_goes_away(io: IOThread) -> None:
    async def main() -> None:
        router, endpoint = bind_router(io.context, "tcp://127.0.0.1:0")
        conn = Connection(io.context, endpoint, timeout=30.0, monitor=True)
        got, callback = collector()
        try:
            pending = asyncio.ensure_future(
                conn.request(RequestCode.GET_ROUTE_INFO_BY_TOPIC, ROUTE)
            )
            conn.request_callback(RequestCode.GET_ROUTE_INFO_BY_TOPIC, ROUTE, (), callback)
            await recv_request(router)
            await recv_request(router)
            start = time.monotonic()
            router.close(linger=0)  # the server goes away without answering
            with pytest.raises(errors.ConnectionClosedError):
                await asyncio.wait_for(pending, 10.0)
            assert isinstance(await asyncio.wait_for(got.get(), 10.0), errors.ConnectionClosedError)
            assert time.monotonic() - start < 5.0  # not the 30 s deadline
            assert conn.down
            with pytest.raises(errors.ConnectionClosedError):  # fails fast while away
                await conn.request(RequestCode.GET_ROUTE_INFO_BY_TOPIC, ROUTE)
            # the server comes back at the same address: so does the connection
            router, _ = bind_router(io.context, endpoint)
            deadline = time.monotonic() + 10.0
            while conn.down and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # reconnects are libzmq's, on its own timer
            assert not conn.down
            answer = asyncio.ensure_future(conn.request(RequestCode.GET_ROUTE_INFO_BY_TOPIC, ROUTE))
            identity, rid, _ = await recv_request(router)
            await send_to(router, identity, encode_reply(rid, ResponseCode.NO_ROUTE))
            assert (await asyncio.wait_for(answer, 5.0)).code == ResponseCode.NO_ROUTE
        finally:
            await conn.close()
            router.close(linger=0)

    run(io, main)


def test_requests_wait_in_order_until_the_server_is_there(io: IOThread) -> None:
    async def main() -> None:
        endpoint = free_endpoint()
        conn = Connection(io.context, endpoint, timeout=10.0)
        got, callback = collector()
        router: zmq.asyncio.Socket | None = None
        try:
            for i in range(3):
                conn.request_callback(
                    RequestCode.SEND_MESSAGE,
                    m.SendMessageBody(producer_group="g", topic="T", queue_id=0),
                    [b"m%d" % i],
                    callback,
                )
            router, _ = bind_router(io.context, endpoint)
            received = [await recv_request(router) for _ in range(3)]
            assert [bodies for _, _, bodies in received] == [[b"m0"], [b"m1"], [b"m2"]]
            for identity, rid, _ in received:
                await send_to(router, identity, encode_reply(rid, ResponseCode.SYSTEM_BUSY))
            codes = [(await asyncio.wait_for(got.get(), 5.0)) for _ in range(3)]
            assert [r.code for r in codes if isinstance(r, Reply)] == [ResponseCode.SYSTEM_BUSY] * 3
        finally:
            await conn.close()
            if router is not None:
                router.close(linger=0)

    run(io, main)


def test_a_lingering_close_delivers_oneway_messages(io: IOThread) -> None:
    async def main() -> None:
        endpoint = free_endpoint()
        conn = Connection(io.context, endpoint, timeout=10.0)
        router: zmq.asyncio.Socket | None = None
        try:
            body = m.SendMessageBody(producer_group="g", topic="T", queue_id=0)
            assert conn.send_oneway_nowait(RequestCode.SEND_MESSAGE, body, [b"last words"])
            closing = asyncio.ensure_future(conn.close(linger=5.0))
            await asyncio.sleep(0)  # the close is waiting for the outbox now
            router, _ = bind_router(io.context, endpoint)
            _, _, bodies = await recv_request(router)
            assert bodies == [b"last words"]
            await asyncio.wait_for(closing, 10.0)
            assert conn.closed
        finally:
            await conn.close()
            if router is not None:
                router.close(linger=0)

    run(io, main)
