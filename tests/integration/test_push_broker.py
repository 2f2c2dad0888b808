"""The broker's side of push consumption (docs/PROTOCOL.md section 13) against real processes.

A ``fabric nameserver`` and a ``fabric broker`` (client_expiry 1.5 s, lock_expiry 2 s) run
on 127.0.0.1 port 0. Consumers are raw DEALER sockets speaking the frames of section 13
(requests built from the protocol Structs, pushes told from replies by the PUSH flag),
so these tests pin the broker, not the client library. Every wait polls the socket with
a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.protocol.codes import ConsumeFrom, FilterType
from fabric.protocol.frames import Reply
from fabric.protocol.records import Record, decode_record
from fabric.testing import ServerProcess, run_broker, run_nameserver, write_broker_config
from fabric.transport import BlockingConnection
from tests.integration.raw_client import RawClient

CLIENT_EXPIRY = 1.5
LOCK_EXPIRY = 2.0
#: How long "nothing more arrives" is watched for.
QUIET = 0.3


# -- a raw consumer ------------------------------------------------------------------------


class Peer(RawClient):
    """A raw consumer: the requests of section 13 and waits for their pushes."""

    def stream_push(self, stream_id: int, timeout: float = 5.0) -> Reply | None:
        return self.take(
            lambda p: p.code == RequestCode.PUSH_MESSAGES and p.request_id == stream_id, timeout
        )

    def closed(
        self, stream_id: int, timeout: float = 5.0, tick: Callable[[], object] | None = None
    ) -> str | None:
        """The reason of the STREAM_CLOSED of ``stream_id`` arriving within ``timeout``."""
        push = self.take(
            lambda p: p.code == RequestCode.STREAM_CLOSED and p.request_id == stream_id,
            timeout,
            tick,
        )
        return None if push is None else push.decode(m.StreamClosedBody).reason

    def records(self, stream_id: int, count: int, timeout: float = 5.0) -> list[Record]:
        """Exactly the next ``count`` records pushed on ``stream_id`` (pushes kept in order)."""
        got: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            push = self.stream_push(stream_id, deadline - time.monotonic())
            assert push is not None, f"{len(got)} of {count} records within {timeout}s"
            got.extend(decode_record(frame) for frame in push.frames)
        assert len(got) == count, f"expected {count} records, got {len(got)}"
        return got

    def next_offset(self, stream_id: int, offset: int, timeout: float = 5.0) -> list[Record]:
        """Records pushed on ``stream_id`` until a push says ``next_offset`` is ``offset``."""
        got: list[Record] = []
        deadline = time.monotonic() + timeout
        while True:
            push = self.stream_push(stream_id, deadline - time.monotonic())
            assert push is not None, f"next_offset never reached {offset}"
            got.extend(decode_record(frame) for frame in push.frames)
            if push.decode(m.PushBody).next_offset == offset:
                return got

    def quiet(self, stream_id: int, wait: float = QUIET) -> None:
        """Assert that no record is pushed on ``stream_id`` within ``wait`` seconds."""
        push = self.take(
            lambda p: (
                p.code == RequestCode.PUSH_MESSAGES and p.request_id == stream_id and bool(p.frames)
            ),
            wait,
        )
        assert push is None, f"unexpected push of {len(push.frames)} records"

    # -- section 13 requests ---------------------------------------------------------------

    def open(self, stream_id: int, topic: str, group: str = "cg", **fields: Any) -> Reply:
        fields.setdefault("client_id", "raw-client")
        body = m.ConsumeOpenBody(
            consumer_group=group,
            stream_id=stream_id,
            topic=topic,
            queue_id=fields.pop("queue_id", 0),
            **fields,
        )
        return self.request(RequestCode.CONSUME_OPEN, body)

    def open_ok(
        self, stream_id: int, topic: str, group: str = "cg", **fields: Any
    ) -> m.ConsumeOpenReply:
        reply = self.open(stream_id, topic, group, **fields)
        assert reply.code == ResponseCode.SUCCESS, reply
        return reply.decode(m.ConsumeOpenReply)

    def ack(self, stream_id: int, msgs: int = 0, nbytes: int = 0, commit: int = -1) -> None:
        body = m.ConsumeAckBody(
            stream_id=stream_id, credit_msgs=msgs, credit_bytes=nbytes, commit_offset=commit
        )
        self.send(RequestCode.CONSUME_ACK, body, oneway=True)

    def heartbeat(
        self, client_id: str, *groups: str, topic: str = "Any", wait: bool = False
    ) -> None:
        """HEARTBEAT, ONEWAY unless ``wait`` (then its reply is awaited)."""
        consumers = [
            m.ConsumerData(group=g, subscriptions=[m.SubscriptionData(topic=topic)]) for g in groups
        ]
        body = m.ClientHeartbeatBody(client_id=client_id, consumers=consumers)
        if wait:
            assert self.request(RequestCode.HEARTBEAT, body).ok
        else:
            self.send(RequestCode.HEARTBEAT, body, oneway=True)

    def members(self, group: str) -> list[str]:
        body = m.ConsumerGroupBody(consumer_group=group)
        return self.call(
            RequestCode.GET_CONSUMER_LIST_BY_GROUP, body, m.ConsumerListReply
        ).client_ids

    def lock(self, group: str, client_id: str, topic: str, *queue_ids: int) -> list[int]:
        queues = [m.QueueRef(topic=topic, queue_id=q) for q in queue_ids]
        body = m.LockBatchBody(consumer_group=group, client_id=client_id, queues=queues)
        reply = self.call(RequestCode.LOCK_BATCH_MQ, body, m.LockBatchReply)
        assert all(q.topic == topic for q in reply.locked)
        return [q.queue_id for q in reply.locked]

    def committed(self, group: str, topic: str, queue_id: int = 0) -> int | None:
        body = m.QueryConsumerOffsetBody(consumer_group=group, topic=topic, queue_id=queue_id)
        reply = self.request(RequestCode.QUERY_CONSUMER_OFFSET, body)
        if reply.code == ResponseCode.QUERY_NOT_FOUND:
            return None
        assert reply.ok, reply
        return reply.decode(m.OffsetReply).offset


# -- fixtures ------------------------------------------------------------------------------


def no_errors(*servers: ServerProcess) -> None:
    for server in servers:
        assert not server.error_lines(), "\n".join(server.log_lines())


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A NameServer and a broker registered with it, with short client and lock expiries."""
    tmp = tmp_path_factory.mktemp("push")
    config = write_broker_config(
        tmp / "broker.json", client_expiry=CLIENT_EXPIRY, lock_expiry=LOCK_EXPIRY
    )
    ns = run_nameserver()
    try:
        server = run_broker(tmp / "data", ns.endpoint, config=config)
        try:
            yield server
        finally:
            assert server.stop() == 0
    finally:
        ns.stop()
    no_errors(ns, server)


