"""Delayed and timed messages and half messages: checks before sending, and the wire entry."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import pytest
import zmq.asyncio

from fabric import Message, MessageIllegalError, SendResult, TransactionSendResult
from fabric.client import ClientCore
from fabric.message import MAX_DELAY_LEVEL, MessageQueue
from fabric.protocol.codes import DELAY_LEVELS, SendStatus, SysFlag, TransactionState
from fabric.sending import ProducerCore, ProducerOptions


def test_levels_and_times_are_what_the_wire_carries() -> None:
    assert MAX_DELAY_LEVEL == len(DELAY_LEVELS) == 18
    assert Message("T", b"x").timing() == (0, 0)
    assert Message("T", b"x", delay_level=3).timing() == (3, 0)
    assert Message("T", b"x", delay_level=18).timing() == (18, 0)
    assert Message("T", b"x", deliver_at=1700000000.25).timing() == (0, 1700000000250)
    assert Message("T", b"x", deliver_at=1700000000).timing() == (0, 1700000000000)
    # 0 on the wire means "no time": the earliest time is 1 ms after the epoch.
    assert Message("T", b"x", deliver_at=0.0001).timing() == (0, 1)
    assert "delay_level=3" in repr(Message("T", b"x", delay_level=3))
    assert "deliver_at=" in repr(Message("T", b"x", deliver_at=5.0))


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"delay_level": 2, "deliver_at": time.time() + 10}, "not both"),
        ({"delay_level": 19}, "0..18"),
        ({"delay_level": -1}, "0..18"),
        ({"delay_level": True}, "must be an int"),
        ({"delay_level": 1.0}, "must be an int"),
        ({"delay_level": "3"}, "must be an int"),
        ({"delay_level": None}, "must be an int"),
        ({"deliver_at": "soon"}, "seconds since the epoch"),
        ({"deliver_at": True}, "seconds since the epoch"),
        ({"deliver_at": math.nan}, "after the epoch"),
        ({"deliver_at": math.inf}, "after the epoch"),
        ({"deliver_at": 0}, "after the epoch"),
        ({"deliver_at": -5.0}, "after the epoch"),
        # milliseconds by mistake: the year 55,000
        ({"deliver_at": time.time() * 1000}, "in seconds"),
    ],
)
def test_bad_timing_is_refused_where_it_is_written(fields: dict[str, object], why: str) -> None:
    with pytest.raises(MessageIllegalError, match=why.replace(".", r"\.")):
        Message("T", b"x", **fields)  # type: ignore[arg-type]
    # ... and again before sending, for a field set after construction.
    msg = Message("T", b"x")
    for name, value in fields.items():
        setattr(msg, name, value)
    with pytest.raises(MessageIllegalError):
        msg.validate()


def test_send_results_of_timed_and_half_messages() -> None:
    q = MessageQueue("T", "b", 0)
    r = SendResult(SendStatus.SEND_OK, "ID", q, -1)
    assert r.commitlog_offset == -1  # unknown unless the reply said
    t = TransactionSendResult(
        SendStatus.SEND_OK, "ID", q, -1, 1234, transaction_state=TransactionState.COMMIT
    )
    assert isinstance(t, SendResult) and t.commitlog_offset == 1234
    assert t.transaction_state is TransactionState.COMMIT


@pytest.fixture
def core() -> Iterator[tuple[asyncio.AbstractEventLoop, ProducerCore]]:
    """A ProducerCore on a loop of its own; prepare() sends nothing and opens no socket."""
    loop = asyncio.new_event_loop()
    context = zmq.asyncio.Context()

    async def make() -> ProducerCore:
        client = ClientCore(context, ["tcp://127.0.0.1:1"])
        return ProducerCore(client, "pg", ProducerOptions())

    producer = loop.run_until_complete(make())
    try:
        yield loop, producer
    finally:
        loop.run_until_complete(producer.client.close())
        loop.close()
        context.destroy(linger=0)


def test_prepare_puts_the_timing_in_the_entry(
    core: tuple[asyncio.AbstractEventLoop, ProducerCore],
) -> None:
    _, producer = core
    plain = producer.prepare(Message("T", b"x"))
    assert (plain.entry.delay_level, plain.entry.deliver_at) == (0, 0)
    delayed = producer.prepare(Message("T", b"x", delay_level=4))
    assert (delayed.entry.delay_level, delayed.entry.deliver_at) == (4, 0)
    timed = producer.prepare(Message("T", b"x", deliver_at=2_000_000_000.5))
    assert (timed.entry.delay_level, timed.entry.deliver_at) == (0, 2_000_000_000_500)
    assert not (plain.resend or delayed.resend or timed.resend)
    msgs = [Message("T", b"a", delay_level=1), Message("T", b"b"), Message("T", b"c", deliver_at=9)]
    batch = producer.prepare_batch(msgs)
    assert [(i.entry.delay_level, i.entry.deliver_at) for i in batch.items] == [
        (1, 0),
        (0, 0),
        (0, 9000),
    ]


def test_a_half_message_is_flagged_and_never_delayed(
    core: tuple[asyncio.AbstractEventLoop, ProducerCore],
) -> None:
    _, producer = core
    half = producer.prepare(Message("T", b"x" * 10_000), transactional=True)
    assert half.entry.sysflag == SysFlag.TRANSACTION_PREPARED | SysFlag.COMPRESSED
    with pytest.raises(MessageIllegalError, match="delayed or timed"):
        producer.prepare(Message("T", b"x", delay_level=1), transactional=True)
