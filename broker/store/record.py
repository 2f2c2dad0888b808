"""CommitLog record format: struct constants, magic numbers, CRC32; encode, decode, verify.

Every integer is big-endian. A record is a fixed 114-byte header followed by three
variable parts whose lengths the header gives::

    off  size  field                 type    notes
      0     4  total_size            uint32  whole record, this field included
      4     4  magic                 uint32  MESSAGE_MAGIC (0xFAB1C0DE); BLANK_MAGIC ends a segment
      8     4  crc32                 uint32  zlib CRC32 of bytes [12, total_size)
     12     4  queue_id              int32
     16     4  flag                  int32   application flag, stored as given
     20     8  queue_offset          int64   index of the message in its ConsumeQueue
     28     8  physical_offset       int64   CommitLog offset of this record
     36     4  sysflag               int32   SYSFLAG_* bits below
     40     8  born_timestamp        int64   producer clock, ms since the epoch
     48     8  store_timestamp       int64   broker clock, ms since the epoch, never decreasing
     56    16  born_host             bytes   IPv6 address (IPv4 as ::ffff:a.b.c.d)
     72     2  born_port             uint16
     74    16  store_host            bytes   as born_host
     90     2  store_port            uint16
     92     4  reconsume_times       int32
     96     8  prepared_tx_offset    int64   CommitLog offset of the half message, or 0
    104     2  topic_length          uint16  T
    106     4  properties_length     uint32  P
    110     4  body_length           uint32  B
    114     T  topic                 UTF-8
    114+T   P  properties            MessagePack map (see PROPERTIES below), empty when P = 0
    114+T+P B  body                  raw bytes, as the producer sent them

The end of a segment: when a record does not fit in the rest of a segment, an 8-byte
marker ``[remaining: uint32][BLANK_MAGIC: uint32]`` is written (``remaining`` counts the
bytes from the marker to the end of the segment) and the record goes to the next
segment, which starts at the next multiple of the segment size. A total_size of zero
means "nothing written here yet" (segments are preallocated with zeros).

PROPERTIES is a MessagePack map with string keys, each optional and left out when
empty: ``"tags"`` (str), ``"keys"`` (array of str), ``"uniq_id"`` (str, the producer's
unique message id), ``"props"`` (map of str to str, the user's properties) and ``"sys"``
(map of str to str, system properties written only by brokers: REAL_TOPIC, REAL_QID,
DELIVER_AT, ORIGIN_TOPIC, PGROUP, TRAN_CHECKS, DLQ_REASON; docs/PROTOCOL.md section 14).
A record without system properties has no ``"sys"`` key, so its bytes are those of a
record written before the field existed.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from typing import Final

import msgspec

__all__ = [
    "BLANK_MAGIC",
    "BLANK_MARKER",
    "END_MARKER_LEN",
    "HEADER",
    "HEADER_LEN",
    "MESSAGE_MAGIC",
    "SYSFLAG_COMPRESSED",
    "SYSFLAG_TRANSACTION_COMMIT",
    "SYSFLAG_TRANSACTION_PREPARED",
    "SYSFLAG_TRANSACTION_ROLLBACK",
    "RecordProperties",
    "decode_host",
    "decode_properties",
    "encode_host",
    "encode_properties",
    "record_crc",
    "tag_hash",
    "verify",
]

MESSAGE_MAGIC: Final = 0xFAB1C0DE
BLANK_MAGIC: Final = 0xFAB1B1A7
END_MARKER_LEN: Final = 8

#: The whole fixed header, fields in the order of the table above.
HEADER: Final = struct.Struct(">IIIiiqqiqq16sH16sHiqHII")
HEADER_LEN: Final = 114
assert HEADER.size == HEADER_LEN

#: The three leading fields, and the header from offset 12 on (what the CRC starts with).
PREFIX: Final = struct.Struct(">III")
HEADER_TAIL: Final = struct.Struct(">iiqqiqq16sH16sHiqHII")
assert PREFIX.size + HEADER_TAIL.size == HEADER_LEN
BLANK_MARKER: Final = struct.Struct(">II")
assert BLANK_MARKER.size == END_MARKER_LEN

#: Field positions used to read single fields without decoding a record.
SIZE_MAGIC: Final = struct.Struct(">II")
STORE_TIMESTAMP_AT: Final = 48
STORE_TIMESTAMP: Final = struct.Struct(">q")
CRC_AT: Final = 8
CRC_START: Final = 12

# SYSFLAG bits (RocketMQ-compatible meanings).
SYSFLAG_COMPRESSED: Final = 0x1
SYSFLAG_TRANSACTION_PREPARED: Final = 0x4
SYSFLAG_TRANSACTION_COMMIT: Final = 0x8
SYSFLAG_TRANSACTION_ROLLBACK: Final = 0xC


class RecordProperties(msgspec.Struct, omit_defaults=True):
    """The properties part of a record; absent fields take their defaults.

    Fields are encoded in this order and only when not empty (``omit_defaults``); new
    fields go last, so records without them keep their exact bytes.
    """

    tags: str = ""
    keys: list[str] = []
    uniq_id: str = ""
    props: dict[str, str] = {}
    #: System properties, written only by brokers (docs/PROTOCOL.md section 14).
    sys: dict[str, str] = {}


_props_encoder = msgspec.msgpack.Encoder()
_props_decoder = msgspec.msgpack.Decoder(RecordProperties)
_EMPTY_PROPS = RecordProperties()


def encode_properties(
    tags: str,
    keys: list[str],
    uniq_id: str,
    props: dict[str, str],
    *,
    sys: dict[str, str] | None = None,
) -> bytes:
    """Encode the properties part; empty bytes when every field is empty.

    Args:
        tags: the message's tags.
        keys: its keys.
        uniq_id: the producer's unique message id.
        props: the user's properties.
        sys: system properties (brokers only); None or empty writes no ``sys`` key.
    """
    if not (tags or keys or uniq_id or props or sys):
        return b""
    return _props_encoder.encode(RecordProperties(tags, keys, uniq_id, props, sys or {}))


def decode_properties(data: bytes | memoryview) -> RecordProperties:
    """Decode the properties part (empty input gives all defaults)."""
    if not data:
        return _EMPTY_PROPS
    return _props_decoder.decode(data)


def tag_hash(tags: str) -> int:
    """The ConsumeQueue tag code: CRC32 of the UTF-8 tag string, 0 for no tag.

    Stable across processes and languages (unlike Python's ``hash``), so a broker
    can filter on it and a client in any language can compute it.
    """
    return zlib.crc32(tags.encode()) if tags else 0


def record_crc(record: bytes | memoryview) -> int:
    """CRC32 over bytes [12, total_size) of an encoded record."""
    return zlib.crc32(memoryview(record)[CRC_START:])


def verify(record: bytes | memoryview) -> str | None:
    """Check one whole record. Return None when sound, else the reason it is not."""
    if len(record) < HEADER_LEN:
        return "shorter than the header"
    total, magic, crc = PREFIX.unpack_from(record, 0)
    if magic != MESSAGE_MAGIC:
        return f"bad magic {magic:#010x}"
    if total != len(record):
        return f"length field {total} does not match {len(record)}"
    t_len, p_len, b_len = struct.unpack_from(">HII", record, 104)
    if HEADER_LEN + t_len + p_len + b_len != total:
        return "part lengths do not add up to the length field"
    if record_crc(record) != crc:
        return "CRC mismatch"
    return None


_host_cache: dict[str, tuple[bytes, int]] = {}


def encode_host(host: str) -> tuple[bytes, int]:
    """``"1.2.3.4:5"`` or ``"[::1]:5"`` to (16-byte address, port); ``""`` to zeros."""
    cached = _host_cache.get(host)
    if cached is not None:
        return cached
    if not host:
        result = (bytes(16), 0)
    else:
        addr, _, port = host.rpartition(":")
        addr = addr.strip("[]")
        ip = ipaddress.ip_address(addr)
        if isinstance(ip, ipaddress.IPv4Address):
            ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
        result = (ip.packed, int(port))
    if len(_host_cache) < 4096:
        _host_cache[host] = result
    return result


def decode_host(addr: bytes, port: int) -> str:
    """Inverse of encode_host."""
    ip = ipaddress.IPv6Address(addr)
    if ip == ipaddress.IPv6Address(0) and port == 0:
        return ""
    if ip.ipv4_mapped is not None:
        return f"{ip.ipv4_mapped}:{port}"
    return f"[{ip}]:{port}"