@pytest.fixture
def peers(broker: ServerProcess) -> Iterator[Callable[[], Peer]]:
    """Make raw consumers connected to the broker; all are closed after the test."""
    made: list[Peer] = []

    def make() -> Peer:
        peer = Peer(broker.endpoint)
        made.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in made:
            peer.close()


@pytest.fixture
def peer(peers: Callable[[], Peer]) -> Peer:
    return peers()


def create_topic(peer: Peer, topic: str, queues: int = 1, perm: int = 6) -> None:
    config = m.TopicConfig(topic=topic, read_queue_nums=queues, write_queue_nums=queues, perm=perm)
    peer.call(RequestCode.CREATE_TOPIC, config, m.TopicConfig)


def send(peer: Peer, topic: str, body: bytes, *, queue_id: int = 0, **fields: Any) -> m.SendReply:
    header = m.SendMessageBody(producer_group="pg", topic=topic, queue_id=queue_id, **fields)
    reply = peer.request(RequestCode.SEND_MESSAGE, header, [body])
    assert reply.ok, reply
    return reply.decode(m.SendReply)


def send_many(peer: Peer, topic: str, count: int, *, queue_id: int = 0, size: int = 0) -> None:
    for i in range(count):
        body = f"m{i}".encode().ljust(size, b".")
        send(peer, topic, body, queue_id=queue_id)


# -- streams -------------------------------------------------------------------------------


def test_open_pushes_existing_messages_in_order(peer: Peer) -> None:
    create_topic(peer, "PushOrder")
    send_many(peer, "PushOrder", 10)
    opened = peer.open_ok(7, "PushOrder", offset=0)
    assert (opened.start_offset, opened.min_offset, opened.max_offset) == (0, 0, 10)
    got: list[Record] = []
    last: m.PushBody | None = None
    while len(got) < 10:
        push = peer.stream_push(7)
        assert push is not None, f"{len(got)} records only"
        assert (push.code, push.request_id, push.flags) == (RequestCode.PUSH_MESSAGES, 7, 5)
        assert push.remark == ""
        last = push.decode(m.PushBody)
        got.extend(decode_record(frame) for frame in push.frames)
    assert [r.body for r in got] == [f"m{i}".encode() for i in range(10)]
    assert [r.queue_offset for r in got] == list(range(10))
    assert last is not None and (last.next_offset, last.max_offset) == (10, 10)
    peer.quiet(7)


def test_message_window(peer: Peer) -> None:
    create_topic(peer, "PushWindow")
    send_many(peer, "PushWindow", 20)
    peer.open_ok(1, "PushWindow", offset=0, window_msgs=3)
    assert [r.queue_offset for r in peer.records(1, 3)] == [0, 1, 2]
    peer.quiet(1)  # the window is closed: nothing more, whatever is stored
    peer.ack(1, msgs=2)
    assert [r.queue_offset for r in peer.records(1, 2)] == [3, 4]
    peer.quiet(1)
    # Credit never opens the window beyond its initial size (3 messages).
    peer.ack(1, msgs=1000)
    assert [r.queue_offset for r in peer.records(1, 3)] == [5, 6, 7]
    peer.quiet(1)


