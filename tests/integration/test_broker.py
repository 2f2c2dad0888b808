"""A real ``fabric broker`` process and a NameServer on 127.0.0.1 port 0, over real DEALER sockets.

Requests are built from the protocol Structs directly (not the client library): these
tests pin the broker's side of docs/PROTOCOL.md section 7.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from broker.store import StoredMessage, decode_message
from fabric.iothread import IOThread
from fabric.protocol import (
    PROTOCOL_VERSION,
    Flag,
    RequestCode,
    ResponseCode,
    encode_reply,
    parse_reply,
    parse_request,
)
from fabric.protocol import messages as m
from fabric.protocol.frames import Buffer, Reply
from fabric.testing import (
    ServerProcess,
    run_broker,
    run_nameserver,
    spawn,
    write_broker_config,
)
from fabric.transport import BlockingConnection, Connection

MIB = 1024 * 1024
#: The module broker refuses bodies over this (below the protocol's 4 MiB).
BROKER_MAX_BODY = 2 * MIB


# -- helpers -----------------------------------------------------------------------------


def send(
    conn: BlockingConnection,
    topic: str,
    body: bytes = b"body",
    *,
    queue_id: int = 0,
    group: str = "pg",
    **fields: Any,
) -> Reply:
    header = m.SendMessageBody(producer_group=group, topic=topic, queue_id=queue_id, **fields)
    return conn.request(RequestCode.SEND_MESSAGE, header, [body])


def send_ok(conn: BlockingConnection, topic: str, body: bytes = b"body", **kw: Any) -> m.SendReply:
    reply = send(conn, topic, body, **kw)
    assert reply.code == ResponseCode.SUCCESS, reply
    return reply.decode(m.SendReply)


def pull(
    conn: BlockingConnection,
    topic: str,
    offset: int = 0,
    *,
    queue_id: int = 0,
    group: str = "cg",
    timeout: float | None = None,
    **fields: Any,
) -> Reply:
    body = m.PullMessageBody(
        consumer_group=group, topic=topic, queue_id=queue_id, queue_offset=offset, **fields
    )
    return conn.request(RequestCode.PULL_MESSAGE, body, timeout=timeout)


def records(reply: Reply) -> list[StoredMessage]:
    return [decode_message(bytes(frame)) for frame in reply.frames]


def offset_of(conn: BlockingConnection, code: RequestCode, topic: str, queue_id: int = 0) -> int:
    body = m.QueueOffsetBody(topic=topic, queue_id=queue_id)
    return conn.call(code, body, m.OffsetReply).offset


def create_topic(conn: BlockingConnection, topic: str, queues: int = 4) -> m.TopicConfig:
    config = m.TopicConfig(topic=topic, read_queue_nums=queues, write_queue_nums=queues)
    return conn.call(RequestCode.CREATE_TOPIC, config, m.TopicConfig)


def route_or_none(ns: BlockingConnection, topic: str) -> m.TopicRouteData | None:
    reply = ns.request(RequestCode.GET_ROUTE_INFO_BY_TOPIC, m.GetRouteInfoBody(topic=topic))
    return reply.decode(m.TopicRouteData) if reply.ok else None


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns a truthy value, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # a bounded retry against another process, not a synchronisation


def no_errors(*servers: ServerProcess) -> None:
    for server in servers:
        assert not server.error_lines(), "\n".join(server.log_lines())


def run_async(coro_fn: Callable[[IOThread], Any], timeout: float = 20.0) -> Any:
    """Run ``coro_fn(io)`` on a fresh IOThread (async Connections live there)."""
    io = IOThread(name="test-io").start()
    try:
        return io.run(coro_fn(io), timeout=timeout)
    finally:
        io.stop()


class RawClient:
    """A plain blocking DEALER for frames no client library would send."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvtimeo = 5000
        self.sock.sndtimeo = 5000
        self.sock.connect(endpoint)
        self.next_id = 1000

    def send(self, frames: list[Buffer]) -> None:
        self.sock.send_multipart(frames)

    def recv(self) -> Reply:
        return parse_reply(self.sock.recv_multipart())

    def header(
        self, code: int, body: object, *, version: int = PROTOCOL_VERSION, flags: int = 0
    ) -> tuple[int, bytes]:
        self.next_id += 1
        return self.next_id, msgspec.msgpack.encode([code, version, self.next_id, flags, body])

    def ask(self, frames: list[Buffer]) -> Reply:
        self.send(frames)
        return self.recv()

    def ping(self) -> None:
        """A valid request; its reply must be the next one (nothing else was answered)."""
        rid, header = self.header(int(RequestCode.LIST_TOPICS), {})
        reply = self.ask([header])
        assert reply.request_id == rid, f"expected the reply to {rid}, got {reply}"
        assert reply.ok

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """One NameServer and one broker registered with it (heartbeat every 0.3 s)."""
    tmp = tmp_path_factory.mktemp("broker")
    config = write_broker_config(tmp / "broker.json", max_message_size=BROKER_MAX_BODY)
    ns = run_nameserver()
    try:
        broker = run_broker(tmp / "data", ns.endpoint, config=config, heartbeat_interval=0.3)
        try:
            yield ns, broker
        finally:
            assert broker.stop() == 0
    finally:
        ns.stop()
    no_errors(ns, broker)


@pytest.fixture(scope="module")
def broker(cluster: tuple[ServerProcess, ServerProcess]) -> ServerProcess:
    return cluster[1]


@pytest.fixture(scope="module")
def client(broker: ServerProcess) -> Iterator[BlockingConnection]:
    with BlockingConnection(broker.endpoint, timeout=5.0) as conn:
        yield conn


@pytest.fixture(scope="module")
def ns_client(cluster: tuple[ServerProcess, ServerProcess]) -> Iterator[BlockingConnection]:
    with BlockingConnection(cluster[0].endpoint, timeout=5.0) as conn:
        yield conn


