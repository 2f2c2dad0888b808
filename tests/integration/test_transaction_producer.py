"""Transactional messages against real NameServer and broker processes (docs/PROTOCOL.md 14.3).

Commit, rollback, undecided transactions settled by the check-back, a local transaction
that raises, the asyncio API, and a producer killed (SIGKILL) between its half message
and its decision, whose transaction another producer of the group settles. The broker
checks undecided half messages after 1 s, every 0.5 s (instead of 6 s and 30 s).
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fabric.aio
from fabric import (
    Message,
    MessageExt,
    MessageIllegalError,
    MessageQueue,
    NoRouteError,
    PullConsumer,
    PullStatus,
    SendResult,
    SendStatus,
    TransactionProducer,
    TransactionSendResult,
    TransactionState,
)
from fabric.protocol import SysFlag
from fabric.testing import run_nameserver
from tests.integration.cluster import OneBrokerCluster

HELPER = Path(__file__).resolve().parent / "tx_helper.py"
COMMIT, ROLLBACK, UNKNOWN = (
    TransactionState.COMMIT,
    TransactionState.ROLLBACK,
    TransactionState.UNKNOWN,
)


class Cluster(OneBrokerCluster):
    """A NameServer and one broker that checks half messages quickly, for the module."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(
            tmp,
            transaction_timeout=1.0,
            transaction_check_interval=0.5,
            transaction_check_max=100,
            client_expiry=2.0,
        )

    def make_topic(self, topic: str) -> MessageQueue:
        """CREATE_TOPIC with one queue; wait until the NameServer routes it; its queue."""
        self.create_topic(topic, 1)
        return MessageQueue(topic, "broker-a", 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("tx")) as c:
        yield c


@pytest.fixture
def consumer(cluster: Cluster) -> Iterator[PullConsumer]:
    with PullConsumer("tx-cg", nameservers=cluster.endpoint) as c:
        yield c


def delivered(
    consumer: PullConsumer, mq: MessageQueue, count: int, timeout: float = 10.0
) -> list[MessageExt]:
    """Long-poll ``mq`` from offset 0 until ``count`` messages are there (or the time is up)."""
    found: list[MessageExt] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        res = consumer.pull(mq, len(found), max_nums=32, timeout=min(left, 5.0))
        if res.status is PullStatus.FOUND:
            found.extend(res.messages)
    return found


class Checker:
    """A checker that answers from a table of msg_id -> state, and records its calls."""

    def __init__(self, answers: dict[str, TransactionState] | None = None) -> None:
        self.answers = answers if answers is not None else {}
        self.calls: queue.Queue[tuple[MessageExt, str]] = queue.Queue()

    def __call__(self, msg: MessageExt) -> TransactionState:
        self.calls.put((msg, threading.current_thread().name))
        return self.answers.get(msg.msg_id, UNKNOWN)

    def wait_for(self, msg_id: str, timeout: float = 10.0) -> tuple[MessageExt, str]:
        deadline = time.monotonic() + timeout
        while True:
            msg, thread = self.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            if msg.msg_id == msg_id:
                return msg, thread


# ---------------------------------------------------------------------------------------
# The blocking TransactionProducer
# ---------------------------------------------------------------------------------------


def test_commit_rollback_and_the_check_back(cluster: Cluster, consumer: PullConsumer) -> None:
    mq = cluster.make_topic("Tx")
    checker = Checker()
    calls: list[tuple[str | None, object, int]] = []

    def decide(state: TransactionState) -> Any:
        def execute(msg: Message, arg: object) -> TransactionState:
            calls.append((msg.msg_id, arg, threading.get_ident()))
            return state

        return execute

    def fail(msg: Message, arg: object) -> TransactionState:
        raise RuntimeError("the database is down")

    with TransactionProducer("tx-pg", nameservers=cluster.endpoint, checker=checker) as tp:
        committed = tp.send_in_transaction(Message("Tx", b"commit"), decide(COMMIT), "a1")
        rolled = tp.send_in_transaction(Message("Tx", b"rollback"), decide(ROLLBACK), "a2")
        unknown = tp.send_in_transaction(Message("Tx", b"unknown"), decide(UNKNOWN), "a3")
        raised = tp.send_in_transaction(Message("Tx", b"raised"), fail)
        checker.answers.update({unknown.msg_id: COMMIT, raised.msg_id: ROLLBACK})

        results = [committed, rolled, unknown, raised]
        assert [r.transaction_state for r in results] == [COMMIT, ROLLBACK, UNKNOWN, UNKNOWN]
        for r in results:
            assert isinstance(r, TransactionSendResult) and isinstance(r, SendResult)
            assert r.status is SendStatus.SEND_OK and r.queue == mq
            assert r.queue_offset == -1 and r.commitlog_offset >= 0
        # The local transaction ran in the caller's thread, with the message's id and arg.
        assert calls == [
            (committed.msg_id, "a1", threading.get_ident()),
            (rolled.msg_id, "a2", threading.get_ident()),
            (unknown.msg_id, "a3", threading.get_ident()),
        ]

        # The broker asks about the two undecided ones; the checker settles them.
        checked, thread = checker.wait_for(unknown.msg_id)
        assert thread.startswith("fabric-check")  # a worker thread, never the loop
        assert (checked.topic, checked.queue_id, checked.body) == ("Tx", 0, b"unknown")
        checker.wait_for(raised.msg_id)
        msgs = delivered(consumer, mq, 2)
        # Everything older was decided by now: nothing else may turn up.
        assert consumer.pull(mq, 2, timeout=1.0).status is PullStatus.NO_NEW_MSG

    assert [(x.body, x.msg_id) for x in msgs] == [
        (b"commit", committed.msg_id),
        (b"unknown", unknown.msg_id),
    ]
    assert all(x.sysflag & SysFlag.TRANSACTION_COMMIT for x in msgs)
    # Decided half messages are never asked about.
    asked = set()
    while not checker.calls.empty():
        asked.add(checker.calls.get_nowait()[0].msg_id)
    assert not asked & {committed.msg_id, rolled.msg_id}


