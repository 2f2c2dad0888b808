"""Idempotent resends (PROTOCOL.md 14.4) against a real broker, with raw protocol requests.

A ``resend`` message whose uniq id the broker stored in the same topic within its dedup
window stores nothing and gets the first attempt's result; anything else is stored.
The window is 1.5 s here; the only wait on the clock is for it to pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.protocol.frames import Reply
from fabric.testing import ServerProcess, run_broker, write_broker_config
from fabric.transport import BlockingConnection

WINDOW = 1.5


def send(conn: BlockingConnection, topic: str, body: bytes = b"body", **fields: Any) -> Reply:
    fields.setdefault("queue_id", 0)
    header = m.SendMessageBody(producer_group="pg", topic=topic, **fields)
    return conn.request(RequestCode.SEND_MESSAGE, header, [body])


def send_ok(conn: BlockingConnection, topic: str, body: bytes = b"body", **kw: Any) -> m.SendReply:
    reply = send(conn, topic, body, **kw)
    assert reply.code == ResponseCode.SUCCESS, reply
    return reply.decode(m.SendReply)


def send_batch(
    conn: BlockingConnection, topic: str, entries: list[m.BatchEntry], *, resend: bool = False
) -> m.SendBatchReply:
    body = m.SendBatchBody(
        producer_group="pg", topic=topic, queue_id=0, messages=entries, resend=resend
    )
    reply = conn.request(
        RequestCode.SEND_BATCH_MESSAGE, body, [f"b{i}".encode() for i in range(len(entries))]
    )
    assert reply.code == ResponseCode.SUCCESS, reply
    return reply.decode(m.SendBatchReply)


def max_offset(conn: BlockingConnection, topic: str, queue_id: int = 0) -> int:
    body = m.QueueOffsetBody(topic=topic, queue_id=queue_id)
    return conn.call(RequestCode.GET_MAX_OFFSET, body, m.OffsetReply).offset


@pytest.fixture(scope="module", params=["async", "sync"])
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp(f"dedup-{request.param}")
    config = write_broker_config(tmp / "broker.json", dedup_window=WINDOW)
    server = run_broker(tmp / "data", config=config, flush=request.param)
    try:
        yield server
    finally:
        server.stop()
    assert not server.error_lines(), "\n".join(server.log_lines())


@pytest.fixture(scope="module")
def conn(broker: ServerProcess) -> Iterator[BlockingConnection]:
    with BlockingConnection(broker.endpoint, timeout=10.0) as client:
        yield client


def test_a_resend_of_a_stored_id_returns_the_first_result_and_stores_nothing(
    conn: BlockingConnection,
) -> None:
    first = send_ok(conn, "Dedup", b"one", uniq_id="D-1", queue_id=1)
    send_ok(conn, "Dedup", b"other", uniq_id="D-2", queue_id=1)
    assert max_offset(conn, "Dedup", 1) == 2
    again = send_ok(conn, "Dedup", b"one", uniq_id="D-1", queue_id=1, resend=True)
    assert again == first
    # Even when the resend picked another queue: the first result names the first queue.
    other = send_ok(conn, "Dedup", b"one", uniq_id="D-1", queue_id=2, resend=True)
    assert other == first
    assert max_offset(conn, "Dedup", 1) == 2 and max_offset(conn, "Dedup", 2) == 0


def test_a_resend_of_an_unknown_id_is_stored(conn: BlockingConnection) -> None:
    reply = send_ok(conn, "Fresh", uniq_id="F-1", resend=True)
    assert reply.queue_offset == 0 and reply.commitlog_offset >= 0
    # The same id in another topic is another message.
    assert send_ok(conn, "Fresh2", uniq_id="F-1", resend=True).queue_offset == 0
    assert max_offset(conn, "Fresh") == 1


def test_without_resend_a_duplicate_id_is_stored_twice(conn: BlockingConnection) -> None:
    a = send_ok(conn, "Twice", uniq_id="T-1")
    b = send_ok(conn, "Twice", uniq_id="T-1")
    assert (a.queue_offset, b.queue_offset) == (0, 1)
    # A resend then answers with the first of the two.
    assert send_ok(conn, "Twice", uniq_id="T-1", resend=True) == a
    assert max_offset(conn, "Twice") == 2


def test_a_resend_after_the_window_is_stored_again(conn: BlockingConnection) -> None:
    first = send_ok(conn, "Window", uniq_id="W-1")
    # Waiting for a wall-clock time to pass: the end of the dedup window.
    time.sleep(WINDOW + 0.1)
    again = send_ok(conn, "Window", uniq_id="W-1", resend=True)
    assert again.queue_offset == first.queue_offset + 1
    assert max_offset(conn, "Window") == 2


def test_a_batch_resend_is_deduplicated_per_message(conn: BlockingConnection) -> None:
    first = send_batch(conn, "Batch", [m.BatchEntry(uniq_id="B-0"), m.BatchEntry(uniq_id="B-1")])
    assert first.queue_offsets == [0, 1]
    again = send_batch(
        conn,
        "Batch",
        [m.BatchEntry(uniq_id="B-0"), m.BatchEntry(uniq_id="B-2"), m.BatchEntry(uniq_id="B-1")],
        resend=True,
    )
    assert again.msg_ids == ["B-0", "B-2", "B-1"]
    assert again.queue_offsets == [0, 2, 1]
    assert max_offset(conn, "Batch") == 3
    # All of it known: nothing stored at all.
    same = send_batch(conn, "Batch", [m.BatchEntry(uniq_id="B-2")], resend=True)
    assert same.queue_offsets == [2] and max_offset(conn, "Batch") == 3


def test_a_timed_resend_finds_its_first_attempt_in_the_timer_topic(
    conn: BlockingConnection,
) -> None:
    due = int(time.time() * 1000) + 60_000
    first = send_ok(conn, "TimedDedup", uniq_id="TD-1", deliver_at=due)
    assert first.queue_offset == -1
    again = send_ok(conn, "TimedDedup", uniq_id="TD-1", deliver_at=due, resend=True)
    assert again == first
    # A half message resent: its first attempt is in %HALF%.
    half = send_ok(conn, "TxDedup", uniq_id="TX-1", sysflag=0x4)
    assert send_ok(conn, "TxDedup", uniq_id="TX-1", sysflag=0x4, resend=True) == half
