"""TraceDispatcher batching (fabric.trace, SPEC M21): size and time bounds, keys, the drop bound.

No sockets: the dispatcher sends to a fake TraceSender on a fresh asyncio loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import pytest

from fabric.message import Message, MessageQueue, SendResult
from fabric.protocol.codes import SendStatus
from fabric.trace import (
    TRACE_TOPIC,
    TraceDispatcher,
    TraceEvent,
    batch_keys,
    decode_events,
    describe_event,
    encode_events,
    sort_events,
)

WAIT = 5.0


class FakeSender:
    """Records trace records; ``arrived`` is set on each one."""

    def __init__(self) -> None:
        self.records: list[Message] = []
        self.arrived = asyncio.Event()
        self.closed = False
        self.fail = False

    def send(self, msg: Message) -> None:
        if self.fail:
            raise RuntimeError("the producer is shut down")
        self.records.append(msg)
        self.arrived.set()

    async def close(self, timeout: float) -> None:
        self.closed = True

    def events(self) -> list[TraceEvent]:
        return [e for r in self.records for e in decode_events(r.body)]

    async def wait_records(self, n: int) -> None:
        async def enough() -> None:
            while len(self.records) < n:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), WAIT)


def event(i: int, msg_id: str | None = None) -> TraceEvent:
    return TraceEvent(type="send", msg_id=msg_id or f"id-{i}", topic="T", timestamp=i)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 3 * WAIT))


def dispatcher(sender: FakeSender, **options: Any) -> TraceDispatcher:
    d = TraceDispatcher(asyncio.get_running_loop(), sender, group="g", client_id="c", **options)
    d.start()
    return d


def test_a_full_batch_leaves_at_once_and_the_rest_waits_for_the_timer() -> None:
    async def main() -> None:
        sender = FakeSender()
        d = dispatcher(sender, interval=60.0)
        for i in range(250):
            d.add(event(i))
        await sender.wait_records(2)
        assert [len(decode_events(r.body)) for r in sender.records] == [100, 100]
        assert d.pending() == 50
        await d.close()
        assert [len(decode_events(r.body)) for r in sender.records] == [100, 100, 50]
        assert [e.msg_id for e in sender.events()] == [f"id-{i}" for i in range(250)]
        assert sender.closed and d.records == 3 and d.events == 250

    run(main)


def test_a_lone_event_leaves_within_the_interval() -> None:
    async def main() -> None:
        sender = FakeSender()
        d = dispatcher(sender, interval=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        d.add(event(1))
        await sender.wait_records(1)
        assert loop.time() - started < 1.0
        [record] = sender.records
        assert record.topic == TRACE_TOPIC and record.keys == ("id-1",)
        await d.close()
        assert len(sender.records) == 1, "nothing more to send"

    run(main)


def test_events_from_other_threads_are_batched_too() -> None:
    async def main() -> None:
        sender = FakeSender()
        d = dispatcher(sender, interval=60.0, batch_max=10)

        def produce() -> None:
            for i in range(30):
                d.add(event(i))

        thread = threading.Thread(target=produce)
        thread.start()
        await asyncio.to_thread(thread.join, WAIT)
        await sender.wait_records(3)
        assert len(sender.events()) == 30
        await d.close()

    run(main)


def test_keys_are_the_message_ids_once_each_in_order() -> None:
    events = [event(1, "b"), event(2, "a"), event(3, "b"), event(4, "c"), event(5, "a")]
    assert batch_keys(events) == ["b", "a", "c"]

    async def main() -> None:
        sender = FakeSender()
        d = dispatcher(sender, interval=60.0, batch_max=5)
        for e in events:
            d.add(e)
        await sender.wait_records(1)
        assert sender.records[0].keys == ("b", "a", "c")
        await d.close()

    run(main)


def test_events_beyond_the_bound_are_dropped_and_counted() -> None:
    async def main() -> None:
        sender = FakeSender()
        d = dispatcher(sender, interval=60.0, batch_max=100, max_pending=5)
        for i in range(8):
            d.add(event(i))
        assert d.pending() == 5 and d.dropped == 3
        await d.close()
        assert [e.msg_id for e in sender.events()] == [f"id-{i}" for i in range(5)]
        d.add(event(9))  # closed: dropped too
        assert d.dropped == 4

    run(main)


def test_a_failing_sender_drops_the_batch_and_keeps_going() -> None:
    async def main() -> None:
        sender = FakeSender()
        d = dispatcher(sender, interval=60.0, batch_max=2)
        sender.fail = True
        d.add(event(1))
        d.add(event(2))
        # One loop iteration: the wake-up the second add scheduled runs (no timed wait).
        await asyncio.sleep(0)
        assert d.dropped == 2 and not sender.records
        sender.fail = False
        d.add(event(3))
        d.add(event(4))
        await sender.wait_records(1)
        await d.close()
        assert [e.msg_id for e in sender.events()] == ["id-3", "id-4"]

    run(main)


def test_send_events_carry_the_result_or_the_error_name() -> None:
    async def main() -> None:
        sender = FakeSender()
        d = dispatcher(sender, interval=60.0)
        queue = MessageQueue("T", "broker-a", 3)
        d.on_send("T", "m1", 1000, SendResult(SendStatus.SEND_OK, "m1", queue, 17))
        d.on_send("T", "m2", 1000, TimeoutError("no"))
        d.on_send("T", "m3", 1000, None)
        await d.close()
        ok, failed, oneway = sender.events()
        assert (ok.status, ok.broker, ok.queue_id, ok.queue_offset) == (
            "SEND_OK",
            "broker-a",
            3,
            17,
        )
        assert (ok.group, ok.client_id, ok.timestamp) == ("g", "c", 1000) and ok.cost_ms > 0
        assert (failed.status, failed.queue_id, failed.queue_offset) == ("TimeoutError", -1, -1)
        assert oneway.status == "ONEWAY"

    run(main)


def test_bodies_round_trip_as_a_msgpack_array_of_maps() -> None:
    events = [event(2), TraceEvent(type="consume", msg_id="x", status="CONSUME_SUCCESS")]
    body = encode_events(events)
    assert decode_events(body) == events
    raw = msgspec.msgpack.decode(body)
    assert isinstance(raw, list) and raw[1]["type"] == "consume" and raw[1]["queue_offset"] == -1
    with pytest.raises(msgspec.DecodeError):
        decode_events(b"\xc1")


def test_sorting_breaks_timestamp_ties_in_lifecycle_order() -> None:
    consume = TraceEvent(type="consume", msg_id="m", timestamp=5)
    send = TraceEvent(type="send", msg_id="m", timestamp=5)
    retry = TraceEvent(type="retry", msg_id="m", timestamp=5)
    early = TraceEvent(type="consume", msg_id="m", timestamp=4)
    assert sort_events([retry, consume, send, early]) == [early, send, consume, retry]
    line = describe_event(TraceEvent(type="send", msg_id="m", broker="b", queue_id=1, timestamp=0))
    assert line.startswith("1970-01-01T00:00:00.000Z send - m ") and "queue=b#1" in line
