"""Wire types: the request envelopes (a tagged union on the request code) and every body.

Frame 0 of a request is a MessagePack array ``[code, version, request_id, flags, body]``
(docs/PROTOCOL.md). Each request code has one envelope Struct here, ``array_like`` and
tagged with its code, so that one ``msgspec.msgpack.Decoder(Request)`` validates a whole
header in one pass and a server dispatches on the envelope's type with ``match``.

Bodies are MessagePack maps (field name to value). Schema evolution rules:

* a new field gets a default and goes last; a decoder fills missing fields with their
  defaults and ignores fields it does not know;
* a field never changes type or meaning; the envelopes' element order never changes.

``REQUEST_TYPES``, ``BODY_TYPES`` and ``REPLY_TYPES`` map each RequestCode to its
envelope, its request body and its reply body (the body of a SUCCESS reply, and of the
few non-error codes listed in ``BODY_CODES``).
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from .codes import Perm, RequestCode, ResponseCode

__all__ = [
    "BODY_CODES",
    "BODY_TYPES",
    "DEFAULT_QUEUE_NUMS",
    "DEFAULT_TOPIC_PERM",
    "MAX_QUEUE_NUMS",
    "PUSH_TYPES",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "BatchEntry",
    "BrokerData",
    "BrokerHeartbeatBody",
    "BrokerHeartbeatRequest",
    "CheckTransactionBody",
    "ClientHeartbeatBody",
    "ClusterInfo",
    "CommitConsumerOffsetBody",
    "CommitConsumerOffsetRequest",
    "ConsumeAckBody",
    "ConsumeAckRequest",
    "ConsumeCloseBody",
    "ConsumeCloseRequest",
    "ConsumeOpenBody",
    "ConsumeOpenReply",
    "ConsumeOpenRequest",
    "ConsumerData",
    "ConsumerGroupBody",
    "ConsumerListReply",
    "ConsumerSendBackBody",
    "ConsumerSendBackRequest",
    "CreateTopicRequest",
    "DeleteTopicBody",
    "DeleteTopicRequest",
    "Empty",
    "EndTransactionBody",
    "EndTransactionRequest",
    "Envelope",
    "GetAllTopicListRequest",
    "GetClusterInfoRequest",
    "GetConsumerListRequest",
    "GetMaxOffsetRequest",
    "GetMinOffsetRequest",
    "GetRouteInfoBody",
    "GetRouteInfoRequest",
    "HeartbeatRequest",
    "ListTopicsRequest",
    "LockBatchBody",
    "LockBatchReply",
    "LockBatchRequest",
    "OffsetReply",
    "PullMessageBody",
    "PullMessageRequest",
    "PullReply",
    "PushBody",
    "QueryConsumerOffsetBody",
    "QueryConsumerOffsetRequest",
    "QueryMessageBody",
    "QueryMessageReply",
    "QueryMessageRequest",
    "QueueData",
    "QueueOffset",
    "QueueOffsetBody",
    "QueueRef",
    "RegisterBrokerBody",
    "RegisterBrokerReply",
    "RegisterBrokerRequest",
    "Request",
    "RequestId",
    "ResetOffsetBody",
    "ResetOffsetReply",
    "ResetOffsetRequest",
    "SearchOffsetBody",
    "SearchOffsetRequest",
    "SendBatchBody",
    "SendBatchReply",
    "SendBatchRequest",
    "SendMessageBody",
    "SendMessageRequest",
    "SendReply",
    "StreamClosedBody",
    "SubscriptionData",
    "TopicConfig",
    "TopicConfigList",
    "TopicList",
    "TopicRouteData",
    "UnlockBatchRequest",
    "UnregisterBrokerBody",
    "UnregisterBrokerRequest",
    "UnregisterClientBody",
    "UnregisterClientRequest",
    "UpdateTopicRequest",
    "ViewMessageBody",
    "ViewMessageRequest",
]

#: Queues of a topic created without a queue count (RocketMQ ``defaultTopicQueueNums``).
DEFAULT_QUEUE_NUMS: Final = 4
#: Most queues a topic may have on one broker (read or write).
MAX_QUEUE_NUMS: Final = 1024
#: Permission of a topic created without one: readable and writable.
DEFAULT_TOPIC_PERM: Final = int(Perm.READ | Perm.WRITE)

#: A non-negative integer below 2**63 chosen by the client, echoed in the reply.
RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


# ---------------------------------------------------------------------------------------
# Shared bodies
# ---------------------------------------------------------------------------------------


class Empty(msgspec.Struct):
    """A body with no fields: the empty map ``{}`` (one byte, 0x80)."""


class TopicConfig(msgspec.Struct, kw_only=True):
    """A topic as one broker serves it."""

    topic: str
    #: Queues consumers read from (ids 0 .. read_queue_nums-1).
    read_queue_nums: int = DEFAULT_QUEUE_NUMS
    #: Queues producers write to (ids 0 .. write_queue_nums-1).
    write_queue_nums: int = DEFAULT_QUEUE_NUMS
    #: Perm bits; READ|WRITE (6) by default.
    perm: int = DEFAULT_TOPIC_PERM


class OffsetReply(msgspec.Struct, kw_only=True):
    """An offset in a queue (counted in messages, not bytes)."""

    offset: int


# ---------------------------------------------------------------------------------------
# Broker bodies
# ---------------------------------------------------------------------------------------


class SendMessageBody(msgspec.Struct, kw_only=True):
    """SEND_MESSAGE: one message; its body travels raw in frame 1."""

    producer_group: str
    topic: str
    queue_id: int
    tags: str = ""
    keys: list[str] = []
    #: The producer's unique message id (SPEC M7); the reply echoes it as msg_id.
    uniq_id: str = ""
    #: User properties, stored as given.
    properties: dict[str, str] = {}
    #: Application flag, stored as given.
    flag: int = 0
    #: SysFlag bits, e.g. COMPRESSED when the body frame is zlib-compressed.
    sysflag: int = 0
    #: Producer clock, milliseconds since the Unix epoch.
    born_timestamp: int = 0
    reconsume_times: int = 0
    #: A fixed delay level, 1..18 (DELAY_LEVELS); 0: none (section 14.1).
    delay_level: int = 0
    #: Deliver at this time, ms since the Unix epoch; 0: now (section 14.1).
    deliver_at: int = 0
    #: True on a retry of a send that may have been stored already: the broker stores
    #: it only if it has not stored ``uniq_id`` within its dedup window (section 14.4).
    resend: bool = False


class BatchEntry(msgspec.Struct, kw_only=True):
    """The per-message fields of one message in SEND_BATCH_MESSAGE."""

    tags: str = ""
    keys: list[str] = []
    uniq_id: str = ""
    properties: dict[str, str] = {}
    flag: int = 0
    sysflag: int = 0
    born_timestamp: int = 0
    delay_level: int = 0
    deliver_at: int = 0


class SendBatchBody(msgspec.Struct, kw_only=True):
    """SEND_BATCH_MESSAGE: messages of one topic and queue; frame i+1 is the body of entry i.

    With ``body_sizes`` the bodies travel packed instead: one body frame, the bodies one
    after the other, ``body_sizes[i]`` bytes for entry i (docs/PROTOCOL.md 7.3).
    """

    producer_group: str
    topic: str
    queue_id: int
    messages: list[BatchEntry]
    #: As SendMessageBody.resend, for every message of the batch.
    resend: bool = False
    #: Packed bodies: the size of each body in the single body frame; [] = a frame each.
    body_sizes: list[int] = []


class SendReply(msgspec.Struct, kw_only=True):
    """Where a sent message was stored."""

    msg_id: str
    queue_id: int
    #: -1 while the message is not in its queue yet (timed, delayed or half message).
    queue_offset: int
    broker_name: str = ""
    #: Where the record starts in the broker's CommitLog (END_TRANSACTION needs it).
    commitlog_offset: int = -1


class SendBatchReply(msgspec.Struct, kw_only=True):
    """Where each message of a batch was stored, in the order of the request."""

    msg_ids: list[str]
    queue_id: int
    queue_offsets: list[int]
    broker_name: str = ""


class PullMessageBody(msgspec.Struct, kw_only=True):
    """PULL_MESSAGE: read messages of one queue from an offset."""

    consumer_group: str
    topic: str
    queue_id: int
    queue_offset: int
    max_msgs: int = 32
    #: Stop adding records once their total size reaches this many bytes; 0: broker default.
    max_bytes: int = 0
    #: Long poll: when nothing is there, wait up to this long for a message; 0: answer at once.
    suspend_timeout_ms: int = 0
    #: Also commit this offset for the group before reading; -1: commit nothing.
    commit_offset: int = -1
    #: The filter expression: with ``filter_type`` TAG "*" for all, or tags joined by " || ".
    subscription: str = "*"
    #: FilterType of ``subscription``: 0 TAG, 1 SQL92 (docs/PROTOCOL.md section 12).
    filter_type: int = 0


class PullReply(msgspec.Struct, kw_only=True):
    """Pull outcome; the records themselves are frames 1..n, one stored record per frame."""

    next_offset: int
    min_offset: int
    max_offset: int


class QueryConsumerOffsetBody(msgspec.Struct, kw_only=True):
    """QUERY_CONSUMER_OFFSET: the group's committed offset of one queue."""

    consumer_group: str
    topic: str
    queue_id: int


