"""broker.timers on a fake clock, the %TIMER% round trip, timer config keys, system topics."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.arrivals import Arrivals
from broker.config import BrokerConfig, BrokerConfigError
from broker.store import MessageStore, PutMessage, StoreConfig, decode_message
from broker.timers import (
    DELIVER_AT,
    REAL_QID,
    REAL_TOPIC,
    TimerService,
    delivery_message,
    is_timed,
    resolve_due_ms,
    timer_message,
)
from broker.topics import TopicTable
from fabric.errors import MessageIllegalError, NoPermissionError
from fabric.protocol.codes import DEFAULT_DEDUP_WINDOW, DEFAULT_TIMER_MAX_DELAY, DELAY_LEVELS
from fabric.protocol.messages import TopicConfig
from fabric.protocol.names import (
    BROKER_TOPICS,
    TIMER_TOPIC,
    check_topic,
    is_broker_topic,
    is_system_topic,
)

LEVELS = (1.0, 2.5) + (3.0,) * 16
NOW = 1_700_000_000_300  # ms, 0.3 s into a second


def test_resolve_due_ms() -> None:
    assert resolve_due_ms(0, 0, NOW, LEVELS, 60) == 0
    assert resolve_due_ms(1, 0, NOW, LEVELS, 60) == NOW + 1000
    assert resolve_due_ms(2, 0, NOW, LEVELS, 60) == NOW + 2500
    assert resolve_due_ms(0, NOW + 5, NOW, LEVELS, 60) == NOW + 5
    assert resolve_due_ms(0, NOW + 60_000, NOW, LEVELS, 60) == NOW + 60_000
    assert resolve_due_ms(0, 5, NOW, LEVELS, 60) == 5  # in the past: due now
    for level, at, why in (
        (1, NOW + 10, "not both"),
        (19, 0, "outside 0..18"),
        (-1, 0, "outside 0..18"),
        (0, -1, "negative"),
        (0, NOW + 60_001, "timer_max_delay"),
    ):
        with pytest.raises(MessageIllegalError, match=why):
            resolve_due_ms(level, at, NOW, LEVELS, 60)


def test_is_timed_only_past_the_current_second() -> None:
    assert not is_timed(NOW - 1, NOW)
    assert not is_timed(NOW + 699, NOW)  # within the current second: stored at once
    assert is_timed(NOW + 700, NOW)


def _open_store(root: Path) -> MessageStore:
    return MessageStore(
        str(root),
        StoreConfig(
            segment_size=1 << 20,
            max_message_size=64 * 1024,
            cq_entries_per_file=1024,
            index_slots=64,
            index_entries=256,
            warm_ahead_bytes=0,
        ),
    )


def test_a_timer_record_becomes_the_message_it_holds(tmp_path: Path) -> None:
    original = PutMessage(
        topic="%RETRY%g",
        queue_id=0,
        body=b"body",
        tags="t",
        keys=["k"],
        uniq_id="U",
        properties={"p": "1"},
        flag=3,
        sysflag=1,
        born_timestamp=99,
        born_host="10.0.0.1:5",
        reconsume_times=2,
        sys={"ORIGIN_TOPIC": "T"},
    )
    timed = timer_message(original, NOW + 5000)
    assert (timed.topic, timed.queue_id) == (TIMER_TOPIC, 0)
    assert timed.sys == {
        "ORIGIN_TOPIC": "T",
        REAL_TOPIC: "%RETRY%g",
        REAL_QID: "0",
        DELIVER_AT: str(NOW + 5000),
    }
    with _open_store(tmp_path / "store") as store:
        result = store.append(timed)
        stored = store.get_message(result.physical_offset)
    assert stored is not None
    assert delivery_message(stored) == original  # ORIGIN_TOPIC kept, timer keys dropped
    not_timer = PutMessage(topic="T", queue_id=0, body=b"")
    with _open_store(tmp_path / "other") as store:
        got = store.get_message(store.append(not_timer).physical_offset)
    assert got is not None and delivery_message(got) is None


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def test_the_service_delivers_when_the_second_comes(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    clock = _Clock(NOW / 1000)
    with _open_store(tmp_path / "store") as store:
        service = TimerService(
            store, Arrivals(loop), loop, levels=LEVELS, max_delay=60, clock=clock
        )
        try:
            due = service.due_ms(2, 0)
            assert due == NOW + 2500
            assert service.due_ms(0, NOW + 200) == 0  # this second: not timed
            msg = PutMessage(topic="T", queue_id=1, body=b"x", uniq_id="U1")
            result = service.schedule(msg, due)
            assert result.queue_offset == 0 and store.max_offset(TIMER_TOPIC, 0) == 1
            assert store.max_offset("T", 1) == 0
            assert service.timers.pending() == 1
            assert service.timers.min_commitlog_offset == result.physical_offset
            # Due at NOW + 2.5 s: second NOW//1000 + 3 (rounded up), not before.
            first_s = NOW // 1000
            assert service.run_due(first_s + 2) == 0
            assert store.max_offset("T", 1) == 0
            assert service.run_due(first_s + 3) == 1
            delivered = store.get_messages("T", 1, 0).records
            assert [decode_message(r).uniq_id for r in delivered] == ["U1"]
            assert decode_message(delivered[0]).sys == {}
            assert service.timers.pending() == 0 and service.delivered == 1
            # A due time already past is stored at once, in its topic.
            direct = service.schedule(PutMessage(topic="T", queue_id=1, body=b"y"), NOW - 1)
            assert direct.queue_offset == 1
        finally:
            loop.run_until_complete(service.close())


def test_broker_config_checks_the_timer_keys() -> None:
    good = BrokerConfig(data_dir="d").validate()
    assert good.delay_levels == DELAY_LEVELS and good.dedup_window == DEFAULT_DEDUP_WINDOW
    assert good.timer_max_delay == DEFAULT_TIMER_MAX_DELAY
    assert BrokerConfig(data_dir="d", delay_levels=LEVELS).validate().delay_levels == LEVELS
    for bad in (
        {"delay_levels": LEVELS[:-1]},
        {"delay_levels": (0.0, *LEVELS[1:])},
        {"delay_levels": (math.inf, *LEVELS[1:])},
        {"timer_max_delay": 0.0},
        {"dedup_window": -1.0},
        {"dedup_window": math.nan},
    ):
        with pytest.raises(BrokerConfigError):
            BrokerConfig(data_dir="d", **bad).validate()  # type: ignore[arg-type]


def test_system_topics_in_the_topic_table() -> None:
    table = TopicTable(None)
    created: list[int] = []
    table.on_system_topic_created = lambda: created.append(1)
    retry = table.ensure_system_topic("%RETRY%grp")
    assert (retry.read_queue_nums, retry.write_queue_nums, retry.perm) == (1, 1, 6)
    assert table.ensure_system_topic("%RETRY%grp") is retry and created == [1]
    assert table.ensure_system_topic("%DLQ%grp").topic in table and created == [1, 1]
    with pytest.raises(ValueError):
        table.ensure_system_topic("Plain")
    for name in BROKER_TOPICS:
        assert is_broker_topic(name) and check_topic(name) is None
        assert not is_system_topic(name)
        with pytest.raises(NoPermissionError):
            table.create(TopicConfig(topic=name))
    assert not is_broker_topic("%RETRY%grp") and not is_broker_topic("TIMER")


def test_a_tick_takes_whole_seconds_up_to_its_budget(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    clock = _Clock(NOW / 1000)
    with _open_store(tmp_path / "store") as store:
        service = TimerService(
            store, Arrivals(loop), loop, levels=LEVELS, max_delay=60, clock=clock
        )
        try:
            first_s = NOW // 1000 + 1
            for second, count in ((0, 2), (1, 1), (2, 1)):
                for _ in range(count):
                    due = (first_s + second) * 1000
                    service.schedule(PutMessage(topic="T", queue_id=0, body=b"x"), due)
            last = first_s + 2
            assert service.run_due(last, budget=1) == 2  # the first second, whole
            assert service.behind(last) and service.timers.delivered_through == first_s
            assert service.run_due(last, budget=1) == 1
            assert service.run_due(last, budget=1) == 1
            assert not service.behind(last) and store.max_offset("T", 0) == 4
        finally:
            loop.run_until_complete(service.close())
