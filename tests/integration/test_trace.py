"""Message trace with real processes (SPEC M21, docs/PROTOCOL.md 14.6).

A producer and a push consumer created with ``trace=True`` send their events to
``%TRACE%`` (auto-created by the broker on the first trace record); ``Admin.trace`` and
``fabric admin message trace`` read a message's events back. One NameServer and one
broker per test (fresh ``%TRACE%``), with test-sized delay levels (0.2 s) so that a
retried message comes back at once.
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fabric.aio
from fabric import (
    ConsumeStatus,
    Message,
    MessageExt,
    Producer,
    PushConsumer,
    SendResult,
    TransactionProducer,
    TransactionState,
)
from fabric.admin import Admin
from fabric.errors import NoRouteError
from fabric.protocol import RequestCode
from fabric.protocol import messages as m
from fabric.protocol.codes import DELAY_LEVELS
from fabric.testing import ServerProcess, run_broker, write_broker_config
from fabric.trace import TRACE_TOPIC, TraceEvent
from fabric.transport import BlockingConnection

OK = ConsumeStatus.CONSUME_SUCCESS
LATER = ConsumeStatus.RECONSUME_LATER
FAST = {"heartbeat_interval": 0.3, "rebalance_interval": 0.6}


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Call ``check`` until it is true or ``timeout`` passes (state in other processes)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        threading.Event().wait(0.05)


@pytest.fixture
def broker(nameserver: ServerProcess, tmp_path: Path) -> Iterator[ServerProcess]:
    """One registered broker with 0.2 s delay levels."""
    config = write_broker_config(tmp_path / "broker.json", delay_levels=[0.2] * len(DELAY_LEVELS))
    server = run_broker(
        tmp_path / "broker-a",
        nameserver.endpoint,
        name="broker-a",
        config=config,
        heartbeat_interval=0.5,
    )
    try:
        with BlockingConnection(nameserver.endpoint, timeout=5.0) as ns:

            def registered() -> bool:
                info = ns.call(RequestCode.GET_CLUSTER_INFO, m.Empty(), m.ClusterInfo)
                return "broker-a" in info.brokers

            wait_until("broker registered", registered)
        yield server
    finally:
        server.stop()
    assert not server.error_lines(), "\n".join(server.log_lines())


@pytest.fixture
def admin(nameserver: ServerProcess, broker: ServerProcess) -> Iterator[Admin]:
    with Admin(nameserver.endpoint, timeout=5.0) as a:
        yield a


def make_topic(admin: Admin, nameserver: ServerProcess, topic: str, queues: int) -> None:
    admin.create_topic(topic, queues=queues)
    with BlockingConnection(nameserver.endpoint, timeout=5.0) as ns:

        def routed() -> bool:
            try:
                ns.call(
                    RequestCode.GET_ROUTE_INFO_BY_TOPIC,
                    m.GetRouteInfoBody(topic=topic),
                    m.TopicRouteData,
                )
            except NoRouteError:
                return False
            return True

        wait_until(f"route of {topic}", routed)


def consumer(nameserver: ServerProcess, group: str, **options: object) -> PushConsumer:
    settings = {**FAST, "consume_from": "earliest", **options}
    return PushConsumer(group, nameservers=nameserver.endpoint, **settings)  # type: ignore[arg-type]


class Recorder:
    """A listener recording deliveries; ``answer(msg, n)`` (n: deliveries of that id so far)."""

    def __init__(self, answer: Callable[[MessageExt, int], ConsumeStatus]) -> None:
        self.answer = answer
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, msg: MessageExt) -> ConsumeStatus:
        with self.lock:
            self.counts[msg.msg_id] += 1
            n = self.counts[msg.msg_id]
        return self.answer(msg, n)

    def of(self, msg_id: str) -> int:
        with self.lock:
            return self.counts[msg_id]


def trace_of(
    admin: Admin, msg_id: str, kinds: list[str], timeout: float = 20.0
) -> list[TraceEvent]:
    """Wait until the trace of ``msg_id`` has exactly these event types, in order."""
    found: list[TraceEvent] = []

    def complete() -> bool:
        found[:] = admin.trace(msg_id)
        return [e.type for e in found] == kinds

    try:
        wait_until(f"trace {kinds} of {msg_id}", complete, timeout)
    except AssertionError:
        raise AssertionError(f"trace of {msg_id}: {found}") from None
    return found


# ---------------------------------------------------------------------------------------


def test_a_traced_send_and_consume_are_found_by_message_id(
    nameserver: ServerProcess, broker: ServerProcess, admin: Admin
) -> None:
    make_topic(admin, nameserver, "Traced", 2)
    got = Recorder(lambda msg, n: OK)
    c = consumer(nameserver, "tcg", trace=True)
    c.subscribe("Traced", "*", got)
    with c, Producer("tpg", nameservers=nameserver.endpoint, trace=True) as p:
        sent = p.send(Message("Traced", b"hello", tags="A"))  # the direct path
        queued = p.send_async(Message("Traced", b"again", tags="A")).result(10)  # the loop
        wait_until("consumed", lambda: got.of(sent.msg_id) == 1 and got.of(queued.msg_id) == 1)
        events = trace_of(admin, sent.msg_id, ["send", "consume"])
        trace_of(admin, queued.msg_id, ["send", "consume"])
        client_id = c.client_id

    send, consume = events
    assert (send.msg_id, send.topic, send.group, send.status) == (
        sent.msg_id,
        "Traced",
        "tpg",
        "SEND_OK",
    )
    assert (send.broker, send.queue_id, send.queue_offset) == (
        "broker-a",
        sent.queue.queue_id,
        sent.queue_offset,
    )
    assert send.cost_ms >= 0 and send.timestamp > 0 and send.client_id
    assert (consume.msg_id, consume.topic, consume.group, consume.status) == (
        sent.msg_id,
        "Traced",
        "tcg",
        "CONSUME_SUCCESS",
    )
    assert consume.client_id == client_id
    assert (consume.broker, consume.queue_id, consume.queue_offset) == (
        "broker-a",
        sent.queue.queue_id,
        sent.queue_offset,
    )
    assert consume.timestamp >= send.timestamp and consume.cost_ms >= 0
    assert admin.trace(sent.msg_id, topic="Other") == []


def test_a_message_that_fails_once_traces_consume_retry_consume(
    nameserver: ServerProcess, broker: ServerProcess, admin: Admin
) -> None:
    make_topic(admin, nameserver, "Flaky", 1)

    def answer(msg: MessageExt, n: int) -> ConsumeStatus:
        if n == 1 and msg.body == b"raise":
            raise ValueError("first delivery fails")
        return LATER if n == 1 else OK

    got = Recorder(answer)
    c = consumer(nameserver, "fcg", trace=True)
    c.subscribe("Flaky", "*", got)
    with c, Producer("fpg", nameservers=nameserver.endpoint, trace=True) as p:
        later = p.send(Message("Flaky", b"later"))
        raised = p.send(Message("Flaky", b"raise"))
        wait_until(
            "second deliveries",
            lambda: got.of(later.msg_id) == 2 and got.of(raised.msg_id) == 2,
            timeout=30.0,
        )
        kinds = ["send", "consume", "retry", "consume"]
        first = trace_of(admin, later.msg_id, kinds)
        second = trace_of(admin, raised.msg_id, kinds)

    assert [e.status for e in first] == ["SEND_OK", "RECONSUME_LATER", "OK", "CONSUME_SUCCESS"]
    assert [e.status for e in second] == ["SEND_OK", "ValueError", "OK", "CONSUME_SUCCESS"]
    assert {e.topic for e in first + second} == {"Flaky"}, "a retry is traced under its topic"
    assert first[1].queue_offset == later.queue_offset
    assert first[3].queue_offset >= 0 and first[3].broker == "broker-a"


def test_transactions_and_asyncio_producers_trace_too(
    nameserver: ServerProcess, broker: ServerProcess, admin: Admin
) -> None:
    make_topic(admin, nameserver, "Orders", 1)

    def checker(msg: MessageExt) -> TransactionState:
        return TransactionState.COMMIT

    with TransactionProducer(
        "txg", nameservers=nameserver.endpoint, checker=checker, trace=True
    ) as tp:
        committed = tp.send_in_transaction(
            Message("Orders", b"yes"), lambda msg, arg: TransactionState.COMMIT
        )
        rolled = tp.send_in_transaction(
            Message("Orders", b"no"), lambda msg, arg: TransactionState.ROLLBACK
        )

    async def send() -> SendResult:
        async with fabric.aio.Producer("apg", nameservers=nameserver.endpoint, trace=True) as p:
            return await p.send(Message("Orders", b"async"))

    sent = asyncio.run(asyncio.wait_for(send(), 30.0))

    half, commit = trace_of(admin, committed.msg_id, ["send", "commit"])
    assert (half.group, half.status, commit.status) == ("txg", "SEND_OK", "OK")
    assert commit.topic == "Orders" and commit.broker == "broker-a"
    assert [e.status for e in trace_of(admin, rolled.msg_id, ["send", "rollback"])] == [
        "SEND_OK",
        "OK",
    ]
    [event] = trace_of(admin, sent.msg_id, ["send"])
    assert (event.group, event.status, event.queue_offset) == ("apg", "SEND_OK", sent.queue_offset)


def test_untraced_clients_write_nothing_to_the_trace_topic(
    nameserver: ServerProcess, broker: ServerProcess, admin: Admin
) -> None:
    make_topic(admin, nameserver, "Quiet", 1)
    got = Recorder(lambda msg, n: LATER if n == 1 else OK)
    c = consumer(nameserver, "qcg")
    c.subscribe("Quiet", "*", got)
    with c, Producer("qpg", nameservers=nameserver.endpoint) as p:
        sent = p.send(Message("Quiet", b"x"))
        p.send_async(Message("Quiet", b"y")).result(10)
        wait_until("consumed twice", lambda: got.of(sent.msg_id) == 2, timeout=30.0)
    # Shut down: a traced client would have flushed its last events by now.
    assert TRACE_TOPIC not in admin.list_topics()
    assert admin.trace(sent.msg_id) == []


def test_the_command_line_prints_one_line_per_event(
    nameserver: ServerProcess, broker: ServerProcess, admin: Admin
) -> None:
    make_topic(admin, nameserver, "Shown", 1)
    got = Recorder(lambda msg, n: OK)
    c = consumer(nameserver, "scg", trace=True)
    c.subscribe("Shown", "*", got)
    with c, Producer("spg", nameservers=nameserver.endpoint, trace=True) as p:
        sent = p.send(Message("Shown", b"shown"))
        trace_of(admin, sent.msg_id, ["send", "consume"])

    command = [sys.executable, "-m", "fabric", "admin", "--nameserver", nameserver.endpoint]
    done = subprocess.run(
        [*command, "message", "trace", sent.msg_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert " send SEND_OK " in lines[0] and "topic=Shown" in lines[0] and "group=spg" in lines[0]
    assert f"queue=broker-a#{sent.queue.queue_id}" in lines[0]
    assert f"offset={sent.queue_offset}" in lines[0]
    assert " consume CONSUME_SUCCESS " in lines[1] and "group=scg" in lines[1]
    assert lines[2] == f"2 trace event(s) of {sent.msg_id}"
