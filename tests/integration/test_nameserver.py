"""A real ``fabric nameserver`` process on 127.0.0.1 port 0, driven over real DEALER sockets."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable, Iterator

import msgspec
import pytest
import zmq

from fabric import errors
from fabric.iothread import IOThread
from fabric.protocol import (
    MAX_MESSAGE_BYTES,
    Flag,
    RequestCode,
    ResponseCode,
    encode_request,
    parse_reply,
)
from fabric.protocol import messages as m
from fabric.protocol.frames import Buffer
from fabric.testing import ServerProcess, run_nameserver
from fabric.transport import BlockingConnection, Connection

Factory = Callable[..., ServerProcess]


def register_body(
    name: str = "broker-a",
    topics: tuple[str, ...] = ("TopicTest",),
    *,
    broker_id: int = 0,
    cluster: str = "DefaultCluster",
    version: int = 1,
    timeout_ms: int = 0,
) -> m.RegisterBrokerBody:
    return m.RegisterBrokerBody(
        cluster_name=cluster,
        broker_name=name,
        broker_id=broker_id,
        broker_addr=f"tcp://127.0.0.1:{20000 + broker_id}",
        topics=[m.TopicConfig(topic=t) for t in topics],
        data_version=version,
        heartbeat_timeout_ms=timeout_ms,
    )


def route(client: BlockingConnection, topic: str) -> m.TopicRouteData:
    body = m.GetRouteInfoBody(topic=topic)
    return client.call(RequestCode.GET_ROUTE_INFO_BY_TOPIC, body, m.TopicRouteData)


def wait_for_no_route(client: BlockingConnection, topic: str, timeout: float) -> float:
    """Poll the route until NO_ROUTE, within ``timeout``; the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        try:
            route(client, topic)
        except errors.NoRouteError:
            return time.monotonic() - start
        time.sleep(0.05)  # a bounded retry on a deadline, not a synchronisation
    raise AssertionError(f"{topic} still routed after {timeout}s")