class CommitConsumerOffsetBody(msgspec.Struct, kw_only=True):
    """COMMIT_CONSUMER_OFFSET: store the group's offset of one queue (the next to consume)."""

    consumer_group: str
    topic: str
    queue_id: int
    offset: int


class QueueOffsetBody(msgspec.Struct, kw_only=True):
    """GET_MAX_OFFSET / GET_MIN_OFFSET: one queue of a topic."""

    topic: str
    queue_id: int


class SearchOffsetBody(msgspec.Struct, kw_only=True):
    """SEARCH_OFFSET_BY_TIMESTAMP: first offset stored at or after ``timestamp`` (ms)."""

    topic: str
    queue_id: int
    timestamp: int


class DeleteTopicBody(msgspec.Struct, kw_only=True):
    """DELETE_TOPIC."""

    topic: str


class TopicConfigList(msgspec.Struct, kw_only=True):
    """LIST_TOPICS reply: the topics of one broker."""

    topics: list[TopicConfig]


class SubscriptionData(msgspec.Struct, kw_only=True):
    """One topic a consumer group subscribes to, and its filter (docs/PROTOCOL.md section 12)."""

    topic: str
    #: FilterType: 0 TAG, 1 SQL92.
    filter_type: int = 0
    #: A tag expression ("*", "A || B") or an SQL92 expression.
    expression: str = "*"


