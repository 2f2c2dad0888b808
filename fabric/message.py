"""What applications send and receive: Message, MessageExt, MessageQueue, SendResult, PullResult.

Result types are frozen msgspec Structs with ``gc=False``: a producer or consumer makes
one per message, and untracked objects cost the cyclic GC nothing (none of them can be
part of a reference cycle).

The names follow Apache RocketMQ (SPEC I3): a :class:`Message` is what a producer sends
(topic, body, tags, keys, user properties); a :class:`MessageExt` is a message as a
consumer receives it, with what the broker added (queue, offsets, store time, the
producer's unique id). This module also holds the two pieces of message handling that
both ends must agree on: unique message ids (SPEC M7, :func:`new_msg_id`) and body
compression (SPEC M8, :func:`compress_body` and the decompression in
:meth:`MessageExt.from_record`).
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import Final

import msgspec

from fabric.errors import InvalidNameError, MessageIllegalError, MessageTooLargeError
from fabric.protocol.codes import DELAY_LEVELS, PullStatus, ResponseCode, SendStatus, SysFlag
from fabric.protocol.frames import MAX_MESSAGE_BYTES
from fabric.protocol.names import DLQ_PREFIX, RETRY_PREFIX, check_topic
from fabric.protocol.records import Record, RecordFields, record_fields, unpack_record

__all__ = [
    "DEFAULT_COMPRESS_LEVEL",
    "DEFAULT_COMPRESS_THRESHOLD",
    "MAX_DELAY_LEVEL",
    "MAX_PROPERTIES_BYTES",
    "Message",
    "MessageExt",
    "MessageQueue",
    "PullResult",
    "SendResult",
    "compress_body",
    "new_msg_id",
]

#: Bodies longer than this many bytes are zlib-compressed by default (RocketMQ
#: ``compressMsgBodyOverHowmuch``).
DEFAULT_COMPRESS_THRESHOLD: Final = 4096
#: zlib level (RocketMQ's default ZLIB level).
DEFAULT_COMPRESS_LEVEL: Final = 5
#: Largest tags + keys + user properties of one message (the broker's default
#: ``max_properties_size``, docs/STORAGE.md), estimated before anything is sent.
MAX_PROPERTIES_BYTES: Final = 32 * 1024

#: The highest ``delay_level`` (levels 1..18 of DELAY_LEVELS; 0 means none).
MAX_DELAY_LEVEL: Final = len(DELAY_LEVELS)
# Latest ``deliver_at`` accepted (year 10000): its milliseconds fit any int64 on the wire.
_MAX_DELIVER_AT: Final = 253_402_300_800.0

_COMPRESSED: Final = int(SysFlag.COMPRESSED)
#: System property keys a consumer reads (docs/PROTOCOL.md 14).
_ORIGIN_TOPIC: Final = "ORIGIN_TOPIC"
_DLQ_REASON: Final = "DLQ_REASON"

_BODY_TYPES: Final = (bytes, bytearray, memoryview)


class Message:
    """A message to send.

    Args:
        topic: the topic (naming rule of docs/PROTOCOL.md section 8).
        body: the payload, bytes.
        tags: one tag, for broker-side filtering (``""``: none).
        keys: lookup keys: one string or several (kept as a tuple).
        properties: user properties, str to str.
        flag: an application flag, stored as given.
        msg_id: an explicit unique id; by default each send gets a fresh one
            (:func:`new_msg_id`), and the retries of that send reuse it.
        delay_level: deliver after the fixed delay of this level, 1..18 (the broker's
            ``delay_levels``; by default 1 s, 5 s, 10 s, 30 s, 1 min ... 2 h, see
            ``fabric.protocol.codes.DELAY_LEVELS``); 0: no delay.
        deliver_at: deliver at this time, in seconds since the epoch (``time.time()``
            style, fractions allowed; the broker delivers within about a second after
            it); None: now. A time already past is delivered at once.

    ``delay_level`` and ``deliver_at`` exclude each other. A delayed or timed message is
    stored aside until it is due, so its SendResult's ``queue_offset`` is -1 (its queue
    offset exists only once it is delivered; docs/PROTOCOL.md section 14.1). Both are
    checked before anything is sent: MessageIllegalError when both are set, when the
    level is outside 0..18, or when ``deliver_at`` is not a finite positive number.

    A Message is only read by the producer, never changed, so one object may be sent
    many times (each send is a new message with a new id unless ``msg_id`` is set).
    """

    __slots__ = (
        "body",
        "delay_level",
        "deliver_at",
        "flag",
        "keys",
        "msg_id",
        "properties",
        "tags",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        body: bytes | bytearray | memoryview = b"",
        *,
        tags: str = "",
        keys: str | Iterable[str] = (),
        properties: Mapping[str, str] | None = None,
        flag: int = 0,
        msg_id: str | None = None,
        delay_level: int = 0,
        deliver_at: float | None = None,
    ) -> None:
        self.topic = topic
        self.body = body
        self.tags = tags
        # A tuple: immutable, and free for the cyclic GC once it holds only strings.
        self.keys: tuple[str, ...] = (keys,) if isinstance(keys, str) else tuple(keys)
        self.properties: dict[str, str] = dict(properties) if properties else {}
        self.flag = flag
        self.msg_id = msg_id
        self.delay_level = delay_level
        self.deliver_at = deliver_at
        if deliver_at is not None or delay_level != 0:
            self.timing()  # a bad value fails here, where the application wrote it

    def validate(self, max_size: int = MAX_MESSAGE_BYTES) -> None:
        """Check the message before it goes on the wire.

        Raises:
            InvalidNameError: the topic breaks the naming rule.
            MessageTooLargeError: the body is over ``max_size`` bytes, or tags, keys and
                properties are over MAX_PROPERTIES_BYTES.
            MessageIllegalError: a field has the wrong type.
        """
        problem = check_topic(self.topic)
        if problem is not None:
            raise InvalidNameError(
                problem, code=ResponseCode.INVALID_TOPIC_NAME, name=str(self.topic)
            )
        self.check_fields(max_size)

    def check_fields(self, max_size: int = MAX_MESSAGE_BYTES) -> int:
        """Everything :meth:`validate` checks but the topic name (producers cache that).

        Returns:
            The estimated size of tags, keys and properties on the wire, in bytes.
        """
        body = self.body
        # A tuple, not ``bytes | bytearray | memoryview``: the union is built on every call.
        if type(body) is not bytes and not isinstance(body, _BODY_TYPES):
            raise MessageIllegalError(
                f"body must be bytes, got {type(body).__name__}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        size = len(body) if not isinstance(body, memoryview) else body.nbytes
        if size > max_size:
            raise MessageTooLargeError(
                f"body is {size} bytes, the limit is {max_size}", size=size, limit=max_size
            )
        if not isinstance(self.tags, str) or not isinstance(self.flag, int):
            raise MessageIllegalError(
                "tags must be a str and flag an int", code=ResponseCode.MESSAGE_ILLEGAL
            )
        if self.deliver_at is not None or self.delay_level != 0:
            self.timing()
        if not (self.keys or self.properties):
            return len(self.tags)
        extra = _properties_size(self.tags, self.keys, self.properties)
        if extra > MAX_PROPERTIES_BYTES:
            raise MessageTooLargeError(
                f"tags, keys and properties are {extra} bytes, the limit is {MAX_PROPERTIES_BYTES}",
                size=extra,
                limit=MAX_PROPERTIES_BYTES,
            )
        return extra

    def timing(self) -> tuple[int, int]:
        """The checked ``(delay_level, deliver_at in ms since the epoch)`` of the wire (0: none).

        Raises:
            MessageIllegalError: both are set, the level is not an int in 0..18, or
                ``deliver_at`` is not a finite number of seconds after the epoch.
        """
        level, at = self.delay_level, self.deliver_at
        if isinstance(level, bool) or not isinstance(level, int):
            raise MessageIllegalError(
                f"delay_level must be an int in 0..{MAX_DELAY_LEVEL}, got {level!r}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        if not 0 <= level <= MAX_DELAY_LEVEL:
            raise MessageIllegalError(
                f"delay_level must be in 0..{MAX_DELAY_LEVEL} (0: no delay), got {level}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        if at is None:
            return level, 0
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise MessageIllegalError(
                f"deliver_at must be seconds since the epoch (a float), got {at!r}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        if not 0 < at < _MAX_DELIVER_AT:  # False for NaN too
            raise MessageIllegalError(
                f"deliver_at must be a time after the epoch, in seconds, got {at!r}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        if level:
            raise MessageIllegalError(
                "set delay_level or deliver_at, not both", code=ResponseCode.MESSAGE_ILLEGAL
            )
        # At least 1: 0 on the wire means "no time" (a time that early is past anyway).
        return 0, max(1, int(at * 1000))

    def __repr__(self) -> str:
        size = len(self.body) if isinstance(self.body, bytes | bytearray) else "?"
        timing = ""
        if self.delay_level:
            timing = f", delay_level={self.delay_level!r}"
        elif self.deliver_at is not None:
            timing = f", deliver_at={self.deliver_at!r}"
        return f"Message(topic={self.topic!r}, body=<{size} bytes>, tags={self.tags!r}{timing})"


def _properties_size(tags: str, keys: tuple[str, ...], properties: dict[str, str]) -> int:
    size = len(tags)
    for key in keys:
        if not isinstance(key, str):
            raise MessageIllegalError(
                f"keys must be strings, got {type(key).__name__}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        size += len(key) + 1
    for name, value in properties.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise MessageIllegalError(
                f"properties must map str to str, got {name!r}: {value!r}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            )
        size += len(name) + len(value) + 2
    return size


class MessageQueue(msgspec.Struct, frozen=True, order=True, gc=False):
    """One queue of a topic on one broker name; hashable and ordered."""

    topic: str
    broker_name: str
    queue_id: int

    def __str__(self) -> str:
        return f"{self.topic}@{self.broker_name}#{self.queue_id}"


class SendResult(msgspec.Struct, frozen=True, gc=False):
    """The outcome of one stored message (SPEC M2).

    A delayed or timed message (``delay_level``, ``deliver_at``) and a transaction's half
    message wait aside until they are due or committed: their ``queue`` is the queue they
    will be delivered to, and their ``queue_offset`` is -1 (docs/PROTOCOL.md 14.1, 14.3).
    """

    status: SendStatus
    #: The producer's unique id of the message (SPEC M7).
    msg_id: str
    #: The queue the message was stored in (or will be delivered to).
    queue: MessageQueue
    #: Its offset in that queue; -1 while it waits aside (delayed, timed, half message).
    queue_offset: int
    #: Where the record starts in the broker's CommitLog, when the reply said (a message
    #: sent alone); -1 otherwise (coalesced and batch sends).
    commitlog_offset: int = -1


class MessageExt(msgspec.Struct, frozen=True, gc=False):
    """A message as a consumer receives it (RocketMQ ``MessageExt``)."""

    topic: str
    #: The payload, decompressed when the producer compressed it.
    body: bytes
    tags: str
    keys: list[str]
    properties: dict[str, str]
    #: The producer's unique id (SPEC M7).
    msg_id: str
    queue_id: int
    queue_offset: int
    #: Producer clock, ms since the epoch.
    born_timestamp: int
    #: Broker clock, ms since the epoch.
    store_timestamp: int
    #: Times this message was delivered before (retries).
    reconsume_times: int
    broker_name: str = ""
    #: Where the record starts in the broker's CommitLog.
    commitlog_offset: int = 0
    #: The stored record's size in bytes.
    store_size: int = 0
    flag: int = 0
    sysflag: int = 0
    born_host: str = ""
    store_host: str = ""
    #: The topic the record is stored in, when the message is reported under another:
    #: a retried message (``%RETRY%<group>``) or a dead letter (``%DLQ%<group>``) keeps
    #: its original topic in ``topic`` (docs/PROTOCOL.md 14); "" for ordinary messages.
    store_topic: str = ""
    #: Why a dead letter is one (the broker's ``DLQ_REASON``); "" otherwise.
    dlq_reason: str = ""

    @property
    def queue(self) -> MessageQueue:
        """The queue this message came from (the retry or dead-letter queue for those)."""
        return MessageQueue(self.store_topic or self.topic, self.broker_name, self.queue_id)

    @property
    def retry(self) -> bool:
        """True for a message consumed again from its group's retry topic."""
        return self.store_topic.startswith(RETRY_PREFIX)

    @property
    def dead_letter(self) -> bool:
        """True for a message read from a dead-letter topic (``%DLQ%<group>``)."""
        return self.store_topic.startswith(DLQ_PREFIX)

    @classmethod
    def from_record(cls, record: Record, broker_name: str = "") -> MessageExt:
        """The message in a decoded record, its body decompressed if COMPRESSED is set.

        Raises:
            MessageIllegalError: the body is flagged compressed and is not valid zlib.
        """
        return _message(cls, broker_name, record_fields(record))

    @classmethod
    def decode(
        cls, data: bytes | bytearray | memoryview, broker_name: str = "", verify_crc: bool = False
    ) -> MessageExt:
        """The message in one stored record (a pull or push frame), without a Record between.

        The consumers' fast path: no intermediate Record (about 1.5 us a message against
        5.4 us for the two steps, 1 KiB bodies, measured here).

        Raises:
            RecordError: the bytes are not a sound record.
            MessageIllegalError: the body is flagged compressed and is not valid zlib.
        """
        return _message(cls, broker_name, unpack_record(data, verify_crc))


