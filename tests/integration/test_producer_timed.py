"""Delayed and timed messages, and idempotent resends, against real NameServer and broker processes.

docs/PROTOCOL.md 14.1 and 14.4. The broker runs with short delay levels (level n is n
seconds) so that a delay is measurable in a test. Each delivery is timed twice: by the
broker (the delivered record's store timestamp) and by a long-polling pull. A message must
never arrive before its due time, and must arrive at most 1 s after it (the broker's
promise), plus the time a pull takes to see it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fabric.aio
from fabric import (
    Message,
    MessageExt,
    MessageIllegalError,
    MessageQueue,
    Producer,
    PullConsumer,
    PullStatus,
    SendResult,
    SendStatus,
)
from fabric.protocol import RequestCode
from fabric.protocol import messages as m
from fabric.transport import BlockingConnection
from tests.integration.cluster import OneBrokerCluster

#: Level n waits n seconds on the test broker.
SHORT_LEVELS = [float(n) for n in range(1, 19)]
#: The broker's promise: delivered within 1 s after the due time.
LATE = 1.0
#: What a long-polling pull adds on a loaded test machine.
SLACK = 0.5
QUEUES = 2


class Cluster(OneBrokerCluster):
    """A NameServer and one broker with short delay levels, for the module."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, delay_levels=SHORT_LEVELS, timer_max_delay=3600.0)

    def make_topic(self, topic: str) -> None:
        """CREATE_TOPIC with QUEUES queues, then wait until the NameServer routes it."""
        self.create_topic(topic, QUEUES)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("timed")) as c:
        yield c


@pytest.fixture
def producer(cluster: Cluster) -> Iterator[Producer]:
    with Producer("timed-pg", nameservers=cluster.endpoint) as p:
        yield p


@pytest.fixture
def consumer(cluster: Cluster) -> Iterator[PullConsumer]:
    with PullConsumer("timed-cg", nameservers=cluster.endpoint) as c:
        yield c


def wait_for(
    consumer: PullConsumer, mq: MessageQueue, offset: int, count: int, timeout: float
) -> list[tuple[float, MessageExt]]:
    """Long-poll ``mq`` from ``offset`` until ``count`` messages came; (arrival, message) each."""
    found: list[tuple[float, MessageExt]] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        res = consumer.pull(mq, offset, max_nums=32, timeout=min(left, 5.0))
        now = time.time()
        if res.status is PullStatus.FOUND:
            found.extend((now, msg) for msg in res.messages)
            offset = res.next_offset
    return found


def assert_on_time(due: float, arrived: float, msg: MessageExt, sent_by: float) -> None:
    """Never before ``due``; at most LATE after the latest due time (``sent_by``)."""
    stored = msg.store_timestamp / 1000
    assert stored >= due, f"delivered {due - stored:.3f}s early"
    assert stored <= sent_by + LATE, f"delivered {stored - sent_by:.3f}s late"
    assert arrived >= due
    assert arrived <= sent_by + LATE + SLACK, f"arrived {arrived - sent_by:.3f}s late"


# ---------------------------------------------------------------------------------------
# Delayed and timed messages
# ---------------------------------------------------------------------------------------


def test_a_delayed_message_arrives_after_its_level(
    cluster: Cluster, producer: Producer, consumer: PullConsumer
) -> None:
    cluster.make_topic("Delayed")
    before = time.time()
    r = producer.send(Message("Delayed", b"later", tags="D", keys=["k1"], delay_level=2))
    after = time.time()
    assert r.status is SendStatus.SEND_OK
    assert r.queue_offset == -1  # waiting aside, not in its queue yet
    assert r.queue.topic == "Delayed" and 0 <= r.queue.queue_id < QUEUES
    got = wait_for(consumer, r.queue, 0, 1, timeout=10.0)
    assert len(got) == 1
    arrived, msg = got[0]
    assert (msg.body, msg.tags, msg.keys, msg.msg_id) == (b"later", "D", ["k1"], r.msg_id)
    assert_on_time(before + 2.0, arrived, msg, after + 2.0)


def test_a_timed_message_arrives_at_its_time(
    cluster: Cluster, producer: Producer, consumer: PullConsumer
) -> None:
    cluster.make_topic("Timed")
    due = time.time() + 2.0
    r = producer.send(Message("Timed", b"at", properties={"p": "v"}, deliver_at=due))
    assert r.status is SendStatus.SEND_OK and r.queue_offset == -1
    got = wait_for(consumer, r.queue, 0, 1, timeout=10.0)
    assert len(got) == 1
    arrived, msg = got[0]
    assert msg.body == b"at" and msg.properties.get("p") == "v" and msg.msg_id == r.msg_id
    assert_on_time(due, arrived, msg, due)


def test_a_time_already_past_is_delivered_at_once(
    cluster: Cluster, producer: Producer, consumer: PullConsumer
) -> None:
    cluster.make_topic("TimedPast")
    r = producer.send(Message("TimedPast", b"now", deliver_at=time.time() - 60))
    assert r.queue_offset >= 0  # stored straight into its queue
    got = wait_for(consumer, r.queue, r.queue_offset, 1, timeout=2.0)
    assert [msg.body for _, msg in got] == [b"now"]


