"""SEND_MESSAGE and SEND_BATCH_MESSAGE: check, append to the store, reply (now or after the fsync).

The hot path of the broker. Per request: the checks (topic, group, queue id, sizes,
integer ranges), one ``store.append`` (or ``append_batch``: one lock for the whole
batch), an arrival notice (broker.arrivals: wakes parked pulls and push streams), one
reply Struct. The message body is the frame as
received; it goes into the store as is, never re-encoded.

ASYNC_FLUSH: the reply is returned at once. SYNC_FLUSH: the loop never waits on the disk.
The send records its end offset (:meth:`SyncFlushWaiters.want`) and parks its reply in
:class:`SyncFlushWaiters`, a deque in CommitLog order (appends happen on this loop, so
end offsets only grow). When the server has read every waiting request, it flushes what
was asked: on the loop itself when the range is small and the flush thread is idle (no
thread hand-over: the lone-send latency), else by the flush thread, which a send also
asks at once when over ``inline_bytes`` wait unflushed
(``store.request_flush``), whose listener posts each new flushed offset to the loop
(``call_soon_threadsafe``, once per flush); either way
:meth:`SyncFlushWaiters.on_flushed` sends every reply the flush covers. One timer, set at
the oldest waiter's deadline, answers FLUSH_DISK_TIMEOUT to waiters whose flush did not
complete within ``sync_flush_timeout_ms`` (the message is stored; its durability is not
confirmed).

Besides the plain path (PROTOCOL.md 14): a message with a future due time (``delay_level``
or ``deliver_at``) is stored in ``%TIMER%`` and filed with broker.timers; a SEND_MESSAGE
whose sysflag says TRANSACTION_PREPARED is stored in ``%HALF%`` (the transaction service
decides its fate); both are answered with queue offset -1. A ``resend`` message is first
looked up by uniq id (:meth:`SendProcessor._first_copy`): a copy stored within the dedup
window answers for it and nothing is stored. Only ``resend`` messages pay for the lookup.
The broker's own topics (``%TIMER%``, ``%HALF%``, ``%HALF_OP%``) refuse client sends
(NO_PERMISSION), and ``%RETRY%``/``%DLQ%`` topics are created with one queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from broker.store import PutMessage, PutResult, PutStatus, StoredMessage
from broker.store.record import encode_properties
from broker.timers import PGROUP, REAL_QID, REAL_TOPIC, TimerService, timer_message
from broker.topics import check_topic_name
from fabric.errors import MessageIllegalError, NoPermissionError, TopicNotExistError
from fabric.protocol.codes import Flag, Perm, ResponseCode, SysFlag
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import (
    SendBatchReply,
    SendBatchRequest,
    SendMessageRequest,
    SendReply,
    TopicConfig,
)
from fabric.protocol.names import HALF_TOPIC, TIMER_TOPIC, is_broker_topic, is_system_topic

from . import BrokerContext, Outcome, Replier

__all__ = ["SendProcessor", "SyncFlushWaiters", "half_message"]

_ONEWAY: Final = int(Flag.ONEWAY)
_WRITE: Final = int(Perm.WRITE)
_I32_MIN: Final = -(2**31)
_I32_MAX: Final = 2**31 - 1
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_SUCCESS: Final = ResponseCode.SUCCESS
_PUT_OK: Final = PutStatus.PUT_OK
_TX_MASK: Final = int(SysFlag.TRANSACTION_ROLLBACK)  # 0xC: the two transaction-type bits
_TX_PREPARED: Final = int(SysFlag.TRANSACTION_PREPARED)

#: How a refused append is answered (nothing was stored).
_REFUSALS: Final[dict[PutStatus, ResponseCode]] = {
    PutStatus.FLUSH_DISK_TIMEOUT: ResponseCode.FLUSH_DISK_TIMEOUT,
    PutStatus.MESSAGE_ILLEGAL: ResponseCode.MESSAGE_ILLEGAL,
    PutStatus.PROPERTIES_SIZE_EXCEEDED: ResponseCode.MESSAGE_ILLEGAL,
    PutStatus.SERVICE_NOT_AVAILABLE: ResponseCode.SERVICE_NOT_AVAILABLE,
    PutStatus.SYSTEM_BUSY: ResponseCode.SYSTEM_BUSY,
    PutStatus.STORE_CLOSED: ResponseCode.SERVICE_NOT_AVAILABLE,
}

# (end offset, deadline, peer, request, reply body)
_Waiter = tuple[int, float, bytes, Any, msgspec.Struct]


class SyncFlushWaiters:
    """Replies waiting for SYNC_FLUSH, oldest first; answered in bulk on each flush.

    Args:
        loop: the broker's loop.
        replier: sends the replies.
        timeout: seconds a reply waits before FLUSH_DISK_TIMEOUT.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        replier: Replier,
        timeout: float,
        inline_bytes: int = 64 * 1024,
    ) -> None:
        self._loop = loop
        self._replier = replier
        self.timeout = timeout
        #: Most unflushed bytes left for the server to flush after the burst; beyond, the
        #: flush thread is asked at once (so a long burst keeps the disk busy).
        self.inline_bytes = inline_bytes
        self._waiting: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None
        #: The highest flushed offset heard of.
        self.flushed = 0
        #: The highest end offset a send asked to be flushed (the server flushes it).
        self.wanted = 0
        #: The highest offset the flush thread has been asked for.
        self.asked = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def last_end(self) -> int:
        """The end offset of the newest waiter (0 when none waits)."""
        return self._waiting[-1][0] if self._waiting else 0

    def want(self, end: int) -> bool:
        """Ask for the log to be flushed up to ``end``; True: ask the flush thread now.

        Small amounts wait for the end of the burst (the server may flush them itself);
        once more than ``inline_bytes`` wait, the caller asks the flush thread at once.
        """
        if end > self.wanted:
            self.wanted = end
        if end - max(self.asked, self.flushed) > self.inline_bytes:
            self.asked = end
            return True
        return False

    def add(self, end: int, identity: bytes, request: Any, body: msgspec.Struct) -> None:
        """Answer ``request`` with SUCCESS and ``body`` once the log is durable up to ``end``."""
        if end <= self.flushed:
            self._replier.reply(identity, request, _SUCCESS, body)
            return
        self._waiting.append((end, self._loop.time() + self.timeout, identity, request, body))
        if self._timer is None:
            self._timer = self._loop.call_later(self.timeout, self._on_timer)

    def on_flushed(self, offset: int) -> None:
        """The log is durable up to ``offset``: send every reply that covers (on the loop)."""
        if offset > self.flushed:
            self.flushed = offset
        waiting = self._waiting
        reply = self._replier.reply
        while waiting and waiting[0][0] <= offset:
            _end, _deadline, identity, request, body = waiting.popleft()
            reply(identity, request, _SUCCESS, body)

    def _on_timer(self) -> None:
        self._timer = None
        waiting = self._waiting
        now = self._loop.time()
        while waiting and waiting[0][1] <= now:
            _end, _deadline, identity, request, body = waiting.popleft()
            self._replier.reply(
                identity,
                request,
                ResponseCode.FLUSH_DISK_TIMEOUT,
                body,
                remark=f"stored, but not flushed to disk within {self.timeout:g}s",
            )
        if waiting:
            self._timer = self._loop.call_at(waiting[0][1], self._on_timer)

    def release(self, flushed: int) -> None:
        """Shutdown: answer everything, SUCCESS up to ``flushed``, FLUSH_DISK_TIMEOUT after."""
        self.on_flushed(flushed)
        while self._waiting:
            _end, _deadline, identity, request, body = self._waiting.popleft()
            self._replier.reply(
                identity,
                request,
                ResponseCode.FLUSH_DISK_TIMEOUT,
                body,
                remark="stored, but the broker shut down before the flush completed",
            )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _check_ints(flag: int, sysflag: int, born_timestamp: int, reconsume_times: int) -> None:
    if (
        _I32_MIN <= flag <= _I32_MAX
        and _I32_MIN <= sysflag <= _I32_MAX
        and _I64_MIN <= born_timestamp <= _I64_MAX
        and 0 <= reconsume_times <= _I32_MAX
    ):
        return
    raise MessageIllegalError(
        "flag and sysflag must fit in 32 signed bits, born_timestamp in 64, and "
        f"reconsume_times in 0..{_I32_MAX}; got flag={flag} sysflag={sysflag} "
        f"born_timestamp={born_timestamp} reconsume_times={reconsume_times}"
    )


