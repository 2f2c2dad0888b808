"""PushConsumer against real `fabric nameserver` and `fabric broker` processes (SPEC M10-M18).

Consumer groups split the queues and rebalance when a member joins; a member killed with
SIGKILL (a real process, tests/integration/push_helper.py) while holding unacknowledged
messages loses its queues to the others and no message is lost; BROADCASTING delivers
everything to everyone and survives a restart; ordered consumption keeps per-key order
across a rebalance; tag and SQL filters deliver exactly the matching messages; a
consumer that never acks stops after its window; ``fabric admin`` resets offsets and
lists members; the asyncio front awaits coroutine listeners.

Brokers run with short ``client_expiry`` and ``lock_expiry`` (their config file), the
consumers with short heartbeat and rebalance intervals, so that membership changes take
about a second.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from loguru import logger

import fabric.aio
from fabric import (
    ConsumeStatus,
    Message,
    MessageExt,
    MessageModel,
    MessageQueue,
    Producer,
    PullConsumer,
    PushConsumer,
)
from fabric.admin import Admin
from fabric.errors import InvalidFilterError
from fabric.testing import ServerProcess
from tests.integration.cluster import make_topic, wait_until

HELPER = Path(__file__).resolve().parent / "push_helper.py"
#: Consumer timings for tests: membership changes are seen within about a second.
FAST = {"heartbeat_interval": 0.3, "rebalance_interval": 0.6, "lock_expiry": 3.0}
OK = ConsumeStatus.CONSUME_SUCCESS
LATER = ConsumeStatus.RECONSUME_LATER


# ---------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------


class Sink:
    """A listener that records what it consumed, thread-safe."""

    def __init__(self, status: ConsumeStatus = OK) -> None:
        self.status = status
        self.lock = threading.Lock()
        self.msgs: list[MessageExt] = []

    def __call__(self, msg: MessageExt) -> ConsumeStatus:
        with self.lock:
            self.msgs.append(msg)
        return self.status

    def ids(self) -> set[str]:
        with self.lock:
            return {x.msg_id for x in self.msgs}

    def count(self) -> int:
        with self.lock:
            return len(self.msgs)


def send(producer: Producer, topic: str, n: int, **fields: object) -> set[str]:
    return {producer.send(Message(topic, f"m{i}".encode(), **fields)).msg_id for i in range(n)}  # type: ignore[arg-type]


def consumer(nameserver: ServerProcess, group: str, **options: object) -> PushConsumer:
    settings = {**FAST, "consume_from": "earliest", **options}
    return PushConsumer(group, nameservers=nameserver.endpoint, **settings)  # type: ignore[arg-type]


def spawn_consumer(nameserver: ServerProcess, group: str, topic: str, *args: str) -> ServerProcess:
    """Start push_helper.py and wait for its READY line."""
    command = [
        sys.executable,
        str(HELPER),
        "--nameserver",
        nameserver.endpoint,
        "--group",
        group,
        "--topic",
        topic,
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    proc = ServerProcess(command, process)
    try:
        proc.wait_ready(["consumer"])
    except BaseException:
        proc.stop()
        raise
    return proc


def consumed(proc: ServerProcess) -> list[str]:
    return [line.split()[1] for line in proc.stdout_lines() if line.startswith("MSG ")]


# ---------------------------------------------------------------------------------------
# Clustering: split, join, rebalance
# ---------------------------------------------------------------------------------------


def test_two_consumers_split_the_queues_and_a_third_joins(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Split", 8)
    sinks = [Sink(), Sink(), Sink()]
    consumers = [consumer(nameserver, "split", allocation="average") for _ in range(3)]
    for c, sink in zip(consumers, sinks, strict=True):
        c.subscribe("Split", "*", sink)
    everything = {MessageQueue("Split", "broker-a", q) for q in range(8)}
    try:
        consumers[0].start()
        consumers[1].start()

        def split(members: list[PushConsumer], sizes: list[int]) -> bool:
            shares = [set(c.assignment()) for c in members]
            union = set().union(*shares)
            return union == everything and sorted(len(s) for s in shares) == sizes

        wait_until("two consumers split 8 queues 4/4", lambda: split(consumers[:2], [4, 4]))
        ids = send(producer, "Split", 40)
        wait_until("all consumed", lambda: sinks[0].ids() | sinks[1].ids() >= ids)
        consumers[2].start()
        wait_until("three consumers split 3/3/2", lambda: split(consumers, [2, 3, 3]))
        more = send(producer, "Split", 60)
        wait_until("all consumed", lambda: set().union(*(s.ids() for s in sinks)) >= more)
        assert sinks[2].ids() & more, "the new member consumes its share"
    finally:
        for c in consumers:
            c.shutdown()
    # every message exactly once: nobody consumed another's queue twice
    seen = collections.Counter(x.msg_id for s in sinks for x in s.msgs)
    assert set(seen) == ids | more and max(seen.values()) == 1


def test_consistent_hash_members_partition_the_queues(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Ring", 8)
    consumers = [consumer(nameserver, "ring", allocation="consistent_hash") for _ in range(3)]
    sinks = [Sink() for _ in consumers]
    for c, sink in zip(consumers, sinks, strict=True):
        c.subscribe("Ring", "*", sink)
    everything = [MessageQueue("Ring", "broker-a", q) for q in range(8)]
    try:
        for c in consumers:
            c.start()

        def partitioned() -> bool:
            shares = [c.assignment() for c in consumers]
            return sorted(q for share in shares for q in share) == everything

        wait_until("three members partition 8 queues", partitioned)
        ids = send(producer, "Ring", 40)
        wait_until("all consumed", lambda: set().union(*(s.ids() for s in sinks)) >= ids)
    finally:
        for c in consumers:
            c.shutdown()


def test_a_consumer_killed_with_unacked_messages_loses_its_queues_and_nothing_is_lost(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Kill", 6)
    procs = [
        spawn_consumer(nameserver, "kill", "Kill", "--delay", "0.2", "--prefetch", "50")
        for _ in range(3)
    ]
    try:
        victim = procs[0]
        ids = send(producer, "Kill", 300)
        wait_until("the victim consumes", lambda: len(consumed(victim)) >= 10)
        victim.process.send_signal(signal.SIGKILL)
        victim.wait(10.0)
        before = set(consumed(victim))
        assert len(before) < len(ids) // 2, "the victim still held unacknowledged messages"
        survivors = procs[1:]

        def everything() -> bool:
            return set().union(*(set(consumed(p)) for p in survivors)) | before >= ids

        wait_until("every message consumed at least once", everything, timeout=60.0)
        # the victim's queues moved: the survivors consumed what the victim left over
        assert set().union(*(set(consumed(p)) for p in survivors)) >= ids - before
    finally:
        for p in procs:
            p.stop()
    for p in procs[1:]:
        assert not p.error_lines(), "\n".join(p.log_lines())


# ---------------------------------------------------------------------------------------
# Broadcasting
# ---------------------------------------------------------------------------------------


def test_broadcasting_delivers_everything_to_every_consumer_and_survives_a_restart(
    nameserver: ServerProcess, admin: Admin, producer: Producer, tmp_path: Path
) -> None:
    make_topic(admin, nameserver, "Bcast", 4)
    store = str(tmp_path / "offsets")

    def member(name: str, sink: Sink) -> PushConsumer:
        c = consumer(
            nameserver,
            "bcast",
            model=MessageModel.BROADCASTING,
            instance_name=name,
            offset_store_dir=store,
            consume_from="latest",
        )
        c.subscribe("Bcast", "*", sink)
        return c.start()

    first_a, b_sink = Sink(), Sink()
    a, b = member("a", first_a), member("b", b_sink)
    try:
        assert len(a.assignment()) == len(b.assignment()) == 4
        first = send(producer, "Bcast", 30)
        wait_until("a has all", lambda: first_a.ids() >= first)
        wait_until("b has all", lambda: b_sink.ids() >= first)
        a.shutdown()
        assert (tmp_path / "offsets" / "bcast@a.json").exists()
        second = send(producer, "Bcast", 20)
        wait_until("b has the second batch", lambda: b_sink.ids() >= second)
        again_a = Sink()
        a = member("a", again_a)  # the same instance name: it finds its offset file
        wait_until("a catches up after its restart", lambda: again_a.ids() >= second)
        third = send(producer, "Bcast", 10)
        wait_until("a has the third batch", lambda: again_a.ids() >= third)
        wait_until("b has the third batch", lambda: b_sink.ids() >= third)
        assert not again_a.ids() & first, "a restarted member does not start over"
    finally:
        a.shutdown()
        b.shutdown()
    assert b_sink.count() == len(first | second | third)


# ---------------------------------------------------------------------------------------
# Ordered consumption
# ---------------------------------------------------------------------------------------


def test_ordered_consumption_keeps_per_key_order_across_a_rebalance(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Orders", 4)
    keys = [f"order-{k}" for k in range(16)]
    steps = 20
    for step in range(steps):
        for key in keys:
            msg = Message("Orders", f"{key}:{step}".encode(), keys=[key])
            producer.send(msg, sharding_key=key)
    lock = threading.Lock()
    order: dict[str, list[int]] = collections.defaultdict(list)
    busy: set[int] = set()
    overlaps: list[int] = []
    by_consumer: collections.Counter[str] = collections.Counter()

    def listener_of(name: str) -> Callable[[MessageExt], ConsumeStatus]:
        def listener(msg: MessageExt) -> ConsumeStatus:
            with lock:
                if msg.queue_id in busy:
                    overlaps.append(msg.queue_id)  # two consumers inside one queue at once
                busy.add(msg.queue_id)
            time.sleep(0.02)
            key, step = msg.body.decode().split(":")
            with lock:
                busy.discard(msg.queue_id)
                order[key].append(int(step))
                by_consumer[name] += 1
            return OK

        return listener

    c1 = consumer(nameserver, "ordered", orderly=True)
    c2 = consumer(nameserver, "ordered", orderly=True)
    c1.subscribe("Orders", "*", listener_of("c1"))
    c2.subscribe("Orders", "*", listener_of("c2"))
    total = len(keys) * steps
    try:
        c1.start()
        wait_until("c1 consumes", lambda: sum(by_consumer.values()) >= 20)
        c2.start()
        wait_until("c2 takes queues", lambda: len(c2.assignment()) == 2)
        wait_until("all consumed", lambda: sum(len(v) for v in order.values()) >= total, 60.0)
    finally:
        c1.shutdown()
        c2.shutdown()
    assert not overlaps
    assert by_consumer["c1"] and by_consumer["c2"], by_consumer
    for key in keys:
        assert order[key] == list(range(steps)), (key, order[key])


def test_a_stuck_ordered_listener_hands_its_queue_over_after_the_timeout(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Stuck", 2)
    release = threading.Event()
    held = Sink()

    def hold(msg: MessageExt) -> ConsumeStatus:
        held(msg)
        release.wait(30.0)
        return OK

    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    settings = {"orderly": True, "orderly_release_timeout": 1.0}
    a = consumer(nameserver, "stuck-ordered", **settings)
    a.subscribe("Stuck", "*", hold)
    moved = Sink()
    b = consumer(nameserver, "stuck-ordered", **settings)
    b.subscribe("Stuck", "*", moved)
    try:
        a.start()
        wait_until("a owns both queues", lambda: len(a.assignment()) == 2)
        ids = {
            producer.send(
                Message("Stuck", f"q{q}".encode()), queue=MessageQueue("Stuck", "broker-a", q)
            ).msg_id
            for q in range(2)
        }
        wait_until("both messages are in a's listener", lambda: held.ids() == ids)
        b.start()
        # One queue moves to b while its message is still in a's listener: a renews the
        # lock for as long as it waits, so b gets the queue only because the wait ends.
        wait_until("b consumes the message of the queue it took", lambda: moved.count() == 1)
        assert moved.ids() < ids
        assert not release.is_set() and len(a.assignment()) == 1
    finally:
        release.set()
        a.shutdown()
        b.shutdown()
        logger.remove(sink)
    assert any("handing the queue over anyway" in line for line in warnings), warnings


# ---------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------


def test_tag_filter_delivers_exactly_the_matching_messages(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Tags", 2)
    wanted: set[str] = set()
    for i in range(60):
        tag = ("TagA", "TagB", "TagC", "")[i % 4]
        r = producer.send(Message("Tags", f"{i}".encode(), tags=tag))
        if tag in ("TagA", "TagB"):
            wanted.add(r.msg_id)
    sink = Sink()
    c = consumer(nameserver, "tags", consume_threads=1)
    c.subscribe("Tags", "TagA || TagB", sink)
    with c:
        wait_until("the matching messages", lambda: sink.ids() >= wanted)
        # one thread: whatever came before the last match was handed over before it
        last = sink.count()
        sent = send(producer, "Tags", 1, tags="TagB")
        wait_until("a late match", lambda: sink.ids() >= sent)
        assert sink.count() == last + 1
    assert sink.ids() == wanted | sent
    assert {x.tags for x in sink.msgs} == {"TagA", "TagB"}


def test_sql_filter_delivers_exactly_the_matching_messages(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Prices", 2)
    wanted: set[str] = set()
    for i in range(60):
        props = {"price": str(i % 20), "region": ("eu", "us")[i % 2]}
        if i % 7 == 0:
            props.pop("price")
        r = producer.send(Message("Prices", b"p", properties=props))
        if "price" in props and int(props["price"]) > 10 and props["region"] == "eu":
            wanted.add(r.msg_id)
    with pytest.raises(InvalidFilterError, match="column"):
        PushConsumer("sql", nameservers=nameserver.endpoint).subscribe(
            "Prices", sql="price > AND region = 'eu'", listener=Sink()
        )
    sink = Sink()
    c = consumer(nameserver, "sql", consume_threads=1)
    c.subscribe("Prices", sql="price > 10 AND region = 'eu'", listener=sink)
    with c:
        wait_until("the matching messages", lambda: sink.ids() >= wanted)
        last = sink.count()
        sent = send(producer, "Prices", 1, properties={"price": "99", "region": "eu"})
        wait_until("a late match", lambda: sink.ids() >= sent)
        assert sink.count() == last + 1
    assert sink.ids() == wanted | sent


# ---------------------------------------------------------------------------------------
# Windows, failures, offsets
# ---------------------------------------------------------------------------------------


def test_a_consumer_that_never_acks_stops_after_its_window(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Window", 1)
    ids = send(producer, "Window", 30)
    # Listeners that never return: RECONSUME_LATER would send the messages back to the
    # broker (docs/PROTOCOL.md 14.2), which acks them and reopens the window.
    stuck = Sink()
    release = threading.Event()

    def hold(msg: MessageExt) -> ConsumeStatus:
        stuck(msg)
        release.wait(30.0)
        return OK

    slow = consumer(nameserver, "stuck", prefetch=5)
    slow.subscribe("Window", "*", hold)
    fast_sink = Sink()
    fast = consumer(nameserver, "fast")
    fast.subscribe("Window", "*", fast_sink)
    with slow, fast:
        wait_until("the window is used up", lambda: len(stuck.ids()) >= 5)
        # another group is not held back by the stuck one
        wait_until("the other group gets everything", lambda: fast_sink.ids() >= ids)
        more = send(producer, "Window", 5)
        wait_until("the other group gets more", lambda: fast_sink.ids() >= more)
        assert len(stuck.ids()) == 5, "nothing beyond the window"
        assert stuck.count() == 5, "each once"
        release.set()


def test_shrinking_the_read_queues_moves_the_group_onto_the_queues_left(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Shrink", 4)
    consumers = [consumer(nameserver, "shrink", allocation="average") for _ in range(2)]
    sinks = [Sink(), Sink()]
    for c, sink in zip(consumers, sinks, strict=True):
        c.subscribe("Shrink", "*", sink)

    def shares() -> list[set[MessageQueue]]:
        return [set(c.assignment()) for c in consumers]

    try:
        for c in consumers:
            c.start()
        wait_until("two consumers split 4 queues 2/2", lambda: sorted(map(len, shares())) == [2, 2])
        admin.update_topic("Shrink", queues=2)
        # The broker closes the streams of queues 2 and 3 (queue_removed); the consumers
        # fetch the new route at once and split what is left, well before a periodic
        # route refresh would have come.
        left = {MessageQueue("Shrink", "broker-a", q) for q in range(2)}
        wait_until(
            "the group splits the 2 queues left 1/1",
            lambda: sorted(map(len, shares())) == [1, 1] and set().union(*shares()) == left,
            timeout=10.0,
        )
        ids = send(producer, "Shrink", 20)
        wait_until("all consumed", lambda: sinks[0].ids() | sinks[1].ids() >= ids)
        # Growing them again is taken up as promptly.
        admin.update_topic("Shrink", queues=4)
        wait_until(
            "the group splits 4 queues 2/2 again",
            lambda: sorted(map(len, shares())) == [2, 2],
            timeout=10.0,
        )
    finally:
        for c in consumers:
            c.shutdown()
    seen = collections.Counter(x.msg_id for s in sinks for x in s.msgs)
    assert set(seen) >= ids and max(seen[i] for i in ids) == 1


def test_failed_messages_are_consumed_again_and_the_queue_moves_on(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Retry", 2)
    ids = send(producer, "Retry", 20)
    attempts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    done = threading.Event()

    def flaky(msg: MessageExt) -> ConsumeStatus:
        with lock:
            attempts[msg.msg_id] += 1
            n = attempts[msg.msg_id]
            if set(attempts) >= ids and all(v >= 2 for v in attempts.values()):
                done.set()
        if n == 1:
            if int(msg.body[1:]) % 2:
                raise RuntimeError("first attempt fails")
            return LATER
        assert msg.reconsume_times == n - 1
        return OK

    c = consumer(nameserver, "retry", reconsume_delay=0.1)
    c.subscribe("Retry", "*", flaky)
    with c:
        assert done.wait(30.0)
    with PullConsumer("retry", nameservers=nameserver.endpoint) as pull:
        for mq in pull.queues("Retry"):
            assert pull.committed(mq) == pull.max_offset(mq)


def test_shutdown_finishes_in_flight_work_and_commits(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Drain", 1)
    ids = send(producer, "Drain", 10)
    started = threading.Event()
    done = Sink()

    def slow(msg: MessageExt) -> ConsumeStatus:
        started.set()
        time.sleep(0.3)
        return done(msg)

    first = consumer(nameserver, "drain", consume_threads=1)
    first.subscribe("Drain", "*", slow)
    first.start()
    assert started.wait(10.0)
    first.shutdown()  # waits for the message in the listener, then commits
    finished = done.ids()
    assert 1 <= len(finished) < len(ids)
    with PullConsumer("drain", nameservers=nameserver.endpoint) as pull:
        (mq,) = pull.queues("Drain")
        assert pull.committed(mq) == len(finished)
    rest = Sink()
    second = consumer(nameserver, "drain")
    second.subscribe("Drain", "*", rest)
    with second:
        wait_until("the rest consumed", lambda: rest.ids() >= ids - finished)
    assert not rest.ids() & finished, "nothing done before the shutdown comes again"


def test_admin_resets_offsets_and_lists_consumers(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Reset", 2)
    ids = send(producer, "Reset", 10)
    sink = Sink()
    c = consumer(nameserver, "reset")
    c.subscribe("Reset", "*", sink)
    with c:
        wait_until("consumed", lambda: sink.ids() >= ids)
        assert admin.consumers("reset") == [c.client_id]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "fabric",
                "admin",
                "--nameserver",
                nameserver.endpoint,
                "group",
                "consumers",
                "reset",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert out.stdout.split() == [c.client_id]
        # a reset while the consumer runs: its streams reopen at the new offsets
        done = admin.reset_offset("reset", "Reset", "earliest")
        assert done == {"broker-a": {0: 0, 1: 0}}
        wait_until("consumed again", lambda: sink.count() >= 20)
    assert collections.Counter(x.msg_id for x in sink.msgs) == dict.fromkeys(ids, 2)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fabric",
            "admin",
            "--nameserver",
            nameserver.endpoint,
            "group",
            "reset-offset",
            "reset",
            "Reset",
            "--to",
            "latest",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "reset reset Reset on broker-a: q0=5 q1=5"
    assert admin.consumers("reset") == []


def test_asyncio_push_consumer_awaits_coroutine_listeners(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Aio", 2)
    ids = send(producer, "Aio", 20)

    async def main() -> set[str]:
        got: set[str] = set()
        loop = asyncio.get_running_loop()
        all_in = loop.create_future()

        async def listener(msg: MessageExt) -> ConsumeStatus:
            assert asyncio.get_running_loop() is loop
            await asyncio.sleep(0)
            got.add(msg.msg_id)
            if got >= ids and not all_in.done():
                all_in.set_result(None)
            return OK

        c = fabric.aio.PushConsumer("aio", nameservers=nameserver.endpoint, consume_from="earliest")
        c.subscribe("Aio", "*", listener)
        async with c:
            assert len(c.assignment()) == 2
            await asyncio.wait_for(all_in, 20.0)
        return got

    assert asyncio.run(main()) == ids
