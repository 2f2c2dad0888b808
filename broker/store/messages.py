"""The small Structs the store takes and returns: puts, put and get results, decoded records."""

from __future__ import annotations

import enum

import msgspec

from .record import HEADER, HEADER_LEN, decode_host, decode_properties

__all__ = [
    "DroppedRange",
    "GetResult",
    "GetStatus",
    "PutMessage",
    "PutResult",
    "PutStatus",
    "StoredMessage",
    "decode_message",
]


class PutStatus(enum.IntEnum):
    """Outcome of a put. Only PUT_OK and FLUSH_DISK_TIMEOUT mean the message is stored."""

    PUT_OK = 0
    #: Stored, but the SYNC_FLUSH fsync did not complete within the timeout.
    FLUSH_DISK_TIMEOUT = 1
    #: Body larger than max_message_size, or otherwise malformed; nothing stored.
    MESSAGE_ILLEGAL = 2
    #: Encoded properties larger than max_properties_size; nothing stored.
    PROPERTIES_SIZE_EXCEEDED = 3
    #: Disk use past disk_full_ratio, or the disk refused space; nothing stored.
    SERVICE_NOT_AVAILABLE = 4
    #: The append lock stayed busy past put_lock_timeout_ms; nothing stored.
    SYSTEM_BUSY = 5
    #: The store is closed; nothing stored.
    STORE_CLOSED = 6


class GetStatus(enum.IntEnum):
    """Outcome of a ConsumeQueue read."""

    FOUND = 0
    #: Entries were scanned but none matched the tag filter (next_offset moves past them).
    NO_MATCHED_MESSAGE = 1
    #: The queue has no messages at all (or does not exist).
    NO_MESSAGE_IN_QUEUE = 2
    #: The offset is below the queue's minimum (retention removed it); next_offset = minimum.
    OFFSET_TOO_SMALL = 3
    #: The offset equals the queue's maximum: nothing new yet (long-poll here).
    OFFSET_OVERFLOW_ONE = 4
    #: The offset is past the maximum; next_offset = maximum.
    OFFSET_OVERFLOW_BADLY = 5
    #: The queue entry exists but its record is gone (CommitLog retention ran ahead).
    MESSAGE_WAS_REMOVING = 6


class PutMessage(msgspec.Struct, kw_only=True):
    """One message to append. The store fills offsets, store time and store host."""

    topic: str
    queue_id: int
    body: bytes
    tags: str = ""
    keys: list[str] = []
    uniq_id: str = ""
    properties: dict[str, str] = {}
    flag: int = 0
    sysflag: int = 0
    born_timestamp: int = 0
    born_host: str = ""
    reconsume_times: int = 0
    prepared_tx_offset: int = 0
    #: System properties (REAL_TOPIC, DELIVER_AT, ...): set by brokers only, never by clients.
    sys: dict[str, str] = {}


class PutResult(msgspec.Struct, frozen=True):
    """Where a put landed. ``end_offset`` is what a SYNC_FLUSH waiter waits for."""

    status: PutStatus
    physical_offset: int = -1
    size: int = 0
    queue_offset: int = -1
    store_timestamp: int = 0
    end_offset: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the message is stored (PUT_OK or FLUSH_DISK_TIMEOUT)."""
        return self.status in (PutStatus.PUT_OK, PutStatus.FLUSH_DISK_TIMEOUT)


class GetResult(msgspec.Struct, frozen=True):
    """Records read from one queue, as raw CommitLog records (see record.py)."""

    status: GetStatus
    next_offset: int
    min_offset: int
    max_offset: int
    records: list[bytes] = []


class StoredMessage(msgspec.Struct, frozen=True):
    """A decoded CommitLog record."""

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
    #: System properties written by a broker (empty for ordinary messages).
    sys: dict[str, str] = {}


class DroppedRange(msgspec.Struct, frozen=True):
    """Retention removed queue offsets [from_offset, to_offset) of one queue."""

    topic: str
    queue_id: int
    from_offset: int
    to_offset: int


def decode_message(record: bytes | memoryview) -> StoredMessage:
    """Decode one raw record (as returned by the store) into a StoredMessage."""
    (
        total,
        _magic,
        _crc,
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
    ) = HEADER.unpack_from(record, 0)
    view = memoryview(record)
    pos = HEADER_LEN
    topic = str(view[pos : pos + t_len], "utf-8")
    pos += t_len
    props = decode_properties(view[pos : pos + p_len])
    pos += p_len
    body = bytes(view[pos : pos + b_len])
    return StoredMessage(
        topic=topic,
        queue_id=queue_id,
        queue_offset=queue_offset,
        physical_offset=physical_offset,
        size=total,
        body=body,
        tags=props.tags,
        keys=props.keys,
        uniq_id=props.uniq_id,
        properties=props.props,
        flag=flag,
        sysflag=sysflag,
        born_timestamp=born_ts,
        store_timestamp=store_ts,
        born_host=decode_host(born_addr, born_port),
        store_host=decode_host(store_addr, store_port),
        reconsume_times=reconsume,
        prepared_tx_offset=prepared,
        sys=props.sys,
    )
