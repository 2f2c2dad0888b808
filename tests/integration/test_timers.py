"""Timed and delayed messages, half messages and the broker's own topics, against a real broker.

Requests are built from the protocol Structs (not the producer): these tests pin the
broker's side of docs/PROTOCOL.md 14.1, the %HALF% diversion of 14.3 and the system
topic rules of section 14. Arrival times are measured with long-polling pulls; the only
waits on the clock are for a wall-clock time to pass (a message due while the broker
is down), never to synchronise with a process.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.store import StoredMessage, decode_message
from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.protocol.frames import Reply
from fabric.testing import ServerProcess, run_broker, write_broker_config
from fabric.transport import BlockingConnection
from tests.servers import started_servers

#: Test delay levels: level 1 is 1 s, level 2 is 2 s, the rest 3 s.
LEVELS = [1.0, 2.0] + [3.0] * 16
#: Lateness allowed on top of the 1 s of PROTOCOL.md 14.1: the broker's own scheduling
#: on a busy test machine.
SLACK_MS = 250


def now_ms() -> int:
    return int(time.time() * 1000)


def send(conn: BlockingConnection, topic: str, body: bytes = b"body", **fields: Any) -> Reply:
    fields.setdefault("queue_id", 0)
    header = m.SendMessageBody(producer_group="pg", topic=topic, **fields)
    return conn.request(RequestCode.SEND_MESSAGE, header, [body])


def send_ok(conn: BlockingConnection, topic: str, body: bytes = b"body", **kw: Any) -> m.SendReply:
    reply = send(conn, topic, body, **kw)
    assert reply.code == ResponseCode.SUCCESS, reply
    return reply.decode(m.SendReply)


def pull(
    conn: BlockingConnection, topic: str, offset: int = 0, *, wait_ms: int = 0, queue_id: int = 0
) -> tuple[Reply, list[StoredMessage]]:
    body = m.PullMessageBody(
        consumer_group="cg",
        topic=topic,
        queue_id=queue_id,
        queue_offset=offset,
        suspend_timeout_ms=wait_ms,
    )
    reply = conn.request(RequestCode.PULL_MESSAGE, body, timeout=wait_ms / 1000 + 5.0)
    return reply, [decode_message(bytes(f)) for f in reply.frames]


def wait_for(conn: BlockingConnection, topic: str, offset: int, timeout_s: float) -> StoredMessage:
    """Long-poll until the message at ``offset`` of ``topic`` queue 0 arrives."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"nothing arrived at {topic}:{offset} within {timeout_s}s"
        _, found = pull(conn, topic, offset, wait_ms=max(1, int(left * 1000)))
        if found:
            return found[0]


