"""CONSUMER_SEND_MSG_BACK (docs/PROTOCOL.md 14.2): retries and dead letters on a real broker.

One ``fabric broker`` on 127.0.0.1 port 0 with short delay levels (``delay_levels`` in
its config), reached directly by a blocking connection; requests are the protocol
Structs. Waits are long polls with a deadline (PULL_MESSAGE ``suspend_timeout_ms``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.protocol.codes import DEFAULT_MAX_RECONSUME_TIMES
from fabric.protocol.frames import Reply
from fabric.protocol.records import Record, decode_record
from fabric.testing import ServerProcess, run_broker, write_broker_config
from fabric.transport import BlockingConnection

#: Level 3 (the first retry's) waits LEVEL_3 seconds; every level is short.
LEVEL_3 = 1.2
LEVELS = [0.4, 0.8, LEVEL_3] + [1.0] * 15


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("sendback")
    config = write_broker_config(tmp / "broker.json", delay_levels=LEVELS)
    server = run_broker(tmp / "data", config=config)
    try:
        yield server
    finally:
        assert server.stop() == 0
    assert not server.error_lines(), "\n".join(server.log_lines())


@pytest.fixture
def conn(broker: ServerProcess) -> Iterator[BlockingConnection]:
    with BlockingConnection(broker.endpoint, timeout=10.0) as client:
        yield client


def create_topic(conn: BlockingConnection, topic: str) -> None:
    config = m.TopicConfig(topic=topic, read_queue_nums=1, write_queue_nums=1)
    conn.call(RequestCode.CREATE_TOPIC, config, m.TopicConfig)


def send(conn: BlockingConnection, topic: str, body: bytes, **fields: Any) -> None:
    header = m.SendMessageBody(producer_group="pg", topic=topic, queue_id=0, **fields)
    reply = conn.request(RequestCode.SEND_MESSAGE, header, [body])
    assert reply.code == ResponseCode.SUCCESS, reply


def pull(conn: BlockingConnection, topic: str, offset: int = 0, wait: float = 0.0) -> Reply:
    body = m.PullMessageBody(
        consumer_group="cg",
        topic=topic,
        queue_id=0,
        queue_offset=offset,
        suspend_timeout_ms=int(wait * 1000),
    )
    return conn.request(RequestCode.PULL_MESSAGE, body, timeout=wait + 5.0)


def one_record(conn: BlockingConnection, topic: str, offset: int = 0, wait: float = 0.0) -> Record:
    reply = pull(conn, topic, offset, wait)
    assert reply.code == ResponseCode.SUCCESS, reply
    (record,) = (decode_record(frame, verify_crc=True) for frame in reply.frames)
    return record


def send_back(conn: BlockingConnection, record: Record, group: str = "cg", **fields: Any) -> Reply:
    body = m.ConsumerSendBackBody(
        consumer_group=group,
        topic=record.topic,
        commitlog_offset=record.physical_offset,
        msg_id=record.uniq_id,
        **fields,
    )
    return conn.request(RequestCode.CONSUMER_SEND_MSG_BACK, body)


def same_message(copy: Record, original: Record) -> None:
    assert copy.body == original.body
    assert copy.tags == original.tags
    assert copy.keys == original.keys
    assert copy.uniq_id == original.uniq_id
    assert copy.properties == original.properties
    assert copy.flag == original.flag
    assert copy.born_timestamp == original.born_timestamp


def test_retry_after_the_delay_then_dead_letter(conn: BlockingConnection) -> None:
    create_topic(conn, "SB")
    send(
        conn,
        "SB",
        b"payload",
        tags="TagA",
        keys=["k1", "k2"],
        uniq_id="UID-SB-1",
        properties={"p": "v"},
        flag=7,
        born_timestamp=1_700_000_000_000,
    )
    original = one_record(conn, "SB")
    sent_at = time.monotonic()
    assert send_back(conn, original).code == ResponseCode.SUCCESS
    # Not in the retry topic before its delay (the topic exists: created on first use).
    assert pull(conn, "%RETRY%cg").code == ResponseCode.PULL_NOT_FOUND
    retry = one_record(conn, "%RETRY%cg", wait=LEVEL_3 + 5.0)
    assert time.monotonic() - sent_at >= LEVEL_3 - 0.05
    same_message(retry, original)
    assert retry.reconsume_times == 1
    assert retry.sys == {"ORIGIN_TOPIC": "SB"}
    assert retry.queue_id == 0

    # Sent back from the retry topic past the maximum: the dead-letter topic at once.
    reply = send_back(conn, retry, max_reconsume_times=1)
    assert reply.code == ResponseCode.SUCCESS, reply
    dead = one_record(conn, "%DLQ%cg", wait=2.0)
    same_message(dead, original)
    assert dead.reconsume_times == 2
    assert dead.sys["ORIGIN_TOPIC"] == "SB"  # kept across retries
    assert "max reconsume times 1" in dead.sys["DLQ_REASON"]
    # Nothing went to the retry topic this time.
    assert pull(conn, "%RETRY%cg", 1).code == ResponseCode.PULL_NOT_FOUND


def test_retry_level_and_broker_maximum(conn: BlockingConnection) -> None:
    create_topic(conn, "SBLevel")
    send(conn, "SBLevel", b"fast", uniq_id="UID-L")
    original = one_record(conn, "SBLevel")
    # An explicit level 1 (0.4 s): the broker's level would be 3.
    assert send_back(conn, original, group="cgl", delay_level=1).code == ResponseCode.SUCCESS
    retry = one_record(conn, "%RETRY%cgl", wait=5.0)
    assert retry.reconsume_times == 1 and retry.uniq_id == "UID-L"
    # -1: the broker's max_reconsume_times (16 by default), so 17 deliveries go to the DLQ.
    send(conn, "SBLevel", b"tired", reconsume_times=DEFAULT_MAX_RECONSUME_TIMES)
    tired = one_record(conn, "SBLevel", 1)
    assert send_back(conn, tired, group="cgl").code == ResponseCode.SUCCESS
    dead = one_record(conn, "%DLQ%cgl", wait=2.0)
    assert dead.body == b"tired" and dead.reconsume_times == DEFAULT_MAX_RECONSUME_TIMES + 1
    assert dead.sys["DLQ_REASON"] == f"max reconsume times {DEFAULT_MAX_RECONSUME_TIMES} reached"


def test_send_back_not_found_and_bad_requests(conn: BlockingConnection) -> None:
    create_topic(conn, "SBBad")
    create_topic(conn, "SBOther")
    send(conn, "SBBad", b"x")
    record = one_record(conn, "SBBad")

    def code(**fields: Any) -> int:
        body = m.ConsumerSendBackBody(consumer_group="cgb", **fields)
        return conn.request(RequestCode.CONSUMER_SEND_MSG_BACK, body).code

    offset = record.physical_offset
    assert code(topic="SBBad", commitlog_offset=offset + 1) == ResponseCode.QUERY_NOT_FOUND
    assert code(topic="SBBad", commitlog_offset=1 << 40) == ResponseCode.QUERY_NOT_FOUND
    # The record is not of the topic named.
    assert code(topic="SBOther", commitlog_offset=offset) == ResponseCode.QUERY_NOT_FOUND
    assert code(topic="SBMissing", commitlog_offset=offset) == ResponseCode.TOPIC_NOT_EXIST
    assert (
        code(topic="SBBad", commitlog_offset=offset, delay_level=19)
        == ResponseCode.MALFORMED_REQUEST
    )
    assert (
        code(topic="SBBad", commitlog_offset=offset, max_reconsume_times=-2)
        == ResponseCode.MALFORMED_REQUEST
    )
    body = m.ConsumerSendBackBody(consumer_group="bad group", topic="SBBad", commitlog_offset=0)
    reply = conn.request(RequestCode.CONSUMER_SEND_MSG_BACK, body)
    assert reply.code == ResponseCode.INVALID_GROUP_NAME
    # None of these created a retry or dead-letter topic.
    assert pull(conn, "%RETRY%cgb").code == ResponseCode.TOPIC_NOT_EXIST
    assert pull(conn, "%DLQ%cgb").code == ResponseCode.TOPIC_NOT_EXIST