def test_byte_window(peer: Peer) -> None:
    create_topic(peer, "PushBytes")
    send_many(peer, "PushBytes", 10, size=200)
    first = peer.open_ok(1, "PushBytes", offset=0, window_msgs=100, window_bytes=1)
    # A window smaller than one record still pushes one record.
    (one,) = peer.records(1, 1)
    size = one.size
    peer.quiet(1)
    assert first.start_offset == 0
    peer.open_ok(2, "PushBytes", offset=0, window_msgs=100, window_bytes=2 * size)
    assert [r.queue_offset for r in peer.records(2, 2)] == [0, 1]
    peer.quiet(2)
    peer.ack(2, nbytes=size)
    assert [r.queue_offset for r in peer.records(2, 1)] == [2]
    peer.quiet(2)
    peer.ack(2, nbytes=10 * size)  # back to the initial 2 records, not 10
    assert [r.queue_offset for r in peer.records(2, 2)] == [3, 4]
    peer.quiet(2)


def test_message_stored_while_idle_is_pushed_at_once(peer: Peer, peers: Callable[[], Peer]) -> None:
    create_topic(peer, "PushIdle")
    opened = peer.open_ok(3, "PushIdle", consume_from=int(ConsumeFrom.LAST_OFFSET))
    assert opened.start_offset == 0
    peer.quiet(3)
    producer = peers()
    for i in range(3):
        start = time.monotonic()
        send(producer, "PushIdle", f"late{i}".encode())
        (record,) = peer.records(3, 1, timeout=2.0)
        elapsed = time.monotonic() - start
        assert record.body == f"late{i}".encode()
        assert elapsed < 0.5, f"pushed {elapsed:.3f}s after the send"


def test_busy_stream_does_not_starve_another(peers: Callable[[], Peer]) -> None:
    busy, other, producer = peers(), peers(), peers()
    create_topic(producer, "PushBacklog")
    create_topic(producer, "PushSmall")
    batch = m.SendBatchBody(
        producer_group="pg",
        topic="PushBacklog",
        queue_id=0,
        messages=[m.BatchEntry() for _ in range(1000)],
    )
    for _ in range(4):
        reply = producer.request(RequestCode.SEND_BATCH_MESSAGE, batch, [b"x" * 1024] * 1000)
        assert reply.ok, reply
    busy.open_ok(1, "PushBacklog", offset=0, window_msgs=65536)  # and never reads
    other.open_ok(1, "PushSmall", consume_from=int(ConsumeFrom.LAST_OFFSET))
    start = time.monotonic()
    send(producer, "PushSmall", b"small")
    assert [r.body for r in other.records(1, 1, timeout=2.0)] == [b"small"]
    assert time.monotonic() - start < 1.0
    # The backlog arrives complete and in order.
    offsets = [r.queue_offset for r in busy.records(1, 4000, timeout=20.0)]
    assert offsets == list(range(4000))


# -- filters -------------------------------------------------------------------------------


def test_tag_filter_and_record_less_pushes(peer: Peer) -> None:
    create_topic(peer, "PushTags")
    for tags in ("A", "B", "A", "C", ""):
        send(peer, "PushTags", f"tag{tags}".encode(), tags=tags)
    peer.open_ok(1, "PushTags", offset=0, expression="A || C")
    got = peer.records(1, 3)
    assert [(r.tags, r.queue_offset) for r in got] == [("A", 0), ("A", 2), ("C", 3)]
    peer.quiet(1)
    # Only filtered messages arrive: a push with no record moves next_offset past them.
    send(peer, "PushTags", b"b1", tags="B")
    send(peer, "PushTags", b"b2", tags="B")
    deadline = time.monotonic() + 5.0
    next_offset = 0
    while next_offset < 7:
        push = peer.stream_push(1, deadline - time.monotonic())
        assert push is not None and not push.frames, push
        next_offset = push.decode(m.PushBody).next_offset
    assert next_offset == 7
    # "plumless" and "buckeroo" share a CRC32: the stream checks the tag exactly...
    send(peer, "PushTags", b"collision", tags="plumless")
    send(peer, "PushTags", b"wanted", tags="buckeroo")
    peer.open_ok(2, "PushTags", offset=7, expression="buckeroo")
    assert [r.body for r in peer.records(2, 1)] == [b"wanted"]
    peer.quiet(2)
    # ...while PULL_MESSAGE keeps its documented hash-only filtering.
    body = m.PullMessageBody(
        consumer_group="cg", topic="PushTags", queue_id=0, queue_offset=7, subscription="buckeroo"
    )
    reply = peer.request(RequestCode.PULL_MESSAGE, body)
    assert [decode_record(f).body for f in reply.frames] == [b"collision", b"wanted"]


