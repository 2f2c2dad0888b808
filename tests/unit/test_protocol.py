"""Protocol round trips, header bytes, parse errors, limits, names and the error mapping."""

from __future__ import annotations

import typing
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric import errors
from fabric.protocol import (
    BODY_TYPES,
    MAX_BATCH_MESSAGES,
    MAX_HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    REPLY_TYPES,
    REQUEST_TYPES,
    Flag,
    FrameError,
    FrameTooLargeError,
    PullStatus,
    RequestCode,
    ResponseCode,
    SendStatus,
    check_group,
    check_topic,
    dlq_topic,
    encode_reply,
    encode_request,
    parse_reply,
    parse_request,
    pull_status_for,
    request_code,
    retry_topic,
    send_status_for,
)
from fabric.protocol import messages as m
from fabric.protocol.frames import Buffer

_TOPIC = m.TopicConfig(topic="TopicTest", read_queue_nums=8, write_queue_nums=8, perm=6)

#: One realistic body per request code, with every field away from its default.
SAMPLES: dict[RequestCode, msgspec.Struct] = {
    RequestCode.SEND_MESSAGE: m.SendMessageBody(
        producer_group="pg",
        topic="TopicTest",
        queue_id=3,
        tags="A",
        keys=["k1", "k2"],
        uniq_id="0A0B0C",
        properties={"x": "1"},
        flag=7,
        sysflag=1,
        born_timestamp=1_700_000_000_000,
        reconsume_times=2,
    ),
    RequestCode.PULL_MESSAGE: m.PullMessageBody(
        consumer_group="cg",
        topic="TopicTest",
        queue_id=1,
        queue_offset=42,
        max_msgs=16,
        max_bytes=65536,
        suspend_timeout_ms=5000,
        commit_offset=40,
        subscription="A || B",
    ),
    RequestCode.QUERY_CONSUMER_OFFSET: m.QueryConsumerOffsetBody(
        consumer_group="cg", topic="TopicTest", queue_id=1
    ),
    RequestCode.COMMIT_CONSUMER_OFFSET: m.CommitConsumerOffsetBody(
        consumer_group="cg", topic="TopicTest", queue_id=1, offset=43
    ),
    RequestCode.CREATE_TOPIC: _TOPIC,
    RequestCode.UPDATE_TOPIC: _TOPIC,
    RequestCode.LIST_TOPICS: m.Empty(),
    RequestCode.SEARCH_OFFSET_BY_TIMESTAMP: m.SearchOffsetBody(
        topic="TopicTest", queue_id=0, timestamp=1_700_000_000_000
    ),
    RequestCode.GET_MAX_OFFSET: m.QueueOffsetBody(topic="TopicTest", queue_id=0),
    RequestCode.GET_MIN_OFFSET: m.QueueOffsetBody(topic="TopicTest", queue_id=0),
    RequestCode.HEARTBEAT: m.ClientHeartbeatBody(
        client_id="host@123", producer_groups=["pg"], consumer_groups=["cg"]
    ),
    RequestCode.REGISTER_BROKER: m.RegisterBrokerBody(
        cluster_name="DefaultCluster",
        broker_name="broker-a",
        broker_id=0,
        broker_addr="tcp://127.0.0.1:10911",
        topics=[_TOPIC],
        data_version=5,
        heartbeat_timeout_ms=1000,
    ),
    RequestCode.UNREGISTER_BROKER: m.UnregisterBrokerBody(
        cluster_name="DefaultCluster", broker_name="broker-a", broker_addr="tcp://x:1"
    ),
    RequestCode.GET_ROUTE_INFO_BY_TOPIC: m.GetRouteInfoBody(topic="TopicTest"),
    RequestCode.GET_CLUSTER_INFO: m.Empty(),
    RequestCode.GET_ALL_TOPIC_LIST: m.Empty(),
    RequestCode.DELETE_TOPIC: m.DeleteTopicBody(topic="TopicTest"),
    RequestCode.SEND_BATCH_MESSAGE: m.SendBatchBody(
        producer_group="pg",
        topic="TopicTest",
        queue_id=0,
        messages=[m.BatchEntry(tags="A"), m.BatchEntry(keys=["k"], uniq_id="u2")],
    ),
    RequestCode.BROKER_HEARTBEAT: m.BrokerHeartbeatBody(
        cluster_name="DefaultCluster",
        broker_name="broker-a",
        broker_addr="tcp://127.0.0.1:10911",
        data_version=5,
    ),
    RequestCode.UNREGISTER_CLIENT: m.UnregisterClientBody(client_id="h@1@1", consumer_groups=["g"]),
    RequestCode.GET_CONSUMER_LIST_BY_GROUP: m.ConsumerGroupBody(consumer_group="g"),
    RequestCode.LOCK_BATCH_MQ: m.LockBatchBody(
        consumer_group="g", client_id="h@1@1", queues=[m.QueueRef(topic="T", queue_id=1)]
    ),
    RequestCode.UNLOCK_BATCH_MQ: m.LockBatchBody(
        consumer_group="g", client_id="h@1@1", queues=[m.QueueRef(topic="T", queue_id=2)]
    ),
    RequestCode.CONSUME_OPEN: m.ConsumeOpenBody(
        consumer_group="g",
        client_id="h@1@1",
        stream_id=7,
        topic="T",
        queue_id=3,
        filter_type=1,
        expression="a > 1",
        exclusive=True,
    ),
    RequestCode.CONSUME_ACK: m.ConsumeAckBody(stream_id=7, credit_msgs=3, commit_offset=9),
    RequestCode.CONSUME_CLOSE: m.ConsumeCloseBody(stream_id=7, unlock=True),
    RequestCode.RESET_CONSUMER_OFFSET: m.ResetOffsetBody(consumer_group="g", topic="T", to=1),
    RequestCode.CONSUMER_SEND_MSG_BACK: m.ConsumerSendBackBody(
        consumer_group="g", topic="T", commitlog_offset=1234, msg_id="A" * 32
    ),
    RequestCode.END_TRANSACTION: m.EndTransactionBody(
        producer_group="pg", msg_id="B" * 32, commitlog_offset=99, state=1, from_check=True
    ),
    RequestCode.QUERY_MESSAGE: m.QueryMessageBody(topic="T", key="k1", max_num=5, begin_ms=1),
    RequestCode.VIEW_MESSAGE_BY_ID: m.ViewMessageBody(topic="T", msg_id="C" * 32),
}
#: Codes only a broker sends, on its own (Flag.PUSH): no request envelope.
PUSH_ONLY = set(m.PUSH_TYPES)
REQUESTS = [c for c in RequestCode if c not in PUSH_ONLY]

