"""Every number on the wire: request codes, response codes, flags, statuses, permissions.

These enums are the single source of the numbers a client in any language needs; each
member is listed in ``docs/PROTOCOL.md`` (a test checks it). Numbers follow Apache
RocketMQ's ``RequestCode`` and ``ResponseCode`` where an equivalent exists, so that
RocketMQ users recognise them; the wire format itself is not RocketMQ's. Codes 50-99 are
this fabric's own.

A code is never reused for another meaning: a removed code stays reserved.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "DEFAULT_BROKER_EXPIRY",
    "DEFAULT_BROKER_HEARTBEAT_INTERVAL",
    "DEFAULT_CLIENT_EXPIRY",
    "DEFAULT_CLIENT_HEARTBEAT_INTERVAL",
    "DEFAULT_DEDUP_WINDOW",
    "DEFAULT_LOCK_EXPIRY",
    "DEFAULT_MAX_RECONSUME_TIMES",
    "DEFAULT_TIMER_MAX_DELAY",
    "DELAY_LEVELS",
    "PROTOCOL_VERSION",
    "ConsumeFrom",
    "FilterType",
    "Flag",
    "MessageModel",
    "Perm",
    "PullStatus",
    "RequestCode",
    "ResponseCode",
    "SendStatus",
    "SysFlag",
    "TransactionState",
    "pull_status_for",
    "send_status_for",
]

#: Element 1 of every request and reply header. A server answers VERSION_NOT_SUPPORTED
#: to any other value.
PROTOCOL_VERSION: Final = 1

#: Seconds between two REGISTER_BROKER / BROKER_HEARTBEAT requests of a broker (RocketMQ 30 s).
DEFAULT_BROKER_HEARTBEAT_INTERVAL: Final = 30.0
#: Seconds after its last registration or heartbeat when a NameServer drops a broker (120 s).
DEFAULT_BROKER_EXPIRY: Final = 120.0
#: Seconds between two HEARTBEATs of a consumer to each broker. RocketMQ uses 30 s; this
#: fabric promises a dead consumer's queues move within seconds (SPEC M12).
DEFAULT_CLIENT_HEARTBEAT_INTERVAL: Final = 1.0
#: Seconds after its last HEARTBEAT when a broker drops a client: its streams close, its
#: queue locks are freed and its group is told (NOTIFY_CONSUMER_IDS_CHANGED).
DEFAULT_CLIENT_EXPIRY: Final = 5.0
#: Seconds a queue lock (LOCK_BATCH_MQ) lasts unless renewed (RocketMQ 60 s).
DEFAULT_LOCK_EXPIRY: Final = 30.0
#: The fixed delay levels 1..18 in seconds (RocketMQ ``messageDelayLevel``).
DELAY_LEVELS: Final[tuple[float, ...]] = (
    1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
)  # fmt: skip
#: Deliveries a message gets before it goes to the dead-letter topic (RocketMQ 16).
DEFAULT_MAX_RECONSUME_TIMES: Final = 16
#: Seconds a broker remembers a message id for idempotent resends (SPEC M20).
DEFAULT_DEDUP_WINDOW: Final = 120.0
#: The furthest delivery time a broker accepts by default, in seconds from now.
DEFAULT_TIMER_MAX_DELAY: Final = 30 * 86400.0


class Flag(enum.IntFlag):
    """Bits of the ``flags`` header element."""

    #: Set on every reply, clear on every request (RocketMQ ``RPC_TYPE``).
    RESPONSE = 0x1
    #: The sender wants no reply at all, not even an error (RocketMQ ``RPC_ONEWAY``).
    ONEWAY = 0x2
    #: Set (with RESPONSE) on a message a broker sends on its own to a client, not in
    #: answer to a request: element 0 is then a RequestCode (PUSH_MESSAGES, STREAM_CLOSED,
    #: NOTIFY_CONSUMER_IDS_CHANGED) and element 2 a stream id (0 when none).
    PUSH = 0x4


class RequestCode(enum.IntEnum):
    """What a request asks for; it fixes the schema of the request body and of the reply body."""

    # Broker: messages.
    SEND_MESSAGE = 10
    PULL_MESSAGE = 11
    # Broker: consumer offsets.
    QUERY_CONSUMER_OFFSET = 14
    COMMIT_CONSUMER_OFFSET = 15
    # Broker: topics.
    CREATE_TOPIC = 17
    UPDATE_TOPIC = 18
    LIST_TOPICS = 21
    # Broker: queue offsets.
    SEARCH_OFFSET_BY_TIMESTAMP = 29
    GET_MAX_OFFSET = 30
    GET_MIN_OFFSET = 31
    # Broker: queries (section 14.5).
    QUERY_MESSAGE = 12
    VIEW_MESSAGE_BY_ID = 33
    # Broker: clients and consumer groups.
    HEARTBEAT = 34
    UNREGISTER_CLIENT = 35
    #: A consumer hands back a message it failed to consume (retry topic or DLQ, 14.2).
    CONSUMER_SEND_MSG_BACK = 36
    #: A producer commits or rolls back a half message (14.3).
    END_TRANSACTION = 37
    GET_CONSUMER_LIST_BY_GROUP = 38
    #: Push (broker to producer, Flag.PUSH): is this half message committed? (14.3)
    CHECK_TRANSACTION_STATE = 39
    #: Push (broker to client, Flag.PUSH): the members of a consumer group changed.
    NOTIFY_CONSUMER_IDS_CHANGED = 40
    LOCK_BATCH_MQ = 41
    UNLOCK_BATCH_MQ = 42
    # Broker: push consumption (this fabric's own; docs/PROTOCOL.md section 13).
    CONSUME_OPEN = 60
    CONSUME_ACK = 61
    CONSUME_CLOSE = 62
    #: Push (broker to client, Flag.PUSH): messages of an open stream.
    PUSH_MESSAGES = 63
    #: Push (broker to client, Flag.PUSH): the broker ended a stream (remark says why).
    STREAM_CLOSED = 64
    # NameServer.
    REGISTER_BROKER = 103
    UNREGISTER_BROKER = 104
    GET_ROUTE_INFO_BY_TOPIC = 105
    GET_CLUSTER_INFO = 106
    GET_ALL_TOPIC_LIST = 206
    # Broker: topics (continued).
    DELETE_TOPIC = 215
    # Broker: consumer offsets (continued; RocketMQ INVOKE_BROKER_TO_RESET_OFFSET).
    RESET_CONSUMER_OFFSET = 222
    # Broker: messages (continued).
    SEND_BATCH_MESSAGE = 320
    # NameServer (continued).
    BROKER_HEARTBEAT = 904


class ResponseCode(enum.IntEnum):
    """The outcome of a request, element 0 of every reply header."""

    SUCCESS = 0
    #: An unexpected failure inside the server; the remark says what.
    SYSTEM_ERROR = 1
    #: The server is overloaded (busy page cache, append lock timeout); retry later or elsewhere.
    SYSTEM_BUSY = 2
    #: This server does not handle this request code.
    REQUEST_CODE_NOT_SUPPORTED = 3
    #: Send: stored, but SYNC_FLUSH did not complete in time. The body is a SendReply.
    FLUSH_DISK_TIMEOUT = 10
    #: Send: stored on the master, no slave available (SYNC_MASTER). The body is a SendReply.
    SLAVE_NOT_AVAILABLE = 11
    #: Send: stored on the master, the slave did not confirm in time. The body is a SendReply.
    FLUSH_SLAVE_TIMEOUT = 12
    #: The message is refused: body or properties too large, or fields out of range.
    MESSAGE_ILLEGAL = 13
    #: The service cannot take writes now (disk full, store closed, shutting down).
    SERVICE_NOT_AVAILABLE = 14
    #: The topic or the broker does not permit this operation (see Perm).
    NO_PERMISSION = 16
    #: The topic does not exist on this broker (and auto-create is off).
    TOPIC_NOT_EXIST = 17
    #: CREATE_TOPIC for a topic that exists.
    TOPIC_ALREADY_EXISTS = 18
    #: Pull: no message at this offset yet. The body is a PullReply.
    PULL_NOT_FOUND = 19
    #: Pull: messages were scanned but none matched the filter. The body is a PullReply.
    PULL_RETRY_IMMEDIATELY = 20
    #: Pull: the offset is out of range; restart at the reply's next_offset. Body: PullReply.
    PULL_OFFSET_MOVED = 21
    #: A query found nothing (no committed offset for this group and queue).
    QUERY_NOT_FOUND = 22
    #: The subscription's filter expression (tags or SQL) does not parse; the remark
    #: names the column and what was expected (fabric.filters).
    SUBSCRIPTION_PARSE_FAILED = 23
    #: The header's protocol version is not PROTOCOL_VERSION.
    VERSION_NOT_SUPPORTED = 50
    #: Frame 0 is not a valid header, the body does not fit the code's schema, or the
    #: number of body frames is wrong.
    MALFORMED_REQUEST = 51
    #: A topic name breaks the naming rule (fabric.protocol.names).
    INVALID_TOPIC_NAME = 52
    #: A group name breaks the naming rule (fabric.protocol.names).
    INVALID_GROUP_NAME = 53
    #: The NameServer knows no live broker serving this topic.
    NO_ROUTE = 54
    #: BROKER_HEARTBEAT from a broker the NameServer does not know (or knows at another
    #: data version): the broker must send REGISTER_BROKER.
    BROKER_NOT_REGISTERED = 55
    #: LOCK_BATCH_MQ / an exclusive CONSUME_OPEN: another live client of the group holds
    #: the queue's lock (ordered consumption).
    QUEUE_LOCKED = 56
    #: CONSUME_ACK / CONSUME_CLOSE for a stream this connection does not have open.
    STREAM_NOT_FOUND = 57


class SendStatus(enum.IntEnum):
    """The outcome of a successful send as the client API reports it (SPEC M2)."""

    SEND_OK = 0
    FLUSH_DISK_TIMEOUT = 1
    FLUSH_SLAVE_TIMEOUT = 2
    SLAVE_NOT_AVAILABLE = 3


class MessageModel(enum.IntEnum):
    """How a consumer group shares messages (RocketMQ ``MessageModel``)."""

    #: Each queue is consumed by one member of the group; offsets live on the broker.
    CLUSTERING = 0
    #: Every member consumes every message; each keeps its offsets in a local file.
    BROADCASTING = 1


class ConsumeFrom(enum.IntEnum):
    """Where a group with no committed offset for a queue starts (RocketMQ ``ConsumeFromWhere``)."""

    #: The queue's max offset when the stream opens: only messages stored from now on.
    LAST_OFFSET = 0
    #: The queue's min offset: everything still stored.
    FIRST_OFFSET = 1
    #: The first message stored at or after a timestamp (ms).
    TIMESTAMP = 2


class FilterType(enum.IntEnum):
    """The language of a subscription's expression (docs/PROTOCOL.md section 12)."""

    TAG = 0
    SQL92 = 1