def test_sql_filter(peer: Peer) -> None:
    create_topic(peer, "PushSql")
    for i in range(1, 9):
        region = "eu" if i % 2 else "us"
        send(
            peer,
            "PushSql",
            f"s{i}".encode(),
            tags=f"T{i % 3}",
            properties={"a": str(i), "region": region},
        )
    expression = "a > 3 AND region = 'eu' OR TAGS = 'T0' AND a < 4"
    peer.open_ok(1, "PushSql", offset=0, filter_type=int(FilterType.SQL92), expression=expression)
    got = peer.next_offset(1, 8)  # past the last message (a=8, us), filtered out
    assert [r.body for r in got] == [b"s3", b"s5", b"s7"]
    peer.quiet(1)
    # Only filtered messages arrive: a push with no record says where to commit.
    send(peer, "PushSql", b"s9", properties={"a": "9", "region": "us"})
    push = peer.stream_push(1)
    assert push is not None and not push.frames, push
    assert push.decode(m.PushBody).next_offset == 9
    peer.quiet(1)
    # PULL_MESSAGE takes SQL92 too (filter_type), and finds the same messages.
    pull = m.PullMessageBody(
        consumer_group="cg",
        topic="PushSql",
        queue_id=0,
        queue_offset=0,
        subscription=expression,
        filter_type=int(FilterType.SQL92),
    )
    reply = peer.request(RequestCode.PULL_MESSAGE, pull)
    assert reply.ok, reply
    assert [decode_record(f).body for f in reply.frames] == [b"s3", b"s5", b"s7"]
    assert reply.decode(m.PullReply).next_offset == 9  # past s8 and s9, filtered out
    # A parked SQL92 pull ignores arrivals its expression rejects.
    parked = m.PullMessageBody(
        consumer_group="cg",
        topic="PushSql",
        queue_id=0,
        queue_offset=9,
        subscription="region = 'eu'",
        filter_type=int(FilterType.SQL92),
        suspend_timeout_ms=5000,
    )
    rid = peer.send(RequestCode.PULL_MESSAGE, parked)
    producer = Peer(peer.endpoint)
    try:
        send(producer, "PushSql", b"s10", properties={"region": "us"})
        send(producer, "PushSql", b"s11", properties={"region": "eu"})
    finally:
        producer.close()
    answer = peer.reply_to(rid, timeout=5.0)
    assert answer.ok, answer
    assert [decode_record(f).body for f in answer.frames] == [b"s11"]


def test_bad_filters_are_refused(peer: Peer) -> None:
    create_topic(peer, "PushBadFilter")
    reply = peer.open(1, "PushBadFilter", filter_type=1, expression="a > AND b = 1")
    assert reply.code == ResponseCode.SUBSCRIPTION_PARSE_FAILED, reply
    assert "column 5" in reply.remark
    assert peer.open(1, "PushBadFilter", expression="A ||").code == (
        ResponseCode.SUBSCRIPTION_PARSE_FAILED
    )
    assert peer.open(1, "PushBadFilter", filter_type=7).code == ResponseCode.MALFORMED_REQUEST
    for subscription, filter_type in (("a = ", 1), ("||", 0), ("A*", 0)):
        body = m.PullMessageBody(
            consumer_group="cg",
            topic="PushBadFilter",
            queue_id=0,
            queue_offset=0,
            subscription=subscription,
            filter_type=filter_type,
        )
        reply = peer.request(RequestCode.PULL_MESSAGE, body)
        assert reply.code == ResponseCode.SUBSCRIPTION_PARSE_FAILED, (subscription, reply)
    heartbeat = m.ClientHeartbeatBody(
        client_id="bad-sql",
        consumers=[
            m.ConsumerData(
                group="cg",
                subscriptions=[m.SubscriptionData(topic="T", filter_type=1, expression="(")],
            )
        ],
    )
    reply = peer.request(RequestCode.HEARTBEAT, heartbeat)
    assert reply.code == ResponseCode.SUBSCRIPTION_PARSE_FAILED, reply


# -- offsets -------------------------------------------------------------------------------


def test_acks_commit_the_group_offset(peer: Peer) -> None:
    create_topic(peer, "PushCommit")
    send_many(peer, "PushCommit", 5)
    peer.open_ok(1, "PushCommit", "commit-group", offset=0, window_msgs=3)
    peer.records(1, 3)
    assert peer.committed("commit-group", "PushCommit") is None
    peer.ack(1, msgs=1, commit=2)
    peer.records(1, 1)
    assert peer.committed("commit-group", "PushCommit") == 2
    # Never above what was pushed: next_offset is 4 now.
    peer.ack(1, commit=100)
    assert peer.committed("commit-group", "PushCommit") == 4
    # A stream that does not commit (BROADCASTING) leaves the offset alone.
    peer.open_ok(2, "PushCommit", "bcast-group", offset=0, commit=False)
    peer.records(2, 5)
    peer.ack(2, msgs=5, commit=5)
    assert peer.committed("bcast-group", "PushCommit") is None
    # CONSUME_CLOSE commits too, then the stream is gone.
    close = m.ConsumeCloseBody(stream_id=1, commit_offset=3)
    assert peer.request(RequestCode.CONSUME_CLOSE, close).ok
    assert peer.committed("commit-group", "PushCommit") == 3
    assert peer.request(RequestCode.CONSUME_CLOSE, close).code == ResponseCode.STREAM_NOT_FOUND