_BODY_FRAMES = {RequestCode.SEND_MESSAGE: [b"hello"], RequestCode.SEND_BATCH_MESSAGE: [b"a", b"b"]}


# -- tables ---------------------------------------------------------------------------------


def test_every_request_code_has_an_envelope_a_body_and_a_reply() -> None:
    assert set(REQUEST_TYPES) == set(REQUESTS)
    assert set(BODY_TYPES) == set(REQUESTS)
    assert set(REPLY_TYPES) == set(REQUESTS)
    assert set(SAMPLES) == set(REQUESTS)
    assert {
        RequestCode.PUSH_MESSAGES,
        RequestCode.STREAM_CLOSED,
        RequestCode.NOTIFY_CONSUMER_IDS_CHANGED,
        RequestCode.CHECK_TRANSACTION_STATE,
    } == PUSH_ONLY
    assert set(typing.get_args(m.Request)) == set(REQUEST_TYPES.values())
    for code, envelope in REQUEST_TYPES.items():
        assert envelope.__struct_config__.tag == int(code)
        assert envelope.__struct_config__.array_like


def test_body_structs_accept_unknown_fields() -> None:
    # Schema evolution: an older peer must ignore the fields a newer one adds.
    for cls in {*BODY_TYPES.values(), *REPLY_TYPES.values()}:
        assert not cls.__struct_config__.forbid_unknown_fields, cls
        assert not cls.__struct_config__.array_like, cls


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", REQUESTS, ids=lambda c: c.name)
def test_request_round_trip(code: RequestCode) -> None:
    body = SAMPLES[code]
    bodies = _BODY_FRAMES.get(code, [])
    frames = encode_request(code, 99, body, bodies)
    request, parsed_bodies = parse_request(frames)
    assert type(request) is REQUEST_TYPES[code]
    assert request_code(request) == code
    assert (request.version, request.request_id, request.flags) == (PROTOCOL_VERSION, 99, 0)
    assert request.body == body
    assert list(parsed_bodies) == bodies


