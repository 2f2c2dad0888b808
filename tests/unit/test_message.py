"""Messages: validation before sending, unique ids, compression, names and options."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import threading
import zlib

import msgspec
import pytest

from fabric import errors
from fabric.message import (
    MAX_PROPERTIES_BYTES,
    Message,
    MessageQueue,
    SendResult,
    compress_body,
    new_msg_id,
)
from fabric.protocol.codes import ResponseCode, SendStatus, SysFlag
from fabric.protocol.frames import MAX_MESSAGE_BYTES
from fabric.routing import parse_nameservers
from fabric.sending import ProducerOptions


def test_message_defaults_and_normalisation() -> None:
    m = Message("T", b"body", tags="A", keys="k1", properties={"x": "1"})
    assert (m.topic, m.body, m.tags, m.keys, m.properties, m.flag, m.msg_id) == (
        "T",
        b"body",
        "A",
        ("k1",),
        {"x": "1"},
        0,
        None,
    )
    assert Message("T", keys=["a", "b"]).keys == ("a", "b")
    props = {"x": "1"}
    m = Message("T", properties=props)
    props["y"] = "2"
    assert m.properties == {"x": "1"}  # copied
    assert "T" in repr(m)


@pytest.mark.parametrize("topic", ["", "bad topic", "x" * 128, "%RETRY%", 7])
def test_bad_topics_are_refused_before_sending(topic: object) -> None:
    with pytest.raises(errors.InvalidNameError) as info:
        Message(topic, b"x").validate()  # type: ignore[arg-type]
    assert info.value.code == ResponseCode.INVALID_TOPIC_NAME


def test_good_topics_pass() -> None:
    for topic in ("T", "a-b_c%D", "x" * 127, "%RETRY%group", "%DLQ%group"):
        Message(topic, b"x").validate()


def test_sizes_are_checked_before_sending() -> None:
    Message("T", b"x" * MAX_MESSAGE_BYTES).validate()
    with pytest.raises(errors.MessageTooLargeError) as info:
        Message("T", b"x" * (MAX_MESSAGE_BYTES + 1)).validate()
    assert (info.value.size, info.value.limit) == (MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES)
    assert info.value.code == ResponseCode.MESSAGE_ILLEGAL
    with pytest.raises(errors.MessageTooLargeError):
        Message("T", b"x" * 101).validate(max_size=100)
    with pytest.raises(errors.MessageTooLargeError) as info:
        Message("T", b"x", properties={"p": "v" * MAX_PROPERTIES_BYTES}).validate()
    assert info.value.limit == MAX_PROPERTIES_BYTES


def test_field_types_are_checked() -> None:
    for bad in (
        Message("T", "text"),  # type: ignore[arg-type]
        Message("T", b"x", tags=3),  # type: ignore[arg-type]
        Message("T", b"x", keys=[1]),  # type: ignore[list-item]
        Message("T", b"x", properties={"a": 1}),  # type: ignore[dict-item]
    ):
        with pytest.raises(errors.MessageIllegalError):
            bad.validate()
    Message("T", bytearray(b"x")).validate()
    Message("T", memoryview(b"x")).validate()


def test_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_msg_id() for _ in range(100_000)]
    assert all(re.fullmatch(r"[0-9A-F]{32}", i) for i in ids[:100])
    assert len(set(ids)) == len(ids)


def test_ids_are_unique_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def make(into: list[str]) -> None:
        into.extend(new_msg_id() for _ in range(20_000))

    threads = [threading.Thread(target=make, args=(f,)) for f in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = [i for f in found for i in f]
    assert len(set(every)) == len(every) == 80_000


def test_ids_are_unique_across_processes() -> None:
    code = (
        "from fabric.message import new_msg_id\nprint(' '.join(new_msg_id() for _ in range(1000)))"
    )

    def run() -> set[str]:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        return set(out.stdout.split())

    a, b = run(), run()
    assert len(a) == len(b) == 1000 and not a & b
    # the host part is the same, the process part differs
    assert {i[:8] for i in a} == {i[:8] for i in b}
    assert {i[8:16] for i in a} != {i[8:16] for i in b}


def test_compression_round_trip() -> None:
    body = b"compressible " * 1000
    packed, flag = compress_body(body)
    assert flag == SysFlag.COMPRESSED and len(packed) < len(body)
    assert zlib.decompress(packed) == body
    # at or under the threshold: as is
    assert compress_body(b"x" * 4096) == (b"x" * 4096, 0)
    # incompressible: as is, not flagged
    random_body = os.urandom(8192)
    assert compress_body(random_body) == (random_body, 0)
    # a negative threshold turns it off; a lower one turns it on earlier
    assert compress_body(body, threshold=-1) == (body, 0)
    assert compress_body(b"aaaa" * 10, threshold=8)[1] == SysFlag.COMPRESSED


def test_result_types_are_light_and_hashable() -> None:
    q = MessageQueue("T", "broker-a", 3)
    assert {q: 1}[MessageQueue("T", "broker-a", 3)] == 1
    assert sorted([q, MessageQueue("T", "b", 0)]) == [MessageQueue("T", "b", 0), q]
    assert str(q) == "T@broker-a#3"
    r = SendResult(SendStatus.SEND_OK, "ID", q, 5)
    assert (r.status, r.msg_id, r.queue, r.queue_offset) == (SendStatus.SEND_OK, "ID", q, 5)
    assert not gc.is_tracked(r) and not gc.is_tracked(q)
    with pytest.raises(AttributeError):
        r.queue_offset = 6  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "endpoints"),
    [
        ("tcp://a:1", ["tcp://a:1"]),
        ("tcp://a:1;tcp://b:2", ["tcp://a:1", "tcp://b:2"]),
        ("tcp://a:1, tcp://b:2,", ["tcp://a:1", "tcp://b:2"]),
        ("a:1;b:2", ["tcp://a:1", "tcp://b:2"]),
        (["tcp://a:1", "b:2"], ["tcp://a:1", "tcp://b:2"]),
    ],
)
def test_nameserver_lists(text: str | list[str], endpoints: list[str]) -> None:
    assert parse_nameservers(text) == endpoints


def test_no_nameserver_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_nameservers(" ; ")


@pytest.mark.parametrize(
    "bad",
    [
        {"send_timeout": 0},
        {"retries": -1},
        {"max_message_size": MAX_MESSAGE_BYTES + 1},
        {"batch_max_messages": 0},
        {"batch_max_messages": 1025},
        {"max_in_flight": 0},
        {"compress_level": 10},
    ],
)
def test_producer_options_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        msgspec.structs.replace(ProducerOptions(), **bad).check()


def test_group_names_are_checked() -> None:
    from fabric import Producer, PullConsumer

    with pytest.raises(errors.InvalidNameError) as info:
        Producer("bad group", nameservers="tcp://127.0.0.1:1")
    assert info.value.code == ResponseCode.INVALID_GROUP_NAME
    with pytest.raises(errors.InvalidNameError):
        PullConsumer("", nameservers="tcp://127.0.0.1:1")