@pytest.fixture
def raw(nameserver: ServerProcess) -> Iterator[zmq.Socket[bytes]]:
    """A plain blocking DEALER to the nameserver, for frames no client would send."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = 5000
    sock.sndtimeo = 5000
    sock.connect(nameserver.endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def test_ready_line_names_the_real_port(nameserver: ServerProcess) -> None:
    (line,) = nameserver.stdout_lines()
    match = re.fullmatch(r"READY nameserver tcp://127\.0\.0\.1:(\d+)", line)
    assert match is not None and int(match.group(1)) > 0
    assert nameserver.endpoint == line.split()[2]


def test_register_then_look_up(ns_client: BlockingConnection) -> None:
    reply = ns_client.call(
        RequestCode.REGISTER_BROKER, register_body("broker-a"), m.RegisterBrokerReply
    )
    assert reply.expiry_ms == 120_000
    ns_client.call(
        RequestCode.REGISTER_BROKER,
        register_body("broker-b", ("TopicTest", "Other"), cluster="C2", broker_id=1),
        m.RegisterBrokerReply,
    )
    found = route(ns_client, "TopicTest")
    assert [q.broker_name for q in found.queue_datas] == ["broker-a", "broker-b"]
    assert found.broker_datas[1].broker_addrs == {1: "tcp://127.0.0.1:20001"}
    info = ns_client.call(RequestCode.GET_CLUSTER_INFO, m.Empty(), m.ClusterInfo)
    assert info.clusters == {"DefaultCluster": ["broker-a"], "C2": ["broker-b"]}
    topics = ns_client.call(RequestCode.GET_ALL_TOPIC_LIST, m.Empty(), m.TopicList)
    assert topics.topics == ["Other", "TopicTest"]
    with pytest.raises(errors.NoRouteError) as info_:
        route(ns_client, "Missing")
    assert info_.value.address == ns_client.endpoint


def test_heartbeat_and_unregister(ns_client: BlockingConnection) -> None:
    body = register_body(version=7)
    hb = m.BrokerHeartbeatBody(
        cluster_name=body.cluster_name,
        broker_name=body.broker_name,
        broker_addr=body.broker_addr,
        data_version=7,
    )
    with pytest.raises(errors.BrokerNotRegisteredError):
        ns_client.call(RequestCode.BROKER_HEARTBEAT, hb, m.Empty)
    ns_client.call(RequestCode.REGISTER_BROKER, body, m.RegisterBrokerReply)
    assert ns_client.call(RequestCode.BROKER_HEARTBEAT, hb, m.Empty) == m.Empty()
    stale = msgspec.structs.replace(hb, data_version=6)
    with pytest.raises(errors.BrokerNotRegisteredError):
        ns_client.call(RequestCode.BROKER_HEARTBEAT, stale, m.Empty)
    bye = m.UnregisterBrokerBody(
        cluster_name=body.cluster_name, broker_name=body.broker_name, broker_addr=body.broker_addr
    )
    ns_client.call(RequestCode.UNREGISTER_BROKER, bye, m.Empty)
    with pytest.raises(errors.NoRouteError):
        route(ns_client, "TopicTest")


def test_bad_names_and_unsupported_codes(ns_client: BlockingConnection) -> None:
    with pytest.raises(errors.InvalidNameError) as bad_topic:
        route(ns_client, "bad topic")
    assert bad_topic.value.code == ResponseCode.INVALID_TOPIC_NAME
    with pytest.raises(errors.InvalidNameError):
        ns_client.call(
            RequestCode.REGISTER_BROKER, register_body(topics=("x/y",)), m.RegisterBrokerReply
        )
    with pytest.raises(errors.ProtocolError):
        ns_client.call(
            RequestCode.REGISTER_BROKER, register_body(name="no spaces"), m.RegisterBrokerReply
        )
    with pytest.raises(errors.UnsupportedError) as unsupported:
        body = m.SendMessageBody(producer_group="p", topic="T", queue_id=0)
        ns_client.call(RequestCode.SEND_MESSAGE, body, m.SendReply, [b"payload"])
    assert unsupported.value.code == ResponseCode.REQUEST_CODE_NOT_SUPPORTED


def test_expired_broker_leaves_the_routes(nameserver_factory: Factory) -> None:
    ns = nameserver_factory(heartbeat_expiry=0.5)
    with BlockingConnection(ns.endpoint) as client:
        short = client.call(
            RequestCode.REGISTER_BROKER, register_body("short", ("Short",)), m.RegisterBrokerReply
        )
        assert short.expiry_ms == 500
        client.call(
            RequestCode.REGISTER_BROKER,
            register_body("long", ("Long",), timeout_ms=60_000),
            m.RegisterBrokerReply,
        )
        took = wait_for_no_route(client, "Short", timeout=5.0)
        assert took < 3.0
        assert route(client, "Long").queue_datas[0].broker_name == "long"
        info = client.call(RequestCode.GET_CLUSTER_INFO, m.Empty(), m.ClusterInfo)
        assert list(info.brokers) == ["long"]
    assert any("expired" in line for line in ns.log_lines())


def test_many_requests_in_flight_on_one_connection(nameserver: ServerProcess) -> None:
    async def burst() -> list[m.TopicList | BaseException]:
        conn = Connection(io.context, nameserver.endpoint, timeout=5.0)
        try:
            body = register_body(topics=tuple(f"T{i}" for i in range(50)))
            await conn.call(RequestCode.REGISTER_BROKER, body, m.RegisterBrokerReply)
            calls = [
                conn.call(
                    RequestCode.GET_ROUTE_INFO_BY_TOPIC,
                    m.GetRouteInfoBody(topic=f"T{i % 60}"),
                    m.TopicRouteData,
                )
                for i in range(300)
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert conn.in_flight == 0
            return results  # type: ignore[return-value]
        finally:
            await conn.close()

    with IOThread() as io:
        results = io.run(burst(), timeout=20.0)
    for i, result in enumerate(results):
        if i % 60 < 50:
            assert isinstance(result, m.TopicRouteData), result
        else:
            assert isinstance(result, errors.NoRouteError), result


def test_oneway_gets_no_reply(raw: zmq.Socket[bytes]) -> None:
    oneway = encode_request(RequestCode.REGISTER_BROKER, 77, register_body(), flags=Flag.ONEWAY)
    raw.send_multipart(oneway)
    bad_oneway = encode_request(
        RequestCode.GET_ROUTE_INFO_BY_TOPIC, 78, m.GetRouteInfoBody(topic="No"), flags=Flag.ONEWAY
    )
    raw.send_multipart(bad_oneway)  # an error, and still no reply
    raw.send_multipart(
        encode_request(
            RequestCode.GET_ROUTE_INFO_BY_TOPIC, 79, m.GetRouteInfoBody(topic="TopicTest")
        )
    )
    reply = parse_reply(raw.recv_multipart())
    assert (reply.request_id, reply.code) == (79, ResponseCode.SUCCESS)  # FIFO on one connection
    assert raw.poll(200) == 0  # nothing for 77 or 78


def test_malformed_frames_get_error_replies(
    raw: zmq.Socket[bytes], nameserver: ServerProcess
) -> None:
    def ask(*frames: Buffer) -> tuple[int, int, str]:
        raw.send_multipart(list(frames))
        reply = parse_reply(raw.recv_multipart())
        assert reply.flags & Flag.RESPONSE
        return reply.request_id, reply.code, reply.remark

    enc = msgspec.msgpack.encode
    assert ask(enc([105, 2, 11, 0, {}]))[:2] == (11, ResponseCode.VERSION_NOT_SUPPORTED)
    assert ask(enc([4242, 1, 12, 0, {}]))[:2] == (12, ResponseCode.REQUEST_CODE_NOT_SUPPORTED)
    rid, code, remark = ask(enc([105, 1, 13, 0, {"topic": 1}]))
    assert (rid, code) == (13, ResponseCode.MALFORMED_REQUEST) and "topic" in remark
    assert ask(enc([105, 1, 14, 0, {"topic": "T"}]), b"extra")[:2] == (
        14,
        ResponseCode.MALFORMED_REQUEST,
    )
    header = encode_request(
        RequestCode.SEND_MESSAGE, 15, m.SendMessageBody(producer_group="p", topic="T", queue_id=0)
    )[0]
    assert ask(header, bytes(MAX_MESSAGE_BYTES + 1))[:2] == (15, ResponseCode.MESSAGE_ILLEGAL)
    # Nothing to answer: garbage, a reply, no id. Dropped; the next request still works.
    raw.send_multipart([b"\xc1garbage"])
    raw.send_multipart([enc([0, 1, 16, int(Flag.RESPONSE), "", {}])])
    raw.send_multipart([enc(["no", "id"])])
    assert ask(enc([106, 1, 17, 0, {}]))[:2] == (17, ResponseCode.SUCCESS)
    assert nameserver.alive
    assert any("bad input" in line for line in nameserver.log_lines())


def test_client_checks_size_before_sending(ns_client: BlockingConnection) -> None:
    body = m.SendMessageBody(producer_group="p", topic="T", queue_id=0)
    with pytest.raises(errors.MessageTooLargeError) as info:
        ns_client.request(RequestCode.SEND_MESSAGE, body, [bytes(MAX_MESSAGE_BYTES + 1)])
    assert info.value.limit == MAX_MESSAGE_BYTES


def test_request_timeout_when_nobody_listens() -> None:
    # Bind then close a ROUTER to get a port nobody listens on.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.close(linger=0)
    ctx.term()
    with BlockingConnection(f"tcp://127.0.0.1:{port}", timeout=0.3) as client:
        start = time.monotonic()
        with pytest.raises(errors.RequestTimeoutError) as info:
            route(client, "T")
        assert time.monotonic() - start < 2.0
        assert info.value.timeout == 0.3 and info.value.retryable


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(nameserver_factory: Factory, signum: int) -> None:
    ns = nameserver_factory()
    ns.send_signal(signum)
    assert ns.wait(timeout=5.0) == 0
    assert any("nameserver stopped" in line for line in ns.log_lines())


def test_bind_failure_exits_1(nameserver: ServerProcess) -> None:
    with pytest.raises(RuntimeError, match="exited with status 1"):
        run_nameserver(bind=nameserver.endpoint)
