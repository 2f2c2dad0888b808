"""Record format (S1): header layout, round trip of every field, CRC verification, tag hash."""

from __future__ import annotations

import re
import struct
import zlib

import msgspec
import pytest

from broker.store import PutMessage, StoreConfig, decode_message, tag_hash
from broker.store import record as rec
from broker.store.checkpoint import _SLOT, _SLOT_LEN
from broker.store.consume_queue import CQ_ENTRY, CQ_ENTRY_SIZE
from broker.store.index import INDEX_ENTRY, INDEX_ENTRY_LEN, INDEX_HEADER, INDEX_HEADER_LEN

from ._support import put_ok, small_config
from .conftest import Stores

#: (offset, size, field) of the fixed header, as the record.py docstring documents it.
HEADER_FIELDS = [
    (0, 4, "total_size"),
    (4, 4, "magic"),
    (8, 4, "crc32"),
    (12, 4, "queue_id"),
    (16, 4, "flag"),
    (20, 8, "queue_offset"),
    (28, 8, "physical_offset"),
    (36, 4, "sysflag"),
    (40, 8, "born_timestamp"),
    (48, 8, "store_timestamp"),
    (56, 16, "born_host"),
    (72, 2, "born_port"),
    (74, 16, "store_host"),
    (90, 2, "store_port"),
    (92, 4, "reconsume_times"),
    (96, 8, "prepared_tx_offset"),
    (104, 2, "topic_length"),
    (106, 4, "properties_length"),
    (110, 4, "body_length"),
]


def test_struct_sizes() -> None:
    assert rec.HEADER_LEN == 114
    assert rec.HEADER.size == rec.HEADER_LEN
    assert rec.PREFIX.size + rec.HEADER_TAIL.size == rec.HEADER_LEN
    assert rec.CRC_START == rec.PREFIX.size == 12
    assert rec.BLANK_MARKER.size == rec.END_MARKER_LEN == 8
    assert rec.STORE_TIMESTAMP_AT == 48
    assert rec.MESSAGE_MAGIC != rec.BLANK_MAGIC
    assert CQ_ENTRY.size == CQ_ENTRY_SIZE == 20
    assert INDEX_HEADER.size == INDEX_HEADER_LEN == 40
    assert INDEX_ENTRY.size == INDEX_ENTRY_LEN == 20
    assert _SLOT.size == _SLOT_LEN == 64