def test_request_header_bytes() -> None:
    # The worked example of docs/PROTOCOL.md, byte for byte.
    frames = encode_request(RequestCode.GET_ROUTE_INFO_BY_TOPIC, 7, m.GetRouteInfoBody(topic="T1"))
    assert frames == [bytes.fromhex("95 69 01 07 00 81 a5 746f706963 a2 5431")]


def test_reply_header_bytes() -> None:
    route = m.TopicRouteData(
        queue_datas=[m.QueueData(broker_name="b", read_queue_nums=4, write_queue_nums=4, perm=6)],
        broker_datas=[
            m.BrokerData(cluster_name="c", broker_name="b", broker_addrs={0: "tcp://h:1"})
        ],
    )
    # The bytes are checked against docs/PROTOCOL.md by tests/test_protocol_doc.py.
    (header,) = encode_reply(7, ResponseCode.SUCCESS, route)
    assert header[:7] == bytes.fromhex("96 00 01 07 01 a0 82")
    reply = parse_reply([header])
    assert reply.ok and reply.request_id == 7 and reply.flags == Flag.RESPONSE
    assert reply.decode(m.TopicRouteData) == route


def test_error_reply_bytes() -> None:
    (header,) = encode_reply(7, ResponseCode.NO_ROUTE, remark="no route")
    assert header == bytes.fromhex("96 36 01 07 01 a8") + b"no route" + b"\x80"
    reply = parse_reply([header])
    assert (reply.code, reply.remark, reply.decode(m.Empty)) == (54, "no route", m.Empty())


def test_reply_frames_are_kept() -> None:
    body = m.PullReply(next_offset=2, min_offset=0, max_offset=2)
    frames = encode_reply(3, ResponseCode.SUCCESS, body, frames=[b"rec1", b"rec2"])
    reply = parse_reply(frames)
    assert reply.frames == [b"rec1", b"rec2"]
    assert reply.decode(m.PullReply) == body


def test_oneway_flag_round_trips() -> None:
    frames = encode_request(
        RequestCode.HEARTBEAT, 1, SAMPLES[RequestCode.HEARTBEAT], flags=Flag.ONEWAY
    )
    request, _ = parse_request(frames)
    assert request.flags == Flag.ONEWAY


def test_forward_compatible_decoding() -> None:
    # Unknown body fields and extra trailing header elements are ignored; missing
    # fields with defaults take them.
    enc = msgspec.msgpack.encode
    header = enc([int(RequestCode.CREATE_TOPIC), 1, 5, 0, {"topic": "T", "new_field": [1]}, "x"])
    request, _ = parse_request([header])
    assert request.body == m.TopicConfig(topic="T")
    reply = parse_reply([enc([0, 1, 5, 1, "", {"offset": 3, "later": True}, None])])
    assert reply.decode(m.OffsetReply) == m.OffsetReply(offset=3)


# -- parse errors ---------------------------------------------------------------------------


def _error(frames: Sequence[Buffer]) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse_request(frames)
    return info.value


def _header(*items: object) -> bytes:
    return msgspec.msgpack.encode(list(items))


