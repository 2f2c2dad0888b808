"""Message queries and dead letters for ``fabric admin`` (SPEC M15, M19; docs/PROTOCOL.md 14).

:class:`MessageQueries` runs on the admin's loop and asks brokers directly:

* **by id**: VIEW_MESSAGE_BY_ID (topic and uniq id) at every broker of the topic; the
  newest record found wins (a message sent again keeps its id, 14.2 and 14.4);
* **by key**: QUERY_MESSAGE at every broker of the topic, merged newest first;
* **by time**: SEARCH_OFFSET_BY_TIMESTAMP on each readable queue, then PULL_MESSAGE until
  the store timestamp passes the end (14.5: a client-side composition), merged oldest
  first;
* **trace** (SPEC M21, 14.6): QUERY_MESSAGE on ``%TRACE%`` with the message id as key;
  the records' bodies decoded (fabric.trace), the events of that id kept, by time;
* **dead letters**: ``%DLQ%<group>`` read with pulls. What ``dlq resend`` sent again is
  tracked as the committed offset of the reserved group :data:`ADMIN_GROUP` on each DLQ
  queue, so a second resend does not send the same letters again. Letters beyond that
  offset (a resend of chosen ids skips others, which keeps the offset behind them) are
  checked one by one: a letter whose id has a record in its original topic stored after
  the letter itself was sent again already.

Pulls use :data:`ADMIN_GROUP` and never commit, except the DLQ offsets above. The
blocking :class:`fabric.admin.Admin` calls these and formats nothing; :func:`describe`
is the one-line form the command line prints.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import msgspec
from loguru import logger

from fabric.client import ClientCore
from fabric.consumer.pull import PullConsumerCore
from fabric.errors import (
    FabricError,
    InvalidNameError,
    NoRouteError,
    NotFoundError,
    ProtocolError,
    TopicNotExistError,
    TransportError,
    from_response,
)
from fabric.message import MessageExt, MessageQueue, SendResult
from fabric.protocol.codes import PullStatus, RequestCode, ResponseCode
from fabric.protocol.frames import FrameError
from fabric.protocol.messages import QueryMessageBody, QueryMessageReply, ViewMessageBody
from fabric.protocol.names import check_group, check_topic, dlq_topic
from fabric.protocol.records import RecordError, decode_record
from fabric.trace import TRACE_TOPIC, TraceEvent, decode_events, describe_event, sort_events

__all__ = [
    "ADMIN_GROUP",
    "MAX_QUERY_NUM",
    "AdminQueries",
    "DeadLetter",
    "MessageQueries",
    "PendingLetters",
    "add_dlq_commands",
    "add_message_commands",
    "check_group_name",
    "check_topic_name",
    "describe",
    "run_dlq_command",
    "run_message_command",
]

#: The reserved consumer group of admin pulls; on ``%DLQ%<group>`` queues its committed
#: offset marks the dead letters already sent again.
ADMIN_GROUP: Final = "FABRIC_ADMIN"
#: Largest ``max_num`` of one QUERY_MESSAGE (docs/PROTOCOL.md 14.5).
MAX_QUERY_NUM: Final = 1024
#: Messages per pull while scanning a queue.
_PULL_BATCH: Final = 32
_BODY_PREVIEW: Final = 40


class DeadLetter(msgspec.Struct, frozen=True):
    """A message of a dead-letter topic, and whether ``dlq resend`` sent it again."""

    message: MessageExt
    resent: bool


class PendingLetters(msgspec.Struct, frozen=True):
    """The dead letters of one DLQ queue not sent again yet, from offset ``start``."""

    queue: MessageQueue
    start: int
    letters: list[MessageExt]


def check_topic_name(topic: str) -> None:
    """Raise InvalidNameError for a bad topic name."""
    problem = check_topic(topic)
    if problem is not None:
        raise InvalidNameError(problem, code=ResponseCode.INVALID_TOPIC_NAME, name=str(topic))


def check_group_name(group: str) -> None:
    """Raise InvalidNameError for a bad group name."""
    problem = check_group(group)
    if problem is not None:
        raise InvalidNameError(problem, code=ResponseCode.INVALID_GROUP_NAME, name=str(group))


def _newest_first(msgs: Iterable[MessageExt]) -> list[MessageExt]:
    return sorted(
        msgs, key=lambda m: (m.store_timestamp, m.broker_name, m.commitlog_offset), reverse=True
    )


class MessageQueries:
    """The message queries of ``fabric admin``, on the admin's loop.

    Args:
        client: routes and broker connections on this loop.
    """

    def __init__(self, client: ClientCore) -> None:
        self.client = client
        self.routes = client.routes
        self.pull = PullConsumerCore(client, ADMIN_GROUP, request_timeout=client.timeout)

    async def _brokers(self, topic: str) -> list[tuple[str, str]]:
        """(broker name, address) of every broker with readable queues of ``topic``.

        Raises:
            NoRouteError: no NameServer knows the topic.
        """
        route = await self.routes.fetch(topic)
        found: list[tuple[str, str]] = []
        for name in sorted({q.broker_name for q in route.read_queues}):
            found.append((name, await self.routes.broker_address(topic, name, master=False)))
        return found

    async def _ask_all(
        self, topic: str, code: RequestCode, body: msgspec.Struct
    ) -> list[MessageExt]:
        """``body`` at every broker of ``topic``; what they found, together.

        A broker that fails is logged and skipped; its error is raised only when no
        broker found anything.
        """
        found: list[MessageExt] = []
        failed: FabricError | None = None
        for name, address in await self._brokers(topic):
            try:
                found += await self._query(topic, name, address, code, body)
            except FabricError as exc:
                logger.warning("{} {} at {}: {}", code.name, topic, name, exc)
                failed = failed or exc
        if not found and failed is not None:
            raise failed
        return found

    async def _query(
        self, topic: str, name: str, address: str, code: RequestCode, body: msgspec.Struct
    ) -> list[MessageExt]:
        """One QUERY_MESSAGE or VIEW_MESSAGE_BY_ID; [] for QUERY_NOT_FOUND."""
        try:
            reply = await self.client.connection(address).request(code, body)
        except TransportError:
            self.routes.refresh_soon(topic)
            raise
        if reply.code == ResponseCode.QUERY_NOT_FOUND:
            return []
        if reply.code != ResponseCode.SUCCESS:
            raise from_response(reply.code, reply.remark, address=address)
        try:
            reply.decode(QueryMessageReply)
            return [MessageExt.from_record(decode_record(f), name) for f in reply.frames]
        except (FrameError, RecordError) as exc:
            raise ProtocolError(f"bad query reply: {exc}", address=address) from None

    async def by_id(self, topic: str, msg_id: str) -> MessageExt:
        """The newest record of ``msg_id`` in ``topic`` on any of its brokers.

        Raises:
            OffsetNotFoundError: no broker has it (code QUERY_NOT_FOUND).
            NoRouteError: no NameServer knows the topic.
        """
        body = ViewMessageBody(topic=topic, msg_id=msg_id)
        found = await self._ask_all(topic, RequestCode.VIEW_MESSAGE_BY_ID, body)
        if not found:
            raise from_response(
                ResponseCode.QUERY_NOT_FOUND, f"no message {msg_id} in topic {topic}"
            )
        return _newest_first(found)[0]

    async def by_key(
        self, topic: str, key: str, max_num: int, begin_ms: int, end_ms: int
    ) -> list[MessageExt]:
        """Up to ``max_num`` messages of ``topic`` with ``key``, newest first."""
        body = QueryMessageBody(
            topic=topic, key=key, max_num=max_num, begin_ms=begin_ms, end_ms=end_ms
        )
        found = await self._ask_all(topic, RequestCode.QUERY_MESSAGE, body)
        return _newest_first(found)[:max_num]

    async def trace(self, msg_id: str, topic: str | None) -> list[TraceEvent]:
        """The trace events of ``msg_id`` (of ``topic`` only, when given), by time.

        [] when nothing was traced yet (no ``%TRACE%`` topic); a record whose body does
        not decode is skipped (logged once per query).
        """
        try:
            records = await self.by_key(TRACE_TOPIC, msg_id, MAX_QUERY_NUM, 0, 0)
        except (NoRouteError, TopicNotExistError):
            return []
        events: list[TraceEvent] = []
        bad = 0
        for record in records:
            try:
                decoded = decode_events(record.body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                bad += 1
                continue
            events += (
                e for e in decoded if e.msg_id == msg_id and (topic is None or e.topic == topic)
            )
        if bad:
            logger.warning("{}: {} record(s) are not trace records", TRACE_TOPIC, bad)
        return sort_events(events)

    async def _scan(
        self, mq: MessageQueue, offset: int, end: int, limit: int, until_ms: int | None = None
    ) -> list[MessageExt]:
        """Messages of ``mq`` from ``offset`` up to ``end`` (exclusive, -1: the queue's
        end), at most ``limit``, stopping at the first stored after ``until_ms``."""
        found: list[MessageExt] = []
        while len(found) < limit and (end < 0 or offset < end):
            want = min(_PULL_BATCH, limit - len(found))
            if end >= 0:
                want = min(want, end - offset)
            result = await self.pull.pull(mq, offset, max_nums=want, timeout=0)
            if result.status is PullStatus.FOUND:
                for msg in result.messages:
                    if until_ms is not None and msg.store_timestamp > until_ms:
                        return found
                    found.append(msg)
            elif result.status is not PullStatus.NO_MATCHED_MSG:
                break  # NO_NEW_MSG: the end; OFFSET_ILLEGAL: nothing readable there
            if result.next_offset <= offset:
                break
            offset = result.next_offset
        return found[:limit]

    async def by_time(
        self, topic: str, begin_ms: int, end_ms: int, max_num: int
    ) -> list[MessageExt]:
        """Up to ``max_num`` messages of ``topic`` stored in [begin_ms, end_ms], oldest first."""
        found: list[MessageExt] = []
        for mq in (await self.routes.fetch(topic)).read_queues:
            start = await self.pull.offset_for_timestamp(mq, begin_ms)
            for msg in await self._scan(mq, start, -1, max_num, until_ms=end_ms):
                if begin_ms <= msg.store_timestamp <= end_ms:
                    found.append(msg)
        found.sort(key=lambda m: (m.store_timestamp, m.broker_name, m.queue_id, m.queue_offset))
        return found[:max_num]

    async def _dlq_queues(self, group: str) -> list[MessageQueue]:
        """The queues of ``%DLQ%<group>``; [] while it does not exist."""
        try:
            return list((await self.routes.fetch(dlq_topic(group))).read_queues)
        except NotFoundError:
            return []

    async def dlq_list(self, group: str, max_num: int, include_resent: bool) -> list[DeadLetter]:
        """Up to ``max_num`` dead letters of ``group``, oldest first per queue: those not
        sent again yet, or every one still stored with ``include_resent``."""
        found: list[DeadLetter] = []
        for mq in await self._dlq_queues(group):
            committed = await self.pull.committed(mq)
            low = await self.pull.min_offset(mq)
            start = low if include_resent else max(low, committed)
            for msg in await self._scan(mq, start, -1, max_num - len(found)):
                found.append(DeadLetter(msg, msg.queue_offset < committed))
            if len(found) >= max_num:
                break
        return found

    async def dlq_pending(self, group: str) -> list[PendingLetters]:
        """Every dead letter of ``group`` after its queue's resend offset."""
        pending: list[PendingLetters] = []
        for mq in await self._dlq_queues(group):
            start = max(await self.pull.min_offset(mq), await self.pull.committed(mq))
            end = await self.pull.max_offset(mq)
            letters = await self._scan(mq, start, end, max(end - start, 0))
            pending.append(PendingLetters(mq, start, letters))
        return pending

    async def resent_already(self, letter: MessageExt) -> bool:
        """True when ``letter``'s original topic has a record of its id stored after it."""
        if not letter.dead_letter:
            return False
        try:
            newest = await self.by_id(letter.topic, letter.msg_id)
        except NotFoundError:
            return False
        return newest.store_timestamp >= letter.store_timestamp

    async def commit(self, mq: MessageQueue, offset: int) -> None:
        """Commit :data:`ADMIN_GROUP`'s offset of ``mq``."""
        await self.pull.commit(mq, offset)


