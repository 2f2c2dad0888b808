"""PushService on a real MessageStore with a fake socket: refusals, dropped peers, fairness (13.3).

The socket is faked only to simulate what is hard to provoke over loopback: a peer whose
queue is full (ZeroMQ refuses with EAGAIN) and a peer that is gone (EHOSTUNREACH).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from broker.arrivals import Arrivals
from broker.locks import QueueLockTable
from broker.offsets import ConsumerOffsets
from broker.push import Delivery, PushService, StreamState
from broker.reading import FilterCache
from broker.store import MessageStore, PutMessage
from fabric.protocol import RequestCode, parse_reply
from fabric.protocol import messages as m
from fabric.protocol.frames import Buffer
from fabric.protocol.records import decode_record


class FakePusher:
    """Records pushes; ``answer`` decides what the socket says."""

    def __init__(self) -> None:
        self.answer: Callable[[bytes], Delivery] = lambda identity: Delivery.SENT
        self.pushed: list[tuple[bytes, int, int, list[int], int]] = []
        self.refused = 0

    def push(self, identity: bytes, frames: Sequence[Buffer]) -> Delivery:
        delivery = self.answer(identity)
        if delivery is not Delivery.SENT:
            self.refused += 1
            return delivery
        reply = parse_reply(list(frames))
        offsets = [decode_record(f).queue_offset for f in reply.frames]
        next_offset = -1
        if reply.code == RequestCode.PUSH_MESSAGES:
            next_offset = reply.decode(m.PushBody).next_offset
        self.pushed.append((identity, reply.code, reply.request_id, offsets, next_offset))
        return Delivery.SENT

    def offsets(self, identity: bytes) -> list[int]:
        return [
            o for ident, _c, _s, offsets, _n in self.pushed if ident == identity for o in offsets
        ]


def _fill(store: MessageStore, topic: str, count: int, tags: str = "") -> None:
    for i in range(count):
        result = store.append(PutMessage(topic=topic, queue_id=0, body=b"%d" % i, tags=tags))
        assert result.ok


def _service(
    loop: asyncio.AbstractEventLoop,
    store: MessageStore,
    pusher: FakePusher,
    members: dict[str, bytes] | None = None,
) -> tuple[PushService, Arrivals, ConsumerOffsets]:
    arrivals = Arrivals(loop)
    offsets = ConsumerOffsets(None)
    known = members or {}
    service = PushService(
        loop,
        store,
        offsets,
        QueueLockTable(30.0, loop.time),
        arrivals,
        pusher,
        max_msgs=16,
        max_bytes=1024 * 1024,
        max_streams=100,
        client_identity=known.get,
    )
    return service, arrivals, offsets


def _open(service: PushService, identity: bytes, topic: str, **kw: object) -> None:
    fields: dict[str, object] = {
        "group": "g",
        "client_id": "c",
        "queue_id": 0,
        "offset": 0,
        "window_msgs": 1000,
        "window_bytes": 1 << 30,
        "filter": FilterCache().get(0, "*", exact_tags=True),
        "exclusive": False,
        "commit": True,
    }
    fields.update(kw)
    service.open(identity, 1, topic=topic, **fields)  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Run the loop until ``predicate`` holds (callbacks and timers run meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_a_refused_push_is_retried_without_losing_records(store: MessageStore) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pusher = FakePusher()
        service, _arrivals, _offsets = _service(loop, store, pusher)
        _fill(store, "T", 40)
        pusher.answer = lambda identity: Delivery.BUSY  # the peer's queue is full
        _open(service, b"peer", "T")
        await _until(lambda: pusher.refused >= 2)
        (stream,) = service.streams()
        assert stream.state is StreamState.BLOCKED
        assert stream.next_offset == 0 and stream.msgs_left == 1000
        pusher.answer = lambda identity: Delivery.SENT
        await _until(lambda: len(pusher.offsets(b"peer")) == 40)
        assert pusher.offsets(b"peer") == list(range(40))
        assert stream.next_offset == stream.pushed_offset == 40
        assert stream.state is StreamState.WAITING
        service.shutdown()

    asyncio.run(scenario())


def test_streams_of_a_gone_peer_are_dropped_unless_its_client_lives_there(
    store: MessageStore,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pusher = FakePusher()
        service, _arrivals, _offsets = _service(loop, store, pusher, {"live": b"kept"})
        _fill(store, "T", 3)
        pusher.answer = lambda identity: Delivery.GONE
        _open(service, b"gone", "T", client_id="nobody")
        _open(service, b"kept", "T", client_id="live")
        await _until(lambda: pusher.refused >= 3)
        assert [s.identity for s in service.streams()] == [b"kept"]
        assert service.get(b"kept", 1) is not None
        assert service.get(b"gone", 1) is None
        service.shutdown()

    asyncio.run(scenario())


def test_window_filter_and_arrivals(store: MessageStore) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pusher = FakePusher()
        service, arrivals, offsets = _service(loop, store, pusher)
        _fill(store, "T", 5, tags="A")
        _fill(store, "T", 3, tags="B")
        flt = FilterCache().get(0, "A", exact_tags=True)
        _open(service, b"p", "T", window_msgs=2, filter=flt)
        await _until(lambda: len(pusher.offsets(b"p")) == 2)
        (stream,) = service.streams()
        assert stream.state is StreamState.NO_CREDIT
        assert service.ack(b"p", 1, 10, 0, commit_offset=99)  # credit capped at 2
        assert offsets.query("g", "T", 0) == 2  # never past what was pushed
        await _until(lambda: len(pusher.offsets(b"p")) == 4)
        assert stream.state is StreamState.NO_CREDIT
        assert service.ack(b"p", 1, 2, 0, commit_offset=-1)
        await _until(lambda: stream.state is StreamState.WAITING)
        assert pusher.offsets(b"p") == [0, 1, 2, 3, 4]
        # The B messages were skipped: the last push moved next_offset past them.
        assert stream.pushed_offset == 8
        assert pusher.pushed[-1][4] == 8
        # An arrival wakes the stream; one wake-up for several appends.
        before = arrivals.wakeups
        _fill(store, "T", 2, tags="A")
        arrivals.notify("T", 0)
        arrivals.notify("T", 0)
        stream.msgs_left = stream.bytes_left = 1 << 20
        await _until(lambda: len(pusher.offsets(b"p")) == 7)
        assert arrivals.wakeups == before + 1
        assert not service.ack(b"p", 2, 1, 1, -1)  # another stream id
        assert service.close_stream(b"p", 1, commit_offset=10, unlock=False)
        assert offsets.query("g", "T", 0) == 10
        assert len(service) == 0
        service.shutdown()

    asyncio.run(scenario())


def test_streams_take_turns(store: MessageStore) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pusher = FakePusher()
        service, _arrivals, _offsets = _service(loop, store, pusher)
        _fill(store, "Big", 2000)
        _fill(store, "Small", 1)
        _open(service, b"big", "Big", window_msgs=65536)
        _open(service, b"small", "Small")
        await _until(lambda: len(pusher.offsets(b"big")) == 2000)
        # Round robin: the small stream was served in the first round, not after the
        # 125 pushes (16 records each) of the big one.
        order = [ident for ident, _c, _s, _o, _n in pusher.pushed]
        assert order.index(b"small") == 1
        assert pusher.offsets(b"big") == list(range(2000))
        closed = service.close_all("shutdown")
        assert closed == 2
        codes = [(ident, code) for ident, code, _s, _o, _n in pusher.pushed[-2:]]
        assert sorted(codes) == [
            (b"big", RequestCode.STREAM_CLOSED),
            (b"small", RequestCode.STREAM_CLOSED),
        ]
        service.shutdown()

    asyncio.run(scenario())