@pytest.fixture
def raw(broker: ServerProcess) -> Iterator[RawClient]:
    client = RawClient(broker.endpoint)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def own_brokers(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start brokers with custom options (data in tmp_path); all stopped after the test."""
    started: list[ServerProcess] = []

    def start(data: str = "data", **kwargs: Any) -> ServerProcess:
        kwargs.setdefault("config", write_broker_config(tmp_path / "small.json"))
        server = run_broker(tmp_path / data, **kwargs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
    no_errors(*started)


def test_ready_waits_for_the_first_registration(tmp_path: Path) -> None:
    # A client that starts right after READY must find the broker: the broker prints
    # READY only once its first REGISTER_BROKER is answered. A fake NameServer holds
    # that answer back to see the order.
    ctx: zmq.Context[bytes] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    config = write_broker_config(tmp_path / "small.json")
    broker = spawn(
        ["broker", "--data", str(tmp_path / "data"), "--bind", "tcp://127.0.0.1:0",
         "--nameserver", f"tcp://127.0.0.1:{port}", "--config", str(config)],
        ready=[],
    )  # fmt: skip
    try:
        assert router.poll(20_000), "no REGISTER_BROKER arrived"
        identity, *frames = router.recv_multipart()
        request, _ = parse_request(frames)
        assert isinstance(request, m.RegisterBrokerRequest)
        with pytest.raises(RuntimeError):  # not while the registration is unanswered
            broker.wait_ready(["broker"], timeout=0.5)
        reply = m.RegisterBrokerReply(expiry_ms=120_000)
        router.send_multipart(
            [identity, *encode_reply(request.request_id, ResponseCode.SUCCESS, reply)]
        )
        broker.wait_ready(["broker"], timeout=10.0)
    finally:
        broker.stop()
        router.close(linger=0)
        ctx.term()


# -- send and pull -----------------------------------------------------------------------


def test_ready_line_names_the_real_port(broker: ServerProcess) -> None:
    lines = [line for line in broker.stdout_lines() if line.startswith("READY")]
    assert lines == [f"READY broker {broker.endpoint}"]
    assert broker.endpoint.startswith("tcp://127.0.0.1:")
    assert not broker.endpoint.endswith(":0")


def test_send_and_pull_return_exactly_the_bodies(client: BlockingConnection) -> None:
    topic = "RoundTrip"
    cases: list[tuple[bytes, dict[str, Any]]] = [
        (bytes(range(256)) * 4, {"tags": "A", "keys": ["k1", "k2"], "properties": {"x": "1"}}),
        (b"", {}),  # empty body, no tags, no keys, empty properties
        (os.urandom(1 * MIB), {"tags": "big"}),
        (
            "übergrößenträger ✓".encode(),
            {"tags": "ÄÖÜ-標籤", "keys": ["ключ", "键"], "properties": {"ü": "✓", "empty": ""}},
        ),
        (
            b"\x00\xff" * 10,
            {
                "uniq_id": "my-id-1",
                "flag": -7,
                "sysflag": 0,
                "born_timestamp": 1_700_000_000_123,
                "reconsume_times": 3,
            },
        ),
    ]
    for i, (body, fields) in enumerate(cases):
        reply = send_ok(client, topic, body, **fields)
        assert reply.queue_id == 0
        assert reply.queue_offset == i
        assert reply.broker_name == "broker-a"
    got = pull(client, topic, 0, max_msgs=32, max_bytes=4 * MIB)
    assert got.code == ResponseCode.SUCCESS, got
    assert got.decode(m.PullReply) == m.PullReply(
        next_offset=len(cases), min_offset=0, max_offset=len(cases)
    )
    msgs = records(got)
    assert [msg.body for msg in msgs] == [body for body, _ in cases]
    for i, (msg, (_, fields)) in enumerate(zip(msgs, cases, strict=True)):
        assert msg.topic == topic
        assert msg.queue_offset == i
        assert msg.tags == fields.get("tags", "")
        assert msg.keys == fields.get("keys", [])
        assert msg.properties == fields.get("properties", {})
        assert msg.uniq_id == fields.get("uniq_id", "")
        assert msg.flag == fields.get("flag", 0)
        assert msg.born_timestamp == fields.get("born_timestamp", 0)
        assert msg.reconsume_times == fields.get("reconsume_times", 0)
        assert msg.store_timestamp > 0


def test_msg_id_is_the_uniq_id_or_an_offset_id(client: BlockingConnection) -> None:
    assert send_ok(client, "MsgIds", uniq_id="ABC123").msg_id == "ABC123"
    first = send_ok(client, "MsgIds").msg_id
    second = send_ok(client, "MsgIds").msg_id
    # 4 bytes of IPv4 address, 4 of port, 8 of CommitLog offset, in hex.
    assert len(first) == 32 and first.startswith("7F000001")
    int(first, 16)
    assert first != second


def test_oneway_send_is_stored_without_a_reply(client: BlockingConnection, raw: RawClient) -> None:
    topic = "Oneway"
    header = m.SendMessageBody(producer_group="pg", topic=topic, queue_id=1)
    for i in range(5):
        client.send_oneway(RequestCode.SEND_MESSAGE, header, [f"oneway {i}".encode()])
    # One connection's requests are handled in order: this query sees all five.
    assert offset_of(client, RequestCode.GET_MAX_OFFSET, topic, 1) == 5
    got = records(pull(client, topic, 0, queue_id=1))
    assert [msg.body for msg in got] == [f"oneway {i}".encode() for i in range(5)]
    # On a raw socket: a oneway request (even a bad one) gets nothing back.
    _, good = raw.header(int(RequestCode.SEND_MESSAGE), msgspec.to_builtins(header), flags=2)
    raw.send([good, b"raw oneway"])
    _, bad = raw.header(int(RequestCode.SEND_MESSAGE), {"topic": 5}, flags=2)
    raw.send([bad, b"x"])
    raw.ping()
    assert offset_of(client, RequestCode.GET_MAX_OFFSET, topic, 1) == 6


def test_batch_is_stored_as_separate_messages(client: BlockingConnection) -> None:
    topic = "Batch"
    entries = [m.BatchEntry(tags=f"t{i % 2}", keys=[f"k{i}"], uniq_id=f"u{i}") for i in range(10)]
    bodies = [f"batch body {i}".encode() * (i + 1) for i in range(10)]
    body = m.SendBatchBody(producer_group="pg", topic=topic, queue_id=2, messages=entries)
    reply = client.call(RequestCode.SEND_BATCH_MESSAGE, body, m.SendBatchReply, bodies)
    assert reply.queue_id == 2
    assert reply.queue_offsets == list(range(10))
    assert reply.msg_ids == [f"u{i}" for i in range(10)]
    assert reply.broker_name == "broker-a"
    got = records(pull(client, topic, 0, queue_id=2))
    assert [msg.body for msg in got] == bodies
    assert [msg.keys for msg in got] == [[f"k{i}"] for i in range(10)]
    # Tag filter on the batch: only the t1 messages.
    odd = records(pull(client, topic, 0, queue_id=2, subscription="t1"))
    assert [msg.uniq_id for msg in odd] == [f"u{i}" for i in range(1, 10, 2)]
    both = records(pull(client, topic, 0, queue_id=2, subscription="t0 || t1"))
    assert len(both) == 10


def test_a_packed_batch_is_stored_as_the_same_messages(client: BlockingConnection) -> None:
    # PROTOCOL.md 7.3: body_sizes and one body frame, against a frame per body.
    topic = "BatchPacked"
    bodies = [f"packed {i}".encode() * (i + 1) for i in range(6)] + [b""]
    for queue_id, packed in ((0, False), (1, True)):
        entries = [m.BatchEntry(uniq_id=f"q{queue_id}-{i}") for i in range(len(bodies))]
        body = m.SendBatchBody(
            producer_group="pg",
            topic=topic,
            queue_id=queue_id,
            messages=entries,
            body_sizes=[len(b) for b in bodies] if packed else [],
        )
        frames = [b"".join(bodies)] if packed else bodies
        reply = client.call(RequestCode.SEND_BATCH_MESSAGE, body, m.SendBatchReply, frames)
        assert reply.queue_offsets == list(range(len(bodies)))
        got = records(pull(client, topic, 0, queue_id=queue_id))
        assert [msg.body for msg in got] == bodies
        assert [msg.uniq_id for msg in got] == [e.uniq_id for e in entries]
    # Sizes that do not add up: refused, nothing stored.
    body = m.SendBatchBody(
        producer_group="pg", topic=topic, queue_id=2, messages=[m.BatchEntry()] * 2,
        body_sizes=[2, 2],
    )  # fmt: skip
    reply = client.request(RequestCode.SEND_BATCH_MESSAGE, body, [b"abc"])
    assert reply.code == ResponseCode.MALFORMED_REQUEST, reply
    assert offset_of(client, RequestCode.GET_MAX_OFFSET, topic, 2) == 0


def test_bad_message_refuses_the_whole_batch(client: BlockingConnection) -> None:
    topic = "BatchRefused"
    create_topic(client, topic)
    entries = [m.BatchEntry(), m.BatchEntry(properties={"big": "x" * 40_000}), m.BatchEntry()]
    body = m.SendBatchBody(producer_group="pg", topic=topic, queue_id=0, messages=entries)
    reply = client.request(RequestCode.SEND_BATCH_MESSAGE, body, [b"a", b"b", b"c"])
    assert reply.code == ResponseCode.MESSAGE_ILLEGAL, reply
    assert "message 1" in reply.remark
    entries = [m.BatchEntry(), m.BatchEntry(flag=2**40)]
    body = m.SendBatchBody(producer_group="pg", topic=topic, queue_id=0, messages=entries)
    reply = client.request(RequestCode.SEND_BATCH_MESSAGE, body, [b"a", b"b"])
    assert reply.code == ResponseCode.MESSAGE_ILLEGAL, reply
    assert offset_of(client, RequestCode.GET_MAX_OFFSET, topic) == 0


def test_many_requests_in_flight_on_one_connection(broker: ServerProcess) -> None:
    topic = "InFlight"

    async def scenario(io: IOThread) -> list[Reply]:
        conn = Connection(io.context, broker.endpoint, timeout=10.0)
        try:
            sends = [
                conn.request(
                    RequestCode.SEND_MESSAGE,
                    m.SendMessageBody(producer_group="pg", topic=topic, queue_id=3),
                    [f"m{i}".encode()],
                )
                for i in range(300)
            ]
            return list(await asyncio.gather(*sends))
        finally:
            await conn.close()

    replies = run_async(scenario)
    assert all(r.code == ResponseCode.SUCCESS for r in replies)
    assert len({r.request_id for r in replies}) == 300
    offsets = sorted(r.decode(m.SendReply).queue_offset for r in replies)
    assert offsets == list(range(300))


def test_replies_carry_the_request_ids(raw: RawClient) -> None:
    ids = []
    for i in range(50):
        body = {"producer_group": "pg", "topic": "RawIds", "queue_id": 0}
        rid, header = raw.header(int(RequestCode.SEND_MESSAGE), body)
        ids.append(rid)
        raw.send([header, f"raw {i}".encode()])
    got = [raw.recv() for _ in ids]
    assert sorted(r.request_id for r in got) == ids
    assert all(r.code == ResponseCode.SUCCESS and r.flags & Flag.RESPONSE for r in got)


# -- pull statuses and long polling ------------------------------------------------------


def test_pull_statuses(client: BlockingConnection) -> None:
    topic = "PullStatus"
    for i in range(5):
        send_ok(client, topic, f"p{i}".encode(), tags="even" if i % 2 == 0 else "odd")
    # max_msgs and max_bytes limit a reply (one record always fits).
    two = pull(client, topic, 0, max_msgs=2)
    assert two.code == ResponseCode.SUCCESS and len(two.frames) == 2
    assert two.decode(m.PullReply).next_offset == 2
    one = pull(client, topic, 0, max_bytes=1)
    assert len(one.frames) == 1 and one.decode(m.PullReply).next_offset == 1
    # Nothing new: PULL_NOT_FOUND at once without suspend.
    none = pull(client, topic, 5)
    assert none.code == ResponseCode.PULL_NOT_FOUND, none
    assert none.decode(m.PullReply) == m.PullReply(next_offset=5, min_offset=0, max_offset=5)
    # Past the end: PULL_OFFSET_MOVED to the end.
    moved = pull(client, topic, 42)
    assert moved.code == ResponseCode.PULL_OFFSET_MOVED, moved
    assert moved.decode(m.PullReply).next_offset == 5
    below = pull(client, topic, -3)
    assert below.code == ResponseCode.PULL_OFFSET_MOVED
    assert below.decode(m.PullReply).next_offset == 0
    # A filter that matches nothing up to the end: nothing yet, next_offset past them.
    filtered = pull(client, topic, 4, subscription="odd")
    assert filtered.code == ResponseCode.PULL_NOT_FOUND, filtered
    assert filtered.decode(m.PullReply).next_offset == 5
    # A queue with no message yet.
    create_topic(client, "PullEmpty")
    empty = pull(client, "PullEmpty", 0)
    assert empty.code == ResponseCode.PULL_NOT_FOUND
    assert empty.decode(m.PullReply) == m.PullReply(next_offset=0, min_offset=0, max_offset=0)
    assert pull(client, "PullEmpty", 3).code == ResponseCode.PULL_OFFSET_MOVED
    assert pull(client, "NoSuchTopic", 0).code == ResponseCode.TOPIC_NOT_EXIST


def test_long_poll_returns_as_soon_as_a_message_arrives(broker: ServerProcess) -> None:
    topic = "LongPoll"

    async def scenario(io: IOThread) -> tuple[Reply, float]:
        loop = asyncio.get_running_loop()
        puller = Connection(io.context, broker.endpoint, timeout=20.0)
        sender = Connection(io.context, broker.endpoint, timeout=5.0)
        try:
            await sender.call(RequestCode.CREATE_TOPIC, m.TopicConfig(topic=topic), m.TopicConfig)
            body = m.PullMessageBody(
                consumer_group="cg",
                topic=topic,
                queue_id=1,
                queue_offset=0,
                suspend_timeout_ms=10_000,
                subscription="wanted",
            )
            parked = loop.create_task(puller.request(RequestCode.PULL_MESSAGE, body))
            # Requests of one connection are handled in order: once this is answered,
            # the pull above has been parked.
            await puller.request(RequestCode.LIST_TOPICS, m.Empty())
            assert not parked.done()
            header = m.SendMessageBody(producer_group="pg", topic=topic, queue_id=1, tags="other")
            await sender.request(RequestCode.SEND_MESSAGE, header, [b"filtered out"])
            await puller.request(RequestCode.LIST_TOPICS, m.Empty())
            assert not parked.done(), "a message the filter rejects must not answer the pull"
            started = loop.time()
            header = m.SendMessageBody(producer_group="pg", topic=topic, queue_id=1, tags="wanted")
            await sender.request(RequestCode.SEND_MESSAGE, header, [b"wake up"])
            reply = await parked
            return reply, loop.time() - started
        finally:
            await puller.close()
            await sender.close()

    reply, elapsed = run_async(scenario)
    assert reply.code == ResponseCode.SUCCESS, reply
    assert [msg.body for msg in records(reply)] == [b"wake up"]
    assert reply.decode(m.PullReply).next_offset == 2
    assert elapsed < 2.0, f"the parked pull took {elapsed:.3f}s to wake"


def test_long_poll_times_out_with_pull_not_found(client: BlockingConnection) -> None:
    create_topic(client, "LongPollTimeout")
    started = time.monotonic()
    reply = pull(client, "LongPollTimeout", 0, suspend_timeout_ms=300)
    elapsed = time.monotonic() - started
    assert reply.code == ResponseCode.PULL_NOT_FOUND, reply
    assert reply.decode(m.PullReply).next_offset == 0
    assert 0.25 <= elapsed < 3.0, elapsed


def test_parked_pulls_do_not_block_other_requests(broker: ServerProcess) -> None:
    async def scenario(io: IOThread) -> float:
        loop = asyncio.get_running_loop()
        conn = Connection(io.context, broker.endpoint, timeout=10.0)
        try:
            await conn.call(
                RequestCode.CREATE_TOPIC, m.TopicConfig(topic="ManyParked"), m.TopicConfig
            )
            pulls = [
                loop.create_task(
                    conn.request(
                        RequestCode.PULL_MESSAGE,
                        m.PullMessageBody(
                            consumer_group="cg",
                            topic="ManyParked",
                            queue_id=q,
                            queue_offset=0,
                            suspend_timeout_ms=500,
                        ),
                    )
                )
                for q in range(4)
                for _ in range(25)
            ]
            started = loop.time()
            await conn.request(RequestCode.LIST_TOPICS, m.Empty())
            fast = loop.time() - started
            replies = await asyncio.gather(*pulls)
            assert all(r.code == ResponseCode.PULL_NOT_FOUND for r in replies)
            return fast
        finally:
            await conn.close()

    assert run_async(scenario) < 0.4


def test_pull_commits_the_offset_first(client: BlockingConnection) -> None:
    topic = "PullCommit"
    send_ok(client, topic)
    reply = pull(client, topic, 0, group="committer", commit_offset=1)
    assert reply.code == ResponseCode.SUCCESS
    query = m.QueryConsumerOffsetBody(consumer_group="committer", topic=topic, queue_id=0)
    assert client.call(RequestCode.QUERY_CONSUMER_OFFSET, query, m.OffsetReply).offset == 1


# -- offsets -----------------------------------------------------------------------------


def test_consumer_offsets_and_queue_offsets(client: BlockingConnection) -> None:
    topic = "Offsets"
    before = int(time.time() * 1000)
    for i in range(3):
        send_ok(client, topic, f"o{i}".encode(), queue_id=1)
    query = m.QueryConsumerOffsetBody(consumer_group="og", topic=topic, queue_id=1)
    missing = client.request(RequestCode.QUERY_CONSUMER_OFFSET, query)
    assert missing.code == ResponseCode.QUERY_NOT_FOUND, missing
    commit = m.CommitConsumerOffsetBody(consumer_group="og", topic=topic, queue_id=1, offset=2)
    client.call(RequestCode.COMMIT_CONSUMER_OFFSET, commit, m.Empty)
    assert client.call(RequestCode.QUERY_CONSUMER_OFFSET, query, m.OffsetReply).offset == 2
    assert offset_of(client, RequestCode.GET_MIN_OFFSET, topic, 1) == 0
    assert offset_of(client, RequestCode.GET_MAX_OFFSET, topic, 1) == 3
    assert offset_of(client, RequestCode.GET_MAX_OFFSET, topic, 0) == 0

    def search(timestamp: int) -> int:
        body = m.SearchOffsetBody(topic=topic, queue_id=1, timestamp=timestamp)
        return client.call(RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, body, m.OffsetReply).offset

    assert search(0) == 0
    assert search(before - 60_000) == 0
    assert search(int(time.time() * 1000) + 60_000) == 3
    negative = m.CommitConsumerOffsetBody(consumer_group="og", topic=topic, queue_id=1, offset=-1)
    assert (
        client.request(RequestCode.COMMIT_CONSUMER_OFFSET, negative).code
        == ResponseCode.MALFORMED_REQUEST
    )
    nowhere = m.QueryConsumerOffsetBody(consumer_group="og", topic="NoSuchTopic", queue_id=0)
    assert (
        client.request(RequestCode.QUERY_CONSUMER_OFFSET, nowhere).code
        == ResponseCode.TOPIC_NOT_EXIST
    )


def test_offsets_and_topics_survive_a_restart(own_brokers: Callable[..., ServerProcess]) -> None:
    first = own_brokers()
    with BlockingConnection(first.endpoint, timeout=5.0) as conn:
        create_topic(conn, "Durable", queues=8)
        send_ok(conn, "Durable", b"kept", queue_id=7)
        commit = m.CommitConsumerOffsetBody(
            consumer_group="dg", topic="Durable", queue_id=7, offset=1
        )
        conn.call(RequestCode.COMMIT_CONSUMER_OFFSET, commit, m.Empty)
    assert first.stop() == 0
    second = own_brokers()
    with BlockingConnection(second.endpoint, timeout=5.0) as conn:
        query = m.QueryConsumerOffsetBody(consumer_group="dg", topic="Durable", queue_id=7)
        assert conn.call(RequestCode.QUERY_CONSUMER_OFFSET, query, m.OffsetReply).offset == 1
        topics = conn.call(RequestCode.LIST_TOPICS, m.Empty(), m.TopicConfigList).topics
        assert m.TopicConfig(topic="Durable", read_queue_nums=8, write_queue_nums=8) in topics
        assert [msg.body for msg in records(pull(conn, "Durable", 0, queue_id=7))] == [b"kept"]


# -- topics and registration -------------------------------------------------------------


def test_topic_create_update_delete_list(
    client: BlockingConnection, ns_client: BlockingConnection
) -> None:
    topic = "Admin"
    created = create_topic(client, topic, queues=2)
    assert created == m.TopicConfig(topic=topic, read_queue_nums=2, write_queue_nums=2)
    again = client.request(RequestCode.CREATE_TOPIC, m.TopicConfig(topic=topic))
    assert again.code == ResponseCode.TOPIC_ALREADY_EXISTS
    route = wait_until(lambda: route_or_none(ns_client, topic), 5.0, "the route")
    assert route.queue_datas[0].write_queue_nums == 2
    assert route.broker_datas[0].broker_addrs == {0: client.endpoint}

    # Update: more queues; the route follows.
    more = m.TopicConfig(topic=topic, read_queue_nums=6, write_queue_nums=6)
    assert client.call(RequestCode.UPDATE_TOPIC, more, m.TopicConfig) == more
    wait_until(
        lambda: (r := route_or_none(ns_client, topic)) and r.queue_datas[0].write_queue_nums == 6,
        5.0,
        "the updated route",
    )
    send_ok(client, topic, queue_id=5)
    listed = client.call(RequestCode.LIST_TOPICS, m.Empty(), m.TopicConfigList).topics
    assert more in listed
    assert [t.topic for t in listed] == sorted(t.topic for t in listed)

    # Delete: gone from the broker, its queues and the route.
    client.call(RequestCode.DELETE_TOPIC, m.DeleteTopicBody(topic=topic), m.Empty)
    listed = client.call(RequestCode.LIST_TOPICS, m.Empty(), m.TopicConfigList).topics
    assert topic not in {t.topic for t in listed}
    assert pull(client, topic, 0, queue_id=5).code == ResponseCode.TOPIC_NOT_EXIST
    wait_until(lambda: route_or_none(ns_client, topic) is None, 5.0, "the route to go")
    for code, body in [
        (RequestCode.DELETE_TOPIC, m.DeleteTopicBody(topic=topic)),
        (RequestCode.UPDATE_TOPIC, m.TopicConfig(topic=topic)),
    ]:
        assert client.request(code, body).code == ResponseCode.TOPIC_NOT_EXIST
    # Recreated, it starts empty.
    create_topic(client, topic)
    assert offset_of(client, RequestCode.GET_MAX_OFFSET, topic, 0) == 0


def test_bad_topic_configs(client: BlockingConnection) -> None:
    cases = [
        (m.TopicConfig(topic="bad name"), ResponseCode.INVALID_TOPIC_NAME),
        (m.TopicConfig(topic="x" * 128), ResponseCode.INVALID_TOPIC_NAME),
        (m.TopicConfig(topic="Q", read_queue_nums=1025), ResponseCode.MALFORMED_REQUEST),
        (m.TopicConfig(topic="Q", write_queue_nums=-1), ResponseCode.MALFORMED_REQUEST),
        (m.TopicConfig(topic="Q", perm=8), ResponseCode.MALFORMED_REQUEST),
    ]
    for config, code in cases:
        assert client.request(RequestCode.CREATE_TOPIC, config).code == code, config
    body = m.DeleteTopicBody(topic="bad/name")
    assert client.request(RequestCode.DELETE_TOPIC, body).code == ResponseCode.INVALID_TOPIC_NAME


def test_permissions(client: BlockingConnection) -> None:
    read_only = m.TopicConfig(topic="ReadOnly", perm=4)
    client.call(RequestCode.CREATE_TOPIC, read_only, m.TopicConfig)
    assert send(client, "ReadOnly").code == ResponseCode.NO_PERMISSION
    write_only = m.TopicConfig(topic="WriteOnly", perm=2)
    client.call(RequestCode.CREATE_TOPIC, write_only, m.TopicConfig)
    send_ok(client, "WriteOnly")
    assert pull(client, "WriteOnly", 0).code == ResponseCode.NO_PERMISSION


def test_auto_created_topic_gets_the_default_queues(
    client: BlockingConnection, ns_client: BlockingConnection
) -> None:
    send_ok(client, "AutoCreated", queue_id=3)
    assert send(client, "AutoCreated", queue_id=4).code == ResponseCode.MESSAGE_ILLEGAL
    route = wait_until(lambda: route_or_none(ns_client, "AutoCreated"), 5.0, "the route")
    assert route.queue_datas[0].read_queue_nums == 4


def test_auto_create_off(own_brokers: Callable[..., ServerProcess]) -> None:
    broker = own_brokers(auto_create_topics=False)
    with BlockingConnection(broker.endpoint, timeout=5.0) as conn:
        reply = send(conn, "NotAuto")
        assert reply.code == ResponseCode.TOPIC_NOT_EXIST, reply
        assert "auto-create is off" in reply.remark
        create_topic(conn, "NotAuto", queues=1)
        assert send_ok(conn, "NotAuto").queue_offset == 0


def test_reregisters_when_the_nameserver_forgets_it(tmp_path: Path) -> None:
    ns = run_nameserver()
    broker: ServerProcess | None = None
    ns2: ServerProcess | None = None
    try:
        config = write_broker_config(tmp_path / "b.json")
        broker = run_broker(tmp_path / "data", ns.endpoint, config=config, heartbeat_interval=0.2)
        with BlockingConnection(broker.endpoint, timeout=5.0) as conn:
            create_topic(conn, "Reregister")
        with BlockingConnection(ns.endpoint, timeout=5.0) as nsc:
            wait_until(lambda: route_or_none(nsc, "Reregister"), 5.0, "the first route")
        # A NameServer restarted on the same port knows nothing: the broker's next
        # heartbeat gets BROKER_NOT_REGISTERED and it registers again.
        endpoint = ns.endpoint
        ns.stop()
        ns2 = run_nameserver(bind=endpoint)
        with BlockingConnection(endpoint, timeout=5.0) as nsc:
            wait_until(lambda: route_or_none(nsc, "Reregister"), 10.0, "the route again")
        broker.wait_for_log("does not know us")
    finally:
        for server in (broker, ns, ns2):
            if server is not None:
                server.stop()
    no_errors(*(s for s in (broker, ns, ns2) if s is not None))


def test_registers_with_every_nameserver_and_leaves_at_shutdown(
    own_brokers: Callable[..., ServerProcess], nameserver_factory: Callable[..., ServerProcess]
) -> None:
    nameservers = [nameserver_factory(), nameserver_factory()]
    broker = own_brokers(
        nameservers=[ns.endpoint for ns in nameservers], cluster="TwoNs", name="broker-two"
    )
    with BlockingConnection(broker.endpoint, timeout=5.0) as conn:
        create_topic(conn, "EveryNs", queues=3)
    for ns in nameservers:
        with BlockingConnection(ns.endpoint, timeout=5.0) as nsc:
            route = wait_until(partial(route_or_none, nsc, "EveryNs"), 5.0, "the route")
            assert route.queue_datas[0].broker_name == "broker-two"
            info = nsc.call(RequestCode.GET_CLUSTER_INFO, m.Empty(), m.ClusterInfo)
            assert info.clusters == {"TwoNs": ["broker-two"]}
    assert broker.stop() == 0
    for ns in nameservers:  # UNREGISTER_BROKER at shutdown: no need to wait for expiry
        with BlockingConnection(ns.endpoint, timeout=5.0) as nsc:
            assert route_or_none(nsc, "EveryNs") is None


# -- SYNC_FLUSH --------------------------------------------------------------------------


def test_sync_flush_sends_and_group_commit(own_brokers: Callable[..., ServerProcess]) -> None:
    broker = own_brokers(flush="sync")

    async def scenario(io: IOThread) -> list[Reply]:
        conn = Connection(io.context, broker.endpoint, timeout=10.0)
        try:
            header = m.SendMessageBody(producer_group="pg", topic="Sync", queue_id=0)
            batch = m.SendBatchBody(
                producer_group="pg", topic="Sync", queue_id=1, messages=[m.BatchEntry()] * 3
            )
            sends = [conn.request(RequestCode.SEND_MESSAGE, header, [b"s"]) for _ in range(200)]
            sends.append(conn.request(RequestCode.SEND_BATCH_MESSAGE, batch, [b"1", b"2", b"3"]))
            await conn.send_oneway(RequestCode.SEND_MESSAGE, header, [b"oneway"])
            return list(await asyncio.gather(*sends))
        finally:
            await conn.close()

    replies = run_async(scenario)
    assert [r.code for r in replies] == [ResponseCode.SUCCESS] * 201
    assert replies[-1].decode(m.SendBatchReply).queue_offsets == [0, 1, 2]
    with BlockingConnection(broker.endpoint, timeout=5.0) as conn:
        assert offset_of(conn, RequestCode.GET_MAX_OFFSET, "Sync", 0) == 201


def test_sync_flush_waiters_answer_in_order_and_time_out() -> None:
    from broker.processors.send import SyncFlushWaiters

    class Request:
        def __init__(self, request_id: int, flags: int = 0) -> None:
            self.request_id = request_id
            self.flags = flags

    async def scenario() -> list[tuple[int, ResponseCode]]:
        answered: list[tuple[int, ResponseCode]] = []

        class Replier:
            def reply(
                self, identity: bytes, request: Any, code: ResponseCode, *a: Any, **k: Any
            ) -> None:
                answered.append((request.request_id, code))

        loop = asyncio.get_running_loop()
        waiters = SyncFlushWaiters(loop, Replier(), timeout=0.2)
        body = m.Empty()
        for rid, end in enumerate((100, 200, 300), 1):
            waiters.add(end, b"peer", Request(rid), body)
        waiters.on_flushed(150)
        assert answered == [(1, ResponseCode.SUCCESS)]
        waiters.on_flushed(200)
        done = loop.create_future()
        loop.call_later(0.5, done.set_result, None)
        await done
        waiters.add(180, b"peer", Request(4), body)  # flushed already: answered at once
        return answered

    assert asyncio.run(scenario()) == [
        (1, ResponseCode.SUCCESS),
        (2, ResponseCode.SUCCESS),
        (3, ResponseCode.FLUSH_DISK_TIMEOUT),
        (4, ResponseCode.SUCCESS),
    ]


def test_sync_flush_waiters_ask_the_flush_thread_only_past_the_inline_limit() -> None:
    from broker.processors.send import SyncFlushWaiters

    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()

        class Replier:
            def reply(self, *args: Any, **kwargs: Any) -> None:
                raise AssertionError("nothing waits for a reply here")

        waiters = SyncFlushWaiters(loop, Replier(), timeout=1.0, inline_bytes=1000)
        asks = [waiters.want(end) for end in (400, 900, 1500, 2000, 2600)]
        assert waiters.wanted == 2600
        waiters.on_flushed(2600)
        asks.append(waiters.want(3000))  # 400 past the flushed offset: left to the server
        return asks

    # 1500 is 1500 past nothing asked: ask; 2000 is 500 past 1500: wait; 2600 is 1100 past.
    assert asyncio.run(scenario()) == [False, False, True, False, True, False]


# -- bad input (X3) ----------------------------------------------------------------------


def test_every_bad_input_gets_its_error_code(
    broker: ServerProcess, client: BlockingConnection, raw: RawClient
) -> None:
    stored = send_ok(client, "BeforeBadInput", b"must survive")
    send_body = {"producer_group": "pg", "topic": "BadInput", "queue_id": 0}
    cases: list[tuple[str, int, object, list[bytes], ResponseCode | str]] = [
        ("unknown code", 9999, {}, [], ResponseCode.REQUEST_CODE_NOT_SUPPORTED),
        (
            "a NameServer code",
            int(RequestCode.GET_ROUTE_INFO_BY_TOPIC),
            {"topic": "T"},
            [],
            ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
        ),
        ("missing field", int(RequestCode.SEND_MESSAGE), {"topic": "T"}, [b"x"], "malformed"),
        ("wrong type", int(RequestCode.PULL_MESSAGE), {"topic": 1}, [], "malformed"),
        ("no body frame", int(RequestCode.SEND_MESSAGE), send_body, [], "malformed"),
        ("two body frames", int(RequestCode.SEND_MESSAGE), send_body, [b"a", b"b"], "malformed"),
        ("body frame on a query", int(RequestCode.LIST_TOPICS), {}, [b"x"], "malformed"),
        (
            "empty batch",
            int(RequestCode.SEND_BATCH_MESSAGE),
            {**send_body, "messages": []},
            [],
            "malformed",
        ),
        (
            "batch frame count",
            int(RequestCode.SEND_BATCH_MESSAGE),
            {**send_body, "messages": [{}, {}]},
            [b"only one"],
            "malformed",
        ),
        (
            "frame over the protocol limit",
            int(RequestCode.SEND_MESSAGE),
            send_body,
            [bytes(4 * MIB + 1)],
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            "body over the broker's limit",
            int(RequestCode.SEND_MESSAGE),
            send_body,
            [bytes(BROKER_MAX_BODY + 1)],
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            "properties too large",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "properties": {"p": "x" * 40_000}},
            [b"x"],
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            "flag out of range",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "flag": 2**31},
            [b"x"],
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            "reconsume_times out of range",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "reconsume_times": -1},
            [b"x"],
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            "born_timestamp out of range",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "born_timestamp": 2**64 - 1},
            [b"x"],
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            "send queue out of range",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "queue_id": 99},
            [b"x"],
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            "negative send queue",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "queue_id": -1},
            [b"x"],
            ResponseCode.MESSAGE_ILLEGAL,
        ),
        (
            "bad topic name",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "topic": "no spaces"},
            [b"x"],
            ResponseCode.INVALID_TOPIC_NAME,
        ),
        (
            "topic too long",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "topic": "T" * 128},
            [b"x"],
            ResponseCode.INVALID_TOPIC_NAME,
        ),
        (
            "bad group name",
            int(RequestCode.SEND_MESSAGE),
            {**send_body, "producer_group": "g/1"},
            [b"x"],
            ResponseCode.INVALID_GROUP_NAME,
        ),
        (
            "bad consumer group",
            int(RequestCode.PULL_MESSAGE),
            {"consumer_group": "", "topic": "BadInput", "queue_id": 0, "queue_offset": 0},
            [],
            ResponseCode.INVALID_GROUP_NAME,
        ),
        (
            "pull queue out of range",
            int(RequestCode.PULL_MESSAGE),
            {"consumer_group": "cg", "topic": "BeforeBadInput", "queue_id": 9, "queue_offset": 0},
            [],
            "malformed",
        ),
        (
            "pull max_msgs zero",
            int(RequestCode.PULL_MESSAGE),
            {
                "consumer_group": "cg",
                "topic": "BeforeBadInput",
                "queue_id": 0,
                "queue_offset": 0,
                "max_msgs": 0,
            },
            [],
            "malformed",
        ),
        (
            "negative suspend",
            int(RequestCode.PULL_MESSAGE),
            {
                "consumer_group": "cg",
                "topic": "BeforeBadInput",
                "queue_id": 0,
                "queue_offset": 0,
                "suspend_timeout_ms": -1,
            },
            [],
            "malformed",
        ),
        (
            "heartbeat without client id",
            int(RequestCode.HEARTBEAT),
            {"client_id": ""},
            [],
            "malformed",
        ),
    ]
    for name, code, body, frames, expected in cases:
        rid, header = raw.header(code, body)
        reply = raw.ask([header, *frames])
        want = ResponseCode.MALFORMED_REQUEST if expected == "malformed" else expected
        assert reply.code == want, f"{name}: {reply}"
        assert reply.request_id == rid, name
        assert reply.remark, name

    # Version first: nothing else is examined.
    rid, header = raw.header(9999, {"x": 1}, version=2)
    reply = raw.ask([header])
    assert (reply.code, reply.request_id) == (ResponseCode.VERSION_NOT_SUPPORTED, rid)

    # Dropped without a reply: no recoverable id, a reply where a request belongs, oneway.
    raw.send([b"\xc1 not msgpack"])
    raw.send([msgspec.msgpack.encode({"not": "an array"})])
    raw.send([msgspec.msgpack.encode([10, 1, "id?", 0, {}]), b"x"])
    raw.send([msgspec.msgpack.encode([10, 1, 5, int(Flag.RESPONSE), {}]), b"x"])
    raw.send([raw.header(9999, {}, flags=int(Flag.ONEWAY))[1]])
    raw.send([b""])
    raw.ping()

    # The broker lives, and what was stored before is intact.
    assert broker.alive
    got = records(pull(client, "BeforeBadInput", stored.queue_offset))
    assert [msg.body for msg in got] == [b"must survive"]
    broker.wait_for_log("bad input")
    assert not broker.error_lines(), "\n".join(broker.log_lines())


# -- process behaviour -------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_cleanly(own_brokers: Callable[..., ServerProcess], signum: int) -> None:
    broker = own_brokers()
    with BlockingConnection(broker.endpoint, timeout=5.0) as conn:
        send_ok(conn, "Stop")
    broker.send_signal(signum)
    assert broker.wait(10.0) == 0
    assert any("broker stopped" in line for line in broker.log_lines())
    assert not (Path(broker.args[broker.args.index("--data") + 1]) / "store" / "abort").exists()


def test_config_file_and_flags(own_brokers: Callable[..., ServerProcess], tmp_path: Path) -> None:
    toml = tmp_path / "broker.toml"
    toml.write_text(
        'broker_name = "from-file"\ncluster_name = "FileCluster"\ndefault_queue_nums = 2\n'
        "[store]\nsegment_size = 8388608\nwarm_ahead_bytes = 0\n",
        encoding="utf-8",
    )
    broker = own_brokers(config=toml)
    with BlockingConnection(broker.endpoint, timeout=5.0) as conn:
        reply = send_ok(conn, "FromFile", queue_id=1)
        assert reply.broker_name == "from-file"
        assert send(conn, "FromFile", queue_id=2).code == ResponseCode.MESSAGE_ILLEGAL
    flagged = own_brokers(data="data2", config=toml, name="from-flag")
    with BlockingConnection(flagged.endpoint, timeout=5.0) as conn:
        assert send_ok(conn, "FromFlag").broker_name == "from-flag"


def _run_broker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric", "broker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    result = _run_broker_cli("--bind", "tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert "--data" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_option = 1\n", encoding="utf-8")
    result = _run_broker_cli("--data", str(tmp_path / "d"), "--config", str(bad))
    assert result.returncode == 2
    assert "no_such_option" in result.stderr


def test_second_broker_on_the_same_data_exits_1(
    own_brokers: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    own_brokers()
    result = _run_broker_cli("--data", str(tmp_path / "data"), "--bind", "tcp://127.0.0.1:0")
    assert result.returncode == 1
    assert "in use by another process" in result.stderr
    assert "READY" not in result.stdout
