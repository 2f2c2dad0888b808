"""QUERY_MESSAGE and VIEW_MESSAGE_BY_ID (docs/PROTOCOL.md 14.5) against a real broker process.

One ``fabric broker`` on 127.0.0.1 port 0 (no NameServer: the test connects to it
directly); requests are built from the protocol Structs, so these tests pin the broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.protocol.frames import Reply
from fabric.protocol.records import Record, decode_record
from fabric.testing import ServerProcess, run_broker, write_broker_config
from fabric.transport import BlockingConnection


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("query")
    config = write_broker_config(tmp / "broker.json")
    server = run_broker(tmp / "data", config=config)
    try:
        yield server
    finally:
        assert server.stop() == 0
    assert not server.error_lines(), "\n".join(server.log_lines())


@pytest.fixture
def conn(broker: ServerProcess) -> Iterator[BlockingConnection]:
    with BlockingConnection(broker.endpoint, timeout=5.0) as client:
        yield client


def create_topic(conn: BlockingConnection, topic: str, queues: int = 2) -> None:
    config = m.TopicConfig(topic=topic, read_queue_nums=queues, write_queue_nums=queues)
    conn.call(RequestCode.CREATE_TOPIC, config, m.TopicConfig)


def send(conn: BlockingConnection, topic: str, body: bytes, **fields: Any) -> m.SendReply:
    fields.setdefault("queue_id", 0)
    header = m.SendMessageBody(producer_group="pg", topic=topic, **fields)
    reply = conn.request(RequestCode.SEND_MESSAGE, header, [body])
    assert reply.code == ResponseCode.SUCCESS, reply
    return reply.decode(m.SendReply)


def pull_all(conn: BlockingConnection, topic: str, queue_id: int) -> list[Record]:
    body = m.PullMessageBody(consumer_group="cg", topic=topic, queue_id=queue_id, queue_offset=0)
    reply = conn.request(RequestCode.PULL_MESSAGE, body)
    assert reply.code == ResponseCode.SUCCESS, reply
    return [decode_record(frame) for frame in reply.frames]


def query(conn: BlockingConnection, topic: str, key: str, **fields: Any) -> Reply:
    return conn.request(
        RequestCode.QUERY_MESSAGE, m.QueryMessageBody(topic=topic, key=key, **fields)
    )


def found(reply: Reply) -> list[Record]:
    assert reply.code == ResponseCode.SUCCESS, reply
    got = [decode_record(frame, verify_crc=True) for frame in reply.frames]
    assert reply.decode(m.QueryMessageReply).count == len(got)
    return got


def view(conn: BlockingConnection, **fields: Any) -> Reply:
    return conn.request(RequestCode.VIEW_MESSAGE_BY_ID, m.ViewMessageBody(**fields))


def test_query_by_key_newest_first_with_max_num(conn: BlockingConnection) -> None:
    create_topic(conn, "QKey")
    for i in range(5):
        send(conn, "QKey", f"k{i}".encode(), keys=["order-1", f"other-{i}"], queue_id=i % 2)
    send(conn, "QKey", b"not-me", keys=["order-2"])
    got = found(query(conn, "QKey", "order-1"))
    assert [r.body for r in got] == [b"k4", b"k3", b"k2", b"k1", b"k0"]
    assert all("order-1" in r.keys and r.topic == "QKey" for r in got)
    # Frames are the records as stored: byte for byte what PULL_MESSAGE returns.
    pulled = {r.physical_offset: r for q in (0, 1) for r in pull_all(conn, "QKey", q)}
    assert all(pulled[r.physical_offset] == r for r in got)
    assert [r.body for r in found(query(conn, "QKey", "order-1", max_num=2))] == [b"k4", b"k3"]
    assert [r.body for r in found(query(conn, "QKey", "other-2"))] == [b"k2"]


def test_query_time_bounds(conn: BlockingConnection) -> None:
    create_topic(conn, "QTime")
    for i in range(4):
        send(conn, "QTime", f"t{i}".encode(), keys=["k"])
    everything = found(query(conn, "QTime", "k"))
    assert len(everything) == 4
    middle = everything[2].store_timestamp  # the second message sent
    newer = found(query(conn, "QTime", "k", begin_ms=middle))
    assert newer == [r for r in everything if r.store_timestamp >= middle]
    older = found(query(conn, "QTime", "k", end_ms=middle))
    assert older == [r for r in everything if r.store_timestamp <= middle]
    later = everything[0].store_timestamp + 1
    assert query(conn, "QTime", "k", begin_ms=later).code == ResponseCode.QUERY_NOT_FOUND


def test_query_not_found_and_bad_requests(conn: BlockingConnection) -> None:
    create_topic(conn, "QNone")
    send(conn, "QNone", b"x", keys=["present"])
    assert query(conn, "QNone", "absent").code == ResponseCode.QUERY_NOT_FOUND
    # The key of another topic is not found here.
    create_topic(conn, "QOther")
    assert query(conn, "QOther", "present").code == ResponseCode.QUERY_NOT_FOUND
    assert query(conn, "QNone", "present", max_num=0).code == ResponseCode.MALFORMED_REQUEST
    assert query(conn, "QNone", "present", max_num=1025).code == ResponseCode.MALFORMED_REQUEST
    assert query(conn, "QMissing", "present").code == ResponseCode.TOPIC_NOT_EXIST


def test_view_by_uniq_id_and_by_offset(conn: BlockingConnection) -> None:
    create_topic(conn, "QView")
    first = send(conn, "QView", b"one", uniq_id="UID-1", tags="a")
    send(conn, "QView", b"two", uniq_id="UID-2")
    again = send(conn, "QView", b"one again", uniq_id="UID-1")
    reply = view(conn, topic="QView", msg_id="UID-1")
    (record,) = found(reply)
    assert record.body == b"one again" and record.uniq_id == "UID-1"  # the newest
    by_id = {r.uniq_id: r for r in pull_all(conn, "QView", 0) if r.body == b"one"}
    offset = by_id["UID-1"].physical_offset
    (at,) = found(view(conn, commitlog_offset=offset))
    assert at.body == b"one" and at.tags == "a" and at.physical_offset == offset
    # An offset message id (a send without uniq id) is understood too.
    plain = send(conn, "QView", b"no uniq id")
    (by_offset_id,) = found(view(conn, topic="QView", msg_id=plain.msg_id))
    assert by_offset_id.body == b"no uniq id"
    assert first.msg_id == "UID-1" and again.msg_id == "UID-1"


def test_view_not_found(conn: BlockingConnection) -> None:
    create_topic(conn, "QViewNone")
    send(conn, "QViewNone", b"x", uniq_id="UID-X")
    assert view(conn, topic="QViewNone", msg_id="nope").code == ResponseCode.QUERY_NOT_FOUND
    assert view(conn, topic="QView2", msg_id="UID-X").code == ResponseCode.TOPIC_NOT_EXIST
    (record,) = pull_all(conn, "QViewNone", 0)
    # Inside a record, and far past the end of the log: no record starts there.
    for offset in (record.physical_offset + 1, record.physical_offset + 40, 1 << 40):
        assert view(conn, commitlog_offset=offset).code == ResponseCode.QUERY_NOT_FOUND
    assert view(conn).code == ResponseCode.MALFORMED_REQUEST


def test_query_survives_restart(tmp_path: Path) -> None:
    config = write_broker_config(tmp_path / "broker.json")
    server = run_broker(tmp_path / "data", config=config)
    try:
        with BlockingConnection(server.endpoint, timeout=5.0) as conn:
            create_topic(conn, "QRestart")
            send(conn, "QRestart", b"kept", keys=["k"], uniq_id="U")
        assert server.stop() == 0
        server = run_broker(tmp_path / "data", config=config)
        with BlockingConnection(server.endpoint, timeout=5.0) as conn:
            assert [r.body for r in found(query(conn, "QRestart", "k"))] == [b"kept"]
            assert [r.body for r in found(view(conn, topic="QRestart", msg_id="U"))] == [b"kept"]
    finally:
        server.stop()
    assert not server.error_lines(), "\n".join(server.log_lines())