def describe(msg: MessageExt) -> str:
    """One line for a message: id, topic, queue, offset, store time, tags, keys, body."""
    when = datetime.datetime.fromtimestamp(msg.store_timestamp / 1000, datetime.timezone.utc)
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = msg.body[:_BODY_PREVIEW]
    try:
        preview = repr(body.decode("utf-8"))
    except UnicodeDecodeError:
        preview = f"<{len(msg.body)} bytes>"
    if len(msg.body) > _BODY_PREVIEW:
        preview += f"... ({len(msg.body)} bytes)"
    parts = [
        msg.msg_id or "-",
        msg.topic,
        f"queue={msg.queue}",
        f"offset={msg.queue_offset}",
        f"stored={stamp}",
        f"tags={msg.tags or '-'}",
        f"keys={','.join(msg.keys) or '-'}",
    ]
    if msg.reconsume_times:
        parts.append(f"reconsumed={msg.reconsume_times}")
    if msg.dlq_reason:
        parts.append(f"reason={msg.dlq_reason!r}")
    parts.append(f"body={preview}")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------
# The command line: fabric admin message ..., fabric admin dlq ...
# ---------------------------------------------------------------------------------------


def add_message_commands(objects: Any) -> None:
    """Add ``message id|key|time|trace`` to ``objects`` (the admin's subparsers)."""
    message = objects.add_parser(
        "message", help="find messages by id, key or store time; show a trace"
    )
    actions = message.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    time_help = "ms since the epoch, or an ISO time (local without a zone)"
    text = "the newest message with this id (uniq id) in a topic"
    p = actions.add_parser("id", help=text, description=text)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("msg_id", metavar="MSG_ID")
    text = "messages whose keys include KEY, newest first"
    p = actions.add_parser("key", help=text, description=text)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--max", type=int, default=32, metavar="N", help="at most N (default 32)")
    p.add_argument("--begin", default=None, metavar="T", help=f"stored at or after T: {time_help}")
    p.add_argument("--end", default=None, metavar="T", help=f"stored at or before T: {time_help}")
    text = "messages stored between two times, oldest first"
    p = actions.add_parser("time", help=text, description=text)
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument("--begin", required=True, metavar="T", help=time_help)
    p.add_argument("--end", required=True, metavar="T", help=time_help)
    p.add_argument("--max", type=int, default=32, metavar="N", help="at most N (default 32)")
    text = "the trace events of a message (clients with trace on), by time"
    p = actions.add_parser("trace", help=text, description=text)
    p.add_argument("msg_id", metavar="MSG_ID")
    p.add_argument("--topic", default=None, metavar="TOPIC", help="only events of this topic")