class ConsumerData(msgspec.Struct, kw_only=True):
    """What a HEARTBEAT says of one consumer group the client is a member of."""

    group: str
    #: MessageModel: 0 CLUSTERING, 1 BROADCASTING.
    model: int = 0
    #: Ordered consumption: the client locks each queue it consumes (LOCK_BATCH_MQ).
    orderly: bool = False
    subscriptions: list[SubscriptionData] = []


class ClientHeartbeatBody(msgspec.Struct, kw_only=True):
    """HEARTBEAT: a client says it is alive and which groups it belongs to.

    A broker remembers the connection a client's last HEARTBEAT came on: pushes to the
    client (NOTIFY_CONSUMER_IDS_CHANGED) go there. A client that stops sending HEARTBEATs
    is dropped DEFAULT_CLIENT_EXPIRY seconds after its last one.
    """

    client_id: str
    producer_groups: list[str] = []
    #: Groups named only here count as consumer groups with no subscription data.
    consumer_groups: list[str] = []
    consumers: list[ConsumerData] = []


class UnregisterClientBody(msgspec.Struct, kw_only=True):
    """UNREGISTER_CLIENT: a client leaves (at shutdown); its groups rebalance at once."""

    client_id: str
    producer_groups: list[str] = []
    consumer_groups: list[str] = []


class ConsumerGroupBody(msgspec.Struct, kw_only=True):
    """GET_CONSUMER_LIST_BY_GROUP request, and the NOTIFY_CONSUMER_IDS_CHANGED push."""

    consumer_group: str


class ConsumerListReply(msgspec.Struct, kw_only=True):
    """GET_CONSUMER_LIST_BY_GROUP reply: the live members' client ids, sorted."""

    client_ids: list[str]


class QueueRef(msgspec.Struct, kw_only=True, frozen=True):
    """One queue of a topic on the broker that receives the request."""

    topic: str
    queue_id: int


class LockBatchBody(msgspec.Struct, kw_only=True):
    """LOCK_BATCH_MQ / UNLOCK_BATCH_MQ: take (renew) or give up queue locks for a group."""

    consumer_group: str
    client_id: str
    queues: list[QueueRef]


