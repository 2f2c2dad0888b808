"""fabric.direct: blocking requests on sockets of the calling thread (the sync-send fast path).

A ROUTER owned by the test's main thread plays the server; requests run in worker
threads, each on its own DEALER (the threading rule).
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from fabric import errors
from fabric.direct import DirectRequester, NotConnectedError
from fabric.protocol import RequestCode, ResponseCode, encode_reply, parse_request
from fabric.protocol import messages as m
from fabric.protocol.frames import MAX_REQUEST_BYTES, Reply

ROUTE = m.GetRouteInfoBody(topic="T")
CODE = RequestCode.GET_ROUTE_INFO_BY_TOPIC


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Server:
    """A ROUTER on a loopback port, used only by the thread that made it."""

    def __init__(self, context: zmq.Context[bytes], endpoint: str = "tcp://127.0.0.1:0") -> None:
        self.router = context.socket(zmq.ROUTER)
        self.router.linger = 0
        if endpoint.endswith(":0"):
            port = self.router.bind_to_random_port("tcp://127.0.0.1")
            self.endpoint = f"tcp://127.0.0.1:{port}"
        else:
            self.router.bind(endpoint)
            self.endpoint = endpoint

    def receive(self, timeout: float = 5.0) -> tuple[bytes, int]:
        assert self.router.poll(int(timeout * 1000)), "no request arrived"
        identity, *frames = self.router.recv_multipart()
        request, _ = parse_request(frames)
        return identity, request.request_id

    def answer(self, identity: bytes, request_id: int, code: ResponseCode) -> None:
        self.router.send_multipart([identity, *encode_reply(request_id, code)])

    def close(self) -> None:
        self.router.close(linger=0)


@pytest.fixture
def context() -> Iterator[zmq.Context[bytes]]:
    ctx: zmq.Context[bytes] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def direct() -> Iterator[DirectRequester]:
    requester = DirectRequester()
    yield requester
    requester.close(timeout=10.0)


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def test_round_trip_and_a_late_reply_is_dropped(
    context: zmq.Context[bytes], direct: DirectRequester, pool: concurrent.futures.Executor
) -> None:
    server = Server(context)
    try:
        # The first request times out: the server reads it and says nothing.
        first = pool.submit(direct.request, server.endpoint, CODE, ROUTE, (), 0.3)
        identity, rid1 = server.receive()
        with pytest.raises(errors.RequestTimeoutError):
            first.result(10)
        # The second one gets the first one's late reply, then its own.
        second = pool.submit(direct.request, server.endpoint, CODE, ROUTE, (), 10.0)
        _, rid2 = server.receive()
        assert rid2 != rid1
        server.answer(identity, rid1, ResponseCode.SUCCESS)
        server.answer(identity, rid2, ResponseCode.NO_ROUTE)
        reply = second.result(10)
        assert isinstance(reply, Reply)
        assert (reply.request_id, reply.code) == (rid2, ResponseCode.NO_ROUTE)
    finally:
        server.close()


def test_a_refused_connection_is_not_connected_and_nothing_waits(
    direct: DirectRequester, pool: concurrent.futures.Executor
) -> None:
    start = time.monotonic()
    with pytest.raises(NotConnectedError):
        pool.submit(direct.request, free_endpoint(), CODE, ROUTE, (), 30.0).result(40)
    assert time.monotonic() - start < 5.0  # refused in milliseconds, not the 30 s timeout


def test_the_server_going_away_fails_the_request_at_once(
    context: zmq.Context[bytes], direct: DirectRequester, pool: concurrent.futures.Executor
) -> None:
    server = Server(context)
    pending = pool.submit(direct.request, server.endpoint, CODE, ROUTE, (), 30.0)
    server.receive()
    start = time.monotonic()
    server.close()  # gone without an answer
    with pytest.raises(errors.ConnectionClosedError) as info:
        pending.result(40)
    assert not isinstance(info.value, NotConnectedError)  # it was sent: it may have arrived
    assert time.monotonic() - start < 5.0
    # Later requests do not wait for a server that is not there.
    with pytest.raises(NotConnectedError):
        pool.submit(direct.request, server.endpoint, CODE, ROUTE, (), 30.0).result(40)


def test_close_waits_for_the_request_in_flight_then_refuses(
    context: zmq.Context[bytes], pool: concurrent.futures.Executor
) -> None:
    direct = DirectRequester()
    server = Server(context)
    try:
        pending = pool.submit(direct.request, server.endpoint, CODE, ROUTE, (), 30.0)
        identity, rid = server.receive()
        closer = threading.Thread(target=direct.close, kwargs={"timeout": 20.0})
        closer.start()
        closer.join(0.2)
        assert closer.is_alive()  # it waits for the request in flight
        server.answer(identity, rid, ResponseCode.SUCCESS)
        assert pending.result(10).code == ResponseCode.SUCCESS
        closer.join(10)
        assert not closer.is_alive()
        with pytest.raises(errors.ConnectionClosedError):
            pool.submit(direct.request, server.endpoint, CODE, ROUTE, (), 1.0).result(10)
        # Another thread, one with no socket yet, is refused too.
        with (
            concurrent.futures.ThreadPoolExecutor(max_workers=1) as other,
            pytest.raises(errors.ConnectionClosedError),
        ):
            other.submit(direct.request, server.endpoint, CODE, ROUTE, (), 1.0).result(10)
    finally:
        direct.close()
        server.close()


def test_each_thread_has_its_own_socket_and_dead_threads_are_cleaned_up(
    context: zmq.Context[bytes], direct: DirectRequester
) -> None:
    server = Server(context)
    identities: set[bytes] = set()
    try:
        for _ in range(3):  # three threads, one after the other
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as one:
                pending = one.submit(direct.request, server.endpoint, CODE, ROUTE, (), 10.0)
                identity, rid = server.receive()
                server.answer(identity, rid, ResponseCode.SUCCESS)
                assert pending.result(10).code == ResponseCode.SUCCESS
            identities.add(identity)
        assert len(identities) == 3  # three sockets
        # Only the last thread's channel is left: the dead ones were closed.
        assert len(direct._channels) == 1
    finally:
        server.close()


def test_a_request_over_the_limits_is_refused_before_sending(
    context: zmq.Context[bytes], direct: DirectRequester, pool: concurrent.futures.Executor
) -> None:
    server = Server(context)
    try:
        huge = b"x" * (MAX_REQUEST_BYTES + 1)
        with pytest.raises(errors.MessageTooLargeError):
            pool.submit(direct.request, server.endpoint, CODE, ROUTE, (huge,), 5.0).result(10)
        assert not server.router.poll(100)  # nothing reached the server
    finally:
        server.close()