def add_dlq_commands(objects: Any) -> None:
    """Add ``dlq list|resend`` to ``objects`` (the admin's subparsers)."""
    dlq = objects.add_parser("dlq", help="list and resend a consumer group's dead letters")
    actions = dlq.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    text = "list the dead letters of a consumer group not sent again yet"
    p = actions.add_parser("list", help=text, description=text)
    p.add_argument("group", metavar="GROUP")
    p.add_argument("--max", type=int, default=32, metavar="N", help="at most N (default 32)")
    p.add_argument("--all", action="store_true", help="also those sent again already")
    text = "send dead letters again to their original topics"
    p = actions.add_parser("resend", help=text, description=text)
    p.add_argument("group", metavar="GROUP")
    p.add_argument(
        "--msg-id",
        action="append",
        default=None,
        metavar="ID",
        help="only this message (repeatable; default: every letter not sent again yet)",
    )


class AdminQueries(Protocol):
    """What the commands below need of ``fabric.admin.Admin`` (which imports this module)."""

    def query_by_id(self, topic: str, msg_id: str) -> MessageExt:
        """See ``Admin.query_by_id``."""
        ...

    def query_by_key(
        self, topic: str, key: str, max_num: int = 32, begin: Any = None, end: Any = None
    ) -> list[MessageExt]:
        """See ``Admin.query_by_key``."""
        ...

    def query_by_time(
        self, topic: str, begin: Any, end: Any, max_num: int = 32
    ) -> list[MessageExt]:
        """See ``Admin.query_by_time``."""
        ...

    def trace(self, msg_id: str, topic: str | None = None) -> list[TraceEvent]:
        """See ``Admin.trace``."""
        ...

    def dlq_list(
        self, group: str, max_num: int = 32, *, include_resent: bool = False
    ) -> list[DeadLetter]:
        """See ``Admin.dlq_list``."""
        ...

    def dlq_resend(
        self, group: str, msg_ids: Sequence[str] | None = None
    ) -> list[tuple[MessageExt, SendResult]]:
        """See ``Admin.dlq_resend``."""
        ...