def test_start_offsets(peer: Peer) -> None:
    create_topic(peer, "PushStart")
    send_many(peer, "PushStart", 6)
    topic = "PushStart"
    assert peer.open_ok(1, topic, "g-last").start_offset == 6  # LAST_OFFSET by default
    assert peer.open_ok(2, topic, "g-first", consume_from=1).start_offset == 0
    pulled = peer.request(
        RequestCode.PULL_MESSAGE,
        m.PullMessageBody(consumer_group="g", topic=topic, queue_id=0, queue_offset=0),
    )
    stamps = [decode_record(f).store_timestamp for f in pulled.frames]
    expected = next(i for i, ts in enumerate(stamps) if ts >= stamps[3])
    opened = peer.open_ok(3, topic, "g-time", consume_from=2, timestamp=stamps[3])
    assert opened.start_offset == expected
    assert peer.open_ok(4, topic, "g-time", consume_from=2, timestamp=1).start_offset == 0
    assert peer.open_ok(5, topic, "g-time", consume_from=2, timestamp=2**62).start_offset == 6
    # A committed offset wins over consume_from; an explicit offset over both.
    commit = m.CommitConsumerOffsetBody(
        consumer_group="g-committed", topic=topic, queue_id=0, offset=2
    )
    assert peer.request(RequestCode.COMMIT_CONSUMER_OFFSET, commit).ok
    for consume_from in (0, 1, 2):
        opened = peer.open_ok(6, topic, "g-committed", consume_from=consume_from)
        assert opened.start_offset == 2
    assert peer.open_ok(8, topic, "g-committed", offset=4).start_offset == 4
    assert [r.queue_offset for r in peer.records(8, 2)] == [4, 5]
    # Clamped to the queue's range.
    assert peer.open_ok(7, topic, "g-clamp", offset=1000).start_offset == 6


def test_reset_consumer_offset(peer: Peer, peers: Callable[[], Peer]) -> None:
    create_topic(peer, "PushReset", queues=2)
    send_many(peer, "PushReset", 4, queue_id=0)
    send_many(peer, "PushReset", 2, queue_id=1)
    other = peers()
    peer.open_ok(1, "PushReset", "reset-group", queue_id=0, offset=0)
    peer.open_ok(2, "PushReset", "reset-group", queue_id=1, offset=0)
    other.open_ok(1, "PushReset", "other-group", queue_id=0, offset=0)
    peer.records(1, 4)
    other.records(1, 4)

    def reset(to: int, timestamp: int = 0) -> list[tuple[int, int]]:
        body = m.ResetOffsetBody(
            consumer_group="reset-group", topic="PushReset", to=to, timestamp=timestamp
        )
        reply = peer.call(RequestCode.RESET_CONSUMER_OFFSET, body, m.ResetOffsetReply)
        return [(q.queue_id, q.offset) for q in reply.offsets]

    assert reset(int(ConsumeFrom.FIRST_OFFSET)) == [(0, 0), (1, 0)]
    assert peer.closed(1) == "offset_reset"
    assert peer.closed(2) == "offset_reset"
    assert other.closed(1, timeout=QUIET) is None  # another group's stream is left alone
    assert peer.committed("reset-group", "PushReset", 0) == 0
    assert reset(int(ConsumeFrom.LAST_OFFSET)) == [(0, 4), (1, 2)]
    assert peer.committed("reset-group", "PushReset", 1) == 2
    assert reset(int(ConsumeFrom.TIMESTAMP), 2**62) == [(0, 4), (1, 2)]
    # Reopened at the committed offset, the stream resumes there.
    assert peer.open_ok(1, "PushReset", "reset-group").start_offset == 4
    bad = m.ResetOffsetBody(consumer_group="reset-group", topic="PushReset", to=9)
    assert (
        peer.request(RequestCode.RESET_CONSUMER_OFFSET, bad).code == ResponseCode.MALFORMED_REQUEST
    )
    missing = m.ResetOffsetBody(consumer_group="reset-group", topic="NoSuchTopic", to=0)
    assert (
        peer.request(RequestCode.RESET_CONSUMER_OFFSET, missing).code
        == ResponseCode.TOPIC_NOT_EXIST
    )


# -- stream lifecycle ----------------------------------------------------------------------


def test_unknown_streams_and_replacement(peer: Peer, peers: Callable[[], Peer]) -> None:
    create_topic(peer, "PushLife")
    ack = m.ConsumeAckBody(stream_id=99, credit_msgs=1)
    assert peer.request(RequestCode.CONSUME_ACK, ack).code == ResponseCode.STREAM_NOT_FOUND
    close = m.ConsumeCloseBody(stream_id=99)
    assert peer.request(RequestCode.CONSUME_CLOSE, close).code == ResponseCode.STREAM_NOT_FOUND
    # Stream ids belong to a connection.
    peer.open_ok(5, "PushLife", client_id="life")
    stranger = peers()
    ack5 = m.ConsumeAckBody(stream_id=5, credit_msgs=1)
    assert stranger.request(RequestCode.CONSUME_ACK, ack5).code == ResponseCode.STREAM_NOT_FOUND
    assert peer.request(RequestCode.CONSUME_ACK, ack5).ok
    # The same id again on the same connection replaces the stream without a notice.
    send_many(peer, "PushLife", 2)
    peer.open_ok(5, "PushLife", client_id="life", offset=1)
    # Pushes of the old stream came before the reply (one connection keeps its order).
    peer.pushes.clear()
    assert [r.queue_offset for r in peer.records(5, 1)] == [1]
    assert peer.closed(5, timeout=QUIET) is None
    # The same client's id on another connection closes the old one ("replaced").
    stranger.open_ok(5, "PushLife", client_id="life", offset=0)
    assert peer.closed(5) == "replaced"
    assert peer.request(RequestCode.CONSUME_ACK, ack5).code == ResponseCode.STREAM_NOT_FOUND


