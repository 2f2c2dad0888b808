"""The client library against real ``fabric nameserver`` and ``fabric broker`` processes.

Every send mode, per-key order, pulls with long polling, offsets, compression, received
fields, failover when a broker is killed, NameServer failover, bad input, and the
asyncio API. Processes run on 127.0.0.1 with port 0 (fabric.testing).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

import fabric.aio
from fabric import (
    InvalidNameError,
    Message,
    MessageExt,
    MessageIllegalError,
    MessageQueue,
    MessageTooLargeError,
    NoRouteError,
    Producer,
    PullConsumer,
    PullStatus,
    SendResult,
    SendStatus,
    TopicNotExistError,
)
from fabric.admin import Admin
from fabric.protocol import RequestCode, SysFlag
from fabric.protocol import messages as m
from fabric.testing import ServerProcess, run_broker
from fabric.transport import BlockingConnection
from tests.integration import cluster
from tests.integration.cluster import wait_until

BrokerFactory = Callable[..., ServerProcess]
ID = re.compile(r"[0-9A-F]{32}")


# ---------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------


#: Small store files: brokers preallocate their segments, and tests share the disk.
SMALL_STORE = """\
[store]
segment_size = 16777216
cq_entries_per_file = 4096
index_slots = 4096
index_entries = 65536
warm_ahead_bytes = 0
"""


@pytest.fixture
def broker_factory(nameserver: ServerProcess, tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start ``fabric broker`` processes registered with the ``nameserver`` fixture."""
    started: list[ServerProcess] = []
    config = tmp_path / "broker.toml"
    config.write_text(SMALL_STORE)

    def start(name: str = "broker-a", **kwargs: object) -> ServerProcess:
        broker = run_broker(
            tmp_path / name,
            nameserver.endpoint,
            name=name,
            config=config,
            heartbeat_interval=1.0,
            **kwargs,  # type: ignore[arg-type]
        )
        started.append(broker)
        wait_for_registration(nameserver, name)
        return broker

    try:
        yield start
    finally:
        for broker in started:
            broker.stop()
    for broker in started:
        assert not broker.error_lines(), "\n".join(broker.log_lines())


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> ServerProcess:
    return broker_factory()


@pytest.fixture
def admin(nameserver: ServerProcess) -> Iterator[Admin]:
    with Admin(nameserver.endpoint, timeout=5.0) as a:
        yield a


@pytest.fixture
def consumer(nameserver: ServerProcess, broker: ServerProcess) -> Iterator[PullConsumer]:
    with PullConsumer("cg", nameservers=nameserver.endpoint) as c:
        yield c


def wait_for_registration(nameserver: ServerProcess, name: str) -> None:
    """Wait until the NameServer lists the master of broker ``name``.

    Brokers print READY before their registration reaches the NameServer, and
    re-register asynchronously after a topic change: there is nothing to wait on but
    the NameServer's answer (a bounded retry on a deadline, not a synchronisation).
    """
    with BlockingConnection(nameserver.endpoint, timeout=5.0) as ns:

        def registered() -> bool:
            info = ns.call(RequestCode.GET_CLUSTER_INFO, m.Empty(), m.ClusterInfo)
            return 0 in getattr(info.brokers.get(name), "broker_addrs", {})

        wait_until(f"broker {name} not registered", registered, 10.0)


def wait_for_route(
    nameserver: ServerProcess, topic: str, brokers: set[str], timeout: float = 10.0
) -> m.TopicRouteData:
    """Ask the NameServer until ``topic`` is routed to exactly ``brokers`` (bounded)."""
    return cluster.wait_for_route(
        nameserver,
        topic,
        lambda route: {q.broker_name for q in route.queue_datas} == brokers,
        timeout,
        f"{topic} not routed to {brokers}",
    )


def make_topic(
    admin: Admin,
    nameserver: ServerProcess,
    topic: str,
    queues: int = 4,
    brokers: tuple[str, ...] = ("broker-a",),
) -> None:
    for name in brokers:
        admin.create_topic(topic, queues=queues, broker=name)
    wait_for_route(nameserver, topic, set(brokers))