class LockBatchReply(msgspec.Struct, kw_only=True):
    """LOCK_BATCH_MQ reply: the queues now locked by this client (a subset of the request)."""

    locked: list[QueueRef]


class ConsumeOpenBody(msgspec.Struct, kw_only=True):
    """CONSUME_OPEN: open a push stream of one queue to this connection (section 13)."""

    consumer_group: str
    client_id: str
    #: Chosen by the client, unique among the streams open on its connection; PUSH_MESSAGES
    #: and STREAM_CLOSED carry it as element 2. Opening an id already open replaces it.
    stream_id: int
    topic: str
    queue_id: int
    #: Where to start; -1: the group's committed offset, or ``consume_from`` when none.
    offset: int = -1
    #: ConsumeFrom: 0 LAST_OFFSET, 1 FIRST_OFFSET, 2 TIMESTAMP (``timestamp`` in ms).
    consume_from: int = 0
    timestamp: int = 0
    #: FilterType and expression, as in SubscriptionData.
    filter_type: int = 0
    expression: str = "*"
    #: The initial window: messages and bytes the broker may push before acks reopen it.
    window_msgs: int = 1000
    window_bytes: int = 64 * 1024 * 1024
    #: Ordered consumption: refuse (QUEUE_LOCKED) unless this client holds the queue lock
    #: or can take it now; the lock is then held as by LOCK_BATCH_MQ.
    exclusive: bool = False
    #: Acks commit the group's offset on the broker (CLUSTERING); False for BROADCASTING.
    commit: bool = True


class ConsumeOpenReply(msgspec.Struct, kw_only=True):
    """CONSUME_OPEN reply: where the stream starts and the queue's current range."""

    start_offset: int
    min_offset: int
    max_offset: int


class ConsumeAckBody(msgspec.Struct, kw_only=True):
    """CONSUME_ACK (usually ONEWAY): reopen the window, and commit the group's offset."""

    stream_id: int
    #: Messages and bytes of pushed records that are done; the window grows by as much.
    credit_msgs: int = 0
    credit_bytes: int = 0
    #: The next offset to consume (every message before it is done); -1: commit nothing.
    commit_offset: int = -1


class ConsumeCloseBody(msgspec.Struct, kw_only=True):
    """CONSUME_CLOSE: end a stream; commit first when ``commit_offset`` >= 0."""

    stream_id: int
    commit_offset: int = -1
    #: Also give up the queue lock (ordered consumption), after committing.
    unlock: bool = False


class PushBody(msgspec.Struct, kw_only=True):
    """PUSH_MESSAGES: records of one stream; frames 1..n carry them, one record per frame.

    ``next_offset`` is the queue offset after the last record the broker looked at,
    including records the filter skipped: the consumer's committed offset may move up to
    it once every pushed record before it is done. A push may carry no record at all,
    only to move ``next_offset`` past filtered messages.
    """

    next_offset: int
    max_offset: int


class StreamClosedBody(msgspec.Struct, kw_only=True):
    """STREAM_CLOSED push: the broker ended a stream; records pushed on it and not acked
    must be dropped without committing (their offsets are consumed again after a reopen).

    ``reason`` is one of: "offset_reset", "topic_deleted", "queue_removed",
    "topic_unreadable", "lock_lost", "client_expired", "replaced", "shutdown"; the push's
    remark says more for humans.
    """

    reason: str


class ConsumerSendBackBody(msgspec.Struct, kw_only=True):
    """CONSUMER_SEND_MSG_BACK: a consumed message failed; retry it later or dead-letter it."""

    consumer_group: str
    #: The topic the message was consumed from (its original topic, or the retry topic).
    topic: str
    #: The consumed record's CommitLog offset on this broker (MessageExt.commitlog_offset).
    commitlog_offset: int
    msg_id: str = ""
    #: The delay level of the retry; 0: the broker's choice, 3 + reconsume times.
    delay_level: int = 0
    #: Deliveries before the dead-letter topic; -1: DEFAULT_MAX_RECONSUME_TIMES.
    max_reconsume_times: int = -1


class EndTransactionBody(msgspec.Struct, kw_only=True):
    """END_TRANSACTION: the outcome of a half message's local transaction."""

    producer_group: str
    msg_id: str
    #: The half message's CommitLog offset (SendReply.commitlog_offset).
    commitlog_offset: int
    #: TransactionState: 0 UNKNOWN, 1 COMMIT, 2 ROLLBACK.
    state: int
    #: True when this answers a CHECK_TRANSACTION_STATE.
    from_check: bool = False