def run_message_command(admin: AdminQueries, args: argparse.Namespace) -> int:
    """Run one ``message`` command with ``admin``; the exit status."""
    if args.action == "id":
        print(describe(admin.query_by_id(args.topic, args.msg_id)))
        return 0
    if args.action == "trace":
        events = admin.trace(args.msg_id, args.topic)
        for event in events:
            print(describe_event(event))
        print(f"{len(events)} trace event(s) of {args.msg_id}")
        return 0
    if args.action == "key":
        msgs = admin.query_by_key(args.topic, args.key, args.max, args.begin, args.end)
        what = f"with key {args.key!r}"
    else:
        msgs = admin.query_by_time(args.topic, args.begin, args.end, args.max)
        what = f"stored between {args.begin} and {args.end}"
    for msg in msgs:
        print(describe(msg))
    print(f"{len(msgs)} message(s) of {args.topic} {what}")
    return 0


def run_dlq_command(admin: AdminQueries, args: argparse.Namespace) -> int:
    """Run one ``dlq`` command with ``admin``; the exit status."""
    if args.action == "list":
        letters = admin.dlq_list(args.group, args.max, include_resent=args.all)
        for letter in letters:
            mark = "[resent] " if letter.resent else ""
            print(mark + describe(letter.message))
        print(f"{len(letters)} dead letter(s) of {args.group}")
        return 0
    done = admin.dlq_resend(args.group, args.msg_id)
    for sent, result in done:
        print(
            f"resent {sent.msg_id} to {sent.topic}: "
            f"queue={result.queue} offset={result.queue_offset} {result.status.name}"
        )
    print(f"{len(done)} dead letter(s) of {args.group} sent again")
    if args.msg_id and not done:
        print(
            f"fabric admin: none of {', '.join(args.msg_id)} is a dead letter of "
            f"{args.group} waiting to be sent",
            file=sys.stderr,
        )
        return 1
    return 0
