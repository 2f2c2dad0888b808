"""What a TransactionProducer puts on the wire, against the scripted fake brokers.

The half message's flag, END_TRANSACTION's fields and where it goes, HEARTBEATs to every
master of the cluster, UNREGISTER_CLIENT at shutdown, and a half message stored without
SEND_OK (rolled back without running the local transaction): a real broker cannot be told
to answer FLUSH_DISK_TIMEOUT, and shows none of the client's requests. The behaviour with
a real broker is in test_transaction_producer.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import fabric.aio
from fabric import Message, MessageExt, SendStatus, TransactionProducer, TransactionState
from fabric.protocol import RequestCode, SysFlag
from fabric.protocol import messages as m
from tests.integration.test_producer_resend import FLUSH_TIMEOUT, FakeCluster, Seen


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.stop()


def never(msg: MessageExt) -> TransactionState:
    raise AssertionError("no check-back expected")


def requests(cluster: FakeCluster, code: RequestCode) -> list[Seen]:
    return [s for s in list(cluster.seen) if s.code is code]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    """A bounded retry on a deadline (the fake records requests on its own thread)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        threading.Event().wait(0.02)


def test_half_message_end_transaction_heartbeats_and_unregister(cluster: FakeCluster) -> None:
    tp = TransactionProducer(
        "pg", nameservers=cluster.endpoints["ns"], checker=never, heartbeat_interval=0.1
    ).start()
    try:
        # Heartbeats reach every master the NameServer lists, before anything was sent.
        wait_until(
            "heartbeats to a and b",
            lambda: {s.broker for s in requests(cluster, RequestCode.HEARTBEAT)} == {"a", "b"},
        )
        r = tp.send_in_transaction(
            Message("T", b"x", keys=["k"]), lambda msg, arg: TransactionState.COMMIT
        )
    finally:
        tp.shutdown()
    assert r.status is SendStatus.SEND_OK and r.transaction_state is TransactionState.COMMIT
    (half,) = requests(cluster, RequestCode.SEND_MESSAGE)
    assert isinstance(half.body, m.SendMessageBody)
    assert half.body.sysflag & SysFlag.TRANSACTION_PREPARED and not half.body.resend
    assert (half.body.uniq_id, half.body.keys, half.bodies) == (r.msg_id, ["k"], [b"x"])
    (end,) = requests(cluster, RequestCode.END_TRANSACTION)
    assert end.broker == half.broker == r.queue.broker_name
    assert end.body == m.EndTransactionBody(
        producer_group="pg",
        msg_id=r.msg_id,
        commitlog_offset=r.commitlog_offset,
        state=int(TransactionState.COMMIT),
        from_check=False,
    )
    assert r.commitlog_offset > 0
    for s in requests(cluster, RequestCode.HEARTBEAT):
        assert s.body == m.ClientHeartbeatBody(client_id=tp.client_id, producer_groups=["pg"])
    unregistered = requests(cluster, RequestCode.UNREGISTER_CLIENT)
    assert {s.broker for s in unregistered} == {"a", "b"}
    for s in unregistered:
        assert s.body == m.UnregisterClientBody(client_id=tp.client_id, producer_groups=["pg"])


def test_a_half_message_stored_without_send_ok_is_rolled_back(cluster: FakeCluster) -> None:
    cluster.script = lambda seen: FLUSH_TIMEOUT
    ran: list[object] = []
    with TransactionProducer("pg", nameservers=cluster.endpoints["ns"], checker=never) as tp:
        r = tp.send_in_transaction(Message("T", b"x"), lambda msg, arg: ran.append(msg))
    assert not ran
    assert r.status is SendStatus.FLUSH_DISK_TIMEOUT
    assert r.transaction_state is TransactionState.ROLLBACK
    (end,) = requests(cluster, RequestCode.END_TRANSACTION)
    assert isinstance(end.body, m.EndTransactionBody)
    assert end.body.state == TransactionState.ROLLBACK


def test_a_local_transaction_that_returns_no_state_is_unknown(cluster: FakeCluster) -> None:
    with TransactionProducer("pg", nameservers=cluster.endpoints["ns"], checker=never) as tp:
        r = tp.send_in_transaction(Message("T", b"x"), lambda msg, arg: None)
        again = tp.send_in_transaction(Message("T", b"y"), lambda msg, arg: 2)  # an int is fine
    assert r.transaction_state is TransactionState.UNKNOWN
    assert again.transaction_state is TransactionState.ROLLBACK
    states = [s.body.state for s in requests(cluster, RequestCode.END_TRANSACTION)]  # type: ignore[attr-defined]
    assert states == [TransactionState.UNKNOWN, TransactionState.ROLLBACK]


def test_half_messages_are_never_coalesced(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with fabric.aio.TransactionProducer(
            "pg", nameservers=cluster.endpoints["ns"], checker=never
        ) as tp:

            async def commit(msg: Message, arg: object) -> TransactionState:
                return TransactionState.COMMIT

            results = await asyncio.gather(
                *(tp.send_in_transaction(Message("T", b"%d" % i), commit) for i in range(5))
            )
        assert all(r.transaction_state is TransactionState.COMMIT for r in results)

    asyncio.run(main())
    assert not requests(cluster, RequestCode.SEND_BATCH_MESSAGE)
    assert len(requests(cluster, RequestCode.SEND_MESSAGE)) == 5
    assert len(requests(cluster, RequestCode.END_TRANSACTION)) == 5