class CheckTransactionBody(msgspec.Struct, kw_only=True):
    """CHECK_TRANSACTION_STATE push: frame 1 is the half message's record."""

    producer_group: str
    msg_id: str
    commitlog_offset: int
    #: Checks of this half message so far, this one included.
    check_times: int


class QueryMessageBody(msgspec.Struct, kw_only=True):
    """QUERY_MESSAGE: messages of a topic stored with a key, newest first."""

    topic: str
    key: str
    max_num: int = 32
    #: Store time range, ms since the epoch; 0: no bound.
    begin_ms: int = 0
    end_ms: int = 0


class ViewMessageBody(msgspec.Struct, kw_only=True):
    """VIEW_MESSAGE_BY_ID: one message by its id (``msg_id``) or CommitLog offset (>= 0)."""

    topic: str = ""
    msg_id: str = ""
    commitlog_offset: int = -1


class QueryMessageReply(msgspec.Struct, kw_only=True):
    """QUERY_MESSAGE / VIEW_MESSAGE_BY_ID reply: frames 1..n are the records found."""

    count: int


class ResetOffsetBody(msgspec.Struct, kw_only=True):
    """RESET_CONSUMER_OFFSET: move a group's committed offsets of a topic on this broker."""

    consumer_group: str
    topic: str
    #: ConsumeFrom: LAST_OFFSET (latest), FIRST_OFFSET (earliest) or TIMESTAMP.
    to: int
    timestamp: int = 0


class QueueOffset(msgspec.Struct, kw_only=True):
    """One queue's offset."""

    queue_id: int
    offset: int


class ResetOffsetReply(msgspec.Struct, kw_only=True):
    """RESET_CONSUMER_OFFSET reply: the new committed offset of each queue of the topic."""

    offsets: list[QueueOffset]


# ---------------------------------------------------------------------------------------
# NameServer bodies
# ---------------------------------------------------------------------------------------


class RegisterBrokerBody(msgspec.Struct, kw_only=True):
    """REGISTER_BROKER: a broker announces itself and all its topics (it owns this entry)."""

    cluster_name: str
    broker_name: str
    #: 0 for a master, > 0 for a slave.
    broker_id: int = 0
    #: The endpoint clients connect to, e.g. "tcp://10.0.0.5:10911".
    broker_addr: str
    topics: list[TopicConfig] = []
    #: Grows whenever the broker's topic set changes; a restarted broker starts higher
    #: (microseconds since the epoch at the last change works).
    data_version: int = 0
    #: Drop this broker this long after its last heartbeat; 0: the NameServer's default.
    heartbeat_timeout_ms: int = 0


class RegisterBrokerReply(msgspec.Struct, kw_only=True):
    """The expiry the NameServer applies to this broker, in milliseconds."""

    expiry_ms: int


class BrokerHeartbeatBody(msgspec.Struct, kw_only=True):
    """BROKER_HEARTBEAT: refresh a registration without resending topics."""

    cluster_name: str
    broker_name: str
    broker_id: int = 0
    broker_addr: str
    #: Must equal the registered data_version, else the reply is BROKER_NOT_REGISTERED.
    data_version: int = 0


class UnregisterBrokerBody(msgspec.Struct, kw_only=True):
    """UNREGISTER_BROKER: a broker leaves (only the registered address may remove it)."""

    cluster_name: str
    broker_name: str
    broker_id: int = 0
    broker_addr: str


class GetRouteInfoBody(msgspec.Struct, kw_only=True):
    """GET_ROUTE_INFO_BY_TOPIC."""

    topic: str


class QueueData(msgspec.Struct, kw_only=True):
    """The queues of a topic on one broker name (master and slaves share them)."""

    broker_name: str
    read_queue_nums: int
    write_queue_nums: int
    perm: int


class BrokerData(msgspec.Struct, kw_only=True):
    """The live addresses of one broker name, by broker id (0 is the master)."""

    cluster_name: str
    broker_name: str
    broker_addrs: dict[int, str]


class TopicRouteData(msgspec.Struct, kw_only=True):
    """GET_ROUTE_INFO_BY_TOPIC reply, sorted by broker name."""

    queue_datas: list[QueueData]
    broker_datas: list[BrokerData]