def test_a_delayed_message_cannot_be_transactional(cluster: Cluster) -> None:
    ran: list[object] = []
    with (
        TransactionProducer("tx-pg", nameservers=cluster.endpoint, checker=Checker()) as tp,
        pytest.raises(MessageIllegalError, match="delayed or timed"),
    ):
        tp.send_in_transaction(Message("Tx", b"x", delay_level=1), lambda msg, arg: ran.append(msg))
    assert not ran


def test_a_failed_half_send_raises_and_runs_nothing() -> None:
    ran: list[object] = []
    # No broker: no route, and nobody to create the topic.
    with (
        run_nameserver() as lonely,
        TransactionProducer(
            "tx-pg", nameservers=lonely.endpoint, checker=Checker(), send_timeout=1.0
        ) as tp,
        pytest.raises(NoRouteError),
    ):
        tp.send_in_transaction(Message("Tx", b"x"), lambda msg, arg: ran.append(msg))
    assert not ran


def test_bad_arguments() -> None:
    async def coroutine_checker(msg: MessageExt) -> TransactionState:
        return COMMIT

    with pytest.raises(TypeError, match=r"fabric\.aio"):
        TransactionProducer("tx-pg", nameservers="tcp://127.0.0.1:1", checker=coroutine_checker)
    with pytest.raises(TypeError):
        TransactionProducer("tx-pg", nameservers="tcp://127.0.0.1:1", checker=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TransactionProducer(
            "tx-pg", nameservers="tcp://127.0.0.1:1", checker=Checker(), check_threads=0
        )


# ---------------------------------------------------------------------------------------
# A producer that dies before deciding
# ---------------------------------------------------------------------------------------


def _read_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line.startswith(prefix):
            return line.strip()


def test_a_dead_producers_transaction_is_settled_by_another(
    cluster: Cluster, consumer: PullConsumer
) -> None:
    mq = cluster.make_topic("TxOrphan")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HELPER),
            "--nameserver",
            cluster.endpoint,
            "--group",
            "tx-orphans",
            "--topic",
            "TxOrphan",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        msg_id = _read_line(proc, "HALF ", timeout=15.0).split()[1]
    finally:
        proc.send_signal(signal.SIGKILL)  # dies before deciding
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert consumer.pull(mq, 0, timeout=0).status is PullStatus.NO_NEW_MSG

    checker = Checker({msg_id: COMMIT})
    with TransactionProducer("tx-orphans", nameservers=cluster.endpoint, checker=checker):
        checked, _ = checker.wait_for(msg_id, timeout=15.0)
        assert checked.body == b"orphan" and checked.topic == "TxOrphan"
        msgs = delivered(consumer, mq, 1)
    assert [(x.body, x.msg_id) for x in msgs] == [(b"orphan", msg_id)]


# ---------------------------------------------------------------------------------------
# fabric.aio
# ---------------------------------------------------------------------------------------


def test_asyncio_transaction_producer(cluster: Cluster, consumer: PullConsumer) -> None:
    mq = cluster.make_topic("TxAio")
    asked: list[tuple[str, bool]] = []

    async def main() -> list[TransactionSendResult]:
        loop = asyncio.get_running_loop()

        async def checker(msg: MessageExt) -> TransactionState:  # runs on the loop
            asked.append((msg.msg_id, asyncio.get_running_loop() is loop))
            return COMMIT

        async def commit(msg: Message, arg: object) -> TransactionState:
            await asyncio.sleep(0)
            return COMMIT if arg == "go" else ROLLBACK

        def undecided(msg: Message, arg: object) -> TransactionState:  # a worker thread
            assert threading.current_thread() is not threading.main_thread()
            return UNKNOWN

        async with fabric.aio.TransactionProducer(
            "tx-aio", nameservers=cluster.endpoint, checker=checker
        ) as tp:
            first = await tp.send_in_transaction(Message("TxAio", b"one"), commit, "go")
            dropped = await tp.send_in_transaction(Message("TxAio", b"no"), commit, "stop")
            later = await tp.send_in_transaction(Message("TxAio", b"two"), undecided)
            # Keep the loop running until the check-back settled the undecided one.
            deadline = loop.time() + 10.0
            while (later.msg_id, True) not in asked and loop.time() < deadline:
                await asyncio.sleep(0.05)
            return [first, dropped, later]

    first, dropped, later = asyncio.run(main())
    assert [r.transaction_state for r in (first, dropped, later)] == [COMMIT, ROLLBACK, UNKNOWN]
    assert (later.msg_id, True) in asked
    msgs = delivered(consumer, mq, 2)
    assert [(x.body, x.msg_id) for x in msgs] == [(b"one", first.msg_id), (b"two", later.msg_id)]
