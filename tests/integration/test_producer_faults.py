"""Producer retries, statuses, coalescing and splitting, against scripted fake brokers.

Real brokers cannot be told to answer SYSTEM_BUSY or FLUSH_DISK_TIMEOUT, or to never
answer, on demand; these faults are simulated by a fake NameServer and two fake brokers
on real loopback ROUTER sockets, owned by one background thread (STYLE 12: fakes only
to simulate faults). Everything else is tested against real processes in test_client.py.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec
import pytest

import fabric.aio
from fabric import (
    Message,
    MessageIllegalError,
    Producer,
    ProtocolError,
    RequestTimeoutError,
    SendStatus,
    ServerBusyError,
)
from fabric.protocol import (
    Flag,
    Request,
    RequestCode,
    ResponseCode,
    SysFlag,
    encode_reply,
    request_code,
)
from fabric.protocol import messages as m
from tests.integration import fakes


@dataclass
class Seen:
    """One request a fake broker received."""

    broker: str
    code: RequestCode
    flags: int
    body: msgspec.Struct
    bodies: list[bytes]


#: (broker name, request) -> (code, reply body) or None for no reply at all.
Script = Callable[[str, Seen], "tuple[ResponseCode, msgspec.Struct | None] | None"]


def ok(broker: str, seen: Seen) -> tuple[ResponseCode, msgspec.Struct | None]:
    """Store it: the reply a healthy broker gives."""
    return ResponseCode.SUCCESS, store_reply(broker, seen)


def store_reply(broker: str, seen: Seen) -> msgspec.Struct:
    body = seen.body
    if isinstance(body, m.SendBatchBody):
        return m.SendBatchReply(
            msg_ids=[e.uniq_id for e in body.messages],
            queue_id=body.queue_id,
            queue_offsets=list(range(len(body.messages))),
            broker_name=broker,
        )
    assert isinstance(body, m.SendMessageBody)
    return m.SendReply(
        msg_id=body.uniq_id, queue_id=body.queue_id, queue_offset=0, broker_name=broker
    )


class FakeCluster(fakes.FakeCluster):
    """A NameServer and brokers "a" and "b" serving topic "T" (2 queues each).

    Every request to a broker is recorded and answered as ``script`` says.
    """

    queues = 2

    def __init__(self, script: Script = ok) -> None:
        self.script = script
        self.seen: list[Seen] = []
        super().__init__()

    def sent_to(self, broker: str) -> list[Seen]:
        return [s for s in self.seen if s.broker == broker]

    def serve_broker(self, name: str, request: Request, bodies: list[bytes]) -> fakes.Frames | None:
        seen = Seen(name, request_code(request), request.flags, request.body, bodies)
        self.seen.append(seen)
        answer = self.script(name, seen)
        if answer is None or request.flags & Flag.ONEWAY:
            return None
        reply_code, body = answer
        return encode_reply(request.request_id, reply_code, body, remark="scripted")


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster() as fake:
        yield fake


def producer(cluster: FakeCluster, **options: object) -> Producer:
    return Producer("pg", nameservers=cluster.endpoints["ns"], **options).start()  # type: ignore[arg-type]


def test_a_busy_broker_is_retried_elsewhere_and_then_avoided(cluster: FakeCluster) -> None:
    def script(broker: str, seen: Seen) -> tuple[ResponseCode, msgspec.Struct | None]:
        return (ResponseCode.SYSTEM_BUSY, None) if broker == "a" else ok(broker, seen)

    cluster.script = script
    p = producer(cluster)
    try:
        results = [p.send(Message("T", b"x%d" % i)) for i in range(12)]
    finally:
        p.shutdown()
    assert all(r.status is SendStatus.SEND_OK and r.queue.broker_name == "b" for r in results)
    assert len(cluster.sent_to("a")) <= 1  # once failed, "a" is avoided
    # a retried send keeps its message id
    if cluster.sent_to("a"):
        busy_id = cluster.sent_to("a")[0].body.uniq_id  # type: ignore[attr-defined]
        assert busy_id in {r.msg_id for r in results}


def test_store_statuses_are_results_not_retries(cluster: FakeCluster) -> None:
    def script(broker: str, seen: Seen) -> tuple[ResponseCode, msgspec.Struct | None]:
        return ResponseCode.FLUSH_DISK_TIMEOUT, store_reply(broker, seen)

    cluster.script = script
    p = producer(cluster)
    try:
        r = p.send(Message("T", b"x"))
    finally:
        p.shutdown()
    assert r.status is SendStatus.FLUSH_DISK_TIMEOUT
    assert len(cluster.seen) == 1


@pytest.mark.parametrize("retries", [0, 2])
def test_retries_are_bounded(cluster: FakeCluster, retries: int) -> None:
    cluster.script = lambda broker, seen: (ResponseCode.SYSTEM_BUSY, None)
    p = producer(cluster, retries=retries)
    try:
        with pytest.raises(ServerBusyError) as info:
            p.send(Message("T", b"x"))
    finally:
        p.shutdown()
    assert len(cluster.seen) == 1 + retries
    assert info.value.address in (cluster.endpoints["a"], cluster.endpoints["b"])
    assert len({s.body.uniq_id for s in cluster.seen}) == 1  # type: ignore[attr-defined]


def test_no_reply_is_a_timeout(cluster: FakeCluster) -> None:
    cluster.script = lambda broker, seen: None
    p = producer(cluster, send_timeout=0.3)
    try:
        with pytest.raises(RequestTimeoutError):
            p.send(Message("T", b"x"))
        future = p.send_async(Message("T", b"y"))
        assert isinstance(future.exception(5), RequestTimeoutError)
    finally:
        p.shutdown()


def test_a_malformed_reply_is_a_protocol_error(cluster: FakeCluster) -> None:
    cluster.script = lambda broker, seen: (ResponseCode.SUCCESS, m.Empty())
    p = producer(cluster)
    try:
        with pytest.raises(ProtocolError):
            p.send(Message("T", b"x"))
    finally:
        p.shutdown()
    assert len(cluster.seen) == 1


def _run(coro: Callable[[], object]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def test_waiting_sends_are_coalesced_and_fanned_out(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with fabric.aio.Producer("pg", nameservers=cluster.endpoints["ns"]) as p:
            await p.send(Message("T", b"warm"))  # learn the route
            cluster.seen.clear()
            # 300 sends handed over without yielding: the loop finds them all waiting
            futures = [p.send_async(Message("T", b"m%d" % i)) for i in range(300)]
            results = await asyncio.gather(*futures)
        assert [s.code for s in cluster.seen] == [RequestCode.SEND_BATCH_MESSAGE] * 2
        assert [len(s.bodies) for s in cluster.seen] == [256, 44]  # batch_max_messages
        assert [s.bodies for s in cluster.seen] == [
            [b"m%d" % i for i in range(256)],
            [b"m%d" % i for i in range(256, 300)],
        ]
        sent_ids = [e.uniq_id for s in cluster.seen for e in s.body.messages]  # type: ignore[attr-defined]
        assert [r.msg_id for r in results] == sent_ids
        assert [r.queue_offset for r in results] == [*range(256), *range(44)]

    _run(main)


def test_a_refused_coalesced_request_is_split(cluster: FakeCluster) -> None:
    def script(broker: str, seen: Seen) -> tuple[ResponseCode, msgspec.Struct | None]:
        if seen.code is RequestCode.SEND_BATCH_MESSAGE or seen.bodies == [b"bad"]:
            return ResponseCode.MESSAGE_ILLEGAL, None
        return ok(broker, seen)

    cluster.script = script

    async def main() -> None:
        async with fabric.aio.Producer("pg", nameservers=cluster.endpoints["ns"]) as p:
            await p.send(Message("T", b"warm"))
            futures = [p.send_async(Message("T", b)) for b in (b"good1", b"bad", b"good2")]
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
        assert isinstance(outcomes[1], MessageIllegalError)
        assert [o.status for o in (outcomes[0], outcomes[2])] == [SendStatus.SEND_OK] * 2  # type: ignore[union-attr]

    _run(main)


def test_a_user_batch_is_never_split(cluster: FakeCluster) -> None:
    cluster.script = lambda broker, seen: (ResponseCode.MESSAGE_ILLEGAL, None)
    p = producer(cluster)
    try:
        with pytest.raises(MessageIllegalError):
            p.send_batch([Message("T", b"1"), Message("T", b"2")])
    finally:
        p.shutdown()
    assert [len(s.bodies) for s in cluster.seen] == [2]


def test_wire_fields_compression_and_oneway(cluster: FakeCluster) -> None:
    p = producer(cluster)
    try:
        big = b"abc" * 5000
        r = p.send(Message("T", big, tags="A", keys=["k"], properties={"p": "v"}, flag=3))
        p.send_oneway(Message("T", b"fire", tags="log"), queue=r.queue)
        p.send(Message("T", b"after"), queue=r.queue)  # ordered behind the oneway
    finally:
        p.shutdown()
    first, oneway = cluster.seen[0], next(s for s in cluster.seen if s.flags & Flag.ONEWAY)
    body = first.body
    assert isinstance(body, m.SendMessageBody)
    assert (body.producer_group, body.topic, body.tags, body.keys, body.properties) == (
        "pg",
        "T",
        "A",
        ["k"],
        {"p": "v"},
    )
    assert body.flag == 3 and body.uniq_id == r.msg_id and body.born_timestamp > 0
    assert body.sysflag & SysFlag.COMPRESSED and zlib.decompress(first.bodies[0]) == big
    assert oneway.bodies == [b"fire"]
