"""Message queries: QUERY_MESSAGE (by key) and VIEW_MESSAGE_BY_ID (docs/PROTOCOL.md 14.5).

Both answer a QueryMessageReply whose frames 1..n are CommitLog records byte for byte,
as PULL_MESSAGE returns them, or QUERY_NOT_FOUND when nothing matches.

* QUERY_MESSAGE looks the key up in the store's Index (``MessageStore.query_by_key``,
  which verifies each candidate record's topic, keys and store time) and answers the
  records newest first: at most ``max_num`` (1..1024), and no more than the broker's
  ``pull_max_bytes`` in all (at least one record), so one reply stays a sane size.
* VIEW_MESSAGE_BY_ID answers one record: the one at ``commitlog_offset`` when it is
  >= 0 (any topic, system topics included: the admin tools look at half and timer
  records this way), else the newest record of ``topic`` whose uniq id is ``msg_id``;
  an offset message id of this broker (SendReply ``msg_id`` of a message sent without
  a uniq id) is understood too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from broker.store.record import verify
from fabric.errors import NotFoundError, ProtocolError
from fabric.protocol.codes import ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import QueryMessageReply, QueryMessageRequest, ViewMessageRequest

from . import BrokerContext, Outcome

__all__ = ["MAX_QUERY_NUM", "QueryProcessor", "read_record_at"]

#: Most records one QUERY_MESSAGE may ask for.
MAX_QUERY_NUM: Final = 1024
_NO_END: Final = 1 << 62
_SUCCESS: Final = ResponseCode.SUCCESS
# Offset message ids: the broker's prefix (address and port) and 16 hex digits of offset.
_OFFSET_DIGITS: Final = 16


def read_record_at(ctx: BrokerContext, offset: int) -> bytes | None:
    """The sound record that starts exactly at CommitLog ``offset``, or None.

    A client may name any offset: the record there must have a good magic, length and
    CRC, and say it is at that offset (an offset inside another record's body that
    happens to look like a header is refused).
    """
    if offset < 0:
        return None
    raw = ctx.store.get_record(offset)
    if raw is None or verify(raw) is not None:
        return None
    if int.from_bytes(raw[28:36], "big", signed=True) != offset:
        return None
    return raw


class QueryProcessor:
    """QUERY_MESSAGE and VIEW_MESSAGE_BY_ID."""

    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx

    def query(
        self, request: QueryMessageRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """QUERY_MESSAGE: the records of ``topic`` whose keys include ``key``, newest first."""
        ctx = self._ctx
        b = request.body
        ctx.require_topic(b.topic)
        if not 1 <= b.max_num <= MAX_QUERY_NUM:
            raise ProtocolError(f"max_num must be in 1..{MAX_QUERY_NUM}, got {b.max_num}")
        if not b.key:
            raise ProtocolError("key is empty")
        if b.begin_ms < 0 or b.end_ms < 0:
            raise ProtocolError("begin_ms and end_ms must be >= 0 (0: no bound)")
        end = b.end_ms or _NO_END
        found = ctx.store.query_by_key(b.topic, b.key, b.max_num, b.begin_ms, end)
        records: list[bytes] = []
        total = 0
        limit = ctx.config.pull_max_bytes
        for msg in found:
            raw = ctx.store.get_record(msg.physical_offset)
            if raw is None:
                continue  # removed by retention since the lookup
            if records and total + len(raw) > limit:
                break
            records.append(raw)
            total += len(raw)
        if not records:
            raise NotFoundError(f"no message of topic {b.topic} has key {b.key!r}")
        return _SUCCESS, QueryMessageReply(count=len(records)), records, ""

    def view(
        self, request: ViewMessageRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """VIEW_MESSAGE_BY_ID: one record, by CommitLog offset or by uniq id in a topic."""
        ctx = self._ctx
        b = request.body
        if b.commitlog_offset >= 0:
            raw = read_record_at(ctx, b.commitlog_offset)
            if raw is None:
                raise NotFoundError(f"no message at CommitLog offset {b.commitlog_offset}")
            return _SUCCESS, QueryMessageReply(count=1), [raw], ""
        if not b.msg_id:
            raise ProtocolError("give msg_id (with topic) or a commitlog_offset >= 0")
        ctx.require_topic(b.topic)
        found = ctx.store.query_by_uniq_id(b.topic, b.msg_id, 1)
        raw = ctx.store.get_record(found[0].physical_offset) if found else None
        if raw is None:
            raw = self._by_offset_id(b.topic, b.msg_id)
        if raw is None:
            raise NotFoundError(f"no message of topic {b.topic} has id {b.msg_id}")
        return _SUCCESS, QueryMessageReply(count=1), [raw], ""

    def _by_offset_id(self, topic: str, msg_id: str) -> bytes | None:
        """The record an offset message id of this broker names, when it is of ``topic``."""
        prefix = self._ctx.msg_id_prefix
        if len(msg_id) != len(prefix) + _OFFSET_DIGITS or not msg_id.upper().startswith(prefix):
            return None
        try:
            offset = int(msg_id[len(prefix) :], 16)
        except ValueError:
            return None
        raw = read_record_at(self._ctx, offset)
        if raw is None:
            return None
        t_len = int.from_bytes(raw[104:106], "big")
        return raw if raw[114 : 114 + t_len] == topic.encode() else None