def test_open_checks_in_order(peer: Peer) -> None:
    create_topic(peer, "PushChecks", queues=2)
    create_topic(peer, "PushWriteOnly", perm=2)
    cases: list[tuple[dict[str, Any], ResponseCode]] = [
        ({"topic": "bad topic", "consumer_group": "bad group"}, ResponseCode.INVALID_TOPIC_NAME),
        ({"consumer_group": "bad group", "topic": "NoSuchTopic"}, ResponseCode.INVALID_GROUP_NAME),
        ({"topic": "NoSuchTopic", "queue_id": 99}, ResponseCode.TOPIC_NOT_EXIST),
        ({"topic": "PushWriteOnly"}, ResponseCode.NO_PERMISSION),
        ({"queue_id": 2}, ResponseCode.MALFORMED_REQUEST),
        ({"stream_id": 0}, ResponseCode.MALFORMED_REQUEST),
        ({"window_msgs": 0}, ResponseCode.MALFORMED_REQUEST),
        ({"window_msgs": 65537}, ResponseCode.MALFORMED_REQUEST),
        ({"window_bytes": 0}, ResponseCode.MALFORMED_REQUEST),
        ({"offset": -2}, ResponseCode.MALFORMED_REQUEST),
        ({"consume_from": 3}, ResponseCode.MALFORMED_REQUEST),
        ({"client_id": ""}, ResponseCode.MALFORMED_REQUEST),
        ({"window_msgs": 0, "filter_type": 1, "expression": "("}, ResponseCode.MALFORMED_REQUEST),
        ({"filter_type": 1, "expression": "("}, ResponseCode.SUBSCRIPTION_PARSE_FAILED),
    ]
    for fields, code in cases:
        body = {
            "consumer_group": "cg",
            "client_id": "c",
            "stream_id": 1,
            "topic": "PushChecks",
            "queue_id": 0,
            **fields,
        }
        rid = peer.send(RequestCode.CONSUME_OPEN, msgspec.convert(body, m.ConsumeOpenBody))
        reply = peer.request(RequestCode.LIST_TOPICS, m.Empty())  # after it, in order
        assert reply.ok
        first = peer.replies.pop(rid)
        assert first.code == code, (fields, first)
        assert first.remark, fields


def test_delete_topic_closes_its_streams(peer: Peer) -> None:
    create_topic(peer, "PushDeleted")
    create_topic(peer, "PushKept")
    peer.open_ok(1, "PushDeleted")
    peer.open_ok(2, "PushKept")
    assert peer.request(RequestCode.DELETE_TOPIC, m.DeleteTopicBody(topic="PushDeleted")).ok
    assert peer.closed(1) == "topic_deleted"
    assert peer.closed(2, timeout=QUIET) is None
    ack = m.ConsumeAckBody(stream_id=1)
    assert peer.request(RequestCode.CONSUME_ACK, ack).code == ResponseCode.STREAM_NOT_FOUND
    assert peer.request(RequestCode.CONSUME_ACK, m.ConsumeAckBody(stream_id=2)).ok


def test_update_topic_closes_the_streams_it_no_longer_allows(peer: Peer) -> None:
    create_topic(peer, "PushShrunk", queues=4)
    for queue_id in range(4):
        peer.open_ok(queue_id + 1, "PushShrunk", queue_id=queue_id)
    # Read queues 4 -> 2 (write queues kept): the streams on queues 2 and 3 end.
    shrunk = m.TopicConfig(topic="PushShrunk", read_queue_nums=2, write_queue_nums=4)
    assert peer.call(RequestCode.UPDATE_TOPIC, shrunk, m.TopicConfig).read_queue_nums == 2
    assert peer.closed(3) == "queue_removed"
    assert peer.closed(4) == "queue_removed"
    assert peer.closed(1, timeout=QUIET) is None
    assert peer.closed(2, timeout=0) is None
    ack = m.ConsumeAckBody(stream_id=4)
    assert peer.request(RequestCode.CONSUME_ACK, ack).code == ResponseCode.STREAM_NOT_FOUND
    reopen = peer.open(4, "PushShrunk", queue_id=3)
    assert reopen.code == ResponseCode.MALFORMED_REQUEST and "outside" in reopen.remark
    # Records stored on a kept queue are still pushed.
    send(peer, "PushShrunk", b"kept", queue_id=1)
    assert [r.body for r in peer.records(2, 1)] == [b"kept"]
    # An update that keeps every readable queue closes nothing.
    same = m.TopicConfig(topic="PushShrunk", read_queue_nums=2, write_queue_nums=2)
    assert peer.call(RequestCode.UPDATE_TOPIC, same, m.TopicConfig).write_queue_nums == 2
    assert peer.closed(1, timeout=QUIET) is None
    # Write-only (perm 2): every stream of the topic ends, and none opens again.
    write_only = m.TopicConfig(topic="PushShrunk", read_queue_nums=2, write_queue_nums=2, perm=2)
    assert peer.call(RequestCode.UPDATE_TOPIC, write_only, m.TopicConfig).perm == 2
    assert peer.closed(1) == "topic_unreadable"
    assert peer.closed(2) == "topic_unreadable"
    assert peer.open(1, "PushShrunk").code == ResponseCode.NO_PERMISSION


