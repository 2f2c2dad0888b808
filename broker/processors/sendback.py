"""CONSUMER_SEND_MSG_BACK: retry a message that failed later, or dead-letter it (PROTOCOL.md 14.2).

The broker reads the consumed record at ``commitlog_offset`` (QUERY_NOT_FOUND when there
is no sound record of ``topic`` there) and stores a copy of it with ``reconsume_times``
one higher: same body, tags, keys, uniq id, user properties, flag and born timestamp
(and born host), the COMPRESSED bit of its sysflag kept, the transaction bits dropped.

* Above the maximum (``max_reconsume_times`` of the request; -1: the broker's
  ``max_reconsume_times``): appended at once to ``%DLQ%<group>`` queue 0 with
  ``ORIGIN_TOPIC`` and ``DLQ_REASON``.
* Otherwise: a timed message (14.1) for ``%RETRY%<group>`` queue 0, due after the delay
  of level ``delay_level`` (0: ``3 + reconsume_times`` of the record, capped at the last
  level; the seconds are the broker's ``delay_levels``), with ``ORIGIN_TOPIC``. It goes
  through the timer service (broker.timers), which holds it in ``%TIMER%`` until due.

``ORIGIN_TOPIC`` is the record's own when it has one (a message sent back from its retry
topic keeps the topic it was first sent to), else the record's topic. The retry and
dead-letter topics are created on first use (``TopicTable.ensure_system_topic``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Final

from broker.store import PutMessage, decode_message
from broker.store.record import SYSFLAG_COMPRESSED
from broker.transactions import put_refused
from fabric.errors import NotFoundError, ProtocolError, ServiceUnavailableError
from fabric.protocol.codes import ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import ConsumerSendBackRequest, Empty
from fabric.protocol.names import dlq_topic, retry_topic

from . import BrokerContext, Outcome
from .query import read_record_at

__all__ = ["DLQ_REASON", "ORIGIN_TOPIC", "SendBackProcessor"]

#: System property keys (PROTOCOL.md 14).
ORIGIN_TOPIC: Final = "ORIGIN_TOPIC"
DLQ_REASON: Final = "DLQ_REASON"
#: The level of a first retry is 3 + reconsume times (RocketMQ's ``3 + reconsumeTimes``).
_BASE_LEVEL: Final = 3
_I32_MAX: Final = 2**31 - 1
_EMPTY: Final = Empty()
_SUCCESS: Final = ResponseCode.SUCCESS


class SendBackProcessor:
    """CONSUMER_SEND_MSG_BACK.

    Args:
        ctx: the broker's shared state; its ``timers`` (broker.timers) stores the timed
            retries (without it, a retry is refused with SERVICE_NOT_AVAILABLE).
    """

    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx
        #: Messages sent to a retry topic, and to a dead-letter topic, since the start.
        self.retried = 0
        self.dead_lettered = 0

    def send_back(
        self, request: ConsumerSendBackRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """CONSUMER_SEND_MSG_BACK: store the retry (or dead letter) of a consumed record; ``{}``."""
        ctx = self._ctx
        b = request.body
        group = b.consumer_group
        ctx.require_topic(b.topic, group)
        levels = ctx.config.delay_levels
        if not 0 <= b.delay_level <= len(levels):
            raise ProtocolError(f"delay_level must be in 0..{len(levels)}, got {b.delay_level}")
        if not -1 <= b.max_reconsume_times <= _I32_MAX:
            raise ProtocolError(
                f"max_reconsume_times must be -1 or 0..{_I32_MAX}, got {b.max_reconsume_times}"
            )
        raw = read_record_at(ctx, b.commitlog_offset)
        record = decode_message(raw) if raw is not None else None
        if record is None or record.topic != b.topic:
            raise NotFoundError(
                f"no message of topic {b.topic} at CommitLog offset {b.commitlog_offset}"
            )
        times = min(record.reconsume_times + 1, _I32_MAX)
        limit = (
            ctx.config.max_reconsume_times if b.max_reconsume_times < 0 else b.max_reconsume_times
        )
        dead = times > limit
        sys = {ORIGIN_TOPIC: record.sys.get(ORIGIN_TOPIC) or record.topic}
        if dead:
            topic = dlq_topic(group)
            sys[DLQ_REASON] = f"max reconsume times {limit} reached"
        else:
            topic = retry_topic(group)
        ctx.topics.ensure_system_topic(topic)
        msg = PutMessage(
            topic=topic,
            queue_id=0,
            body=record.body,
            tags=record.tags,
            keys=record.keys,
            uniq_id=record.uniq_id,
            properties=record.properties,
            flag=record.flag,
            sysflag=record.sysflag & SYSFLAG_COMPRESSED,
            born_timestamp=record.born_timestamp,
            born_host=record.born_host,
            reconsume_times=times,
            sys=sys,
        )
        if dead:
            result = ctx.store.append(msg)
            if result.ok:
                ctx.arrivals.notify(topic, 0)
        else:
            timers = ctx.timers
            if timers is None:
                raise ServiceUnavailableError("this broker has no timer service for retries")
            level = b.delay_level or min(_BASE_LEVEL + record.reconsume_times, len(levels))
            now_ms = time.time_ns() // 1_000_000
            result = timers.schedule(msg, now_ms + math.ceil(levels[level - 1] * 1000))
        if not result.ok:
            raise put_refused(result, f"the message for {topic} was")
        if dead:
            self.dead_lettered += 1
        else:
            self.retried += 1
        if ctx.config.flush == "sync":
            # The flush thread flushes only what it is asked to under SYNC_FLUSH.
            ctx.store.request_flush(result.end_offset)
        return _SUCCESS, _EMPTY, (), ""