def half_message(msg: PutMessage, producer_group: str) -> PutMessage:
    """``msg`` as stored in ``%HALF%`` queue 0 until its transaction is decided (14.3)."""
    sys = dict(msg.sys)
    sys[REAL_TOPIC] = msg.topic
    sys[REAL_QID] = str(msg.queue_id)
    sys[PGROUP] = producer_group
    return msgspec.structs.replace(msg, topic=HALF_TOPIC, queue_id=0, sys=sys)


def _props_fit(tags: str, keys: list[str], uniq_id: str, props: dict[str, str], limit: int) -> bool:
    """True when the encoded properties of a message fit in ``limit`` bytes."""
    # A cheap upper bound first (a str of n characters packs into at most 4n + 5 bytes);
    # only messages near the limit are encoded exactly, with the store's own encoder.
    chars = len(tags) + len(uniq_id) + sum(map(len, keys))
    for key, value in props.items():
        chars += len(key) + len(value)
    if 4 * chars + 5 * (len(keys) + 2 * len(props)) + 64 <= limit:
        return True
    return len(encode_properties(tags, keys, uniq_id, props)) <= limit


class SendProcessor:
    """SEND_MESSAGE and SEND_BATCH_MESSAGE.

    Args:
        ctx: the broker's shared state.
        waiters: the SYNC_FLUSH waiting room; None under ASYNC_FLUSH.
    """

    def __init__(self, ctx: BrokerContext, waiters: SyncFlushWaiters | None) -> None:
        self._ctx = ctx
        self._store = ctx.store
        self._topics = ctx.topics
        self._waiters = waiters
        self._arrivals = ctx.arrivals
        self._max_body = ctx.config.max_message_size
        self._max_props = ctx.store.config.max_properties_size
        self._broker_name = ctx.broker_name
        self._id_prefix = ctx.msg_id_prefix
        self._dedup_ms = int(ctx.config.dedup_window * 1000)

    @property
    def _timers(self) -> TimerService:
        timers = self._ctx.timers
        if timers is None:
            raise RuntimeError("the broker has no timer service")
        return timers

    def _writable(self, topic: str, group: str) -> TopicConfig:
        ctx = self._ctx
        config = self._topics.get(topic)
        if config is None:
            check_topic_name(topic)
            ctx.check_group(group)
            if is_broker_topic(topic):
                raise NoPermissionError(f"topic {topic} is written by the broker only")
            if not ctx.config.auto_create_topics:
                raise TopicNotExistError(
                    f"topic {topic} does not exist on {self._broker_name} (auto-create is off)"
                )
            if is_system_topic(topic):  # %RETRY%<group>, %DLQ%<group>: one queue
                config = self._topics.ensure_system_topic(topic)
            else:
                nums = ctx.config.default_queue_nums
                config = self._topics.create(
                    TopicConfig(topic=topic, read_queue_nums=nums, write_queue_nums=nums)
                )
                ctx.on_topics_changed()
        else:
            ctx.check_group(group)
        if not config.perm & _WRITE:
            raise NoPermissionError(f"topic {topic} is not writable (perm {config.perm})")
        return config

    def _writable_queue(self, topic: str, group: str, qid: int) -> None:
        """Check that ``qid`` is a write queue of a writable ``topic`` (created if allowed)."""
        config = self._writable(topic, group)
        if not 0 <= qid < config.write_queue_nums:
            raise MessageIllegalError(
                f"queue_id {qid} is outside 0..{config.write_queue_nums - 1} "
                f"(write queues of topic {topic})"
            )

    def _refused(self, result: PutResult) -> Outcome:
        code = _REFUSALS.get(result.status, ResponseCode.SYSTEM_ERROR)
        return code, None, (), result.message or f"not stored: {result.status.name}"

    def _first_copy(
        self, topic: str, uniq_id: str, timed: bool, prepared: bool
    ) -> StoredMessage | None:
        """The oldest record of ``uniq_id`` bound for ``topic`` within the dedup window.

        Looks in ``topic`` and, for a timed or half message, in ``%TIMER%`` or ``%HALF%``
        (records whose REAL_TOPIC is ``topic``): a resend finds its first attempt wherever
        that attempt was stored.
        """
        store = self._store
        since = int(time.time() * 1000) - self._dedup_ms
        places = [topic]
        if timed:
            places.append(TIMER_TOPIC)
        if prepared:
            places.append(HALF_TOPIC)
        first: StoredMessage | None = None
        for place in places:
            for msg in store.query_by_uniq_id(place, uniq_id):
                if msg.store_timestamp < since:
                    continue
                if place != topic and msg.sys.get(REAL_TOPIC) != topic:
                    continue
                if first is None or msg.physical_offset < first.physical_offset:
                    first = msg
        return first

    def _copy_place(self, topic: str, copy: StoredMessage) -> tuple[int, int]:
        """(queue id, queue offset) to answer for an earlier copy (-1 while not delivered)."""
        if copy.topic == topic:
            return copy.queue_id, copy.queue_offset
        try:
            return int(copy.sys.get(REAL_QID, "")), -1
        except ValueError:
            return copy.queue_id, -1

    def send(
        self, request: SendMessageRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome | None:
        """SEND_MESSAGE: store one message; reply SendReply."""
        b = request.body
        topic = b.topic
        qid = b.queue_id
        self._writable_queue(topic, b.producer_group, qid)
        body = bodies[0]
        if len(body) > self._max_body:
            raise MessageIllegalError(
                f"body of {len(body)} bytes exceeds this broker's limit of {self._max_body}"
            )
        _check_ints(b.flag, b.sysflag, b.born_timestamp, b.reconsume_times)
        prepared = b.sysflag & _TX_MASK == _TX_PREPARED
        due = 0
        if b.delay_level or b.deliver_at:
            due = self._timers.due_ms(b.delay_level, b.deliver_at)
            if due and prepared:
                raise MessageIllegalError("a transaction's half message cannot be delayed")
        if b.resend and b.uniq_id:
            copy = self._first_copy(topic, b.uniq_id, bool(due), prepared)
            if copy is not None:
                copy_qid, copy_offset = self._copy_place(topic, copy)
                reply = SendReply(
                    msg_id=b.uniq_id,
                    queue_id=copy_qid,
                    queue_offset=copy_offset,
                    broker_name=self._broker_name,
                    commitlog_offset=copy.physical_offset,
                )
                return self._answer(request, identity, copy.physical_offset + copy.size, reply)
        msg = PutMessage(
            topic=topic,
            queue_id=qid,
            body=body if type(body) is bytes else bytes(body),
            tags=b.tags,
            keys=b.keys,
            uniq_id=b.uniq_id,
            properties=b.properties,
            flag=b.flag,
            sysflag=b.sysflag,
            born_timestamp=b.born_timestamp,
            reconsume_times=b.reconsume_times,
        )
        if prepared:
            msg = half_message(msg, b.producer_group)
        elif due:
            msg = timer_message(msg, due)
        result = self._store.append(msg)
        if result.status is not _PUT_OK:
            return self._refused(result)
        if prepared:
            queue_offset = -1
        elif due:
            self._timers.on_stored(msg, result)
            queue_offset = -1
        else:
            self._arrivals.notify(topic, qid)
            queue_offset = result.queue_offset
        reply = SendReply(
            msg_id=b.uniq_id or f"{self._id_prefix}{result.physical_offset:016X}",
            queue_id=qid,
            queue_offset=queue_offset,
            broker_name=self._broker_name,
            commitlog_offset=result.physical_offset,
        )
        return self._answer(request, identity, result.end_offset, reply)

    def send_batch(
        self, request: SendBatchRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome | None:
        """SEND_BATCH_MESSAGE: store each message separately, under one lock; one reply."""
        b = request.body
        topic = b.topic
        qid = b.queue_id
        self._writable_queue(topic, b.producer_group, qid)
        # Check the whole batch first, so that a bad message refuses all of it and
        # nothing is stored (the store itself would store the good ones).
        max_body = self._max_body
        max_props = self._max_props
        # Tags and uniq_id shorter than this always fit (no keys, no properties).
        short = (max_props - 64) // 4
        msgs: list[PutMessage] = []
        # Per entry: the index in ``msgs`` of its put, or the earlier copy answering for it.
        places: list[int | StoredMessage] = []
        timed: set[int] = set()  # indexes in ``msgs`` of %TIMER% puts
        now_ms = int(time.time() * 1000)
        for i, (entry, body) in enumerate(zip(b.messages, bodies, strict=True)):
            if len(body) > max_body:
                raise MessageIllegalError(
                    f"message {i}: body of {len(body)} bytes exceeds this broker's limit "
                    f"of {max_body}; nothing stored"
                )
            _check_ints(entry.flag, entry.sysflag, entry.born_timestamp, 0)
            if entry.sysflag & _TX_MASK == _TX_PREPARED:
                raise MessageIllegalError(
                    f"message {i}: a half message (TRANSACTION_PREPARED) is sent alone, "
                    "not in a batch; nothing stored"
                )
            if (
                entry.keys or entry.properties or len(entry.tags) + len(entry.uniq_id) > short
            ) and not _props_fit(
                entry.tags, entry.keys, entry.uniq_id, entry.properties, max_props
            ):
                raise MessageIllegalError(
                    f"message {i}: properties exceed {max_props} bytes; nothing stored"
                )
            due = 0
            if entry.delay_level or entry.deliver_at:
                try:
                    due = self._timers.due_ms(entry.delay_level, entry.deliver_at, now_ms)
                except MessageIllegalError as exc:
                    raise MessageIllegalError(f"message {i}: {exc}; nothing stored") from None
            if b.resend and entry.uniq_id:
                copy = self._first_copy(topic, entry.uniq_id, bool(due), False)
                if copy is not None:
                    places.append(copy)
                    continue
            msg = PutMessage(
                topic=topic,
                queue_id=qid,
                body=body if type(body) is bytes else bytes(body),
                tags=entry.tags,
                keys=entry.keys,
                uniq_id=entry.uniq_id,
                properties=entry.properties,
                flag=entry.flag,
                sysflag=entry.sysflag,
                born_timestamp=entry.born_timestamp,
            )
            if due:
                msg = timer_message(msg, due)
                timed.add(len(msgs))
            places.append(len(msgs))
            msgs.append(msg)
        results = self._store.append_batch(msgs) if msgs else []
        direct = False
        for j, (msg, r) in enumerate(zip(msgs, results, strict=True)):
            if r.status is not _PUT_OK:
                continue
            if j in timed:
                self._timers.on_stored(msg, r)  # in CommitLog order
            else:
                direct = True
        if direct:
            self._arrivals.notify(topic, qid)
        stored = [r for r in results if r.status is _PUT_OK]
        if len(stored) != len(results):
            first = next(r for r in results if r.status is not _PUT_OK)
            code, _, _, remark = self._refused(first)
            if stored:
                # Only a disk failure in the middle of the batch gets here.
                remark = f"{remark} ({len(stored)} of {len(results)} messages were stored)"
                self._store.request_flush(stored[-1].end_offset)
            return code, None, (), remark
        prefix = self._id_prefix
        msg_ids: list[str] = []
        offsets: list[int] = []
        end = 0
        for entry, place in zip(b.messages, places, strict=True):
            if isinstance(place, int):
                r = results[place]
                msg_ids.append(entry.uniq_id or f"{prefix}{r.physical_offset:016X}")
                offsets.append(-1 if place in timed else r.queue_offset)
                end = max(end, r.end_offset)
            else:
                msg_ids.append(entry.uniq_id)
                offsets.append(self._copy_place(topic, place)[1])
                end = max(end, place.physical_offset + place.size)
        reply = SendBatchReply(
            msg_ids=msg_ids,
            queue_id=qid,
            queue_offsets=offsets,
            broker_name=self._broker_name,
        )
        return self._answer(request, identity, end, reply)

    def _answer(
        self, request: Any, identity: bytes, end: int, reply: msgspec.Struct
    ) -> Outcome | None:
        waiters = self._waiters
        if waiters is None:
            return _SUCCESS, reply, (), ""
        # SYNC_FLUSH: only what is asked for is flushed, so a ONEWAY send asks too; its
        # reply (none) does not wait. The server flushes after the burst (one flush for
        # every send read in it: BrokerServer._flush_wanted), or asks the flush thread at
        # once when a lot waits.
        if waiters.want(end):
            self._store.request_flush(end)
        if request.flags & _ONEWAY:
            return None
        waiters.add(end, identity, request, reply)
        return None
