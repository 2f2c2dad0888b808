"""fabric.protocol.records decodes what a real broker.store.MessageStore writes, as the store does.

The client may not import the broker's store (docs/ARCHITECTURE.md), so it has its own
decoder written from docs/STORAGE.md; this test holds the two together on real records.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from broker.store import MessageStore, PutMessage, PutStatus, StoreConfig, decode_message
from fabric.errors import MessageIllegalError
from fabric.message import MessageExt, compress_body
from fabric.protocol.codes import SysFlag
from fabric.protocol.records import HEADER_LEN, Record, RecordError, decode_record


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MessageStore]:
    config = StoreConfig(
        segment_size=1024 * 1024,
        max_message_size=256 * 1024,
        cq_entries_per_file=64,
        index_slots=64,
        index_entries=256,
        warm_ahead_bytes=0,
    )
    with MessageStore(str(tmp_path / "store"), config) as s:
        yield s


def _puts() -> list[PutMessage]:
    big, flag = compress_body(b"0123456789abcdef" * 1000)
    assert flag == SysFlag.COMPRESSED
    return [
        PutMessage(topic="T", queue_id=0, body=b"plain"),
        PutMessage(
            topic="T",
            queue_id=0,
            body=b"all fields",
            tags="TagA",
            keys=["k1", "k2"],
            uniq_id="00112233445566778899AABBCCDDEEFF",
            properties={"x": "1", "unicode": "h\u00e9llo \u2603"},
            flag=-7,
            sysflag=0,
            born_timestamp=1_700_000_000_123,
            born_host="10.1.2.3:4567",
            reconsume_times=3,
            prepared_tx_offset=99,
        ),
        PutMessage(topic="T", queue_id=0, body=b""),
        PutMessage(topic="T", queue_id=0, body=big, sysflag=int(flag), uniq_id="Z"),
        PutMessage(
            topic="%RETRY%group-1", queue_id=0, body=bytes(range(256)) * 40, born_host="[::1]:9"
        ),
        # System properties (PROTOCOL.md 14), alone and beside every other property.
        PutMessage(
            topic="%RETRY%group-1",
            queue_id=0,
            body=b"retry",
            reconsume_times=1,
            sys={"ORIGIN_TOPIC": "T", "DELIVER_AT": "1700000000123"},
        ),
        PutMessage(
            topic="%RETRY%group-1",
            queue_id=0,
            body=b"everything",
            tags="TagB",
            keys=["k3"],
            uniq_id="U",
            properties={"p": "v"},
            sys={"ORIGIN_TOPIC": "T", "DLQ_REASON": "max reconsume times 16 reached \u2603"},
        ),
    ]


def _records(store: MessageStore) -> list[bytes]:
    records: list[bytes] = []
    for put in _puts():
        assert store.put(put).status is PutStatus.PUT_OK
    for topic in ("T", "%RETRY%group-1"):
        got = store.get_messages(topic, 0, 0, max_count=100, max_bytes=10**7)
        records.extend(got.records)
    assert len(records) == len(_puts())
    return records


def test_decoder_agrees_with_the_store(store: MessageStore) -> None:
    records = _records(store)
    for raw in records:
        ours = decode_record(raw, verify_crc=True)
        theirs = decode_message(raw)
        assert msgspec.structs.asdict(ours) == msgspec.structs.asdict(theirs)
    # The comparison covers the system properties too: some records carry them.
    assert [decode_record(r).sys for r in records[5:]] == [p.sys for p in _puts()[5:]]
    assert all(decode_record(r).sys == {} for r in records[:5])


def test_system_properties_come_back_beside_the_others(store: MessageStore) -> None:
    records = [decode_record(r) for r in _records(store)]
    retry, full = records[5], records[6]
    assert retry.sys == {"ORIGIN_TOPIC": "T", "DELIVER_AT": "1700000000123"}
    assert (retry.tags, retry.keys, retry.uniq_id, retry.properties) == ("", [], "", {})
    assert retry.reconsume_times == 1
    assert (full.tags, full.keys, full.uniq_id, full.properties) == (
        "TagB",
        ["k3"],
        "U",
        {"p": "v"},
    )
    assert full.sys["DLQ_REASON"] == "max reconsume times 16 reached \u2603"
    # Not user properties: the two maps stay apart.
    assert "ORIGIN_TOPIC" not in full.properties


def test_record_fields_are_what_was_put(store: MessageStore) -> None:
    records = [decode_record(r) for r in _records(store)]
    full = records[1]
    assert (full.topic, full.body, full.tags, full.keys) == (
        "T",
        b"all fields",
        "TagA",
        ["k1", "k2"],
    )
    assert full.uniq_id == "00112233445566778899AABBCCDDEEFF"
    assert full.properties == {"x": "1", "unicode": "h\u00e9llo \u2603"}
    assert (full.flag, full.reconsume_times, full.prepared_tx_offset) == (-7, 3, 99)
    assert full.born_timestamp == 1_700_000_000_123
    assert full.born_host == "10.1.2.3:4567"
    assert full.store_timestamp > 0 and full.queue_offset == 1
    assert records[2].body == b"" and records[2].tags == "" and records[2].keys == []
    assert records[4].born_host == "[::1]:9" and records[4].topic == "%RETRY%group-1"


def test_compressed_bodies_come_back_whole(store: MessageStore) -> None:
    record = decode_record(_records(store)[3])
    assert record.sysflag & SysFlag.COMPRESSED
    message = MessageExt.from_record(record, "broker-a")
    assert message.body == b"0123456789abcdef" * 1000
    assert message.msg_id == "Z" and message.queue.broker_name == "broker-a"
    assert message.store_size == record.size and message.commitlog_offset == record.physical_offset


def test_damage_is_refused(store: MessageStore) -> None:
    raw = _records(store)[1]
    with pytest.raises(RecordError, match="at least"):
        decode_record(raw[: HEADER_LEN - 1])
    with pytest.raises(RecordError, match="lengths"):
        decode_record(raw[:-1])
    with pytest.raises(RecordError, match="magic"):
        decode_record(raw[:4] + b"\0\0\0\0" + raw[8:])
    flipped = bytearray(raw)
    flipped[-1] ^= 0xFF
    assert isinstance(decode_record(bytes(flipped)), Record)  # the CRC is not checked by default
    with pytest.raises(RecordError, match="CRC"):
        decode_record(bytes(flipped), verify_crc=True)


def test_a_flagged_body_that_is_not_zlib_is_an_error(store: MessageStore) -> None:
    store.put(PutMessage(topic="T", queue_id=1, body=b"not zlib", sysflag=int(SysFlag.COMPRESSED)))
    (raw,) = store.get_messages("T", 1, 0).records
    with pytest.raises(MessageIllegalError, match="decompress"):
        MessageExt.from_record(decode_record(raw))


def test_the_one_step_decode_makes_the_same_message(store: MessageStore) -> None:
    # MessageExt.decode (the consumers' path) against from_record(decode_record(...)), on
    # plain, compressed, retried and dead-lettered records, as bytes and as memoryview.
    records = _records(store)
    for raw in records:
        expected = MessageExt.from_record(decode_record(raw), "broker-a")
        assert MessageExt.decode(raw, "broker-a") == expected
        assert MessageExt.decode(memoryview(raw), "broker-a", verify_crc=True) == expected
    retried = MessageExt.decode(records[-1], "b")
    assert (retried.topic, retried.store_topic) == ("T", "%RETRY%group-1")
    assert retried.dlq_reason.startswith("max reconsume times")


def test_the_one_step_decode_refuses_damage(store: MessageStore) -> None:
    raw = _records(store)[1]
    with pytest.raises(RecordError, match="lengths"):
        MessageExt.decode(raw[:-1])
    flipped = bytearray(raw)
    flipped[-1] ^= 0xFF
    with pytest.raises(RecordError, match="CRC"):
        MessageExt.decode(bytes(flipped), verify_crc=True)
    store.put(PutMessage(topic="T", queue_id=1, body=b"not zlib", sysflag=int(SysFlag.COMPRESSED)))
    (bad,) = store.get_messages("T", 1, 0).records
    with pytest.raises(MessageIllegalError, match="decompress"):
        MessageExt.decode(bad)
