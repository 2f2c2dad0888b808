"""Decode a stored CommitLog record as a PULL_MESSAGE reply carries it (docs/STORAGE.md).

Pull replies carry records byte for byte as the broker stored them, one record per
frame (docs/PROTOCOL.md section 7.4). This module reads them on the client side from the
documented layout alone: the client never imports the broker's store (the layer rule of
docs/ARCHITECTURE.md), and a unit test checks that both decoders agree on records a real
store wrote. Every integer is big-endian::

    off  size  field                 type
      0     4  total_size            uint32   whole record, this field included
      4     4  magic                 uint32   MESSAGE_MAGIC
      8     4  crc32                 uint32   zlib CRC32 of bytes [12, total_size)
     12     4  queue_id              int32
     16     4  flag                  int32
     20     8  queue_offset          int64
     28     8  physical_offset       int64
     36     4  sysflag               int32    SysFlag bits (COMPRESSED: the body is zlib)
     40     8  born_timestamp        int64    ms since the epoch, producer clock
     48     8  store_timestamp       int64    ms since the epoch, broker clock
     56    16  born_host             bytes    IPv6 (IPv4 as ::ffff:a.b.c.d), zeros if unknown
     72     2  born_port             uint16
     74    16  store_host            bytes
     90     2  store_port            uint16
     92     4  reconsume_times       int32
     96     8  prepared_tx_offset    int64
    104     2  topic_length          uint16   T
    106     4  properties_length     uint32   P
    110     4  body_length           uint32   B
    114     T  topic                 UTF-8
    114+T   P  properties            MessagePack map: tags, keys, uniq_id, props, sys (optional)
    114+T+P B  body                  bytes, as the producer sent them (maybe compressed)

:func:`decode_record` checks the structure (magic, lengths) always and the CRC on
request; it never decompresses: the body is returned as stored, with its ``sysflag``.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from typing import Final

import msgspec

__all__ = [
    "HEADER_LEN",
    "MESSAGE_MAGIC",
    "Record",
    "RecordError",
    "RecordFields",
    "decode_record",
    "record_fields",
    "unpack_record",
]

MESSAGE_MAGIC: Final = 0xFAB1C0DE
HEADER_LEN: Final = 114
_HEADER: Final = struct.Struct(">IIIiiqqiqq16sH16sHiqHII")
assert _HEADER.size == HEADER_LEN
_unpack_header: Final = _HEADER.unpack_from
_CRC_START: Final = 12


class RecordError(ValueError):
    """A frame that is not a sound CommitLog record (short, bad magic, lengths, CRC)."""


class _Properties(msgspec.Struct):
    """The properties part of a record; absent keys get defaults, unknown ones are skipped."""

    tags: str = ""
    keys: list[str] = []
    uniq_id: str = ""
    props: dict[str, str] = {}
    sys: dict[str, str] = {}


_EMPTY_PROPERTIES: Final = _Properties()
_decode_properties: Final = msgspec.msgpack.Decoder(_Properties).decode


class Record(msgspec.Struct, frozen=True):
    """One decoded CommitLog record; ``body`` exactly as stored (see ``sysflag``)."""

    topic: str
    queue_id: int
    queue_offset: int
    physical_offset: int
    size: int
    body: bytes
    tags: str
    keys: list[str]
    uniq_id: str
    properties: dict[str, str]
    flag: int
    sysflag: int
    born_timestamp: int
    store_timestamp: int
    born_host: str
    store_host: str
    reconsume_times: int
    prepared_tx_offset: int
    #: System properties a broker wrote (REAL_TOPIC, ORIGIN_TOPIC, ...; docs/PROTOCOL.md 14).
    sys: dict[str, str] = {}


# Hosts repeat (a few producers, one broker): decode each distinct address once.
_hosts: dict[tuple[bytes, int], str] = {}
_MAX_CACHED_HOSTS: Final = 4096


def _host(addr: bytes, port: int) -> str:
    key = (addr, port)
    text = _hosts.get(key)
    if text is not None:
        return text
    ip = ipaddress.IPv6Address(addr)
    if not port and not int(ip):
        text = ""
    elif ip.ipv4_mapped is not None:
        text = f"{ip.ipv4_mapped}:{port}"
    else:
        text = f"[{ip}]:{port}"
    if len(_hosts) < _MAX_CACHED_HOSTS:
        _hosts[key] = text
    return text


#: The fields of a record, as :func:`unpack_record` returns them.
RecordFields = tuple[
    str, int, int, int, int, bytes, "_Properties", int, int, int, int, str, str, int, int
]


def unpack_record(data: bytes | bytearray | memoryview, verify_crc: bool = False) -> RecordFields:
    """Decode one whole record into a flat tuple (the fast path of consumers).

    Returns ``(topic, queue_id, queue_offset, physical_offset, size, body, properties,
    flag, sysflag, born_timestamp, store_timestamp, born_host, store_host,
    reconsume_times, prepared_tx_offset)``; ``properties`` has ``tags``, ``keys``,
    ``uniq_id``, ``props`` and ``sys``. :func:`decode_record` wraps it in a Record.

    Raises:
        RecordError: the bytes are not a sound record.
    """
    if len(data) < HEADER_LEN:
        raise RecordError(f"a record is at least {HEADER_LEN} bytes, got {len(data)}")
    (
        total,
        magic,
        crc,
        queue_id,
        flag,
        queue_offset,
        physical_offset,
        sysflag,
        born_ts,
        store_ts,
        born_addr,
        born_port,
        store_addr,
        store_port,
        reconsume,
        prepared,
        t_len,
        p_len,
        b_len,
    ) = _unpack_header(data, 0)
    if magic != MESSAGE_MAGIC:
        raise RecordError(f"bad magic {magic:#010x}")
    if total != len(data) or HEADER_LEN + t_len + p_len + b_len != total:
        raise RecordError(f"lengths do not add up: total_size {total}, frame {len(data)}")
    view = data if type(data) is bytes else memoryview(data)
    if verify_crc and zlib.crc32(memoryview(data)[_CRC_START:]) != crc:
        raise RecordError(f"CRC mismatch in the record at physical offset {physical_offset}")
    pos = HEADER_LEN + t_len
    try:
        topic = str(view[HEADER_LEN:pos], "utf-8")
        props = _decode_properties(view[pos : pos + p_len]) if p_len else _EMPTY_PROPERTIES
    except (UnicodeDecodeError, msgspec.DecodeError) as exc:
        raise RecordError(f"bad topic or properties: {exc}") from None
    pos += p_len
    body = view[pos:total]
    return (
        topic,
        queue_id,
        queue_offset,
        physical_offset,
        total,
        body if type(body) is bytes else bytes(body),
        props,
        flag,
        sysflag,
        born_ts,
        store_ts,
        _host(born_addr, born_port),
        _host(store_addr, store_port),
        reconsume,
        prepared,
    )


def record_fields(record: Record) -> RecordFields:
    """A decoded Record as the tuple :func:`unpack_record` returns."""
    props = _Properties(record.tags, record.keys, record.uniq_id, record.properties, record.sys)
    return (
        record.topic,
        record.queue_id,
        record.queue_offset,
        record.physical_offset,
        record.size,
        record.body,
        props,
        record.flag,
        record.sysflag,
        record.born_timestamp,
        record.store_timestamp,
        record.born_host,
        record.store_host,
        record.reconsume_times,
        record.prepared_tx_offset,
    )


def decode_record(data: bytes | bytearray | memoryview, *, verify_crc: bool = False) -> Record:
    """Decode one whole record.

    Args:
        data: exactly one record (a PULL_MESSAGE reply frame).
        verify_crc: also check the CRC32 (the broker checked it when it stored the record;
            ZeroMQ over TCP does not corrupt frames, so it is off by default).

    Raises:
        RecordError: the bytes are not a sound record.
    """
    (
        topic,
        queue_id,
        queue_offset,
        physical_offset,
        size,
        body,
        props,
        flag,
        sysflag,
        born_ts,
        store_ts,
        born_host,
        store_host,
        reconsume,
        prepared,
    ) = unpack_record(data, verify_crc)
    return Record(
        topic=topic,
        queue_id=queue_id,
        queue_offset=queue_offset,
        physical_offset=physical_offset,
        size=size,
        body=body,
        tags=props.tags,
        keys=props.keys,
        uniq_id=props.uniq_id,
        properties=props.props,
        flag=flag,
        sysflag=sysflag,
        born_timestamp=born_ts,
        store_timestamp=store_ts,
        born_host=born_host,
        store_host=store_host,
        reconsume_times=reconsume,
        prepared_tx_offset=prepared,
        sys=props.sys,
    )