def test_coalesced_sends_keep_each_messages_own_delay(
    cluster: Cluster, consumer: PullConsumer
) -> None:
    """Sends waiting together travel in one SEND_BATCH_MESSAGE; each entry has its timing."""
    cluster.make_topic("TimedMix")
    mq = MessageQueue("TimedMix", "broker-a", 0)

    async def main() -> tuple[float, float, list[SendResult]]:
        async with fabric.aio.Producer("timed-pg", nameservers=cluster.endpoint) as p:
            await p.send(Message("TimedMix", b"warm"), queue=mq)  # offset 0; learns the route
            before = time.time()
            futures = [
                p.send_async(Message("TimedMix", b"plain"), queue=mq),
                p.send_async(Message("TimedMix", b"level1", delay_level=1), queue=mq),
                p.send_async(Message("TimedMix", b"at2", deliver_at=before + 2.0), queue=mq),
                p.send_async(Message("TimedMix", b"plain2"), queue=mq),
            ]
            results = await asyncio.gather(*futures)
            return before, time.time(), list(results)

    before, after, results = asyncio.run(main())
    assert [r.queue_offset for r in results] == [1, -1, -1, 2]
    got = wait_for(consumer, mq, 1, 4, timeout=10.0)
    bodies = [msg.body for _, msg in got]
    assert bodies == [b"plain", b"plain2", b"level1", b"at2"]
    (t1, level1), (t2, at2) = got[2], got[3]
    assert_on_time(before + 1.0, t1, level1, after + 1.0)
    assert_on_time(before + 2.0, t2, at2, before + 2.0)


def test_a_batch_of_delayed_messages(
    cluster: Cluster, producer: Producer, consumer: PullConsumer
) -> None:
    cluster.make_topic("DelayedBatch")
    before = time.time()
    results = producer.send_batch(
        [Message("DelayedBatch", b"b%d" % i, delay_level=1) for i in range(3)]
    )
    after = time.time()
    assert [r.queue_offset for r in results] == [-1, -1, -1]
    mq = results[0].queue
    got = wait_for(consumer, mq, 0, 3, timeout=10.0)
    assert sorted(msg.body for _, msg in got) == [b"b0", b"b1", b"b2"]
    for arrived, msg in got:
        assert_on_time(before + 1.0, arrived, msg, after + 1.0)


def test_bad_timing_is_refused_before_sending(producer: Producer) -> None:
    with pytest.raises(MessageIllegalError, match="not both"):
        producer.send(Message("Timed", b"x", delay_level=1, deliver_at=time.time() + 5))
    with pytest.raises(MessageIllegalError, match=r"0\.\.18"):
        producer.send(Message("Timed", b"x", delay_level=19))
    msg = Message("Timed", b"x")
    msg.deliver_at = "tomorrow"  # type: ignore[assignment]
    with pytest.raises(MessageIllegalError, match="seconds since the epoch"):
        producer.send(msg)


def test_a_time_beyond_the_brokers_limit_is_refused(cluster: Cluster, producer: Producer) -> None:
    cluster.make_topic("TimedFar")
    with pytest.raises(MessageIllegalError):
        producer.send(Message("TimedFar", b"x", deliver_at=time.time() + 7200))  # limit 1 h


# ---------------------------------------------------------------------------------------
# Idempotent resends (14.4): the broker's side, driven by hand
# ---------------------------------------------------------------------------------------


def _send(
    conn: BlockingConnection, topic: str, uniq_id: str, body: bytes, *, resend: bool
) -> m.SendReply:
    request = m.SendMessageBody(
        producer_group="raw", topic=topic, queue_id=0, uniq_id=uniq_id, resend=resend
    )
    return conn.call(RequestCode.SEND_MESSAGE, request, m.SendReply, [body])


def test_a_resend_of_a_stored_message_is_stored_once(
    cluster: Cluster, consumer: PullConsumer
) -> None:
    cluster.make_topic("Resend")
    with BlockingConnection(cluster.broker_endpoint, timeout=5.0) as conn:
        first = _send(conn, "Resend", "A" * 32, b"once", resend=False)
        again = _send(conn, "Resend", "A" * 32, b"once", resend=True)
        # a resend whose first attempt never arrived is stored normally
        fresh = _send(conn, "Resend", "B" * 32, b"fresh", resend=True)
        # without resend, nothing is looked up: the application sent it twice
        twice = _send(conn, "Resend", "A" * 32, b"once", resend=False)
    assert (again.queue_id, again.queue_offset) == (first.queue_id, first.queue_offset)
    assert fresh.queue_offset == first.queue_offset + 1
    assert twice.queue_offset == first.queue_offset + 2
    mq = MessageQueue("Resend", "broker-a", 0)
    got = wait_for(consumer, mq, 0, 3, timeout=2.0)
    assert [(msg.msg_id, msg.body) for _, msg in got] == [
        ("A" * 32, b"once"),
        ("B" * 32, b"fresh"),
        ("A" * 32, b"once"),
    ]


def test_a_resent_batch_stores_only_what_is_missing(
    cluster: Cluster, consumer: PullConsumer
) -> None:
    cluster.make_topic("ResendBatch")
    with BlockingConnection(cluster.broker_endpoint, timeout=5.0) as conn:
        _send(conn, "ResendBatch", "C" * 32, b"c", resend=False)
        batch = m.SendBatchBody(
            producer_group="raw",
            topic="ResendBatch",
            queue_id=0,
            messages=[m.BatchEntry(uniq_id="C" * 32), m.BatchEntry(uniq_id="D" * 32)],
            resend=True,
        )
        reply = conn.call(RequestCode.SEND_BATCH_MESSAGE, batch, m.SendBatchReply, [b"c", b"d"])
    assert reply.queue_offsets == [0, 1]
    got = wait_for(consumer, MessageQueue("ResendBatch", "broker-a", 0), 0, 2, timeout=2.0)
    assert [msg.body for _, msg in got] == [b"c", b"d"]
