"""RouteTable: registration, heartbeats, expiry as a pure function of ``now``, lookups, merging."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.protocol.messages import BrokerData, QueueData, RegisterBrokerBody, TopicConfig
from nameserver.routes import BrokerKey, RouteTable


def reg(
    name: str = "broker-a",
    broker_id: int = 0,
    topics: tuple[str, ...] = ("T",),
    *,
    cluster: str = "c1",
    addr: str | None = None,
    version: int = 1,
    queues: int = 4,
    timeout_ms: int = 0,
) -> RegisterBrokerBody:
    return RegisterBrokerBody(
        cluster_name=cluster,
        broker_name=name,
        broker_id=broker_id,
        broker_addr=addr or f"tcp://{name}:{10911 + broker_id}",
        topics=[
            TopicConfig(topic=t, read_queue_nums=queues, write_queue_nums=queues) for t in topics
        ],
        data_version=version,
        heartbeat_timeout_ms=timeout_ms,
    )


def test_register_and_route() -> None:
    table = RouteTable(default_ttl=10.0)
    update = table.register(reg("broker-b", topics=("T", "U")), now=0.0)
    table.register(reg("broker-a", topics=("T",), queues=8), now=0.0)
    assert (update.seq, update.op, table.seq) == (1, "put", 2)
    route = table.route("T")
    assert route is not None
    assert route.queue_datas == [
        QueueData(broker_name="broker-a", read_queue_nums=8, write_queue_nums=8, perm=6),
        QueueData(broker_name="broker-b", read_queue_nums=4, write_queue_nums=4, perm=6),
    ]
    assert [b.broker_name for b in route.broker_datas] == ["broker-a", "broker-b"]
    assert table.route("U") is not None and len(table.route("U").queue_datas) == 1  # type: ignore[union-attr]
    assert table.route("nope") is None
    assert table.topic_names() == ["T", "U"]
    info = table.cluster_info()
    assert info.clusters == {"c1": ["broker-a", "broker-b"]}
    assert info.brokers["broker-a"] == BrokerData(
        cluster_name="c1", broker_name="broker-a", broker_addrs={0: "tcp://broker-a:10911"}
    )


def test_master_and_slave_share_a_broker_name() -> None:
    table = RouteTable(default_ttl=10.0)
    table.register(reg("b", 1, queues=2), now=0.0)  # the slave registers first
    table.register(reg("b", 0, queues=8), now=0.0)
    route = table.route("T")
    assert route is not None
    assert route.queue_datas[0].read_queue_nums == 8  # the master's config wins
    assert route.broker_datas[0].broker_addrs == {0: "tcp://b:10911", 1: "tcp://b:10912"}
    table.unregister(BrokerKey("b", 0), "tcp://b:10911")
    route = table.route("T")
    assert route is not None
    assert route.queue_datas[0].read_queue_nums == 2  # master gone: the slave serves reads
    assert route.broker_datas[0].broker_addrs == {1: "tcp://b:10912"}


def test_reregistration_replaces_the_topic_set() -> None:
    table = RouteTable()
    table.register(reg(topics=("T", "U"), version=1), now=0.0)
    table.register(reg(topics=("U", "V"), version=2), now=1.0)
    assert table.topic_names() == ["U", "V"]
    # The owner's registration always wins, even with an older version (clock went back).
    table.register(reg(topics=("W",), version=1), now=2.0)
    assert table.topic_names() == ["W"]


def test_expire_is_pure_in_now() -> None:
    table = RouteTable(default_ttl=10.0)
    table.register(reg("a"), now=100.0)
    table.register(reg("b", timeout_ms=2000), now=100.0)
    assert table.next_deadline() == 102.0
    assert table.expire(101.999) == []
    updates = table.expire(102.0)
    assert [(u.op, u.reason, u.entry.broker_name) for u in updates] == [("delete", "expired", "b")]
    assert table.next_deadline() == 110.0
    assert table.expire(109.0) == []
    assert len(table) == 1
    assert [u.entry.broker_name for u in table.expire(1000.0)] == ["a"]
    assert table.next_deadline() is None
    assert table.route("T") is None and table.topic_names() == []
    assert table.cluster_info().brokers == {}


def test_heartbeat_extends_life_only_for_the_registered_address_and_version() -> None:
    table = RouteTable(default_ttl=10.0)
    table.register(reg("a", version=3), now=0.0)
    key = BrokerKey("a", 0)
    assert table.heartbeat(key, "tcp://a:10911", 3, now=5.0) is not None
    assert table.deadline(key) == 15.0
    assert table.heartbeat(key, "tcp://a:10911", 4, now=6.0) is None  # stale version
    assert table.heartbeat(key, "tcp://other:1", 3, now=6.0) is None  # another instance
    assert table.heartbeat(BrokerKey("zz", 0), "tcp://a:10911", 3, now=6.0) is None
    assert table.deadline(key) == 15.0
    assert table.expire(14.9) == []
    assert len(table.expire(15.0)) == 1


def test_unregister_only_by_the_owner_address() -> None:
    table = RouteTable()
    table.register(reg("a"), now=0.0)
    assert table.unregister(BrokerKey("a", 0), "tcp://impostor:1") is None
    assert len(table) == 1
    update = table.unregister(BrokerKey("a", 0), "tcp://a:10911")
    assert update is not None and (update.op, update.reason) == ("delete", "unregistered")
    assert len(table) == 0
    assert table.unregister(BrokerKey("a", 0), "tcp://a:10911") is None


def test_snapshot_load_and_apply() -> None:
    origin = RouteTable(default_ttl=10.0)
    origin.register(reg("a"), now=0.0)
    origin.register(reg("b", topics=("U",)), now=4.0)
    replica = RouteTable()
    replica.load(origin.snapshot(now=5.0), now=1000.0)
    assert replica.seq == origin.seq == 2
    assert replica.topic_names() == ["T", "U"]
    assert replica.deadline(BrokerKey("a", 0)) == 1005.0  # time left, not a wall clock
    # Updates after the snapshot, merged in order; the owner's version decides.
    put = origin.register(reg("a", topics=("V",), version=2), now=6.0)
    assert replica.apply(put, now=1001.0)
    assert replica.topic_names() == ["U", "V"]
    stale = origin.register(reg("a", topics=("OLD",), version=1), now=7.0)
    assert not replica.apply(stale, now=1002.0)
    assert replica.topic_names() == ["U", "V"]
    touch = origin.heartbeat(BrokerKey("b", 0), "tcp://b:10911", 1, now=8.0)
    assert touch is not None and replica.apply(touch, now=1003.0)
    assert replica.deadline(BrokerKey("b", 0)) == 1013.0
    gone_a, gone_b = origin.expire(now=100.0)
    assert replica.apply(gone_b, now=1004.0)
    # The delete carries version 1 and the replica holds version 2: versions must only
    # grow, so the replica keeps its newer entry (it expires on its own clock instead).
    assert not replica.apply(gone_a, now=1004.0)
    assert [e.broker_name for e in replica.entries()] == ["a"]
    assert [u.entry.broker_name for u in replica.expire(now=1012.0)] == ["a"]


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["register", "heartbeat", "unregister", "expire"]),
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 1),
            st.lists(st.sampled_from(["T", "U", "V"]), max_size=3, unique=True),
            st.integers(1, 3),
            st.floats(0.0, 5.0),
        ),
        max_size=30,
    )
)
def test_indexes_always_match_the_entries(
    ops: list[tuple[str, str, int, list[str], int, float]],
) -> None:
    table = RouteTable(default_ttl=3.0)
    now = 0.0
    for op, name, broker_id, topics, version, step in ops:
        now += step
        key = BrokerKey(name, broker_id)
        addr = f"tcp://{name}:{10911 + broker_id}"
        if op == "register":
            table.register(reg(name, broker_id, tuple(topics), version=version), now)
        elif op == "heartbeat":
            table.heartbeat(key, addr, version, now)
        elif op == "unregister":
            table.unregister(key, addr)
        else:
            for update in table.expire(now):
                assert table.get(update.entry.key) is None
        entries = table.entries()
        expected_topics = sorted({t for e in entries for t in e.topics})
        assert table.topic_names() == expected_topics
        for topic in expected_topics:
            route = table.route(topic)
            assert route is not None
            owners = {e.broker_name for e in entries if topic in e.topics}
            assert {q.broker_name for q in route.queue_datas} == owners
        names = sorted({e.broker_name for e in entries})
        assert sorted(table.cluster_info().brokers) == names
        deadlines = [table.deadline(e.key) for e in entries]
        assert table.next_deadline() == (min(deadlines) if deadlines else None)  # type: ignore[type-var]


@pytest.mark.parametrize("ttl_ms", [1, 1500])
def test_broker_chosen_ttl(ttl_ms: int) -> None:
    table = RouteTable(default_ttl=120.0)
    update = table.register(reg(timeout_ms=ttl_ms), now=0.0)
    assert update.entry.ttl == ttl_ms / 1000
    assert table.next_deadline() == ttl_ms / 1000
