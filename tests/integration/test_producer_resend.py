"""The producer's ``resend`` flag (docs/PROTOCOL.md 11.4, 14.4), against scripted fake brokers.

A send whose outcome is unknown (the broker went away with the request in flight) may
have been stored; every later attempt of it must say ``resend`` so that a broker can
answer with the first copy instead of storing a second. A real broker cannot be told to
vanish between storing and replying, so that fault is simulated here (STYLE 12: fakes
only for faults): a fake broker that "crashes" closes its socket on receiving a send,
without replying. The broker's side of 14.4 (storing once) is tested against a real
broker in test_producer_timed.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec
import pytest

import fabric.aio
from fabric import Message, Producer, SendStatus
from fabric.protocol import Request, RequestCode, ResponseCode, encode_reply, request_code
from fabric.protocol import messages as m
from tests.integration import fakes


@dataclass
class Seen:
    """One send a fake broker received."""

    broker: str
    code: RequestCode
    body: msgspec.Struct
    bodies: list[bytes]

    @property
    def resend(self) -> bool:
        assert isinstance(self.body, m.SendMessageBody | m.SendBatchBody)
        return self.body.resend

    @property
    def ids(self) -> list[str]:
        body = self.body
        if isinstance(body, m.SendBatchBody):
            return [e.uniq_id for e in body.messages]
        assert isinstance(body, m.SendMessageBody)
        return [body.uniq_id]


#: What a fake broker does with a send: store it and reply (SEND_OK, or stored without
#: the flush confirmed), refuse it, or crash.
STORE, FLUSH_TIMEOUT, BUSY, CRASH = "store", "flush_timeout", "busy", "crash"
_SENDS = (RequestCode.SEND_MESSAGE, RequestCode.SEND_BATCH_MESSAGE)
Script = Callable[[Seen], str]


class FakeCluster(fakes.FakeCluster):
    """A NameServer and brokers "a" and "b" serving topic "T" (1 queue each), on one thread.

    Sends go to the script; any other request is recorded and answered SUCCESS ``{}``.
    """

    queues = 1
    cluster_info = True

    def __init__(self, script: Script = lambda seen: STORE) -> None:
        self.script = script
        self.seen: list[Seen] = []
        super().__init__()

    def serve_broker(self, name: str, request: Request, bodies: list[bytes]) -> fakes.Frames | None:
        rid, code = request.request_id, request_code(request)
        seen = Seen(name, code, request.body, bodies)
        self.seen.append(seen)
        if code not in _SENDS:
            return encode_reply(rid, ResponseCode.SUCCESS, m.Empty())
        action = self.script(seen)
        if action == CRASH:
            raise fakes.Crash
        if action == BUSY:
            return encode_reply(rid, ResponseCode.SYSTEM_BUSY)
        status = (
            ResponseCode.FLUSH_DISK_TIMEOUT if action == FLUSH_TIMEOUT else ResponseCode.SUCCESS
        )
        body: msgspec.Struct
        if isinstance(seen.body, m.SendBatchBody):
            n = len(seen.body.messages)
            body = m.SendBatchReply(
                msg_ids=seen.ids, queue_id=0, queue_offsets=list(range(n)), broker_name=name
            )
        else:
            body = m.SendReply(
                msg_id=seen.ids[0],
                queue_id=0,
                queue_offset=0,
                broker_name=name,
                commitlog_offset=1000 * len(self.seen),
            )
        return encode_reply(rid, status, body)


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with FakeCluster() as fake:
        yield fake


def script_crashing_first(cluster: FakeCluster) -> Script:
    """The broker that gets the first send (from now on) crashes with it; then all is stored."""
    cluster.seen.clear()

    def script(seen: Seen) -> str:
        return CRASH if len(cluster.seen) == 1 else STORE

    return script


@pytest.mark.parametrize("direct_send", [True, False])
def test_a_send_whose_broker_vanished_is_retried_as_a_resend(
    cluster: FakeCluster, direct_send: bool
) -> None:
    """Direct first attempt (its retry on the loop), or every attempt on the loop."""
    with Producer("pg", nameservers=cluster.endpoints["ns"], direct_send=direct_send) as p:
        p.send(Message("T", b"warm"))  # the route is known: the next send may go direct
        cluster.script = script_crashing_first(cluster)
        r = p.send(Message("T", b"x"))
    first, retry = cluster.seen
    assert r.status is SendStatus.SEND_OK and r.queue.broker_name == retry.broker
    assert first.broker != retry.broker
    assert (first.resend, retry.resend) == (False, True)
    assert first.ids == retry.ids == [r.msg_id]
    assert retry.bodies == [b"x"]


def test_a_coalesced_request_is_retried_as_a_resend(cluster: FakeCluster) -> None:
    async def main() -> None:
        async with fabric.aio.Producer("pg", nameservers=cluster.endpoints["ns"]) as p:
            await p.send(Message("T", b"warm"))  # learn the route
            cluster.script = script_crashing_first(cluster)
            futures = [p.send_async(Message("T", b"m%d" % i)) for i in range(5)]
            results = await asyncio.gather(*futures)
        first, retry = cluster.seen
        assert first.code is retry.code is RequestCode.SEND_BATCH_MESSAGE
        assert (first.resend, retry.resend) == (False, True)
        assert first.ids == retry.ids == [r.msg_id for r in results]

    asyncio.run(main())


def test_a_retry_after_a_refusal_is_not_a_resend(cluster: FakeCluster) -> None:
    with Producer("pg", nameservers=cluster.endpoints["ns"]) as p:
        p.send(Message("T", b"warm"))
        cluster.seen.clear()
        cluster.script = lambda seen: BUSY if len(cluster.seen) == 1 else STORE
        r = p.send(Message("T", b"x"))
    first, retry = cluster.seen
    assert r.status is SendStatus.SEND_OK
    assert (first.resend, retry.resend) == (False, False)
    assert first.ids == retry.ids


def test_resend_sticks_once_an_outcome_was_unknown(cluster: FakeCluster) -> None:
    """Crash, then a refusal: the third attempt still says resend (the first may be stored)."""
    actions = iter([CRASH, BUSY, STORE])
    with Producer("pg", nameservers=cluster.endpoints["ns"], retries=5) as p:
        p.send(Message("T", b"warm"))
        cluster.seen.clear()
        cluster.script = lambda seen: next(actions)
        # One broker is left after the crash; attempts at the dead one fail at once,
        # unseen. Seen: the crash, the refusal, the store.
        r = p.send(Message("T", b"x"))
    assert r.status is SendStatus.SEND_OK
    assert [s.resend for s in cluster.seen] == [False, True, True]
    assert len({tuple(s.ids) for s in cluster.seen}) == 1
