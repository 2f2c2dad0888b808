"""Filtered queue reads, shared by PULL_MESSAGE and push streams: subscriptions compiled once.

A subscription (docs/PROTOCOL.md section 12) becomes a :class:`QueueFilter` with two
stages:

* ``hashes``: the tag hashes a TAG expression selects. The store checks them on the
  ConsumeQueue entries and never reads the records they reject.
* ``check``: a test on the raw record, for what the hashes cannot tell: an SQL92
  expression (the record's properties, plus ``TAGS``, decoded and evaluated), and for
  push streams the exact tag (two tags can share a CRC32). PULL_MESSAGE keeps its
  documented behaviour for tags: hashes only (section 7.4).

:func:`read_queue` reads like ``MessageStore.get_messages`` and applies ``check`` to the
records it returns: at most ``max_msgs`` records, stopping before a record that would
take the total past ``max_bytes`` (but at least one record), ``next_offset`` past every
entry looked at, the status of the store (FOUND only when a record passed). A read with
a ``check`` looks at no more than :data:`MAX_CHECKED_RECORDS` records: enough to fill a
reply, small enough to keep one loop callback short.

:class:`FilterCache` compiles each (filter type, expression) once; a bad expression
raises ``InvalidFilterError`` (SUBSCRIPTION_PARSE_FAILED).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from broker.store import GetResult, GetStatus, MessageStore
from broker.store.record import HEADER_LEN, decode_properties
from fabric.errors import ProtocolError
from fabric.filters import TAGS_PROPERTY, SqlFilter, TagFilter, compile_sql, compile_tags
from fabric.protocol.codes import FilterType

__all__ = [
    "EVERYTHING",
    "MAX_CHECKED_RECORDS",
    "FilterCache",
    "QueueFilter",
    "read_queue",
    "record_queue_offset",
]

#: Most records one read with a record check looks at before it answers what it has.
MAX_CHECKED_RECORDS: Final = 1024
_CACHE_LIMIT: Final = 1024
_QUEUE_OFFSET: Final = struct.Struct(">q")
_QUEUE_OFFSET_AT: Final = 20
_LENGTHS: Final = struct.Struct(">HI")
_LENGTHS_AT: Final = 104
_FOUND: Final = GetStatus.FOUND
_FILTER_TYPES: Final = frozenset(int(t) for t in FilterType)
#: Statuses of a follow-up read whose ``next_offset`` moved past entries it skipped.
_MOVED: Final = frozenset({GetStatus.NO_MATCHED_MESSAGE, GetStatus.MESSAGE_WAS_REMOVING})


def record_queue_offset(record: bytes | memoryview) -> int:
    """The queue offset stored in a raw record's header."""
    offset: int = _QUEUE_OFFSET.unpack_from(record, _QUEUE_OFFSET_AT)[0]
    return offset


def _properties(record: bytes) -> tuple[str, dict[str, str]]:
    """(tag, user properties) of a raw record."""
    t_len, p_len = _LENGTHS.unpack_from(record, _LENGTHS_AT)
    if not p_len:
        return "", {}
    start = HEADER_LEN + t_len
    props = decode_properties(memoryview(record)[start : start + p_len])
    return props.tags, props.props


def _tag_check(tags: TagFilter) -> Callable[[bytes], bool]:
    wanted = tags.tags

    def check(record: bytes) -> bool:
        return _properties(record)[0] in wanted

    return check


def _sql_check(sql: SqlFilter) -> Callable[[bytes], bool]:
    def check(record: bytes) -> bool:
        tag, props = _properties(record)
        if tag:
            props = {**props, TAGS_PROPERTY: tag}
        return sql.matches(props)

    return check