class ClusterInfo(msgspec.Struct, kw_only=True):
    """GET_CLUSTER_INFO reply: live brokers by name, and broker names by cluster."""

    brokers: dict[str, BrokerData]
    clusters: dict[str, list[str]]


class TopicList(msgspec.Struct, kw_only=True):
    """GET_ALL_TOPIC_LIST reply: topic names, sorted."""

    topics: list[str]


# ---------------------------------------------------------------------------------------
# Request envelopes: [code, version, request_id, flags, body], tagged by code
# ---------------------------------------------------------------------------------------


class Envelope(msgspec.Struct, array_like=True):
    """The header elements after the code; each subclass adds ``body`` and its code as tag."""

    version: int
    request_id: RequestId
    flags: int


class SendMessageRequest(Envelope, tag=int(RequestCode.SEND_MESSAGE)):
    body: SendMessageBody


class PullMessageRequest(Envelope, tag=int(RequestCode.PULL_MESSAGE)):
    body: PullMessageBody


class QueryConsumerOffsetRequest(Envelope, tag=int(RequestCode.QUERY_CONSUMER_OFFSET)):
    body: QueryConsumerOffsetBody


class CommitConsumerOffsetRequest(Envelope, tag=int(RequestCode.COMMIT_CONSUMER_OFFSET)):
    body: CommitConsumerOffsetBody


class CreateTopicRequest(Envelope, tag=int(RequestCode.CREATE_TOPIC)):
    body: TopicConfig


class UpdateTopicRequest(Envelope, tag=int(RequestCode.UPDATE_TOPIC)):
    body: TopicConfig


class ListTopicsRequest(Envelope, tag=int(RequestCode.LIST_TOPICS)):
    body: Empty


class SearchOffsetRequest(Envelope, tag=int(RequestCode.SEARCH_OFFSET_BY_TIMESTAMP)):
    body: SearchOffsetBody


class GetMaxOffsetRequest(Envelope, tag=int(RequestCode.GET_MAX_OFFSET)):
    body: QueueOffsetBody


class GetMinOffsetRequest(Envelope, tag=int(RequestCode.GET_MIN_OFFSET)):
    body: QueueOffsetBody


class HeartbeatRequest(Envelope, tag=int(RequestCode.HEARTBEAT)):
    body: ClientHeartbeatBody


class RegisterBrokerRequest(Envelope, tag=int(RequestCode.REGISTER_BROKER)):
    body: RegisterBrokerBody


class UnregisterBrokerRequest(Envelope, tag=int(RequestCode.UNREGISTER_BROKER)):
    body: UnregisterBrokerBody


class GetRouteInfoRequest(Envelope, tag=int(RequestCode.GET_ROUTE_INFO_BY_TOPIC)):
    body: GetRouteInfoBody


class GetClusterInfoRequest(Envelope, tag=int(RequestCode.GET_CLUSTER_INFO)):
    body: Empty


class GetAllTopicListRequest(Envelope, tag=int(RequestCode.GET_ALL_TOPIC_LIST)):
    body: Empty


class DeleteTopicRequest(Envelope, tag=int(RequestCode.DELETE_TOPIC)):
    body: DeleteTopicBody


class SendBatchRequest(Envelope, tag=int(RequestCode.SEND_BATCH_MESSAGE)):
    body: SendBatchBody


class BrokerHeartbeatRequest(Envelope, tag=int(RequestCode.BROKER_HEARTBEAT)):
    body: BrokerHeartbeatBody


class UnregisterClientRequest(Envelope, tag=int(RequestCode.UNREGISTER_CLIENT)):
    body: UnregisterClientBody


class GetConsumerListRequest(Envelope, tag=int(RequestCode.GET_CONSUMER_LIST_BY_GROUP)):
    body: ConsumerGroupBody


class LockBatchRequest(Envelope, tag=int(RequestCode.LOCK_BATCH_MQ)):
    body: LockBatchBody


class UnlockBatchRequest(Envelope, tag=int(RequestCode.UNLOCK_BATCH_MQ)):
    body: LockBatchBody


class ConsumeOpenRequest(Envelope, tag=int(RequestCode.CONSUME_OPEN)):
    body: ConsumeOpenBody


class ConsumeAckRequest(Envelope, tag=int(RequestCode.CONSUME_ACK)):
    body: ConsumeAckBody