def _message(cls: type[MessageExt], broker_name: str, fields: RecordFields) -> MessageExt:
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
        _prepared,
    ) = fields
    uniq_id = props.uniq_id
    if sysflag & _COMPRESSED:
        try:
            body = zlib.decompress(body)
        except zlib.error as exc:
            raise MessageIllegalError(
                f"message {uniq_id or physical_offset}: cannot decompress the body: {exc}",
                code=ResponseCode.MESSAGE_ILLEGAL,
            ) from exc
    # Broker-only system properties never reach ``properties``; ORIGIN_TOPIC names the
    # topic a retried message or a dead letter was first sent to.
    sys_props = props.sys
    if sys_props:
        origin = sys_props.get(_ORIGIN_TOPIC, "")
        store_topic = topic if origin and origin != topic else ""
        dlq_reason = sys_props.get(_DLQ_REASON, "")
        topic = origin or topic
    else:
        store_topic = dlq_reason = ""
    # Positional: the field order of MessageExt (cheaper than keywords on this path).
    return cls(
        topic,
        body,
        props.tags,
        props.keys,
        props.props,
        uniq_id,
        queue_id,
        queue_offset,
        born_ts,
        store_ts,
        reconsume,
        broker_name,
        physical_offset,
        size,
        flag,
        sysflag,
        born_host,
        store_host,
        store_topic,
        dlq_reason,
    )