# -- membership ----------------------------------------------------------------------------


def _notified(
    peer: Peer, group: str, timeout: float, tick: Callable[[], object] | None = None
) -> bool:
    push = peer.take(
        lambda p: (
            p.code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED
            and p.request_id == 0
            and p.decode(m.ConsumerGroupBody).consumer_group == group
        ),
        timeout,
        tick,
    )
    return push is not None


def test_update_topic_notifies_the_groups_subscribed_to_it(peers: Callable[[], Peer]) -> None:
    a, b = peers(), peers()
    create_topic(a, "PushNotified", queues=2)
    a.heartbeat("notified-client", "notified", topic="PushNotified", wait=True)
    b.heartbeat("bystander-client", "bystander", topic="PushOther", wait=True)
    # Joining a group notifies its members: take those first.
    assert _notified(a, "notified", 5.0)
    assert _notified(b, "bystander", 5.0)
    shrunk = m.TopicConfig(topic="PushNotified", read_queue_nums=1, write_queue_nums=2)
    assert a.call(RequestCode.UPDATE_TOPIC, shrunk, m.TopicConfig).read_queue_nums == 1
    assert _notified(a, "notified", 5.0)
    assert not _notified(b, "bystander", QUIET)
    # Write queues only: the readable queues are the same, nobody is told.
    writes = m.TopicConfig(topic="PushNotified", read_queue_nums=1, write_queue_nums=1)
    assert a.call(RequestCode.UPDATE_TOPIC, writes, m.TopicConfig).write_queue_nums == 1
    assert not _notified(a, "notified", QUIET)
    # Losing the read permission changes the route too.
    write_only = m.TopicConfig(topic="PushNotified", read_queue_nums=1, write_queue_nums=1, perm=2)
    assert a.call(RequestCode.UPDATE_TOPIC, write_only, m.TopicConfig).perm == 2
    assert _notified(a, "notified", 5.0)


def test_membership_notifications_and_expiry(peers: Callable[[], Peer]) -> None:
    a, b = peers(), peers()
    group = "members-group"
    a.heartbeat("client-a", group, wait=True)
    b.heartbeat("client-b", group, wait=True)
    assert a.members(group) == ["client-a", "client-b"]
    assert a.members("nobody-group") == []
    assert _notified(a, group, 2.0)
    assert _notified(b, group, 2.0)
    a.pushes.clear()
    b.pushes.clear()
    # UNREGISTER_CLIENT: the rest of the group hears of it at once.
    unregister = m.UnregisterClientBody(client_id="client-b", consumer_groups=[group])
    assert b.request(RequestCode.UNREGISTER_CLIENT, unregister).ok
    assert _notified(a, group, 1.0)
    assert a.members(group) == ["client-a"]
    # Joining again, then silence: the broker expires b within client_expiry.
    b.heartbeat("client-b", group)
    assert _notified(a, group, 1.0, tick=lambda: a.heartbeat("client-a", group))
    assert a.members(group) == ["client-a", "client-b"]
    silent_since = time.monotonic()
    assert _notified(a, group, CLIENT_EXPIRY + 2.0, tick=lambda: a.heartbeat("client-a", group))
    elapsed = time.monotonic() - silent_since
    assert CLIENT_EXPIRY - 0.3 < elapsed < CLIENT_EXPIRY + 1.0, elapsed
    assert a.members(group) == ["client-a"]
    unregister = m.UnregisterClientBody(client_id="client-a")
    assert a.request(RequestCode.UNREGISTER_CLIENT, unregister).ok
    assert a.members(group) == []


def test_expired_client_loses_its_streams_and_locks(peers: Callable[[], Peer]) -> None:
    a, b = peers(), peers()
    group, topic = "expiry-group", "PushExpiry"
    create_topic(a, topic, queues=3)
    a.heartbeat("exp-a", group, topic=topic)
    b.heartbeat("exp-b", group, topic=topic)
    assert a.lock(group, "exp-a", topic, 0, 1) == [0, 1]
    assert b.lock(group, "exp-b", topic, 0, 1, 2) == [2]  # the others are a's
    reply = b.open(1, topic, group, client_id="exp-b", exclusive=True)
    assert reply.code == ResponseCode.QUEUE_LOCKED, reply
    a.open_ok(1, topic, group, client_id="exp-a", exclusive=True)  # a holds it: fine
    a.open_ok(2, topic, group, client_id="exp-a", queue_id=2)
    # a goes silent (b keeps heartbeating): its streams close, its locks are free.
    b_alive = lambda: b.heartbeat("exp-b", group, topic=topic)  # noqa: E731
    silent_since = time.monotonic()
    assert a.closed(1, timeout=CLIENT_EXPIRY + 2.0, tick=b_alive) == "client_expired"
    assert time.monotonic() - silent_since < CLIENT_EXPIRY + 1.0
    assert a.closed(2, timeout=1.0) == "client_expired"
    assert b.members(group) == ["exp-b"]
    assert b.lock(group, "exp-b", topic, 0, 1) == [0, 1]
    b.open_ok(1, topic, group, client_id="exp-b", exclusive=True)


