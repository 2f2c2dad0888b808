"""Retried messages and dead letters as a consumer sees them (docs/PROTOCOL.md 14, 14.2)."""

from __future__ import annotations

import msgspec
import pytest

from fabric.admin_messages import describe
from fabric.consumer.options import PushConsumerOptions
from fabric.message import MessageExt, MessageQueue
from fabric.protocol.records import Record


def _record(topic: str, sys: dict[str, str], reconsume_times: int = 0) -> Record:
    return Record(
        topic=topic,
        queue_id=0,
        queue_offset=7,
        physical_offset=4096,
        size=300,
        body=b"hello",
        tags="TagA",
        keys=["k1", "k2"],
        uniq_id="ABC123",
        properties={"color": "red"},
        flag=3,
        sysflag=0,
        born_timestamp=1_700_000_000_000,
        store_timestamp=1_700_000_000_500,
        born_host="127.0.0.1:1",
        store_host="127.0.0.1:2",
        reconsume_times=reconsume_times,
        prepared_tx_offset=0,
        sys=sys,
    )


def test_a_retried_message_is_reported_under_its_original_topic() -> None:
    record = _record("%RETRY%g", {"ORIGIN_TOPIC": "Orders", "DELIVER_AT": "1"}, 2)
    msg = MessageExt.from_record(record, "broker-a")
    assert msg.topic == "Orders"
    assert msg.store_topic == "%RETRY%g"
    assert msg.retry and not msg.dead_letter
    assert msg.msg_id == "ABC123" and msg.reconsume_times == 2
    assert msg.properties == {"color": "red"}, "system properties never leak"
    assert msg.queue == MessageQueue("%RETRY%g", "broker-a", 0)
    assert msg.commitlog_offset == 4096


def test_a_dead_letter_carries_its_reason() -> None:
    reason = "max reconsume times 2 reached"
    record = _record("%DLQ%g", {"ORIGIN_TOPIC": "Orders", "DLQ_REASON": reason}, 3)
    msg = MessageExt.from_record(record, "broker-a")
    assert (msg.topic, msg.store_topic, msg.dlq_reason) == ("Orders", "%DLQ%g", reason)
    assert msg.dead_letter and not msg.retry
    line = describe(msg)
    assert line.startswith("ABC123 Orders queue=%DLQ%g@broker-a#0 offset=7 stored=2023-11-14T")
    assert "tags=TagA keys=k1,k2 reconsumed=3" in line and line.endswith("body='hello'")


def test_an_ordinary_message_is_unchanged() -> None:
    msg = MessageExt.from_record(_record("Orders", {}), "broker-a")
    assert (msg.topic, msg.store_topic, msg.dlq_reason) == ("Orders", "", "")
    assert not msg.retry and not msg.dead_letter
    assert msg.queue == MessageQueue("Orders", "broker-a", 0)


def test_describe_previews_long_and_binary_bodies() -> None:
    msg = MessageExt.from_record(_record("T", {}), "b")
    assert describe(msgspec.structs.replace(msg, body=b"x" * 100)).endswith("... (100 bytes)")
    assert describe(msgspec.structs.replace(msg, body=b"\xff\xfe")).endswith("body=<2 bytes>")


def test_max_reconsume_times_is_checked() -> None:
    assert PushConsumerOptions(max_reconsume_times=-1).check().max_reconsume_times == -1
    assert PushConsumerOptions(max_reconsume_times=0).check().max_reconsume_times == 0
    with pytest.raises(ValueError, match="max_reconsume_times"):
        PushConsumerOptions(max_reconsume_times=-2).check()