def max_offset(conn: BlockingConnection, topic: str, queue_id: int = 0) -> int:
    body = m.QueueOffsetBody(topic=topic, queue_id=queue_id)
    return conn.call(RequestCode.GET_MAX_OFFSET, body, m.OffsetReply).offset


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start brokers on tmp_path/data with the test delay levels; all stopped afterwards."""

    def run(**fields: Any) -> ServerProcess:
        fields.setdefault("delay_levels", LEVELS)
        fields.setdefault("timer_max_delay", 3600.0)
        config = write_broker_config(tmp_path / "broker.json", **fields)
        return run_broker(tmp_path / "data", config=config)

    with started_servers(run) as start:
        yield start


@pytest.fixture
def broker(start_broker: Callable[..., ServerProcess]) -> ServerProcess:
    return start_broker()


@pytest.fixture
def conn(broker: ServerProcess) -> Iterator[BlockingConnection]:
    with BlockingConnection(broker.endpoint, timeout=5.0) as client:
        yield client


def test_a_timed_message_is_invisible_until_due_then_delivered_as_sent(
    conn: BlockingConnection,
) -> None:
    due = now_ms() + 2000
    props = {"k": "v", "n": "1"}
    reply = send_ok(
        conn,
        "Timed",
        b"payload",
        tags="tagA",
        keys=["key1", "key2"],
        uniq_id="UNIQ-T-1",
        properties=props,
        flag=7,
        born_timestamp=1234,
        deliver_at=due,
    )
    assert reply.queue_offset == -1
    assert reply.commitlog_offset >= 0
    assert reply.msg_id == "UNIQ-T-1"
    # Invisible: the topic exists (the send created it) and holds nothing.
    none, found = pull(conn, "Timed")
    assert none.code == ResponseCode.PULL_NOT_FOUND and not found
    msg = wait_for(conn, "Timed", 0, 10.0)
    assert msg.store_timestamp >= due, "delivered early"
    late = msg.store_timestamp - due
    assert late <= 1000 + SLACK_MS, f"delivered {late} ms late"
    assert (msg.body, msg.tags, msg.keys) == (b"payload", "tagA", ["key1", "key2"])
    assert msg.uniq_id == "UNIQ-T-1"
    assert (msg.properties, msg.flag, msg.born_timestamp, msg.sys) == (props, 7, 1234, {})
    assert msg.topic == "Timed" and msg.queue_id == 0 and msg.queue_offset == 0
    assert max_offset(conn, "Timed") == 1


def test_a_due_message_of_a_deleted_topic_is_dropped_not_stored(
    broker: ServerProcess, conn: BlockingConnection
) -> None:
    due = now_ms() + 1500
    send_ok(conn, "TimedDoomed", b"doomed", deliver_at=due)
    send_ok(conn, "TimedKept", b"kept", deliver_at=due)
    assert conn.request(RequestCode.DELETE_TOPIC, m.DeleteTopicBody(topic="TimedDoomed")).ok
    # Both are due in the same second, which is delivered as one: once the kept one is
    # in its queue, the doomed one was handled.
    assert wait_for(conn, "TimedKept", 0, 10.0).body == b"kept"
    broker.wait_for_log("1 due messages dropped: their topics no longer exist (TimedDoomed)", 5.0)
    # A topic created again under the name starts empty (7.6): nothing came back.
    config = m.TopicConfig(topic="TimedDoomed", read_queue_nums=1, write_queue_nums=1)
    conn.call(RequestCode.CREATE_TOPIC, config, m.TopicConfig)
    assert max_offset(conn, "TimedDoomed") == 0
    none, found = pull(conn, "TimedDoomed")
    assert none.code == ResponseCode.PULL_NOT_FOUND and not found


def test_delay_levels_use_the_configured_seconds(conn: BlockingConnection) -> None:
    before = now_ms()
    reply = send_ok(conn, "Levels", b"two seconds", delay_level=2, queue_id=1)
    after = now_ms()
    assert reply.queue_offset == -1 and reply.queue_id == 1
    body = m.PullMessageBody(
        consumer_group="cg", topic="Levels", queue_id=1, queue_offset=0, suspend_timeout_ms=8000
    )
    got = conn.request(RequestCode.PULL_MESSAGE, body, timeout=15.0)
    assert got.code == ResponseCode.SUCCESS, got
    msg = decode_message(bytes(got.frames[0]))
    assert msg.body == b"two seconds" and msg.queue_id == 1
    assert msg.store_timestamp >= before + 2000
    assert msg.store_timestamp <= after + 2000 + 1000 + SLACK_MS


def test_a_due_time_in_the_past_or_now_is_stored_at_once(conn: BlockingConnection) -> None:
    past = send_ok(conn, "Past", b"late", deliver_at=now_ms() - 60_000)
    assert past.queue_offset == 0
    _, found = pull(conn, "Past")
    assert [f.body for f in found] == [b"late"]
    assert found[0].sys == {}


@pytest.mark.parametrize(
    ("fields", "remark"),
    [
        ({"delay_level": 1, "deliver_at": 1}, "not both"),
        ({"delay_level": 19}, "outside 0..18"),
        ({"delay_level": -1}, "outside 0..18"),
        ({"deliver_at": -5}, "negative"),
        ({"deliver_at": "far"}, "timer_max_delay"),
    ],
)
def test_bad_timer_fields_are_message_illegal(
    conn: BlockingConnection, fields: dict[str, Any], remark: str
) -> None:
    if fields.get("deliver_at") == "far":
        fields = {"deliver_at": now_ms() + 3_700_000}  # timer_max_delay is 3600 s here
    reply = send(conn, "Illegal", **fields)
    assert reply.code == ResponseCode.MESSAGE_ILLEGAL, reply
    assert remark in reply.remark
    # Also per batch entry, with the entry's index; nothing of the batch is stored.
    batch = m.SendBatchBody(
        producer_group="pg",
        topic="Illegal",
        queue_id=0,
        messages=[m.BatchEntry(), m.BatchEntry(**fields)],
    )
    got = conn.request(RequestCode.SEND_BATCH_MESSAGE, batch, [b"a", b"b"])
    assert got.code == ResponseCode.MESSAGE_ILLEGAL and got.remark.startswith("message 1:"), got
    assert max_offset(conn, "Illegal") == 0


def test_a_batch_mixes_timed_and_untimed_messages(conn: BlockingConnection) -> None:
    due = now_ms() + 1500
    batch = m.SendBatchBody(
        producer_group="pg",
        topic="Mixed",
        queue_id=0,
        messages=[
            m.BatchEntry(uniq_id="M0"),
            m.BatchEntry(uniq_id="M1", deliver_at=due, tags="later"),
            m.BatchEntry(uniq_id="M2"),
            m.BatchEntry(uniq_id="M3", deliver_at=now_ms() - 1000),
        ],
    )
    got = conn.request(RequestCode.SEND_BATCH_MESSAGE, batch, [b"0", b"1", b"2", b"3"])
    assert got.code == ResponseCode.SUCCESS, got
    reply = got.decode(m.SendBatchReply)
    assert reply.queue_offsets == [0, -1, 1, 2]
    assert reply.msg_ids == ["M0", "M1", "M2", "M3"]
    _, found = pull(conn, "Mixed")
    assert [f.uniq_id for f in found] == ["M0", "M2", "M3"]
    later = wait_for(conn, "Mixed", 3, 10.0)
    assert (later.uniq_id, later.body, later.tags) == ("M1", b"1", "later")
    assert due <= later.store_timestamp <= due + 1000 + SLACK_MS


def test_pending_timers_survive_sigkill_and_overdue_ones_arrive_at_once(
    start_broker: Callable[..., ServerProcess],
) -> None:
    first = start_broker()
    with BlockingConnection(first.endpoint, timeout=5.0) as conn:
        soon = now_ms() + 1200  # due while the broker is down
        later = now_ms() + 6000  # still pending after the restart
        send_ok(conn, "Crash", b"soon", uniq_id="SOON", deliver_at=soon)
        send_ok(conn, "Crash", b"later", uniq_id="LATER", deliver_at=later)
    first.send_signal(signal.SIGKILL)
    assert first.wait(10.0) == -signal.SIGKILL
    # Waiting for a wall-clock time to pass (not for a process): "soon" falls due
    # while no broker runs.
    time.sleep(max(0.0, (soon + 200 - now_ms()) / 1000))
    second = start_broker()
    restarted = now_ms()
    with BlockingConnection(second.endpoint, timeout=5.0) as conn:
        overdue = wait_for(conn, "Crash", 0, 5.0)
        assert overdue.uniq_id == "SOON" and overdue.body == b"soon"
        assert overdue.store_timestamp - restarted <= 1000 + SLACK_MS
        pending = wait_for(conn, "Crash", 1, 10.0)
        assert pending.uniq_id == "LATER"
        assert later <= pending.store_timestamp <= later + 1000 + SLACK_MS
        _, everything = pull(conn, "Crash")
        assert [f.uniq_id for f in everything] == ["SOON", "LATER"]


def test_a_clean_restart_keeps_pending_timers(start_broker: Callable[..., ServerProcess]) -> None:
    first = start_broker()
    with BlockingConnection(first.endpoint, timeout=5.0) as conn:
        due = now_ms() + 3000
        send_ok(conn, "Clean", b"x", uniq_id="C1", deliver_at=due)
    first.stop()
    second = start_broker()
    with BlockingConnection(second.endpoint, timeout=5.0) as conn:
        msg = wait_for(conn, "Clean", 0, 10.0)
        assert msg.uniq_id == "C1" and due <= msg.store_timestamp <= due + 1000 + SLACK_MS
        assert max_offset(conn, "Clean") == 1


def test_a_half_message_goes_to_half_and_is_invisible(conn: BlockingConnection) -> None:
    reply = send_ok(conn, "Tx", b"half", uniq_id="H1", sysflag=0x4)
    assert reply.queue_offset == -1 and reply.commitlog_offset >= 0
    none, found = pull(conn, "Tx")
    assert none.code == ResponseCode.PULL_NOT_FOUND and not found
    assert max_offset(conn, "Tx") == 0
    # A committed or rolled-back sysflag on a plain send is stored as given.
    plain = send_ok(conn, "Tx", b"plain", sysflag=0x8)
    assert plain.queue_offset == 0 and plain.commitlog_offset > reply.commitlog_offset
    # A half message cannot also be delayed.
    bad = send(conn, "Tx", sysflag=0x4, delay_level=1)
    assert bad.code == ResponseCode.MESSAGE_ILLEGAL
    # Nor go in a batch.
    batch = m.SendBatchBody(
        producer_group="pg", topic="Tx", queue_id=0, messages=[m.BatchEntry(sysflag=0x4)]
    )
    got = conn.request(RequestCode.SEND_BATCH_MESSAGE, batch, [b"x"])
    assert got.code == ResponseCode.MESSAGE_ILLEGAL and got.remark.startswith("message 0:")
    assert max_offset(conn, "Tx") == 1


@pytest.mark.parametrize("topic", ["%TIMER%", "%HALF%", "%HALF_OP%"])
def test_the_brokers_own_topics_refuse_client_sends(conn: BlockingConnection, topic: str) -> None:
    assert send(conn, topic).code == ResponseCode.NO_PERMISSION
    batch = m.SendBatchBody(producer_group="pg", topic=topic, queue_id=0, messages=[m.BatchEntry()])
    got = conn.request(RequestCode.SEND_BATCH_MESSAGE, batch, [b"x"])
    assert got.code == ResponseCode.NO_PERMISSION
    config = m.TopicConfig(topic=topic, read_queue_nums=1, write_queue_nums=1)
    assert conn.request(RequestCode.CREATE_TOPIC, config).code == ResponseCode.NO_PERMISSION
    # Timed sends use %TIMER% under the hood, yet it is never a listed topic.
    send_ok(conn, "Listed", deliver_at=now_ms() + 60_000)
    listed = conn.call(RequestCode.LIST_TOPICS, m.Empty(), m.TopicConfigList).topics
    names = [t.topic for t in listed]
    assert "Listed" in names and not any(n.startswith(("%TIMER", "%HALF")) for n in names)


def test_retry_topics_are_created_with_one_queue(conn: BlockingConnection) -> None:
    assert send_ok(conn, "%RETRY%grp").queue_offset == 0
    assert send(conn, "%RETRY%grp", queue_id=1).code == ResponseCode.MESSAGE_ILLEGAL
    configs = conn.call(RequestCode.LIST_TOPICS, m.Empty(), m.TopicConfigList).topics
    (retry,) = [t for t in configs if t.topic == "%RETRY%grp"]
    assert (retry.read_queue_nums, retry.write_queue_nums, retry.perm) == (1, 1, 6)