@pytest.mark.parametrize(
    ("frames", "code", "request_id"),
    [
        ([], ResponseCode.MALFORMED_REQUEST, None),
        ([b""], ResponseCode.MALFORMED_REQUEST, None),
        ([b"\xc1"], ResponseCode.MALFORMED_REQUEST, None),
        ([_header(105, 1)], ResponseCode.MALFORMED_REQUEST, None),
        ([_header(105, 1, -1, 0, {"topic": "T"})], ResponseCode.MALFORMED_REQUEST, None),
        ([_header(105, 1, "id", 0, {"topic": "T"})], ResponseCode.MALFORMED_REQUEST, None),
        ([_header(105, 1, 9, 1, {"topic": "T"})], ResponseCode.MALFORMED_REQUEST, None),
        ([_header(105, 2, 9, 0, {"topic": "T"})], ResponseCode.VERSION_NOT_SUPPORTED, 9),
        ([_header(105, 2, 9, 0, "v2 may change the body")], ResponseCode.VERSION_NOT_SUPPORTED, 9),
        ([_header(999, 1, 9, 0, {})], ResponseCode.REQUEST_CODE_NOT_SUPPORTED, 9),
        ([_header(105, 1, 9, 0, {"topic": 5})], ResponseCode.MALFORMED_REQUEST, 9),
        ([_header(105, 1, 9, 0, [])], ResponseCode.MALFORMED_REQUEST, 9),
        ([_header(105, 1, 9, 0, {"topic": "T"}), b"x"], ResponseCode.MALFORMED_REQUEST, 9),
        (
            [
                _header(
                    320,
                    1,
                    9,
                    0,
                    {"producer_group": "p", "topic": "T", "queue_id": 0, "messages": []},
                )
            ],
            ResponseCode.MALFORMED_REQUEST,
            9,
        ),
        (
            [encode_request(RequestCode.SEND_MESSAGE, 9, SAMPLES[RequestCode.SEND_MESSAGE])[0]],
            ResponseCode.MALFORMED_REQUEST,
            9,
        ),
    ],
)
def test_parse_errors(frames: list[bytes], code: ResponseCode, request_id: int | None) -> None:
    error = _error(frames)
    assert (error.code, error.request_id) == (code, request_id)
    assert error.remark


def test_a_reply_is_never_answered() -> None:
    reply = encode_reply(4, ResponseCode.SUCCESS)
    assert _error(reply).request_id is None


def test_oversized_body_frame_is_refused_with_its_request_id() -> None:
    send = SAMPLES[RequestCode.SEND_MESSAGE]
    header = encode_request(RequestCode.SEND_MESSAGE, 8, send, [b""])[0]
    error = _error([header, bytes(MAX_MESSAGE_BYTES + 1)])
    assert (error.code, error.request_id) == (ResponseCode.MESSAGE_ILLEGAL, 8)


# -- limits before writing ------------------------------------------------------------------


def test_encode_checks_limits_before_writing() -> None:
    send = SAMPLES[RequestCode.SEND_MESSAGE]
    with pytest.raises(FrameTooLargeError) as info:
        encode_request(RequestCode.SEND_MESSAGE, 1, send, [bytes(MAX_MESSAGE_BYTES + 1)])
    assert (info.value.size, info.value.limit) == (MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES)
    assert info.value.code == ResponseCode.MESSAGE_ILLEGAL
    encode_request(RequestCode.SEND_MESSAGE, 1, send, [bytes(MAX_MESSAGE_BYTES)])
    with pytest.raises(FrameTooLargeError):
        big = m.TopicConfig(topic="T" * (MAX_HEADER_BYTES + 1))
        encode_request(RequestCode.CREATE_TOPIC, 1, big)
    batch = m.SendBatchBody(producer_group="p", topic="T", queue_id=0, messages=[])
    with pytest.raises(FrameError):
        encode_request(RequestCode.SEND_BATCH_MESSAGE, 1, batch, [b""] * (MAX_BATCH_MESSAGES + 1))
    with pytest.raises(FrameTooLargeError) as info:
        frames = [bytes(MAX_MESSAGE_BYTES)] * (MAX_REQUEST_BYTES // MAX_MESSAGE_BYTES)
        encode_request(RequestCode.SEND_BATCH_MESSAGE, 1, batch, frames)
    assert info.value.limit == MAX_REQUEST_BYTES


# -- property: parsing never raises anything but FrameError ---------------------------------

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
_headers = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda code, version, rid, flags, body: msgspec.msgpack.encode(
            [code, version, rid, flags, body]
        ),
        st.sampled_from([int(c) for c in RequestCode]) | st.integers(-5, 2000),
        st.sampled_from([PROTOCOL_VERSION]) | _values,
        st.integers(0, 2**63 - 1) | _values,
        st.sampled_from([0, int(Flag.ONEWAY)]) | _values,
        _values,
    ),
)