class PullResult(msgspec.Struct, frozen=True):
    """The outcome of one pull (SPEC M9)."""

    status: PullStatus
    #: Where to pull next (after the messages returned, or where the broker says).
    next_offset: int
    #: The queue's first and one-past-last offsets when the broker answered.
    min_offset: int
    max_offset: int
    messages: list[MessageExt] = []


# ---------------------------------------------------------------------------------------
# Compression (SPEC M8)
# ---------------------------------------------------------------------------------------


def compress_body(
    body: bytes, threshold: int = DEFAULT_COMPRESS_THRESHOLD, level: int = DEFAULT_COMPRESS_LEVEL
) -> tuple[bytes, int]:
    """The body to put on the wire and the SysFlag bits it needs.

    A body over ``threshold`` bytes is zlib-compressed and flagged COMPRESSED, unless
    compressing does not make it smaller (then it travels as is). A negative threshold
    turns compression off.
    """
    if threshold < 0 or len(body) <= threshold:
        return body, 0
    packed = zlib.compress(body, level)
    if len(packed) >= len(body):
        return body, 0
    return packed, _COMPRESSED


# ---------------------------------------------------------------------------------------
# Unique message ids (SPEC M7)
# ---------------------------------------------------------------------------------------

# 2020-01-01T00:00:00Z: ids carry seconds since then in 32 bits (good until 2156).
_ID_EPOCH: Final = 1_577_836_800


