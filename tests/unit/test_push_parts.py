"""The push consumer's pure parts: per-queue tracking, options, subscriptions, offset file."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import msgspec
import pytest

from fabric.consumer.listener import ConsumeStatus, Job
from fabric.consumer.offset_store import LocalOffsetStore, offset_file_name
from fabric.consumer.options import PushConsumerOptions, parse_position
from fabric.consumer.process_queue import ProcessQueue, StreamState
from fabric.consumer.subscription import make_subscription
from fabric.errors import InvalidFilterError, InvalidNameError
from fabric.filters import compile_tags
from fabric.message import MessageExt, MessageQueue
from fabric.protocol.codes import ConsumeFrom, FilterType

MQ = MessageQueue("T", "broker-a", 0)


def msg(offset: int, size: int = 100, tags: str = "") -> MessageExt:
    return MessageExt(
        topic="T",
        body=b"x",
        tags=tags,
        keys=[],
        properties={},
        msg_id=f"id{offset}",
        queue_id=0,
        queue_offset=offset,
        born_timestamp=0,
        store_timestamp=0,
        reconsume_times=0,
        broker_name="broker-a",
        store_size=size,
    )


class _NoDispatch:
    def submit(self, job: Job) -> None:
        raise AssertionError("not used")

    def submit_all(self, jobs: list[Job]) -> None:
        raise AssertionError("not used")

    def stop(self) -> None:
        pass


def pq(orderly: bool = False, tags: str | None = None) -> ProcessQueue:
    tag_filter = compile_tags(tags) if tags is not None else None
    return ProcessQueue(
        MQ, 1, "tcp://b", lambda m: None, _NoDispatch(), orderly=orderly, tag_filter=tag_filter
    )


# -- ProcessQueue ---------------------------------------------------------------------------


def test_commit_offset_never_passes_a_message_not_done() -> None:
    q = pq()
    q.opened(10)
    assert q.commit_offset() == 10
    ready, due = q.receive([msg(10), msg(11), msg(12)], next_offset=13)
    assert [m.queue_offset for m in ready] == [10, 11, 12] and not due
    assert q.commit_offset() == 10
    q.done(msg(12))
    q.done(msg(11))
    assert q.commit_offset() == 10, "10 is still in the listener"
    q.done(msg(10))
    assert q.commit_offset() == 13
    assert q.take_ack() == (3, 300, 13)
    assert q.take_ack() is None


def test_first_ack_commits_the_start_offset() -> None:
    q = pq()
    q.opened(42)
    assert q.take_ack() == (0, 0, 42)
    assert q.take_ack() is None


def test_a_push_without_records_moves_the_commit_past_filtered_messages() -> None:
    q = pq()
    q.opened(5)
    q.take_ack()
    ready, due = q.receive([], next_offset=9)
    assert ready == [] and due
    assert q.take_ack() == (0, 0, 9)


def test_the_tag_recheck_skips_hash_collisions_and_credits_them() -> None:
    q = pq(tags="plumless")
    q.opened(0)
    ready, due = q.receive([msg(0, tags="buckeroo"), msg(1, tags="plumless")], next_offset=2)
    assert [m.queue_offset for m in ready] == [1] and due
    assert q.commit_offset() == 1
    assert q.take_ack() == (1, 100, 1)


def test_duplicates_are_credited_not_dispatched() -> None:
    q = pq()
    q.opened(0)
    q.receive([msg(0), msg(1)], next_offset=2)
    ready, due = q.receive([msg(1)], next_offset=2)
    assert ready == [] and due and q.credit_msgs == 1


def test_ordered_hands_out_one_message_at_a_time_in_order() -> None:
    q = pq(orderly=True)
    q.opened(0)
    ready, _ = q.receive([msg(0), msg(1), msg(2)], next_offset=3)
    assert [m.queue_offset for m in ready] == [0]
    assert q.take_next() == [], "busy until the first is done"
    q.done(ready[0])
    q.busy = False
    assert [m.queue_offset for m in q.take_next()] == [1]


def test_stop_drops_the_buffer_and_returns_the_retry_timers() -> None:
    q = pq(orderly=True)
    q.receive([msg(0), msg(1)], next_offset=2)
    q.retries[0] = "timer"  # type: ignore[assignment]
    assert q.stop(StreamState.CLOSING) == ["timer"]
    assert not q.accepting and not q.buffer and q.take_next() == []


def test_give_back_owes_the_ack_again() -> None:
    q = pq()
    q.opened(0)
    q.receive([msg(0)], next_offset=1)
    q.done(msg(0))
    ack = q.take_ack()
    assert ack == (1, 100, 1)
    q.give_back(ack)
    assert q.take_ack() == (1, 100, 1)


def test_job_settle_accepts_only_consume_statuses() -> None:
    job = Job(pq(), msg(0), lambda m: None)
    job.settle(ConsumeStatus.CONSUME_SUCCESS)
    assert job.status is ConsumeStatus.CONSUME_SUCCESS and job.error is None
    job.settle(None)
    assert job.status is ConsumeStatus.RECONSUME_LATER and isinstance(job.error, TypeError)


# -- options and positions -----------------------------------------------------------------


def test_parse_position() -> None:
    assert parse_position("earliest") == (ConsumeFrom.FIRST_OFFSET, 0)
    assert parse_position("LATEST") == (ConsumeFrom.LAST_OFFSET, 0)
    assert parse_position(ConsumeFrom.FIRST_OFFSET) == (ConsumeFrom.FIRST_OFFSET, 0)
    assert parse_position(1_700_000_000_000) == (ConsumeFrom.TIMESTAMP, 1_700_000_000_000)
    assert parse_position("1700000000000") == (ConsumeFrom.TIMESTAMP, 1_700_000_000_000)
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert parse_position(when) == (ConsumeFrom.TIMESTAMP, 1_704_164_645_000)
    assert parse_position("2024-01-02T03:04:05+00:00") == (ConsumeFrom.TIMESTAMP, 1_704_164_645_000)
    for bad in ("soon", -1, True, ConsumeFrom.TIMESTAMP):
        with pytest.raises(ValueError):
            parse_position(bad)  # type: ignore[arg-type]


def test_options_are_checked() -> None:
    PushConsumerOptions().check()
    for field, value in (
        ("prefetch", 0),
        ("prefetch", 70000),
        ("prefetch_bytes", 0),
        ("consume_threads", 0),
        ("allocation", "random"),
        ("rebalance_interval", 0.0),
        ("instance_name", "a/b"),
        ("reconsume_delay", -1.0),
        ("orderly_release_timeout", 0.0),
    ):
        with pytest.raises(ValueError, match=field if field != "allocation" else "strategy"):
            msgspec.structs.replace(PushConsumerOptions(), **{field: value}).check()


# -- subscriptions --------------------------------------------------------------------------


def ok(m: MessageExt) -> ConsumeStatus:
    return ConsumeStatus.CONSUME_SUCCESS


def test_subscriptions_are_checked_at_subscribe_time() -> None:
    sub = make_subscription("T", "TagB ||TagA", ok)
    assert sub.data.filter_type == FilterType.TAG and sub.data.expression == "TagA || TagB"
    sub = make_subscription("T", None, ok, sql="price > 10 AND region = 'eu'")
    assert sub.data.filter_type == FilterType.SQL92 and sub.tag_filter is None
    with pytest.raises(InvalidFilterError, match="column"):
        make_subscription("T", None, ok, sql="price > AND region = 'eu'")
    with pytest.raises(InvalidFilterError):
        make_subscription("T", "A || || B", ok)
    with pytest.raises(InvalidNameError):
        make_subscription("bad topic", "*", ok)
    with pytest.raises(TypeError):
        make_subscription("T", "*", None)
    with pytest.raises(ValueError, match="not both"):
        make_subscription("T", "A", ok, sql="a = 1")

    async def coro(m: MessageExt) -> ConsumeStatus:
        return ConsumeStatus.CONSUME_SUCCESS

    with pytest.raises(TypeError, match=r"fabric\.aio"):
        make_subscription("T", "*", coro)
    assert make_subscription("T", "*", coro, allow_async=True).is_async


# -- the local offset file ------------------------------------------------------------------


def test_offset_store_round_trip_and_atomic_file(tmp_path: Path) -> None:
    store = LocalOffsetStore(str(tmp_path / "offsets"), "g", "inst")
    assert store.load() == {} and store.get(MQ) == -1
    assert not store.persist(), "nothing to write"
    store.update(MQ, 7)
    store.update(MessageQueue("T", "broker-b", 3), 9)
    assert store.persist()
    path = tmp_path / "offsets" / offset_file_name("g", "inst")
    assert store.path == str(path)
    content = json.loads(path.read_text())
    assert content["group"] == "g" and content["instance"] == "inst"
    assert {(e["broker_name"], e["queue_id"], e["offset"]) for e in content["offsets"]} == {
        ("broker-a", 0, 7),
        ("broker-b", 3, 9),
    }
    assert not os.path.exists(str(path) + ".tmp")
    again = LocalOffsetStore(str(tmp_path / "offsets"), "g", "inst")
    assert again.load() == {MQ: 7, MessageQueue("T", "broker-b", 3): 9}


def test_a_corrupt_offset_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / offset_file_name("g", "i")
    path.write_text("{not json")
    store = LocalOffsetStore(str(tmp_path), "g", "i")
    assert store.load() == {}
    assert (tmp_path / (path.name + ".corrupt")).exists()


# -- ThreadDispatcher -----------------------------------------------------------------------


def test_thread_dispatcher_runs_every_job_of_a_push_in_chunks() -> None:
    import asyncio
    import threading

    from fabric.consumer.listener import MAX_CHUNK, ThreadDispatcher

    class Source:
        accepting = True

    class Closed:
        accepting = False

    seen: dict[int, str] = {}
    lock = threading.Lock()

    def listener(m: MessageExt) -> ConsumeStatus:
        with lock:
            seen[m.queue_offset] = threading.current_thread().name
        if m.queue_offset == 5:
            raise RuntimeError("listener failure")  # the rest of its chunk still runs
        return ConsumeStatus.CONSUME_SUCCESS

    async def scenario() -> list[Job]:
        loop = asyncio.get_running_loop()
        finished: list[Job] = []
        all_back = asyncio.Event()
        total = 3 * MAX_CHUNK * 4 + 2

        def on_done(jobs: list[Job]) -> None:
            finished.extend(jobs)
            if len(finished) >= total:
                all_back.set()

        pool = ThreadDispatcher(loop, 4, on_done, "test-consume")
        try:
            jobs = [Job(Source(), msg(i), listener) for i in range(total - 2)]
            jobs += [Job(Closed(), msg(total - 2 + i), listener) for i in range(2)]
            pool.submit_all(jobs)
            await asyncio.wait_for(all_back.wait(), 10)
        finally:
            assert await loop.run_in_executor(None, pool.join, 5.0)
        return finished

    finished = asyncio.run(scenario())
    total = len(finished)
    assert sorted(j.msg.queue_offset for j in finished) == list(range(total))
    by_offset = {j.msg.queue_offset: j for j in finished}
    assert by_offset[5].status is ConsumeStatus.RECONSUME_LATER
    assert isinstance(by_offset[5].error, RuntimeError)
    assert by_offset[6].status is ConsumeStatus.CONSUME_SUCCESS
    assert [by_offset[total - 1].status, by_offset[total - 2].status] == [None, None]
    assert sorted(seen) == list(range(total - 2))  # the closed source's jobs never ran