class QueueFilter:
    """A compiled subscription: ConsumeQueue tag hashes and an optional record check.

    Attributes:
        filter_type: FilterType of the expression.
        expression: the expression as given.
        hashes: tag hashes for the store (None: every entry).
        check: record test after the read (None: every record the hashes let through).
    """

    __slots__ = ("check", "expression", "filter_type", "hashes")

    def __init__(
        self,
        filter_type: int,
        expression: str,
        hashes: frozenset[int] | None,
        check: Callable[[bytes], bool] | None,
    ) -> None:
        self.filter_type = filter_type
        self.expression = expression
        self.hashes = hashes
        self.check = check

    def __repr__(self) -> str:
        return f"QueueFilter({FilterType(self.filter_type).name}, {self.expression!r})"


#: The filter of ``*``: every message.
EVERYTHING: Final = QueueFilter(int(FilterType.TAG), "*", None, None)


class FilterCache:
    """Compiles subscriptions once each (a bounded cache, cleared when full)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, str, bool], QueueFilter] = {}

    def get(self, filter_type: int, expression: str, *, exact_tags: bool) -> QueueFilter:
        """The QueueFilter of an expression.

        Args:
            filter_type: FilterType (0 TAG, 1 SQL92).
            expression: the expression (section 12).
            exact_tags: also check each record's tag exactly (push streams); False keeps
                the ConsumeQueue hash check alone (PULL_MESSAGE).

        Raises:
            ProtocolError: an unknown filter type (MALFORMED_REQUEST).
            InvalidFilterError: the expression is not valid (SUBSCRIPTION_PARSE_FAILED).
        """
        key = (filter_type, expression, exact_tags)
        found = self._cache.get(key)
        if found is not None:
            return found
        if filter_type not in _FILTER_TYPES:
            raise ProtocolError(f"filter_type must be 0 (TAG) or 1 (SQL92), got {filter_type}")
        if filter_type == FilterType.SQL92:
            compiled = QueueFilter(
                filter_type, expression, None, _sql_check(compile_sql(expression))
            )
        else:
            tags = compile_tags(expression)
            if tags.matches_all:
                compiled = EVERYTHING
            else:
                check = _tag_check(tags) if exact_tags else None
                compiled = QueueFilter(filter_type, expression, tags.hashes, check)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = compiled
        return compiled


def read_queue(
    store: MessageStore,
    topic: str,
    queue_id: int,
    offset: int,
    max_msgs: int,
    max_bytes: int,
    flt: QueueFilter,
) -> GetResult:
    """Read matching records of one queue from ``offset`` (see the module docstring).

    Returns:
        the store's GetResult: FOUND with the records that passed the filter, or the
        status of the read (NO_MATCHED_MESSAGE when records were looked at and none
        passed, with ``next_offset`` past them).
    """
    check = flt.check
    r = store.get_messages(topic, queue_id, offset, max_msgs, max_bytes, flt.hashes)
    if check is None or r.status is not _FOUND:
        return r
    out: list[bytes] = []
    total = 0
    looked = 0
    while True:
        next_offset = r.next_offset
        for record in r.records:
            size = len(record)
            if out and total + size > max_bytes:
                next_offset = record_queue_offset(record)  # not looked at: read it next time
                break
            looked += 1
            if check(record):
                out.append(record)
                total += size
        if out or looked >= MAX_CHECKED_RECORDS or next_offset >= r.max_offset:
            break
        r = store.get_messages(topic, queue_id, next_offset, max_msgs, max_bytes, flt.hashes)
        if r.status is not _FOUND:
            # Nothing more to look at (the end, or entries the hashes skipped): report
            # how far the reads went, and that nothing passed.
            next_offset = max(next_offset, r.next_offset) if r.status in _MOVED else next_offset
            return GetResult(GetStatus.NO_MATCHED_MESSAGE, next_offset, r.min_offset, r.max_offset)
    if out:
        return GetResult(_FOUND, next_offset, r.min_offset, r.max_offset, out)
    return GetResult(GetStatus.NO_MATCHED_MESSAGE, next_offset, r.min_offset, r.max_offset)
