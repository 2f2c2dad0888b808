"""Random multipart frames thrown at a real nameserver process; then a normal client still works."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.protocol import PROTOCOL_VERSION, Flag, RequestCode, parse_reply
from fabric.protocol import messages as m
from fabric.testing import ServerProcess, run_nameserver
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

# Bodies close to the real ones, so the fuzz also reaches the handlers.
_bodies = st.one_of(
    _values,
    st.fixed_dictionaries(
        {"topic": st.text(max_size=20) | _values},
    ),
    st.fixed_dictionaries(
        {
            "cluster_name": st.sampled_from(["c", "", "bad name"]) | _values,
            "broker_name": st.sampled_from(["b", "x" * 200]) | _values,
            "broker_id": st.integers(-3, 3) | _values,
            "broker_addr": st.sampled_from(["tcp://h:1", ""]) | _values,
            "topics": st.lists(st.fixed_dictionaries({"topic": st.text(max_size=5)}), max_size=3)
            | _values,
            "data_version": st.integers(-1, 3),
            "heartbeat_timeout_ms": st.integers(-5, 5),
        },
    ),
)

_headers = st.builds(
    lambda items: msgspec.msgpack.encode(items),
    st.tuples(
        st.sampled_from([int(c) for c in RequestCode]) | st.integers(-2, 70000) | _values,
        st.just(PROTOCOL_VERSION) | st.integers(0, 3) | _values,
        st.integers(0, 2**63 - 1) | _values,
        st.sampled_from([0, int(Flag.ONEWAY), int(Flag.RESPONSE), 0xFF]) | _values,
        _bodies,
    ).map(list)
    | st.lists(_values, max_size=7),
)

_messages = st.lists(
    st.one_of(_headers, st.binary(max_size=80)),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def fuzz_target() -> Iterator[ServerProcess]:
    server = run_nameserver()
    try:
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
        _seen["replies"] += 1
        wait_ms = 0


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=_messages)
def test_random_frames(fuzz_socket: zmq.Socket[bytes], frames: list[bytes]) -> None:
    fuzz_socket.send_multipart(frames)
    _seen["messages"] += 1
    _drain_replies(fuzz_socket, 0)


def test_server_survives_and_serves(
    fuzz_target: ServerProcess, fuzz_socket: zmq.Socket[bytes]
) -> None:
    # Runs after test_random_frames (file order): collect late replies, then a clean client.
    _drain_replies(fuzz_socket, 200)
    if _seen["messages"]:  # the fuzz ran in this session: it got error replies
        assert _seen["replies"] > 0, _seen
    assert fuzz_target.alive
    with BlockingConnection(fuzz_target.endpoint, timeout=5.0) as client:
        body = m.RegisterBrokerBody(
            cluster_name="c",
            broker_name="after-fuzz",
            broker_addr="tcp://127.0.0.1:1",
            topics=[m.TopicConfig(topic="AfterFuzz")],
        )
        client.call(RequestCode.REGISTER_BROKER, body, m.RegisterBrokerReply)
        route = client.call(
            RequestCode.GET_ROUTE_INFO_BY_TOPIC,
            m.GetRouteInfoBody(topic="AfterFuzz"),
            m.TopicRouteData,
        )
        assert route.queue_datas[0].broker_name == "after-fuzz"
    fuzz_target.wait_for_log("bad input")
