"""Random multipart frames thrown at a real broker process; then a normal client still works.

Headers are mostly well-formed envelopes of broker request codes with bodies close to the
real ones (so the fuzz reaches the processors, not only the parser), plus random bytes
and random MessagePack. A message stored before the fuzz is pulled back intact after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.store import decode_message
from fabric.protocol import PROTOCOL_VERSION, Flag, RequestCode, ResponseCode, parse_reply
from fabric.protocol import messages as m
from fabric.testing import ServerProcess, run_broker, write_broker_config
from fabric.transport import BlockingConnection

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
)
_ints = st.integers(-3, 40) | st.integers(-(2**63), 2**64 - 1)
# Mostly good names, so that most requests get past the name checks.
_topics = st.sampled_from(
    ["FuzzA", "FuzzA", "FuzzB", "FuzzB", "", "bad topic", "%RETRY%", "%DLQ%g", "x" * 130]
)
_groups = st.sampled_from(["g", "g", "g", "g", "", "bad group", "%", "y" * 130])
_strs = st.text(max_size=16)

_send = st.fixed_dictionaries(
    {"producer_group": _groups, "topic": _topics, "queue_id": _ints},
    optional={
        "tags": _strs,
        "keys": st.lists(_strs, max_size=3),
        "uniq_id": _strs,
        "properties": st.dictionaries(_strs, _strs, max_size=3),
        "flag": _ints,
        "sysflag": _ints,
        "born_timestamp": _ints,
        "reconsume_times": _ints,
    },
)
_batch = st.fixed_dictionaries(
    {
        "producer_group": _groups,
        "topic": _topics,
        "queue_id": _ints,
        "messages": st.lists(
            st.fixed_dictionaries({}, optional={"tags": _strs, "flag": _ints}), max_size=4
        )
        | _values,
    }
)
_pull = st.fixed_dictionaries(
    {
        "consumer_group": _groups,
        "topic": _topics | _values,
        "queue_id": _ints,
        "queue_offset": _ints,
    },
    optional={
        "max_msgs": _ints,
        "max_bytes": _ints,
        "suspend_timeout_ms": st.integers(-2, 30),
        "commit_offset": _ints,
        "subscription": st.sampled_from(["*", "", "A || B", "||", " * "]) | _strs,
    },
)
_topic_config = st.fixed_dictionaries(
    {"topic": _topics},
    optional={"read_queue_nums": _ints, "write_queue_nums": _ints, "perm": _ints},
)
_offsets = st.fixed_dictionaries(
    {"consumer_group": _groups, "topic": _topics, "queue_id": _ints},
    optional={"offset": _ints, "timestamp": _ints},
)

_bodies = st.one_of(_values, _send, _batch, _pull, _topic_config, _offsets)

_broker_codes = [
    int(c)
    for c in RequestCode
    if c
    not in (
        RequestCode.REGISTER_BROKER,
        RequestCode.UNREGISTER_BROKER,
        RequestCode.BROKER_HEARTBEAT,
        RequestCode.GET_CLUSTER_INFO,
        RequestCode.GET_ALL_TOPIC_LIST,
        RequestCode.GET_ROUTE_INFO_BY_TOPIC,
    )
]

_headers = st.builds(
    lambda items: msgspec.msgpack.encode(items),
    st.tuples(
        st.sampled_from(_broker_codes) | st.integers(-2, 70000) | _values,
        st.just(PROTOCOL_VERSION) | st.integers(0, 3) | _values,
        st.integers(0, 2**63 - 1) | _values,
        st.sampled_from([0, 0, 0, int(Flag.ONEWAY), int(Flag.RESPONSE), 0xFF]) | _values,
        _bodies,
    ).map(list)
    | st.lists(_values, max_size=7),
)

_expressions = st.sampled_from(["*", "A || B", "||", "a > 1", "(", "TAGS = 'A'"]) | _strs
_subscription = st.fixed_dictionaries(
    {"topic": _topics}, optional={"filter_type": st.integers(-1, 2), "expression": _expressions}
)
_consumer = st.fixed_dictionaries(
    {"group": _groups},
    optional={
        "model": _ints,
        "orderly": st.booleans(),
        "subscriptions": st.lists(_subscription, max_size=2),
    },
)
_heartbeat = st.fixed_dictionaries(
    {"client_id": _strs},
    optional={
        "producer_groups": st.lists(_groups, max_size=2),
        "consumer_groups": st.lists(_groups, max_size=2),
        "consumers": st.lists(_consumer, max_size=2),
    },
)
# Push consumption (PROTOCOL.md section 13): streams may open and push to the fuzz socket.
_stream_ids = st.integers(-1, 3) | _ints
_consume_open = st.fixed_dictionaries(
    {
        "consumer_group": _groups,
        "client_id": _strs,
        "stream_id": _stream_ids,
        "topic": _topics,
        "queue_id": _ints,
    },
    optional={
        "offset": _ints,
        "consume_from": _ints,
        "timestamp": _ints,
        "filter_type": st.integers(-1, 2),
        "expression": _expressions,
        "window_msgs": _ints,
        "window_bytes": _ints,
        "exclusive": st.booleans(),
        "commit": st.booleans(),
    },
)
_consume_ack = st.fixed_dictionaries(
    {"stream_id": _stream_ids},
    optional={"credit_msgs": _ints, "credit_bytes": _ints, "commit_offset": _ints},
)
_consume_close = st.fixed_dictionaries(
    {"stream_id": _stream_ids}, optional={"commit_offset": _ints, "unlock": st.booleans()}
)
_locks = st.fixed_dictionaries(
    {
        "consumer_group": _groups,
        "client_id": _strs,
        "queues": st.lists(
            st.fixed_dictionaries({"topic": _topics, "queue_id": _ints}), max_size=3
        ),
    }
)
_reset = st.fixed_dictionaries(
    {"consumer_group": _groups, "topic": _topics, "to": _ints}, optional={"timestamp": _ints}
)
# (code, body) pairs that fit, so that most messages reach a processor.
_PAIRS: list[tuple[RequestCode, st.SearchStrategy[dict[str, Any]]]] = [
    (RequestCode.SEND_MESSAGE, _send),
    (RequestCode.SEND_MESSAGE, _send),
    (RequestCode.SEND_BATCH_MESSAGE, _batch),
    (RequestCode.PULL_MESSAGE, _pull),
    (RequestCode.PULL_MESSAGE, _pull),
    (RequestCode.CREATE_TOPIC, _topic_config),
    (RequestCode.UPDATE_TOPIC, _topic_config),
    (RequestCode.DELETE_TOPIC, _topic_config),
    (RequestCode.LIST_TOPICS, st.just({})),
    (RequestCode.QUERY_CONSUMER_OFFSET, _offsets),
    (RequestCode.COMMIT_CONSUMER_OFFSET, _offsets),
    (RequestCode.GET_MAX_OFFSET, _offsets),
    (RequestCode.GET_MIN_OFFSET, _offsets),
    (RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, _offsets),
    (RequestCode.HEARTBEAT, _heartbeat),
    (RequestCode.UNREGISTER_CLIENT, _heartbeat),
    (RequestCode.GET_CONSUMER_LIST_BY_GROUP, st.fixed_dictionaries({"consumer_group": _groups})),
    (RequestCode.LOCK_BATCH_MQ, _locks),
    (RequestCode.UNLOCK_BATCH_MQ, _locks),
    (RequestCode.CONSUME_OPEN, _consume_open),
    (RequestCode.CONSUME_ACK, _consume_ack),
    (RequestCode.CONSUME_CLOSE, _consume_close),
    (RequestCode.RESET_CONSUMER_OFFSET, _reset),
]


@st.composite
def _plausible(draw: st.DrawFn) -> list[bytes]:
    """A request whose code, body and body-frame count mostly fit each other."""
    code, bodies = draw(st.sampled_from(_PAIRS))
    body: dict[str, Any] = draw(bodies)
    expected = 0
    if code == RequestCode.SEND_MESSAGE:
        expected = 1
    elif code == RequestCode.SEND_BATCH_MESSAGE and isinstance(body.get("messages"), list):
        expected = len(body["messages"])
    count = draw(st.sampled_from([expected] * 4 + [expected + 1, max(expected - 1, 0)]))
    frames = draw(st.lists(st.binary(max_size=64), min_size=count, max_size=count))
    flags = draw(st.sampled_from([0, 0, 0, int(Flag.ONEWAY)]))
    rid = draw(st.integers(0, 2**63 - 1))
    return [msgspec.msgpack.encode([int(code), PROTOCOL_VERSION, rid, flags, body]), *frames]


_messages = st.one_of(
    _plausible(),
    _plausible(),
    st.lists(st.one_of(_headers, _headers, st.binary(max_size=80)), min_size=1, max_size=5),
)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    server = run_broker(tmp / "data", config=write_broker_config(tmp / "b.json"))
    try:
        with BlockingConnection(server.endpoint, timeout=5.0) as conn:
            header = m.SendMessageBody(producer_group="g", topic="BeforeFuzz", queue_id=0)
            reply = conn.call(RequestCode.SEND_MESSAGE, header, m.SendReply, [b"\x00precious\xff"])
            assert reply.queue_offset == 0
        yield server
    finally:
        server.stop()
    assert not server.error_lines(), "\n".join(server.log_lines())


# What the fuzz provoked, checked by the last test.
_seen = {"messages": 0, "replies": 0}


def _drain_replies(sock: zmq.Socket[bytes], wait_ms: int) -> None:
    """Read every reply that arrives within ``wait_ms``; each must be a well-formed reply."""
    while sock.poll(wait_ms):
        reply = parse_reply(sock.recv_multipart())
        assert reply.flags & Flag.RESPONSE
        assert reply.version == PROTOCOL_VERSION
        _seen["replies"] += 1
        wait_ms = 0


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=_messages)
def test_random_frames(fuzz_socket: zmq.Socket[bytes], frames: list[bytes]) -> None:
    fuzz_socket.send_multipart(frames)
    _seen["messages"] += 1
    _drain_replies(fuzz_socket, 0)


def test_broker_survives_and_serves(
    fuzz_target: ServerProcess, fuzz_socket: zmq.Socket[bytes]
) -> None:
    # Runs after test_random_frames (file order): collect late replies (parked pulls wait
    # up to 30 ms), then a clean client sends and pulls.
    _drain_replies(fuzz_socket, 300)
    if _seen["messages"]:
        assert _seen["replies"] > 0, _seen
    assert fuzz_target.alive
    with BlockingConnection(fuzz_target.endpoint, timeout=5.0) as conn:
        header = m.SendMessageBody(producer_group="g", topic="AfterFuzz", queue_id=1, tags="t")
        sent = conn.call(RequestCode.SEND_MESSAGE, header, m.SendReply, [b"after"])
        body = m.PullMessageBody(
            consumer_group="c", topic="AfterFuzz", queue_id=1, queue_offset=sent.queue_offset
        )
        reply = conn.request(RequestCode.PULL_MESSAGE, body)
        assert reply.code == ResponseCode.SUCCESS, reply
        assert [decode_message(bytes(f)).body for f in reply.frames] == [b"after"]
        before = m.PullMessageBody(
            consumer_group="c", topic="BeforeFuzz", queue_id=0, queue_offset=0
        )
        reply = conn.request(RequestCode.PULL_MESSAGE, before)
        assert reply.code == ResponseCode.SUCCESS, reply
        assert [decode_message(bytes(f)).body for f in reply.frames] == [b"\x00precious\xff"]
    assert any("bad input" in line for line in fuzz_target.log_lines())
