"""docs/PROTOCOL.md names every code, constant, body type and field that is in fabric/protocol."""

from __future__ import annotations

import enum
import inspect
import re
from pathlib import Path

import msgspec
import pytest

from fabric.protocol import codes, frames, messages, names

DOC = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text("utf-8")
LINES = DOC.splitlines()

CODE_ENUMS = [
    obj
    for _, obj in inspect.getmembers(codes, inspect.isclass)
    if issubclass(obj, enum.Enum) and obj.__module__ == codes.__name__
]
# __members__, not iteration: since Python 3.11 iterating an IntFlag skips multi-bit members
# such as SysFlag.TRANSACTION_ROLLBACK, which must be documented too.
MEMBERS = [(cls.__name__, member) for cls in CODE_ENUMS for member in cls.__members__.values()]


def test_the_enums_are_found() -> None:
    found = {cls.__name__ for cls in CODE_ENUMS}
    assert {"RequestCode", "ResponseCode", "Flag", "SendStatus", "PullStatus", "Perm"} <= found


@pytest.mark.parametrize(
    ("enum_name", "member"), MEMBERS, ids=[f"{c}.{m.name}" for c, m in MEMBERS]
)
def test_every_code_is_documented_with_its_value(enum_name: str, member: enum.Enum) -> None:
    assert member.name is not None
    name = re.compile(rf"`{re.escape(member.name)}`")
    value = re.compile(rf"(?<![\w.]){int(member.value)}(?![\w.])")
    assert any(name.search(line) and value.search(line) for line in LINES), (
        f"docs/PROTOCOL.md has no line with `{member.name}` and {int(member.value)} ({enum_name})"
    )


def test_every_enum_is_named() -> None:
    for cls in CODE_ENUMS:
        assert f"`{cls.__name__}`" in DOC, cls.__name__


@pytest.mark.parametrize(
    "constant",
    [
        (codes, "PROTOCOL_VERSION"),
        (frames, "MAX_HEADER_BYTES"),
        (frames, "MAX_MESSAGE_BYTES"),
        (frames, "MAX_BATCH_MESSAGES"),
        (frames, "MAX_REQUEST_BYTES"),
        (messages, "MAX_QUEUE_NUMS"),
        (messages, "DEFAULT_QUEUE_NUMS"),
        (messages, "DEFAULT_TOPIC_PERM"),
        (names, "MAX_TOPIC_LENGTH"),
        (names, "MAX_GROUP_LENGTH"),
        (names, "MAX_SYSTEM_TOPIC_LENGTH"),
    ],
    ids=lambda c: c[1],
)
def test_limits_are_documented(constant: tuple[object, str]) -> None:
    module, name = constant
    value = getattr(module, name)
    assert any(name in line and str(value) in line for line in LINES), (name, value)


BODIES: list[type[msgspec.Struct]] = sorted(
    {
        *messages.BODY_TYPES.values(),
        *messages.REPLY_TYPES.values(),
        messages.BatchEntry,
        messages.QueueData,
        messages.BrokerData,
    },
    key=lambda cls: str(getattr(cls, "__name__", "")),
)


@pytest.mark.parametrize("body", BODIES, ids=lambda cls: cls.__name__)
def test_every_body_and_field_is_documented(body: type[msgspec.Struct]) -> None:
    assert re.search(rf"\b{body.__name__}\b", DOC), body.__name__
    for field in msgspec.structs.fields(body):
        assert f"`{field.encode_name}`" in DOC, f"{body.__name__}.{field.encode_name}"


def _hex_blocks() -> list[bytes]:
    """The annotated hex dumps of section 9: each line starts with bytes, then a comment."""
    section = DOC[DOC.index("## 9. Worked example") :]
    section = section[: section.index("\n## ", 1)]
    blocks = []
    for block in re.findall(r"```\n(.*?)```", section, re.S):
        data = bytearray()
        for line in block.splitlines():
            for token in line.split():
                if not re.fullmatch(r"[0-9a-f]{2}", token):
                    break
                data.append(int(token, 16))
        blocks.append(bytes(data))
    return blocks


def test_worked_examples_match_the_encoder() -> None:
    request, reply, error = _hex_blocks()
    body = messages.GetRouteInfoBody(topic="T1")
    assert frames.encode_request(codes.RequestCode.GET_ROUTE_INFO_BY_TOPIC, 7, body) == [request]
    route = messages.TopicRouteData(
        queue_datas=[
            messages.QueueData(broker_name="b", read_queue_nums=4, write_queue_nums=4, perm=6)
        ],
        broker_datas=[
            messages.BrokerData(cluster_name="c", broker_name="b", broker_addrs={0: "tcp://h:1"})
        ],
    )
    assert frames.encode_reply(7, codes.ResponseCode.SUCCESS, route) == [reply]
    no_route = frames.encode_reply(7, codes.ResponseCode.NO_ROUTE, remark="no route")
    assert no_route == [error]
    # The sizes and one-line hex strings the text quotes.
    assert f"frame 0, {len(reply)} bytes" in DOC
    assert f"({len(request)} bytes)" in DOC and f"({len(error)} bytes)" in DOC
    for data in (request, error):
        assert " ".join(f"{b:02x}" for b in data) in DOC