@settings(max_examples=300, deadline=None)
@given(header=_headers, extra=st.lists(st.binary(max_size=16), max_size=3))
def test_parse_request_only_raises_frame_error(header: bytes, extra: list[bytes]) -> None:
    try:
        request, bodies = parse_request([header, *extra])
    except FrameError as exc:
        assert isinstance(exc.code, ResponseCode)
        if exc.request_id is not None:
            # An error reply must itself be well-formed.
            reply = parse_reply(encode_reply(exc.request_id, exc.code, remark=exc.remark))
            assert reply.request_id == exc.request_id
    else:
        assert request.version == PROTOCOL_VERSION
        assert len(bodies) == len(extra)


@settings(max_examples=200, deadline=None)
@given(header=_headers)
def test_parse_reply_only_raises_frame_error(header: bytes) -> None:
    try:
        parse_reply([header])
    except FrameError:
        pass


# -- statuses -------------------------------------------------------------------------------


def test_status_mappings() -> None:
    assert send_status_for(ResponseCode.SUCCESS) is SendStatus.SEND_OK
    assert send_status_for(ResponseCode.FLUSH_DISK_TIMEOUT) is SendStatus.FLUSH_DISK_TIMEOUT
    assert send_status_for(ResponseCode.SYSTEM_BUSY) is None
    assert pull_status_for(ResponseCode.PULL_NOT_FOUND) is PullStatus.NO_NEW_MSG
    assert pull_status_for(ResponseCode.PULL_OFFSET_MOVED) is PullStatus.OFFSET_ILLEGAL
    assert pull_status_for(ResponseCode.TOPIC_NOT_EXIST) is None
    for code in m.BODY_CODES:
        assert send_status_for(code) is not None or pull_status_for(code) is not None


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["T", "TopicTest", "a-b_c%d", "x" * 127, "%RETRY%g", "%DLQ%" + "g" * 250]
)
def test_good_topic_names(name: str) -> None:
    assert check_topic(name) is None


@pytest.mark.parametrize(
    "name", ["", "x" * 128, "a b", "a.b", "é", "t/1", "%RETRY%", "%DLQ%" + "g" * 251, 5]
)
def test_bad_topic_names(name: object) -> None:
    assert check_topic(name)


def test_group_names() -> None:
    assert check_group("group_1") is None
    assert check_group("g" * 127) is None
    assert check_group("g" * 128)
    assert check_group("")
    assert check_group("a:b")
    assert check_topic(retry_topic("g" * 127)) is None
    assert check_topic(dlq_topic("g" * 127)) is None


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ResponseCode), ids=lambda c: c.name)
def test_from_response_covers_every_code(code: ResponseCode) -> None:
    exc = errors.from_response(code, "why", address="tcp://h:1")
    assert isinstance(exc, errors.FabricError)
    assert (exc.code, exc.message, exc.address) == (code, "why", "tcp://h:1")
    assert str(exc) == f"{code.name}: why (addr=tcp://h:1)"
    if code == ResponseCode.SUCCESS or code in m.BODY_CODES:
        assert type(exc) is errors.UnexpectedResponseError
    else:
        assert type(exc) is not errors.UnexpectedResponseError
        assert errors.to_response(exc) == (code, "why")


def test_from_response_specific_classes() -> None:
    assert isinstance(errors.from_response(54, ""), errors.NoRouteError)
    assert isinstance(errors.from_response(2, ""), errors.ServerBusyError)
    assert errors.from_response(2, "").retryable
    assert isinstance(errors.from_response(52, ""), errors.InvalidNameError)
    unknown = errors.from_response(4242, "")
    assert type(unknown) is errors.UnexpectedResponseError and unknown.code == 4242
    assert "4242" in str(unknown)


def test_to_response() -> None:
    assert errors.to_response(errors.NoRouteError("x")) == (ResponseCode.NO_ROUTE, "x")
    assert errors.to_response(errors.ProtocolError("x")) == (ResponseCode.MALFORMED_REQUEST, "x")
    code, remark = errors.to_response(KeyError("k"))
    assert code == ResponseCode.SYSTEM_ERROR and "KeyError" in remark
    too_large = errors.MessageTooLargeError("big", size=5, limit=4)
    assert errors.to_response(too_large) == (ResponseCode.MESSAGE_ILLEGAL, "big")
    assert isinstance(too_large, errors.MessageIllegalError)