class TransactionState(enum.IntEnum):
    """A local transaction's outcome (RocketMQ ``LocalTransactionState``)."""

    #: Not decided yet: the broker asks again later (CHECK_TRANSACTION_STATE).
    UNKNOWN = 0
    #: Deliver the half message.
    COMMIT = 1
    #: Drop the half message.
    ROLLBACK = 2


class PullStatus(enum.IntEnum):
    """The outcome of a pull as the client API reports it."""

    FOUND = 0
    NO_NEW_MSG = 1
    NO_MATCHED_MSG = 2
    OFFSET_ILLEGAL = 3


class Perm(enum.IntFlag):
    """Topic and broker permission bits (RocketMQ ``PermName``); topics default to READ|WRITE."""

    INHERIT = 0x1
    WRITE = 0x2
    READ = 0x4


class SysFlag(enum.IntFlag):
    """Bits of a message's ``sysflag`` (stored in the CommitLog record, see docs/STORAGE.md)."""

    #: The body is zlib-compressed; the consumer decompresses it (SPEC M8).
    COMPRESSED = 0x1
    TRANSACTION_PREPARED = 0x4
    TRANSACTION_COMMIT = 0x8
    TRANSACTION_ROLLBACK = 0xC


_SEND_STATUS: Final[dict[int, SendStatus]] = {
    ResponseCode.SUCCESS: SendStatus.SEND_OK,
    ResponseCode.FLUSH_DISK_TIMEOUT: SendStatus.FLUSH_DISK_TIMEOUT,
    ResponseCode.FLUSH_SLAVE_TIMEOUT: SendStatus.FLUSH_SLAVE_TIMEOUT,
    ResponseCode.SLAVE_NOT_AVAILABLE: SendStatus.SLAVE_NOT_AVAILABLE,
}

_PULL_STATUS: Final[dict[int, PullStatus]] = {
    ResponseCode.SUCCESS: PullStatus.FOUND,
    ResponseCode.PULL_NOT_FOUND: PullStatus.NO_NEW_MSG,
    ResponseCode.PULL_RETRY_IMMEDIATELY: PullStatus.NO_MATCHED_MSG,
    ResponseCode.PULL_OFFSET_MOVED: PullStatus.OFFSET_ILLEGAL,
}


def send_status_for(code: int) -> SendStatus | None:
    """The SendStatus a send reply's code means, or None when the code is an error."""
    return _SEND_STATUS.get(code)


def pull_status_for(code: int) -> PullStatus | None:
    """The PullStatus a pull reply's code means, or None when the code is an error."""
    return _PULL_STATUS.get(code)