def test_header_field_offsets_match_struct_and_docstring() -> None:
    fmt = rec.HEADER.format
    codes = re.findall(r"\d*[a-zA-Z]", fmt.lstrip(">"))
    assert len(codes) == len(HEADER_FIELDS)
    for i, (offset, size, name) in enumerate(HEADER_FIELDS):
        assert struct.calcsize(">" + "".join(codes[:i])) == offset, name
        assert struct.calcsize(">" + codes[i]) == size, name
    # The byte-by-byte table at the top of record.py says the same.
    doc = rec.__doc__ or ""
    table = {
        m.group(3): (int(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"^\s+(\d+)\s+(\d+)\s+(\w+)", doc, re.MULTILINE)
    }
    for offset, size, name in HEADER_FIELDS:
        assert table.get(name) == (offset, size), name


@pytest.mark.parametrize(
    ("born_host", "expected"),
    [("1.2.3.4:5678", "1.2.3.4:5678"), ("[2001:db8::17]:9876", "[2001:db8::17]:9876")],
)
def test_put_then_decode_round_trips_every_field(
    stores: Stores, born_host: str, expected: str
) -> None:
    store = stores.open(small_config(store_host="10.0.0.9:10911"), clock=lambda: 1_700_000_123_456)
    put_ok(store, PutMessage(topic="first", queue_id=0, body=b"pad"))
    body = b"\x00\x01\x00payload\x00\xff" * 50 + b"\x00"
    msg = PutMessage(
        topic="tópico-ü",
        queue_id=3,
        body=body,
        tags="标签",
        keys=["clé-1", "ключ 2"],
        uniq_id="AC11000100002A9F0000000000000001",
        properties={"ünïcode": "välue ✓", "empty": ""},
        flag=-7,
        sysflag=rec.SYSFLAG_TRANSACTION_PREPARED,
        born_timestamp=1_699_999_999_999,
        born_host=born_host,
        reconsume_times=4,
        prepared_tx_offset=123_456_789_012,
    )
    put_ok(store, PutMessage(topic="tópico-ü", queue_id=3, body=b"first in queue"))
    result = put_ok(store, msg)
    raw = store.get_record(result.physical_offset)
    assert raw is not None
    assert rec.verify(raw) is None
    assert len(raw) == result.size
    got = decode_message(raw)
    assert got.topic == "tópico-ü"
    assert got.queue_id == 3
    assert got.queue_offset == 1 == result.queue_offset
    assert got.physical_offset == result.physical_offset > 0
    assert got.size == result.size == result.end_offset - result.physical_offset
    assert got.body == body
    assert got.tags == "标签"
    assert got.keys == ["clé-1", "ключ 2"]
    assert got.uniq_id == "AC11000100002A9F0000000000000001"
    assert got.properties == {"ünïcode": "välue ✓", "empty": ""}
    assert got.flag == -7
    assert got.sysflag == rec.SYSFLAG_TRANSACTION_PREPARED
    assert got.born_timestamp == 1_699_999_999_999
    assert got.store_timestamp == 1_700_000_123_456 == result.store_timestamp
    assert got.born_host == expected
    assert got.store_host == "10.0.0.9:10911"
    assert got.reconsume_times == 4
    assert got.prepared_tx_offset == 123_456_789_012
    # The same record read through the queue is byte-identical.
    via_queue = store.get_messages("tópico-ü", 3, 1, max_count=1)
    assert via_queue.records == [raw]
    assert store.get_message(result.physical_offset) == got


def test_defaults_round_trip(stores: Stores) -> None:
    store = stores.open()
    result = put_ok(store, PutMessage(topic="t", queue_id=0, body=b""))
    got = store.get_message(result.physical_offset)
    assert got is not None
    assert (got.body, got.tags, got.keys, got.uniq_id, got.properties) == (b"", "", [], "", {})
    assert (got.born_host, got.flag, got.sysflag, got.reconsume_times) == ("", 0, 0, 0)
    assert got.store_host == "127.0.0.1:0"
    assert result.size == rec.HEADER_LEN + 1  # no properties part at all


def test_verify_detects_a_flipped_byte_anywhere(stores: Stores) -> None:
    store = stores.open()
    result = put_ok(
        store,
        PutMessage(topic="flip", queue_id=1, body=bytes(range(256)), tags="t", keys=["k"]),
    )
    raw = store.get_record(result.physical_offset)
    assert raw is not None and rec.verify(raw) is None
    for pos in range(len(raw)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(raw)
            damaged[pos] ^= mask
            assert rec.verify(bytes(damaged)) is not None, (pos, mask)
    assert rec.verify(raw[:-1]) is not None
    assert rec.verify(raw[: rec.HEADER_LEN - 1]) is not None
    assert rec.verify(raw + b"\0") is not None


def test_crc_covers_bytes_from_offset_12() -> None:
    raw = bytearray(rec.HEADER_LEN + 4)
    rec.HEADER.pack_into(
        raw,
        0,
        len(raw),
        rec.MESSAGE_MAGIC,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        bytes(16),
        0,
        bytes(16),
        0,
        0,
        0,
        1,
        0,
        3,
    )
    raw[rec.HEADER_LEN :] = b"tabc"
    struct.pack_into(">I", raw, rec.CRC_AT, zlib.crc32(bytes(raw[12:])))
    assert rec.verify(bytes(raw)) is None
    assert rec.record_crc(bytes(raw)) == zlib.crc32(bytes(raw[12:]))


@pytest.mark.parametrize("tags", ["A", "TagA", "ä-ü", "标签", "x" * 300])
def test_tag_hash_is_crc32_of_utf8(tags: str) -> None:
    assert tag_hash(tags) == zlib.crc32(tags.encode("utf-8"))


def test_tag_hash_of_no_tag_is_zero_and_values_are_pinned() -> None:
    assert tag_hash("") == 0
    # Pinned values: other languages compute the same codes.
    assert tag_hash("A") == 0xD3D99E8B
    assert tag_hash("TagA") == zlib.crc32(b"TagA")


def test_host_encoding_round_trips() -> None:
    for host in ("1.2.3.4:5678", "[2001:db8::1]:1", "[::1]:65535", "255.255.255.255:0", ""):
        addr, port = rec.encode_host(host)
        assert len(addr) == 16
        assert rec.decode_host(addr, port) == host


def test_store_timestamp_is_never_decreasing(stores: Stores) -> None:
    now = [5_000]
    store = stores.open(small_config(), clock=lambda: now[0])
    stamps = []
    for step in (0, 10, -7, -1000, 3, 0):
        now[0] += step
        stamps.append(put_ok(store, PutMessage(topic="t", queue_id=0, body=b"x")).store_timestamp)
    assert stamps == sorted(stamps)
    assert stamps[0] == 5_000


def test_store_config_validation() -> None:
    from broker.store import ConfigError

    with pytest.raises(ConfigError):
        StoreConfig(segment_size=100_000).validate()
    with pytest.raises(ConfigError):
        StoreConfig(segment_size=64 * 1024, max_message_size=8 * 1024).validate()
    with pytest.raises(ConfigError):
        small_config(disk_clean_ratio=0.95, disk_full_ratio=0.9).validate()


def test_properties_without_sys_keep_their_bytes() -> None:
    # The bytes a record had before the ``sys`` field existed: a map of the non-empty
    # fields, in this order (pinned, so that old records and new ones stay identical).
    old_layout = msgspec.msgpack.encode(
        {"tags": "t", "keys": ["k"], "uniq_id": "u", "props": {"a": "b"}}
    )
    assert rec.encode_properties("t", ["k"], "u", {"a": "b"}) == old_layout
    assert rec.encode_properties("t", ["k"], "u", {"a": "b"}, sys={}) == old_layout
    assert rec.encode_properties("", [], "", {}) == b""
    assert rec.encode_properties("", [], "", {}, sys=None) == b""


def test_sys_is_encoded_last_and_decoded() -> None:
    raw = rec.encode_properties("t", [], "", {"a": "b"}, sys={"REAL_TOPIC": "T", "REAL_QID": "3"})
    assert raw == msgspec.msgpack.encode(
        {"tags": "t", "props": {"a": "b"}, "sys": {"REAL_TOPIC": "T", "REAL_QID": "3"}}
    )
    got = rec.decode_properties(raw)
    assert (got.tags, got.props, got.sys) == ("t", {"a": "b"}, {"REAL_TOPIC": "T", "REAL_QID": "3"})
    assert rec.decode_properties(rec.encode_properties("", [], "", {}, sys={"X": ""})).sys == {
        "X": ""
    }

    class Before(msgspec.Struct):  # a decoder written before ``sys``: it skips the key
        tags: str = ""
        keys: list[str] = []
        uniq_id: str = ""
        props: dict[str, str] = {}

    assert msgspec.msgpack.decode(raw, type=Before) == Before(tags="t", props={"a": "b"})


def test_sys_round_trips_through_the_store(stores: Stores) -> None:
    store = stores.open()
    plain = put_ok(store, PutMessage(topic="T", queue_id=0, body=b"x", tags="a"))
    timed = put_ok(
        store,
        PutMessage(
            topic="%TIMER%",
            queue_id=0,
            body=b"x",
            tags="a",
            sys={"REAL_TOPIC": "T", "REAL_QID": "0", "DELIVER_AT": "1700000000000"},
        ),
    )
    only_sys = put_ok(store, PutMessage(topic="%HALF%", queue_id=0, body=b"", sys={"PGROUP": "g"}))
    got = [store.get_message(r.physical_offset) for r in (plain, timed, only_sys)]
    assert [m.sys for m in got if m is not None] == [
        {},
        {"REAL_TOPIC": "T", "REAL_QID": "0", "DELIVER_AT": "1700000000000"},
        {"PGROUP": "g"},
    ]
    # The plain record is exactly as long as before; the system properties cost their bytes.
    assert timed.size > plain.size + len("%TIMER%") - 1
    assert only_sys.size > rec.HEADER_LEN + len("%HALF%")
    store.close()
    again = stores.open()  # recovery reads them like any other property
    reread = again.get_message(timed.physical_offset)
    assert reread is not None and reread.sys["REAL_TOPIC"] == "T"