# -- packed batch bodies (PROTOCOL.md 7.3) ----------------------------------------------------


def _packed(sizes: list[int], entries: int | None = None) -> m.SendBatchBody:
    n = len(sizes) if entries is None else entries
    return m.SendBatchBody(
        producer_group="p",
        topic="T",
        queue_id=0,
        messages=[m.BatchEntry(uniq_id=f"u{i}") for i in range(n)],
        body_sizes=sizes,
    )


def test_a_packed_batch_arrives_as_one_body_per_entry() -> None:
    bodies = [b"first", b"", b"\x00third\xff" * 100, b"x"]
    frames = encode_request(
        RequestCode.SEND_BATCH_MESSAGE, 5, _packed([len(b) for b in bodies]), [b"".join(bodies)]
    )
    assert len(frames) == 2
    request, parsed = parse_request(frames)
    assert request.request_id == 5
    assert list(parsed) == bodies
    assert all(type(b) is bytes for b in parsed)
    # A memoryview frame (zero-copy receive) gives the same bodies.
    _, again = parse_request([frames[0], memoryview(frames[1])])
    assert list(again) == bodies


@pytest.mark.parametrize(
    ("sizes", "entries", "frames", "remark"),
    [
        ([3, 3], None, [b"abc", b"def"], "takes 1 body frame"),
        ([3, 3], None, [], "takes 1 body frame"),
        ([3, 3], 3, [b"abcdef"], "2 body_sizes for 3 messages"),
        ([7, -1], None, [b"abcdef"], "negative"),
        ([3, 4], None, [b"abcdef"], "add up to 7 bytes, the body frame has 6"),
        ([3, 2], None, [b"abcdef"], "add up to 5 bytes"),
    ],
)
def test_a_packed_batch_that_does_not_add_up_is_malformed(
    sizes: list[int], entries: int | None, frames: list[bytes], remark: str
) -> None:
    header = encode_request(RequestCode.SEND_BATCH_MESSAGE, 6, _packed(sizes, entries))[0]
    error = _error([header, *frames])
    assert (error.code, error.request_id) == (ResponseCode.MALFORMED_REQUEST, 6)
    assert remark in error.remark


def test_packed_bodies_keep_the_limits_of_body_frames() -> None:
    # Each packed body is held to MAX_MESSAGE_BYTES; the packed frame as a whole is not.
    big = MAX_MESSAGE_BYTES + 1
    header = msgspec.msgpack.encode(
        (int(RequestCode.SEND_BATCH_MESSAGE), PROTOCOL_VERSION, 7, 0, _packed([1, big]))
    )  # encode_request itself refuses it before writing
    error = _error([header, bytes(big + 1)])
    assert (error.code, error.request_id) == (ResponseCode.MESSAGE_ILLEGAL, 7)
    assert "packed body 2" in error.remark
    sizes = [MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES]
    _, bodies = parse_request(
        encode_request(RequestCode.SEND_BATCH_MESSAGE, 8, _packed(sizes), [bytes(sum(sizes))])
    )
    assert [len(b) for b in bodies] == sizes
    with pytest.raises(FrameError) as info:  # more messages than MAX_BATCH_MESSAGES
        n = MAX_BATCH_MESSAGES + 1
        encode_request(RequestCode.SEND_BATCH_MESSAGE, 9, _packed([1] * n), [bytes(n)])
    assert info.value.code == ResponseCode.MESSAGE_ILLEGAL
    with pytest.raises(FrameTooLargeError) as too_big:  # the whole request
        sizes = [MAX_MESSAGE_BYTES] * (MAX_REQUEST_BYTES // MAX_MESSAGE_BYTES)
        encode_request(RequestCode.SEND_BATCH_MESSAGE, 9, _packed(sizes), [bytes(sum(sizes))])
    assert too_big.value.limit == MAX_REQUEST_BYTES
