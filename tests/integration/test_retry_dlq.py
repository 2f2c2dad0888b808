"""Retries and dead letters with real processes (SPEC M15, docs/PROTOCOL.md 14.2).

A CLUSTERING PushConsumer sends a message its listener failed back to the broker
(CONSUMER_SEND_MSG_BACK); the broker delivers it again through ``%RETRY%<group>`` after
a delay level, and after ``max_reconsume_times`` moves it to ``%DLQ%<group>``, where
``fabric admin dlq list|resend`` finds it and sends it again to its original topic.
The broker runs with test-sized delay levels (0.2 s each), so a message goes through
every retry in about a second.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import fabric.aio
from fabric import (
    ConsumeStatus,
    Message,
    MessageExt,
    MessageModel,
    Producer,
    PullConsumer,
    PushConsumer,
)
from fabric.admin import Admin
from fabric.testing import ServerProcess
from tests.integration.cluster import make_topic, wait_until

OK = ConsumeStatus.CONSUME_SUCCESS
LATER = ConsumeStatus.RECONSUME_LATER
FAST = {"heartbeat_interval": 0.3, "rebalance_interval": 0.6, "lock_expiry": 3.0}
#: Seconds of every delay level on the test broker (the ``broker`` fixture, conftest.py).
LEVEL = 0.2


def consumer(nameserver: ServerProcess, group: str, **options: object) -> PushConsumer:
    settings = {**FAST, "consume_from": "earliest", "reconsume_delay": 0.1, **options}
    return PushConsumer(group, nameservers=nameserver.endpoint, **settings)  # type: ignore[arg-type]


class Recorder:
    """A listener that records each delivery and answers with ``answer(msg, n)``, n being
    the number of deliveries of that id so far (1 for the first)."""

    def __init__(self, answer: Callable[[MessageExt, int], ConsumeStatus]) -> None:
        self.answer = answer
        self.lock = threading.Lock()
        self.seen: list[MessageExt] = []
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, msg: MessageExt) -> ConsumeStatus:
        with self.lock:
            self.seen.append(msg)
            self.counts[msg.msg_id] += 1
            n = self.counts[msg.msg_id]
        return self.answer(msg, n)

    def of(self, msg_id: str) -> list[MessageExt]:
        with self.lock:
            return [x for x in self.seen if x.msg_id == msg_id]


def committed_everything(nameserver: ServerProcess, group: str, topic: str) -> bool:
    with PullConsumer(group, nameservers=nameserver.endpoint) as pull:
        return all(pull.committed(mq) == pull.max_offset(mq) for mq in pull.queues(topic))


# ---------------------------------------------------------------------------------------


def test_a_message_that_always_fails_goes_through_every_retry_into_the_dlq_and_back(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Doomed", 2)
    sent = producer.send(
        Message("Doomed", b"poison", tags="TagP", keys=["order-1"], properties={"a": "1"})
    )
    ok = producer.send(Message("Doomed", b"fine", tags="TagP"))
    failing = Recorder(lambda msg, n: OK if msg.msg_id == ok.msg_id else LATER)
    c = consumer(nameserver, "doomed", max_reconsume_times=2)
    c.subscribe("Doomed", "TagP", failing)
    with c:
        wait_until("the dead letter", lambda: len(admin.dlq_list("doomed")) == 1, timeout=30.0)
        wait_until("3 deliveries", lambda: len(failing.of(sent.msg_id)) == 3)
        time.sleep(1.0)  # nothing more comes: the message is a dead letter
        deliveries = failing.of(sent.msg_id)
        assert len(deliveries) == 3
        assert [d.reconsume_times for d in deliveries] == [0, 1, 2]
        assert all(d.topic == "Doomed" and d.body == b"poison" for d in deliveries)
        assert [d.retry for d in deliveries] == [False, True, True]
        assert all(d.properties == {"a": "1"} and d.keys == ["order-1"] for d in deliveries)
        assert len(failing.of(ok.msg_id)) == 1
        wait_until(
            "the original queue moved on",
            lambda: committed_everything(nameserver, "doomed", "Doomed"),
        )
        assert "%RETRY%doomed" in {mq.topic for mq in c.assignment()}

    [letter] = admin.dlq_list("doomed")
    assert not letter.resent
    dead = letter.message
    assert (dead.topic, dead.msg_id, dead.body) == ("Doomed", sent.msg_id, b"poison")
    assert dead.dead_letter and dead.store_topic == "%DLQ%doomed"
    assert dead.reconsume_times == 3 and "max reconsume times 2" in dead.dlq_reason
    assert (dead.tags, dead.keys, dead.properties) == ("TagP", ["order-1"], {"a": "1"})

    # Resent to its original topic, a healthy consumer of the same group gets it (only it:
    # the group's offsets are past the original).
    [(resent, result)] = admin.dlq_resend("doomed")
    assert resent.msg_id == sent.msg_id and result.msg_id == sent.msg_id
    assert result.queue.topic == "Doomed"
    assert admin.dlq_resend("doomed") == [], "a second resend sends nothing"
    assert admin.dlq_list("doomed") == []
    assert [x.resent for x in admin.dlq_list("doomed", include_resent=True)] == [True]

    healthy = Recorder(lambda msg, n: OK)
    c = consumer(nameserver, "doomed")
    c.subscribe("Doomed", "TagP", healthy)
    with c:
        wait_until("the resent message", lambda: len(healthy.of(sent.msg_id)) == 1)
        time.sleep(0.5)
        [again] = healthy.of(sent.msg_id)
        assert healthy.counts[ok.msg_id] == 0, "nothing consumed twice"
    assert (again.topic, again.body, again.tags, again.keys) == (
        "Doomed",
        b"poison",
        "TagP",
        ["order-1"],
    )
    assert again.properties == {"a": "1"} and again.reconsume_times == 0


def test_a_listener_failing_once_gets_the_message_exactly_twice(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Flaky", 2)
    ids = [producer.send(Message("Flaky", f"m{i}".encode())).msg_id for i in range(10)]

    def answer(msg: MessageExt, n: int) -> ConsumeStatus:
        if n == 1:
            if int(msg.body[1:]) % 2:
                raise RuntimeError("first attempt fails")
            return LATER
        return OK

    flaky = Recorder(answer)
    c = consumer(nameserver, "flaky")
    c.subscribe("Flaky", "*", flaky)
    with c:
        wait_until("every second delivery", lambda: all(flaky.counts[i] == 2 for i in ids))
        time.sleep(3 * LEVEL + 1.0)  # a third delivery would have come by now
        for msg_id in ids:
            first, second = flaky.of(msg_id)
            assert (first.reconsume_times, second.reconsume_times) == (0, 1)
            assert (first.topic, second.topic) == ("Flaky", "Flaky")
            assert not first.retry and second.retry
            assert second.body == first.body
        assert committed_everything(nameserver, "flaky", "Flaky")
    assert admin.dlq_list("flaky") == []


def test_an_ordered_consumer_retries_in_place_then_dead_letters(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Steps", 1)
    ids = [producer.send(Message("Steps", f"s{i}".encode())).msg_id for i in range(3)]
    bad = ids[1]
    steps = Recorder(lambda msg, n: LATER if msg.msg_id == bad else OK)
    c = consumer(nameserver, "steps", orderly=True, max_reconsume_times=2)
    c.subscribe("Steps", "*", steps)
    with c:
        wait_until("the last step", lambda: len(steps.of(ids[2])) == 1)
        with steps.lock:
            order = [x.msg_id for x in steps.seen]
        # In place: the bad message 3 times (2 local retries), then the queue moves on.
        assert order == [ids[0], bad, bad, bad, ids[2]]
        assert [x.reconsume_times for x in steps.of(bad)] == [0, 1, 2]
        assert "%RETRY%steps" not in {mq.topic for mq in c.assignment()}
    [letter] = admin.dlq_list("steps")
    assert letter.message.msg_id == bad and letter.message.topic == "Steps"


def test_dlq_cli_lists_and_resends(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "CliDead", 1)
    sent = producer.send(Message("CliDead", b"bad", keys=["kk"]))
    failing = Recorder(lambda msg, n: LATER)
    c = consumer(nameserver, "clidead", max_reconsume_times=0)
    c.subscribe("CliDead", "*", failing)
    with c:
        wait_until("the dead letter", lambda: len(admin.dlq_list("clidead")) == 1)
    assert len(failing.of(sent.msg_id)) == 1, "max_reconsume_times 0: no retry"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "fabric", "admin", "--nameserver", nameserver.endpoint]
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=30, check=False
        )

    out = cli("dlq", "list", "clidead")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{sent.msg_id} CliDead queue=%DLQ%clidead@broker-a#0 ")
    assert "keys=kk" in out.stdout and "body='bad'" in out.stdout
    assert "1 dead letter(s) of clidead" in out.stdout
    out = cli("dlq", "resend", "clidead", "--msg-id", "NOT-AN-ID")
    assert out.returncode == 1 and "NOT-AN-ID" in out.stderr
    out = cli("dlq", "resend", "clidead", "--msg-id", sent.msg_id)
    assert out.returncode == 0, out.stderr
    assert f"resent {sent.msg_id} to CliDead: queue=CliDead@broker-a#0" in out.stdout
    out = cli("dlq", "list", "clidead", "--all")
    assert out.returncode == 0 and out.stdout.startswith(f"[resent] {sent.msg_id} ")
    out = cli("dlq", "resend", "clidead")
    assert out.returncode == 0 and "0 dead letter(s) of clidead sent again" in out.stdout
    out = cli("dlq", "list", "bad group!")
    assert out.returncode == 1 and "INVALID_GROUP_NAME" in out.stderr


def test_broadcasting_retries_locally_without_a_retry_topic(
    nameserver: ServerProcess, admin: Admin, producer: Producer, tmp_path: Path
) -> None:
    make_topic(admin, nameserver, "Cast", 1)
    sent = producer.send(Message("Cast", b"once"))
    flaky = Recorder(lambda msg, n: LATER if n == 1 else OK)
    c = consumer(
        nameserver, "cast", model=MessageModel.BROADCASTING, offset_store_dir=str(tmp_path)
    )
    c.subscribe("Cast", "*", flaky)
    with c:
        wait_until("the second delivery", lambda: len(flaky.of(sent.msg_id)) == 2)
        first, second = flaky.of(sent.msg_id)
        assert (first.reconsume_times, second.reconsume_times) == (0, 1)
        assert not second.retry and second.queue_offset == first.queue_offset
        assert [mq.topic for mq in c.assignment()] == ["Cast"]
    assert admin.dlq_list("cast") == []


def test_asyncio_consumer_gets_retried_messages_in_its_coroutine_listener(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "AioRetry", 2)
    ids = {producer.send(Message("AioRetry", f"a{i}".encode())).msg_id for i in range(6)}

    async def main() -> dict[str, list[tuple[int, bool]]]:
        seen: dict[str, list[tuple[int, bool]]] = collections.defaultdict(list)
        loop = asyncio.get_running_loop()
        all_twice = loop.create_future()

        async def listener(msg: MessageExt) -> ConsumeStatus:
            assert asyncio.get_running_loop() is loop
            seen[msg.msg_id].append((msg.reconsume_times, msg.retry))
            if len(seen[msg.msg_id]) == 1:
                return LATER
            if all(len(seen[i]) == 2 for i in ids) and not all_twice.done():
                all_twice.set_result(None)
            return OK

        c = fabric.aio.PushConsumer(
            "aioretry",
            nameservers=nameserver.endpoint,
            consume_from="earliest",
            heartbeat_interval=0.3,
            rebalance_interval=0.6,
        )
        c.subscribe("AioRetry", "*", listener)
        async with c:
            await asyncio.wait_for(all_twice, 20.0)
            await asyncio.sleep(3 * LEVEL + 0.5)
        return seen

    seen = asyncio.run(main())
    assert set(seen) == ids
    assert all(v == [(0, False), (1, True)] for v in seen.values())


def test_a_failed_send_back_falls_back_to_a_local_retry(
    nameserver: ServerProcess,
    broker: ServerProcess,
    admin: Admin,
    producer: Producer,
) -> None:
    make_topic(admin, nameserver, "Frozen", 1)
    sent = producer.send(Message("Frozen", b"x"))
    frozen = threading.Event()

    def answer(msg: MessageExt, n: int) -> ConsumeStatus:
        if n == 1:
            # The broker stops answering before the listener fails: the send-back times out.
            broker.send_signal(signal.SIGSTOP)
            frozen.set()
            return LATER
        return OK

    flaky = Recorder(answer)
    c = consumer(nameserver, "frozen", request_timeout=0.5)
    c.subscribe("Frozen", "*", flaky)
    try:
        with c:
            wait_until("the first delivery", frozen.is_set)
            # Consumed again here, while the broker is still stopped.
            wait_until("the local retry", lambda: len(flaky.of(sent.msg_id)) == 2, 5.0)
            broker.send_signal(signal.SIGCONT)
            first, second = flaky.of(sent.msg_id)[:2]
            assert (first.reconsume_times, second.reconsume_times) == (0, 1)
            assert not second.retry and second.queue_offset == first.queue_offset
    finally:
        broker.send_signal(signal.SIGCONT)