class ConsumeCloseRequest(Envelope, tag=int(RequestCode.CONSUME_CLOSE)):
    body: ConsumeCloseBody


class ResetOffsetRequest(Envelope, tag=int(RequestCode.RESET_CONSUMER_OFFSET)):
    body: ResetOffsetBody


class ConsumerSendBackRequest(Envelope, tag=int(RequestCode.CONSUMER_SEND_MSG_BACK)):
    body: ConsumerSendBackBody


class EndTransactionRequest(Envelope, tag=int(RequestCode.END_TRANSACTION)):
    body: EndTransactionBody


class QueryMessageRequest(Envelope, tag=int(RequestCode.QUERY_MESSAGE)):
    body: QueryMessageBody


class ViewMessageRequest(Envelope, tag=int(RequestCode.VIEW_MESSAGE_BY_ID)):
    body: ViewMessageBody


#: Every request a server may receive; decode frame 0 with ``Decoder(Request)``.
Request = (
    SendMessageRequest
    | PullMessageRequest
    | QueryConsumerOffsetRequest
    | CommitConsumerOffsetRequest
    | CreateTopicRequest
    | UpdateTopicRequest
    | ListTopicsRequest
    | SearchOffsetRequest
    | GetMaxOffsetRequest
    | GetMinOffsetRequest
    | HeartbeatRequest
    | RegisterBrokerRequest
    | UnregisterBrokerRequest
    | GetRouteInfoRequest
    | GetClusterInfoRequest
    | GetAllTopicListRequest
    | DeleteTopicRequest
    | SendBatchRequest
    | BrokerHeartbeatRequest
    | UnregisterClientRequest
    | GetConsumerListRequest
    | LockBatchRequest
    | UnlockBatchRequest
    | ConsumeOpenRequest
    | ConsumeAckRequest
    | ConsumeCloseRequest
    | ResetOffsetRequest
    | ConsumerSendBackRequest
    | EndTransactionRequest
    | QueryMessageRequest
    | ViewMessageRequest
)

#: RequestCode -> its envelope type (the type's msgspec tag is the code).
REQUEST_TYPES: Final[dict[RequestCode, type[Envelope]]] = {
    RequestCode.SEND_MESSAGE: SendMessageRequest,
    RequestCode.PULL_MESSAGE: PullMessageRequest,
    RequestCode.QUERY_CONSUMER_OFFSET: QueryConsumerOffsetRequest,
    RequestCode.COMMIT_CONSUMER_OFFSET: CommitConsumerOffsetRequest,
    RequestCode.CREATE_TOPIC: CreateTopicRequest,
    RequestCode.UPDATE_TOPIC: UpdateTopicRequest,
    RequestCode.LIST_TOPICS: ListTopicsRequest,
    RequestCode.SEARCH_OFFSET_BY_TIMESTAMP: SearchOffsetRequest,
    RequestCode.GET_MAX_OFFSET: GetMaxOffsetRequest,
    RequestCode.GET_MIN_OFFSET: GetMinOffsetRequest,
    RequestCode.HEARTBEAT: HeartbeatRequest,
    RequestCode.REGISTER_BROKER: RegisterBrokerRequest,
    RequestCode.UNREGISTER_BROKER: UnregisterBrokerRequest,
    RequestCode.GET_ROUTE_INFO_BY_TOPIC: GetRouteInfoRequest,
    RequestCode.GET_CLUSTER_INFO: GetClusterInfoRequest,
    RequestCode.GET_ALL_TOPIC_LIST: GetAllTopicListRequest,
    RequestCode.DELETE_TOPIC: DeleteTopicRequest,
    RequestCode.SEND_BATCH_MESSAGE: SendBatchRequest,
    RequestCode.BROKER_HEARTBEAT: BrokerHeartbeatRequest,
    RequestCode.UNREGISTER_CLIENT: UnregisterClientRequest,
    RequestCode.GET_CONSUMER_LIST_BY_GROUP: GetConsumerListRequest,
    RequestCode.LOCK_BATCH_MQ: LockBatchRequest,
    RequestCode.UNLOCK_BATCH_MQ: UnlockBatchRequest,
    RequestCode.CONSUME_OPEN: ConsumeOpenRequest,
    RequestCode.CONSUME_ACK: ConsumeAckRequest,
    RequestCode.CONSUME_CLOSE: ConsumeCloseRequest,
    RequestCode.RESET_CONSUMER_OFFSET: ResetOffsetRequest,
    RequestCode.CONSUMER_SEND_MSG_BACK: ConsumerSendBackRequest,
    RequestCode.END_TRANSACTION: EndTransactionRequest,
    RequestCode.QUERY_MESSAGE: QueryMessageRequest,
    RequestCode.VIEW_MESSAGE_BY_ID: ViewMessageRequest,
}