def pull_all(consumer: PullConsumer, mq: MessageQueue, start: int = 0) -> list[MessageExt]:
    """Every message of ``mq`` from ``start`` (no long polling)."""
    found: list[MessageExt] = []
    offset = start
    while True:
        res = consumer.pull(mq, offset, max_nums=32, timeout=0)
        if res.status is not PullStatus.FOUND:
            return found
        found.extend(res.messages)
        offset = res.next_offset


def free_port_endpoint() -> str:
    """An endpoint nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------
# Send modes and received fields
# ---------------------------------------------------------------------------------------


def test_sync_send_and_every_received_field(
    producer: Producer, consumer: PullConsumer, admin: Admin, nameserver: ServerProcess
) -> None:
    make_topic(admin, nameserver, "Fields")
    before = int(time.time() * 1000)
    r = producer.send(
        Message("Fields", b"body", tags="A", keys=["k1", "k2"], properties={"x": "1"}, flag=7)
    )
    after = int(time.time() * 1000)
    assert r.status is SendStatus.SEND_OK
    assert ID.fullmatch(r.msg_id)
    assert r.queue.topic == "Fields" and r.queue.broker_name == "broker-a"
    assert r.queue_offset == 0
    res = consumer.pull(r.queue, 0, timeout=0)
    assert res.status is PullStatus.FOUND and res.next_offset == 1
    (got,) = res.messages
    assert (got.topic, got.body, got.tags, got.keys, got.properties) == (
        "Fields",
        b"body",
        "A",
        ["k1", "k2"],
        {"x": "1"},
    )
    assert got.msg_id == r.msg_id
    assert (got.queue_id, got.queue_offset, got.queue) == (r.queue.queue_id, 0, r.queue)
    assert before <= got.born_timestamp <= after
    assert got.born_timestamp <= got.store_timestamp <= int(time.time() * 1000)
    assert got.reconsume_times == 0 and got.flag == 7 and got.sysflag == 0
    assert got.broker_name == "broker-a" and got.store_size > len(b"body")


@pytest.mark.parametrize("direct_send", [True, False], ids=["direct", "via-io-thread"])
def test_sync_sends_from_many_threads(
    nameserver: ServerProcess,
    broker: ServerProcess,
    consumer: PullConsumer,
    admin: Admin,
    direct_send: bool,
) -> None:
    make_topic(admin, nameserver, "Threads")
    per_thread, threads = 50, 8
    results: dict[int, list[SendResult]] = defaultdict(list)
    errors: list[BaseException] = []
    producer = Producer("pg", nameservers=nameserver.endpoint, direct_send=direct_send)

    def sender(n: int) -> None:
        try:
            for i in range(per_thread):
                results[n].append(producer.send(Message("Threads", b"t%d-%d" % (n, i))))
        except BaseException as exc:
            errors.append(exc)

    with producer:
        workers = [threading.Thread(target=sender, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert not any(w.is_alive() for w in workers)
    assert not errors
    sent = [r for rs in results.values() for r in rs]
    assert len(sent) == per_thread * threads
    assert all(r.status is SendStatus.SEND_OK for r in sent)
    # every result names a distinct slot, and the slot holds that very message
    assert len({(r.queue, r.queue_offset) for r in sent}) == len(sent)
    by_slot = {
        (m.queue, m.queue_offset): m
        for mq in consumer.queues("Threads")
        for m in pull_all(consumer, mq)
    }
    for n, rs in results.items():
        for i, r in enumerate(rs):
            got = by_slot[(r.queue, r.queue_offset)]
            assert (got.msg_id, got.body) == (r.msg_id, b"t%d-%d" % (n, i))


def test_async_send_with_callback_and_future(
    producer: Producer, consumer: PullConsumer, admin: Admin, nameserver: ServerProcess
) -> None:
    make_topic(admin, nameserver, "Async")
    n = 500
    got: list[object] = []
    all_called = threading.Event()

    def callback(outcome: object) -> None:
        got.append(outcome)
        if len(got) == n:
            all_called.set()

    futures = [
        producer.send_async(Message("Async", b"m%d" % i), callback=callback) for i in range(n)
    ]
    results = [f.result(10) for f in futures]
    assert all_called.wait(10)
    assert all(isinstance(r, SendResult) and r.status is SendStatus.SEND_OK for r in results)
    assert sorted(got, key=id) == sorted(results, key=id)  # the callback saw each result
    assert len({r.msg_id for r in results}) == n
    per_queue: dict[MessageQueue, list[int]] = defaultdict(list)
    for r in results:
        per_queue[r.queue].append(r.queue_offset)
    for offsets in per_queue.values():
        assert sorted(offsets) == list(range(len(offsets)))  # each offset once
    bodies = {msg.body for mq in consumer.queues("Async") for msg in pull_all(consumer, mq)}
    assert bodies == {b"m%d" % i for i in range(n)}


def test_oneway_sends_are_stored(
    producer: Producer, consumer: PullConsumer, admin: Admin, nameserver: ServerProcess
) -> None:
    make_topic(admin, nameserver, "Oneway", queues=1)
    mq = MessageQueue("Oneway", "broker-a", 0)
    for i in range(20):
        producer.send_oneway(Message("Oneway", b"o%d" % i), queue=mq)
    # One connection keeps its order: a sync send after them lands after them.
    marker = producer.send(Message("Oneway", b"marker"), queue=mq)
    assert marker.queue_offset == 20
    assert [msg.body for msg in pull_all(consumer, mq)] == [b"o%d" % i for i in range(20)] + [
        b"marker"
    ]


def test_oneway_sends_survive_an_immediate_shutdown(
    nameserver: ServerProcess, consumer: PullConsumer, admin: Admin
) -> None:
    make_topic(admin, nameserver, "OnewayExit", queues=1)
    mq = MessageQueue("OnewayExit", "broker-a", 0)
    # A new producer: its connection is still being made when the sends are handed over.
    with Producer("pg", nameservers=nameserver.endpoint) as p:
        for i in range(20):
            p.send_oneway(Message("OnewayExit", b"o%d" % i), queue=mq)
    got: list[bytes] = []
    while len(got) < 20:
        res = consumer.pull(mq, len(got), timeout=5.0)
        assert res.status is PullStatus.FOUND, f"only {len(got)} of 20 arrived"
        got.extend(x.body for x in res.messages)
    assert got == [b"o%d" % i for i in range(20)]


def test_batch_is_one_queue_and_separate_messages(
    producer: Producer, consumer: PullConsumer, admin: Admin, nameserver: ServerProcess
) -> None:
    make_topic(admin, nameserver, "Batch")
    results = producer.send_batch([Message("Batch", b"b%d" % i, keys=[f"k{i}"]) for i in range(10)])
    assert [r.status for r in results] == [SendStatus.SEND_OK] * 10
    assert len({r.queue for r in results}) == 1
    first = results[0].queue_offset
    assert [r.queue_offset for r in results] == list(range(first, first + 10))
    assert len({r.msg_id for r in results}) == 10
    stored = pull_all(consumer, results[0].queue)
    assert [(s.body, s.keys, s.msg_id) for s in stored] == [
        (b"b%d" % i, [f"k{i}"], r.msg_id) for i, r in enumerate(results)
    ]
    with pytest.raises(MessageIllegalError):
        producer.send_batch([Message("Batch", b"1"), Message("Other", b"2")])
    with pytest.raises(MessageIllegalError):
        producer.send_batch([])
    with pytest.raises(MessageIllegalError):
        producer.send_batch([Message("Batch", b"x")] * 1025)


def test_sharding_key_keeps_each_keys_order(
    producer: Producer, consumer: PullConsumer, admin: Admin, nameserver: ServerProcess
) -> None:
    make_topic(admin, nameserver, "Orders", queues=4)
    keys = [f"order-{k}" for k in range(8)]
    queue_of: dict[str, set[MessageQueue]] = defaultdict(set)
    for i in range(15):
        for key in keys:
            r = producer.send(Message("Orders", f"{key}:{i}".encode()), sharding_key=key)
            queue_of[key].add(r.queue)
    # async sends with a key keep their order too (one queue, one connection)
    futures = [
        (key, producer.send_async(Message("Orders", f"{key}:{i}".encode()), sharding_key=key))
        for i in range(15, 40)
        for key in keys
    ]
    for key, f in futures:
        queue_of[key].add(f.result(10).queue)
    assert all(len(qs) == 1 for qs in queue_of.values())  # one queue per key
    assert len({q for qs in queue_of.values() for q in qs}) > 1  # keys spread
    seen: dict[str, list[int]] = defaultdict(list)
    for mq in consumer.queues("Orders"):
        for msg in pull_all(consumer, mq):
            key, number = msg.body.decode().split(":")
            seen[key].append(int(number))
    assert seen == {key: list(range(40)) for key in keys}


def test_compression_is_transparent(
    nameserver: ServerProcess,
    producer: Producer,
    consumer: PullConsumer,
    admin: Admin,
) -> None:
    make_topic(admin, nameserver, "Zip", queues=1)
    mq = MessageQueue("Zip", "broker-a", 0)
    big = b"compressible text " * 4000
    producer.send(Message("Zip", big), queue=mq)
    producer.send(Message("Zip", b"small"), queue=mq)
    with Producer("raw", nameservers=nameserver.endpoint, compress_threshold=-1) as p:
        p.send(Message("Zip", big), queue=mq)
    packed, small, raw = pull_all(consumer, mq)
    assert packed.body == big and packed.sysflag & SysFlag.COMPRESSED
    assert packed.store_size < len(big) // 10  # stored compressed
    assert small.body == b"small" and not small.sysflag & SysFlag.COMPRESSED
    assert raw.body == big and not raw.sysflag & SysFlag.COMPRESSED and raw.store_size > len(big)


def test_auto_created_topic(producer: Producer, consumer: PullConsumer) -> None:
    # No NameServer knows the topic: the producer sends on a provisional route and the
    # broker creates it (auto-create is on by default).
    r = producer.send(Message("Fresh", b"first"))
    assert r.status is SendStatus.SEND_OK
    assert consumer.pull(r.queue, r.queue_offset, timeout=0).messages[0].body == b"first"


def test_shutdown_lets_async_sends_finish(nameserver: ServerProcess, broker: ServerProcess) -> None:
    p = Producer("pg", nameservers=nameserver.endpoint).start()
    futures = [p.send_async(Message("Flush", b"x%d" % i)) for i in range(300)]
    p.shutdown()
    assert all(f.result(0).status is SendStatus.SEND_OK for f in futures)
    with pytest.raises(RuntimeError):
        p.send(Message("Flush", b"late"))
    p.shutdown()  # idempotent


# ---------------------------------------------------------------------------------------
# Pulls and offsets
# ---------------------------------------------------------------------------------------


def test_pull_long_polls(
    producer: Producer, consumer: PullConsumer, admin: Admin, nameserver: ServerProcess
) -> None:
    make_topic(admin, nameserver, "Poll", queues=1)
    mq = MessageQueue("Poll", "broker-a", 0)
    # Nothing there: the broker holds the pull for the whole timeout, then NO_NEW_MSG.
    start = time.monotonic()
    res = consumer.pull(mq, 0, timeout=0.5)
    waited = time.monotonic() - start
    assert res.status is PullStatus.NO_NEW_MSG and res.next_offset == 0
    assert 0.4 <= waited < 3.0
    # A message arriving during the wait answers the pull at once, long before 10 s.
    timer = threading.Timer(0.3, producer.send, (Message("Poll", b"late"),), {"queue": mq})
    start = time.monotonic()
    timer.start()
    try:
        res = consumer.pull(mq, 0, timeout=10.0)
    finally:
        timer.join(10)
    assert res.status is PullStatus.FOUND and [x.body for x in res.messages] == [b"late"]
    assert time.monotonic() - start < 5.0


def test_pull_statuses_and_offsets(
    producer: Producer, consumer: PullConsumer, admin: Admin, nameserver: ServerProcess
) -> None:
    make_topic(admin, nameserver, "Offsets", queues=1)
    mq = MessageQueue("Offsets", "broker-a", 0)
    producer.send_batch([Message("Offsets", b"%d" % i) for i in range(5)], queue=mq)
    res = consumer.pull(mq, 1, max_nums=2, timeout=0)
    assert [x.body for x in res.messages] == [b"1", b"2"] and res.next_offset == 3
    assert (res.min_offset, res.max_offset) == (0, 5)
    assert (consumer.min_offset(mq), consumer.max_offset(mq)) == (0, 5)
    assert consumer.offset_for_timestamp(mq, 0) == 0
    res = consumer.pull(mq, 50, timeout=0)
    assert res.status is PullStatus.OFFSET_ILLEGAL and res.next_offset == 5 and not res.messages


def test_tag_filter(
    producer: Producer, consumer: PullConsumer, admin: Admin, nameserver: ServerProcess
) -> None:
    make_topic(admin, nameserver, "Tags", queues=1)
    mq = MessageQueue("Tags", "broker-a", 0)
    for tag in ("A", "B", "A", "C"):
        producer.send(Message("Tags", tag.encode(), tags=tag), queue=mq)
    res = consumer.pull(mq, 0, timeout=0, subscription="A || C")
    assert [x.body for x in res.messages] == [b"A", b"A", b"C"]


def test_commit_and_committed(
    nameserver: ServerProcess, consumer: PullConsumer, producer: Producer
) -> None:
    r = producer.send(Message("Commits", b"x"))
    mq = r.queue
    assert consumer.committed(mq) == -1
    consumer.commit(mq, 1)
    assert consumer.committed(mq) == 1
    with PullConsumer("cg", nameservers=nameserver.endpoint) as same_group:
        assert same_group.committed(mq) == 1
    with PullConsumer("other", nameservers=nameserver.endpoint) as other_group:
        assert other_group.committed(mq) == -1
    consumer.commit(mq, 0)
    assert consumer.committed(mq) == 0


def test_queues_lists_the_readable_queues(
    consumer: PullConsumer, admin: Admin, nameserver: ServerProcess, broker_factory: BrokerFactory
) -> None:
    broker_factory("broker-b")
    admin.create_topic("Listed", read_queues=3, write_queues=2, broker="broker-a")
    admin.create_topic("Listed", queues=1, broker="broker-b")
    wait_for_route(nameserver, "Listed", {"broker-a", "broker-b"})
    assert consumer.queues("Listed") == [
        MessageQueue("Listed", "broker-a", 0),
        MessageQueue("Listed", "broker-a", 1),
        MessageQueue("Listed", "broker-a", 2),
        MessageQueue("Listed", "broker-b", 0),
    ]


# ---------------------------------------------------------------------------------------
# Failover
# ---------------------------------------------------------------------------------------


def test_producer_keeps_sending_when_a_broker_is_killed(
    nameserver: ServerProcess, broker_factory: BrokerFactory, admin: Admin
) -> None:
    broker_factory("broker-a")
    doomed = broker_factory("broker-b")
    make_topic(admin, nameserver, "Spread", brokers=("broker-a", "broker-b"))
    with Producer("pg", nameservers=nameserver.endpoint) as p:
        before = [p.send(Message("Spread", b"before-%d" % i)) for i in range(40)]
        assert {r.queue.broker_name for r in before} == {"broker-a", "broker-b"}
        doomed.process.kill()  # SIGKILL: no goodbye to anyone
        doomed.wait()
        start = time.monotonic()
        after = [p.send(Message("Spread", b"after-%d" % i)) for i in range(60)]
        futures = [p.send_async(Message("Spread", b"async-%d" % i)) for i in range(200)]
        outcomes = [f.result(10) for f in futures]
        took = time.monotonic() - start
    assert all(r.status is SendStatus.SEND_OK for r in after + outcomes)
    assert {r.queue.broker_name for r in after + outcomes} == {"broker-a"}
    assert took < 8.0  # the dead broker is noticed at once, not after request timeouts


def test_nameserver_failover(nameserver: ServerProcess, broker: ServerProcess) -> None:
    dead = free_port_endpoint()
    for order in ([dead, nameserver.endpoint], [nameserver.endpoint, dead]):
        with Producer("pg", nameservers=order) as p:
            assert p.send(Message("NsFailover", b"x")).status is SendStatus.SEND_OK
        with PullConsumer("cg", nameservers=";".join(order)) as c:
            assert c.queues("NsFailover")


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


def test_bad_input_raises_the_right_errors(
    nameserver: ServerProcess, producer: Producer, consumer: PullConsumer
) -> None:
    with pytest.raises(InvalidNameError):
        producer.send(Message("bad topic", b"x"))
    with pytest.raises(MessageTooLargeError) as info:
        producer.send(Message("T", b"x" * (4 * 1024 * 1024 + 1)))
    assert info.value.limit == 4 * 1024 * 1024
    with pytest.raises(MessageIllegalError):
        producer.send(Message("T", "not bytes"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        producer.send("not a message")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        producer.send(Message("T", b"x"), sharding_key=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        producer.send(Message("T", b"x"), queue=MessageQueue("Other", "broker-a", 0))
    with pytest.raises(NoRouteError):
        consumer.queues("NoSuchTopic")
    with pytest.raises(InvalidNameError):
        consumer.queues("bad topic")
    with pytest.raises(NoRouteError):
        consumer.pull(MessageQueue("T", "no-such-broker", 0), 0, timeout=0)
    with pytest.raises(ValueError):
        consumer.pull(MessageQueue("T", "broker-a", 0), -1)
    with pytest.raises(InvalidNameError):
        Producer("bad group", nameservers=nameserver.endpoint)
    with pytest.raises(RuntimeError):
        Producer("pg", nameservers=nameserver.endpoint).send(Message("T", b"x"))


def test_topic_not_exist_when_auto_create_is_off(
    nameserver: ServerProcess, broker_factory: BrokerFactory
) -> None:
    broker_factory(auto_create_topics=False)
    with Producer("pg", nameservers=nameserver.endpoint) as p:
        with pytest.raises(TopicNotExistError) as info:
            p.send(Message("Missing", b"x"))
        assert info.value.address is not None
        future: Future[SendResult] = p.send_async(Message("Missing", b"x"))
        assert isinstance(future.exception(10), TopicNotExistError)


# ---------------------------------------------------------------------------------------
# asyncio
# ---------------------------------------------------------------------------------------


def test_asyncio_api(nameserver: ServerProcess, broker: ServerProcess) -> None:
    async def main() -> None:
        async with fabric.aio.Producer("pg", nameservers=nameserver.endpoint) as p:
            r = await p.send(Message("Aio", b"one", tags="A"))
            assert r.status is SendStatus.SEND_OK
            called: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            second = await p.send_async(Message("Aio", b"two"), callback=called.set_result)
            assert await called is second
            await p.send_oneway(Message("Aio", b"three"), queue=r.queue)
            batch = await p.send_batch([Message("Aio", b"four"), Message("Aio", b"five")])
            assert len(batch) == 2 and batch[0].queue == batch[1].queue
            mq = r.queue
            async with fabric.aio.PullConsumer("cg", nameservers=nameserver.endpoint) as c:
                assert mq in await c.queues("Aio")
                res = await c.pull(mq, 0, timeout=0)
                assert res.messages[0].body == b"one" and res.messages[0].tags == "A"
                # long polling on the loop: the send below wakes the parked pull
                offset = await c.max_offset(mq)
                pull = asyncio.ensure_future(c.pull(mq, offset, timeout=10.0))
                await p.send(Message("Aio", b"wake"), queue=mq)
                res = await asyncio.wait_for(pull, 5.0)
                assert [x.body for x in res.messages] == [b"wake"]
                await c.commit(mq, res.next_offset)
                assert await c.committed(mq) == res.next_offset

    asyncio.run(main())
