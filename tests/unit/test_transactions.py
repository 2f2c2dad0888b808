"""TransactionService on a real MessageStore with a fake socket: progress, checks, discards, state.

The check passes are driven by hand (``scan_chunk`` with a chosen clock), so the tests
say exactly which half message is checked in which round; the socket is a fake that
records pushes.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from loguru import logger

from broker.config import BrokerConfig
from broker.offsets import ConsumerOffsets
from broker.processors import BrokerContext
from broker.push import Delivery
from broker.store import MessageStore, PutMessage, StoredMessage
from broker.topics import TopicTable
from broker.transactions import CHUNK, TransactionService
from fabric.protocol import RequestCode, parse_reply
from fabric.protocol import messages as m
from fabric.protocol.codes import TransactionState
from fabric.protocol.frames import Buffer
from fabric.protocol.names import HALF_OP_TOPIC, HALF_TOPIC

TIMEOUT_MS = 1000


class FakePusher:
    def __init__(self) -> None:
        self.checks: list[tuple[bytes, m.CheckTransactionBody]] = []

    def push(self, identity: bytes, frames: Sequence[Buffer]) -> Delivery:
        reply = parse_reply(list(frames))
        assert reply.code == RequestCode.CHECK_TRANSACTION_STATE and reply.request_id == 0
        self.checks.append((identity, reply.decode(m.CheckTransactionBody)))
        return Delivery.SENT

    def reply(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("no reply expected")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def make_ctx(
    loop: asyncio.AbstractEventLoop, store: MessageStore, pusher: FakePusher
) -> BrokerContext:
    config = BrokerConfig(
        data_dir="unused", transaction_timeout=TIMEOUT_MS / 1000, transaction_check_max=2
    )
    topics = TopicTable(None)
    topics.create(m.TopicConfig(topic="Real", read_queue_nums=1, write_queue_nums=1))
    return BrokerContext(
        config=config,
        store=store,
        topics=topics,
        offsets=ConsumerOffsets(None),
        replier=pusher,
        pusher=pusher,
        loop=loop,
        broker_name="b",
        msg_id_prefix="PREFIX",
        on_topics_changed=lambda then=None: None,
    )


def half(store: MessageStore, uniq_id: str, group: str = "pg") -> StoredMessage:
    sys = {"REAL_TOPIC": "Real", "REAL_QID": "0", "PGROUP": group}
    result = store.append(
        PutMessage(topic=HALF_TOPIC, queue_id=0, body=b"b", uniq_id=uniq_id, sysflag=4, sys=sys)
    )
    assert result.ok
    message = store.get_message(result.physical_offset)
    assert message is not None
    return message


def ops(store: MessageStore) -> list[tuple[str, int]]:
    got = store.get_messages(HALF_OP_TOPIC, 0, 0, 100)
    out = []
    for raw in got.records:
        msg = store.get_message(struct.unpack(">q", raw[28:36])[0])
        assert msg is not None
        out.append((msg.tags, struct.unpack(">q", msg.body)[0]))
    return out


def test_progress_checks_and_discard(
    loop: asyncio.AbstractEventLoop, store: MessageStore, tmp_path: Path
) -> None:
    pusher = FakePusher()
    ctx = make_ctx(loop, store, pusher)
    state = str(tmp_path / "transactions.json")
    service = TransactionService(ctx, state)
    a, b, c = half(store, "A"), half(store, "B"), half(store, "C", group="other")
    ctx.consumers.heartbeat("producer", b"id-1", ["pg"], {})
    now = max(x.store_timestamp for x in (a, b, c))
    # Too young: nothing checked, and the pass ends at the first young one.
    service.run_pass(now)
    assert pusher.checks == [] and service.progress == 0
    assert service.decide(b, TransactionState.COMMIT) is True
    assert service.decide(b, TransactionState.ROLLBACK) is False  # second decision ignored
    assert service.decide(a, TransactionState.UNKNOWN) is False
    (committed,) = store.get_messages("Real", 0, 0).records
    assert struct.unpack(">i", committed[36:40])[0] == 8  # TRANSACTION_COMMIT
    # Old enough: A is checked (its group has a producer), C is counted (none in its group).
    service.run_pass(now + TIMEOUT_MS + 1)
    assert [(i, x.msg_id, x.check_times) for i, x in pusher.checks] == [(b"id-1", "A", 1)]
    assert service.pending_checks == {a.physical_offset: 1, c.physical_offset: 1}
    assert service.progress == 0  # A is undecided
    service.persist()
    # Second round: A checked again; third: A and C discarded (check max 2).
    for _ in range(2):
        service.run_pass(now + TIMEOUT_MS + 1)
    assert [x.check_times for _, x in pusher.checks] == [1, 2]
    assert service.discarded == 2 and service.progress == 3 and service.pending_checks == {}
    assert ops(store) == [
        ("COMMIT", b.physical_offset),
        ("DISCARD", a.physical_offset),
        ("DISCARD", c.physical_offset),
    ]
    assert service.decide(a, TransactionState.COMMIT) is False
    service.close()
    # A restart reads the state and the op records: everything stays decided.
    again = TransactionService(ctx, state)
    assert again.progress == 3
    assert all(again.is_decided(x.physical_offset) for x in (a, b, c))
    d = half(store, "D")
    assert not again.is_decided(d.physical_offset)
    again.close()


def test_rebuild_from_op_records_without_state(
    loop: asyncio.AbstractEventLoop, store: MessageStore
) -> None:
    pusher = FakePusher()
    ctx = make_ctx(loop, store, pusher)
    service = TransactionService(ctx, None)
    a, b = half(store, "A"), half(store, "B")
    assert service.decide(b, TransactionState.ROLLBACK)
    service.close()
    fresh = TransactionService(ctx, None)
    assert fresh.is_decided(b.physical_offset) and not fresh.is_decided(a.physical_offset)
    assert store.get_messages("Real", 0, 0).records == []
    fresh.close()


def test_discard_logs_one_warning(loop: asyncio.AbstractEventLoop, store: MessageStore) -> None:
    pusher = FakePusher()
    ctx = make_ctx(loop, store, pusher)
    service = TransactionService(ctx, None)
    lost = half(store, "LOST")
    lines: list[str] = []
    sink = logger.add(lambda msg: lines.append(str(msg)), level="WARNING")
    logger.enable("broker")
    try:
        for _ in range(3):
            service.run_pass(lost.store_timestamp + TIMEOUT_MS + 1)
    finally:
        logger.disable("broker")
        logger.remove(sink)
    (line,) = [x for x in lines if "LOST" in x]
    assert "pg" in line and "discarded after 2 checks" in line
    service.close()


def test_a_pass_spans_several_chunks(loop: asyncio.AbstractEventLoop, store: MessageStore) -> None:
    pusher = FakePusher()
    ctx = make_ctx(loop, store, pusher)
    ctx.consumers.heartbeat("producer", b"id-1", ["pg"], {})
    service = TransactionService(ctx, None)
    halves = [half(store, f"H{i}") for i in range(CHUNK + 50)]
    for decided in halves[:-1]:
        assert service.decide(decided, TransactionState.ROLLBACK)
    service.begin_pass()
    later = halves[-1].store_timestamp + TIMEOUT_MS + 1
    assert service.scan_chunk(later) is False  # bounded: one chunk per callback
    assert service.scan_chunk(later) is True
    assert service.progress == len(halves) - 1
    assert [x.msg_id for _, x in pusher.checks] == [f"H{len(halves) - 1}"]
    assert all(service.is_decided(x.physical_offset) for x in halves[:-1])
    service.close()