def test_lock_passing_to_another_client_closes_the_exclusive_stream(
    peers: Callable[[], Peer],
) -> None:
    a, b = peers(), peers()
    group, topic = "lock-group", "PushLockLost"
    create_topic(a, topic)

    def alive() -> None:
        a.heartbeat("lock-a", group, topic=topic)
        b.heartbeat("lock-b", group, topic=topic)

    alive()
    a.open_ok(1, topic, group, client_id="lock-a", exclusive=True)
    assert b.lock(group, "lock-b", topic, 0) == []
    # a stays a member but does not renew its lock: after lock_expiry b can take it.
    deadline = time.monotonic() + LOCK_EXPIRY + 3.0
    while b.lock(group, "lock-b", topic, 0) != [0]:
        assert time.monotonic() < deadline, "the lock never expired"
        a.take(lambda p: False, 0.2, alive)
    assert a.closed(1, timeout=2.0) == "lock_lost"
    reply = a.open(1, topic, group, client_id="lock-a", exclusive=True)
    assert reply.code == ResponseCode.QUEUE_LOCKED
    # UNLOCK_BATCH_MQ frees it; CONSUME_CLOSE with unlock does too.
    unlock = m.LockBatchBody(
        consumer_group=group, client_id="lock-b", queues=[m.QueueRef(topic=topic, queue_id=0)]
    )
    assert b.request(RequestCode.UNLOCK_BATCH_MQ, unlock).ok
    a.open_ok(1, topic, group, client_id="lock-a", exclusive=True)
    close = m.ConsumeCloseBody(stream_id=1, unlock=True)
    assert a.request(RequestCode.CONSUME_CLOSE, close).ok
    assert b.lock(group, "lock-b", topic, 0) == [0]


# -- a slow reader ---------------------------------------------------------------------------


def test_a_reader_that_falls_behind_loses_nothing(tmp_path: Path) -> None:
    """One record per push (pull_max_msgs 1): the pushes overrun the ROUTER's high-water
    mark (10000 messages) while the consumer does not read; ZeroMQ refuses them, the
    broker retries later from the same offset, and every record arrives once, in order."""
    config = write_broker_config(tmp_path / "b.json", pull_max_msgs=1)
    count = 30_000
    with run_broker(tmp_path / "data", config=config) as server:
        producer = Peer(server.endpoint)
        slow = Peer(server.endpoint, rcvhwm=10)
        try:
            create_topic(producer, "PushSlow")
            batch = m.SendBatchBody(
                producer_group="pg",
                topic="PushSlow",
                queue_id=0,
                messages=[m.BatchEntry() for _ in range(1000)],
            )
            for _ in range(count // 1000):
                reply = producer.request(RequestCode.SEND_BATCH_MESSAGE, batch, [b"s" * 64] * 1000)
                assert reply.ok, reply
            slow.open_ok(1, "PushSlow", offset=0, window_msgs=65536)
            # Not reading for a while: the broker keeps serving other requests.
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert producer.request(RequestCode.LIST_TOPICS, m.Empty()).ok
            offsets = [r.queue_offset for r in slow.records(1, count, timeout=60.0)]
            assert offsets == list(range(count))
            slow.quiet(1)
        finally:
            producer.close()
            slow.close()
        assert server.stop() == 0
        no_errors(server)
        (line,) = [line for line in server.log_lines() if "pushes refused" in line]
        refused = int(line.split(" pushes refused")[0].rsplit(" ", 1)[1])
        assert refused > 0, line  # the high-water mark was reached, and nothing was lost


# -- the broker's lifecycle ----------------------------------------------------------------


def test_shutdown_closes_every_stream(tmp_path: Path) -> None:
    config = write_broker_config(tmp_path / "b.json")
    with run_broker(tmp_path / "data", config=config) as server:
        peer = Peer(server.endpoint)
        try:
            create_topic(peer, "PushShutdown")
            peer.open_ok(1, "PushShutdown")
            peer.open_ok(2, "PushShutdown")
            server.send_signal(signal.SIGTERM)
            assert peer.closed(1) == "shutdown"
            assert peer.closed(2) == "shutdown"
            assert server.wait(10.0) == 0
        finally:
            peer.close()
        no_errors(server)


def test_a_normal_client_still_works(broker: ServerProcess) -> None:
    # Runs last (file order): after every stream, lock and expiry above.
    with BlockingConnection(broker.endpoint, timeout=5.0) as conn:
        header = m.SendMessageBody(producer_group="pg", topic="AfterPush", queue_id=0)
        sent = conn.call(RequestCode.SEND_MESSAGE, header, m.SendReply, [b"after"])
        body = m.PullMessageBody(
            consumer_group="c", topic="AfterPush", queue_id=0, queue_offset=sent.queue_offset
        )
        reply = conn.request(RequestCode.PULL_MESSAGE, body)
        assert reply.code == ResponseCode.SUCCESS, reply
        assert [decode_record(f).body for f in reply.frames] == [b"after"]
    assert broker.alive
    no_errors(broker)
