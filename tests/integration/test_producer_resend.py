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
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
import pytest
import zmq

import fabric.aio
from fabric import Message, Producer, SendStatus
from fabric.protocol import RequestCode, ResponseCode, encode_reply, parse_request, request_code
from fabric.protocol import messages as m


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


@dataclass
class FakeCluster:
    """A NameServer and brokers "a" and "b" serving topic "T" (1 queue each), on one thread.

    Sends go to the script; any other request is recorded and answered SUCCESS ``{}``.
    """

    script: Script = lambda seen: STORE
    seen: list[Seen] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._ctx = zmq.Context()
        self._control = f"inproc://stop-{id(self)}"
        self._stopper = self._ctx.socket(zmq.PAIR)
        self._stopper.linger = 0
        self._stopper.connect(self._control)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-cluster", daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _route(self) -> m.TopicRouteData:
        names = ("a", "b")
        return m.TopicRouteData(
            queue_datas=[
                m.QueueData(broker_name=n, read_queue_nums=1, write_queue_nums=1, perm=6)
                for n in names
            ],
            broker_datas=[
                m.BrokerData(cluster_name="c", broker_name=n, broker_addrs={0: self.endpoints[n]})
                for n in names
            ],
        )

    def _run(self) -> None:
        # Every socket made here belongs to this thread.
        ctx = self._ctx
        control = ctx.socket(zmq.PAIR)
        control.linger = 0
        control.bind(self._control)
        sockets: dict[zmq.Socket[bytes], str] = {}
        for name in ("ns", "a", "b"):
            s = ctx.socket(zmq.ROUTER)
            s.linger = 0
            port = s.bind_to_random_port("tcp://127.0.0.1")
            self.endpoints[name] = f"tcp://127.0.0.1:{port}"
            sockets[s] = name
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        for s in sockets:
            poller.register(s, zmq.POLLIN)
        self._ready.set()
        try:
            while True:
                events = dict(poller.poll())
                if control in events:
                    return
                for s, name in list(sockets.items()):
                    if s in events and not self._serve(s, name):
                        # Crashed: the connections drop, and nothing listens any more.
                        poller.unregister(s)
                        del sockets[s]
                        s.close(linger=0)
        finally:
            for s in [*sockets, control]:
                s.close(linger=0)

    def _serve(self, sock: zmq.Socket[bytes], name: str) -> bool:
        identity, *frames = sock.recv_multipart()
        request, bodies = parse_request(frames)
        rid, code = request.request_id, request_code(request)
        if name == "ns":
            if code is RequestCode.GET_ROUTE_INFO_BY_TOPIC:
                reply = encode_reply(rid, ResponseCode.SUCCESS, self._route())
            elif code is RequestCode.GET_CLUSTER_INFO:
                route = self._route()
                info = m.ClusterInfo(
                    brokers={b.broker_name: b for b in route.broker_datas},
                    clusters={"c": ["a", "b"]},
                )
                reply = encode_reply(rid, ResponseCode.SUCCESS, info)
            else:
                reply = encode_reply(rid, ResponseCode.NO_ROUTE)
            sock.send_multipart([identity, *reply])
            return True
        seen = Seen(name, code, request.body, [bytes(b) for b in bodies])
        self.seen.append(seen)
        if code not in _SENDS:
            sock.send_multipart([identity, *encode_reply(rid, ResponseCode.SUCCESS, m.Empty())])
            return True
        action = self.script(seen)
        if action == CRASH:
            return False
        if action == BUSY:
            sock.send_multipart([identity, *encode_reply(rid, ResponseCode.SYSTEM_BUSY)])
            return True
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
        sock.send_multipart([identity, *encode_reply(rid, status, body)])
        return True

    def stop(self) -> None:
        self._stopper.send(b"stop")
        self._thread.join(10)
        self._stopper.close(linger=0)
        self._ctx.term()


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.stop()


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