#: RequestCode -> the type of its request body (the envelope's last field).
BODY_TYPES: Final[dict[RequestCode, type[msgspec.Struct]]] = {
    code: msgspec.structs.fields(envelope)[-1].type for code, envelope in REQUEST_TYPES.items()
}

#: RequestCode -> the type of the body of its SUCCESS reply.
REPLY_TYPES: Final[dict[RequestCode, type[msgspec.Struct]]] = {
    RequestCode.SEND_MESSAGE: SendReply,
    RequestCode.PULL_MESSAGE: PullReply,
    RequestCode.QUERY_CONSUMER_OFFSET: OffsetReply,
    RequestCode.COMMIT_CONSUMER_OFFSET: Empty,
    RequestCode.CREATE_TOPIC: TopicConfig,
    RequestCode.UPDATE_TOPIC: TopicConfig,
    RequestCode.LIST_TOPICS: TopicConfigList,
    RequestCode.SEARCH_OFFSET_BY_TIMESTAMP: OffsetReply,
    RequestCode.GET_MAX_OFFSET: OffsetReply,
    RequestCode.GET_MIN_OFFSET: OffsetReply,
    RequestCode.HEARTBEAT: Empty,
    RequestCode.REGISTER_BROKER: RegisterBrokerReply,
    RequestCode.UNREGISTER_BROKER: Empty,
    RequestCode.GET_ROUTE_INFO_BY_TOPIC: TopicRouteData,
    RequestCode.GET_CLUSTER_INFO: ClusterInfo,
    RequestCode.GET_ALL_TOPIC_LIST: TopicList,
    RequestCode.DELETE_TOPIC: Empty,
    RequestCode.SEND_BATCH_MESSAGE: SendBatchReply,
    RequestCode.BROKER_HEARTBEAT: Empty,
    RequestCode.UNREGISTER_CLIENT: Empty,
    RequestCode.GET_CONSUMER_LIST_BY_GROUP: ConsumerListReply,
    RequestCode.LOCK_BATCH_MQ: LockBatchReply,
    RequestCode.UNLOCK_BATCH_MQ: Empty,
    RequestCode.CONSUME_OPEN: ConsumeOpenReply,
    RequestCode.CONSUME_ACK: Empty,
    RequestCode.CONSUME_CLOSE: Empty,
    RequestCode.RESET_CONSUMER_OFFSET: ResetOffsetReply,
    RequestCode.CONSUMER_SEND_MSG_BACK: Empty,
    RequestCode.END_TRANSACTION: Empty,
    RequestCode.QUERY_MESSAGE: QueryMessageReply,
    RequestCode.VIEW_MESSAGE_BY_ID: QueryMessageReply,
}

#: Push codes (Flag.PUSH, broker to client) -> the type of the push's body.
PUSH_TYPES: Final[dict[RequestCode, type[msgspec.Struct]]] = {
    RequestCode.PUSH_MESSAGES: PushBody,
    RequestCode.STREAM_CLOSED: StreamClosedBody,
    RequestCode.NOTIFY_CONSUMER_IDS_CHANGED: ConsumerGroupBody,
    RequestCode.CHECK_TRANSACTION_STATE: CheckTransactionBody,
}

#: Non-SUCCESS response codes whose reply still carries the request's reply body
#: (every other non-SUCCESS reply carries the empty map).
BODY_CODES: Final[frozenset[ResponseCode]] = frozenset(
    {
        ResponseCode.FLUSH_DISK_TIMEOUT,
        ResponseCode.SLAVE_NOT_AVAILABLE,
        ResponseCode.FLUSH_SLAVE_TIMEOUT,
        ResponseCode.PULL_NOT_FOUND,
        ResponseCode.PULL_RETRY_IMMEDIATELY,
        ResponseCode.PULL_OFFSET_MOVED,
    }
)