class _IdGenerator:
    """128-bit ids as 32 hex digits: host 4 bytes, pid 2, salt 2, seconds 4, counter 4.

    The host part folds the MAC address (``uuid.getnode()``, no DNS lookup), the salt
    is random per process (and again after ``fork``), and the counter is a process-wide
    ``itertools.count``, whose ``next`` is atomic under the GIL. Two ids collide only if
    one process makes 2**32 ids within one second, or two processes share host, pid and
    salt.
    """

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._prefix = ""
        # The first 24 digits change once a second; they are formatted once a second.
        self._second = -1
        self._head = ""
        self.reset()

    def reset(self) -> None:
        node = uuid.getnode()
        host = (node ^ (node >> 32)) & 0xFFFFFFFF
        salt = int.from_bytes(os.urandom(2), "big")
        self._prefix = f"{host:08X}{os.getpid() & 0xFFFF:04X}{salt:04X}"
        self._counter = itertools.count(int.from_bytes(os.urandom(2), "big"))
        self._second = -1

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            # Two threads may race here; both compute the same head.
            self._head = f"{self._prefix}{(second - _ID_EPOCH) & 0xFFFFFFFF:08X}"
            self._second = second
        return f"{self._head}{next(self._counter) & 0xFFFFFFFF:08X}"


new_msg_id: Final = _IdGenerator()
"""A new unique message id: 32 upper-case hex digits (call it: ``new_msg_id()``)."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=new_msg_id.reset)
