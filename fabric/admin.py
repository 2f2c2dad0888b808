"""``fabric admin``: topics and consumer groups across the cluster (SPEC M1, M13, O1).

``fabric admin --nameserver EP[,EP...] topic create|update|delete|list ...``:

* ``topic create --topic T [--queues N] [--read-queues N] [--write-queues N] [--perm rw]
  [--broker NAME | --cluster NAME]`` creates T on every master of the named broker,
  of the named cluster, or (default) of every cluster the NameServers know;
* ``topic update ...`` (same options) changes the queue counts or permission;
* ``topic delete --topic T [--broker NAME | --cluster NAME]``;
* ``topic list [--broker NAME | --cluster NAME]`` prints one line per topic::

      TopicA broker-a:r4/w4 broker-b:r4/w4

  (broker name, read and write queue counts; ``perm`` is added when not RW).

``fabric admin --nameserver EP group reset-offset|consumers ...``:

* ``group reset-offset GROUP TOPIC --to earliest|latest|<ms timestamp>|<ISO time>`` sets
  the group's committed offset of every queue of TOPIC on every broker of the topic
  (RESET_CONSUMER_OFFSET; an ISO time without a zone is local time) and prints one line
  per broker, ``reset GROUP TOPIC on broker-a: q0=12 q1=0 ...``; the group's push
  consumers reopen their streams at the new offsets;
* ``group consumers GROUP`` prints the client id of each live member, one per line
  (GET_CONSUMER_LIST_BY_GROUP at every live master).

``fabric admin --nameserver EP message id|key|time ...`` (SPEC M19) prints one line per
message (id, topic, queue, offset, store time, tags, keys, a body preview):

* ``message id TOPIC MSG_ID``: the newest record of that uniq id in TOPIC;
* ``message key TOPIC KEY [--max N] [--begin T] [--end T]``: messages whose keys include
  KEY, newest first;
* ``message time TOPIC --begin T --end T [--max N]``: messages stored in [begin, end],
  oldest first (T: ms since the epoch or an ISO time, local without a zone);
* ``message trace MSG_ID [--topic TOPIC]`` (SPEC M21): the message's trace events (sent
  by clients with ``trace=True`` to ``%TRACE%``), one line each, by time.

``fabric admin --nameserver EP dlq list|resend GROUP`` (SPEC M15):

* ``dlq list GROUP [--max N] [--all]``: the dead letters of GROUP not sent again yet
  (``--all``: every one still stored, those sent again marked ``[resent]``);
* ``dlq resend GROUP [--msg-id ID ...]``: sends each dead letter (or the chosen ones)
  again to its original topic with its uniq id, keys, tags and properties, one line per
  letter; a second resend does not send them again (fabric.admin_messages).

Brokers are found with GET_CLUSTER_INFO (or, for reset-offset, the topic's route) and
asked directly (CREATE_TOPIC, UPDATE_TOPIC, DELETE_TOPIC, LIST_TOPICS), so ``list`` shows
a change as soon as it is made (the NameServers learn it with the broker's next
registration). On failure the command prints ``fabric admin: <CODE> (<number>):
<message>`` on stderr and exits 1.

:class:`Admin` is the same as a blocking Python class.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final

from loguru import logger

from fabric.admin_messages import (
    ADMIN_GROUP,
    MAX_QUERY_NUM,
    DeadLetter,
    MessageQueries,
    add_dlq_commands,
    add_message_commands,
    check_group_name,
    check_topic_name,
    run_dlq_command,
    run_message_command,
)
from fabric.client import ClientCore, LoopRunner
from fabric.consumer.options import Position, parse_position
from fabric.errors import FabricError, InvalidNameError, NoRouteError, TopicNotExistError
from fabric.message import Message, MessageExt, SendResult
from fabric.producer import Producer
from fabric.protocol.codes import ConsumeFrom, Perm, RequestCode, ResponseCode
from fabric.protocol.messages import (
    DEFAULT_QUEUE_NUMS,
    DEFAULT_TOPIC_PERM,
    MAX_QUEUE_NUMS,
    ClusterInfo,
    ConsumerGroupBody,
    ConsumerListReply,
    DeleteTopicBody,
    Empty,
    ResetOffsetBody,
    ResetOffsetReply,
    TopicConfig,
    TopicConfigList,
)
from fabric.protocol.names import check_group, check_topic
from fabric.routing import parse_nameservers
from fabric.trace import TraceEvent
from fabric.transport import DEFAULT_TIMEOUT

__all__ = ["Admin", "add_arguments", "run"]

_MASTER: Final = 0
_PERMS: Final = {"rw": DEFAULT_TOPIC_PERM, "r": int(Perm.READ), "w": int(Perm.WRITE), "-": 0}


class _AdminCore:
    """The admin's requests, on the loop."""

    def __init__(self, client: ClientCore) -> None:
        self.client = client
        self.messages = MessageQueries(client)

    async def targets(self, broker: str | None, cluster: str | None) -> dict[str, str]:
        """Broker name -> master address of the brokers a command applies to."""
        info = await self.client.routes.cluster_info()
        if broker is not None:
            names = [broker]
        elif cluster is not None:
            if cluster not in info.clusters:
                raise NoRouteError(
                    f"no live broker in cluster {cluster}", code=ResponseCode.NO_ROUTE
                )
            names = list(info.clusters[cluster])
        else:
            names = sorted(info.brokers)
        found: dict[str, str] = {}
        for name in names:
            data = info.brokers.get(name)
            if data is None or _MASTER not in data.broker_addrs:
                raise NoRouteError(f"no live master of broker {name}", code=ResponseCode.NO_ROUTE)
            found[name] = data.broker_addrs[_MASTER]
        if not found:
            raise NoRouteError("no live broker", code=ResponseCode.NO_ROUTE)
        return found

    async def put_topic(
        self, code: RequestCode, config: TopicConfig, targets: dict[str, str]
    ) -> dict[str, TopicConfig]:
        done: dict[str, TopicConfig] = {}
        first: FabricError | None = None
        for name, address in targets.items():
            try:
                conn = self.client.connection(address)
                done[name] = await conn.call(code, config, TopicConfig)
            except FabricError as exc:
                first = first or exc
        if first is not None:
            raise first
        return done

    async def delete_topic(self, topic: str, targets: dict[str, str]) -> list[str]:
        deleted: list[str] = []
        missing: FabricError | None = None
        for name, address in targets.items():
            try:
                conn = self.client.connection(address)
                await conn.call(RequestCode.DELETE_TOPIC, DeleteTopicBody(topic=topic), Empty)
            except TopicNotExistError as exc:
                missing = exc
                continue
            deleted.append(name)
        if not deleted and missing is not None:
            raise missing
        return deleted

    async def list_topics(self, targets: dict[str, str]) -> dict[str, dict[str, TopicConfig]]:
        topics: dict[str, dict[str, TopicConfig]] = {}
        for name, address in targets.items():
            conn = self.client.connection(address)
            reply = await conn.call(RequestCode.LIST_TOPICS, Empty(), TopicConfigList)
            for config in reply.topics:
                topics.setdefault(config.topic, {})[name] = config
        return {t: topics[t] for t in sorted(topics)}

    async def reset_offset(self, body: ResetOffsetBody) -> dict[str, dict[int, int]]:
        """RESET_CONSUMER_OFFSET at the master of every broker of the topic."""
        routes = self.client.routes
        route = await routes.fetch(body.topic)
        done: dict[str, dict[int, int]] = {}
        first: FabricError | None = None
        for name in sorted({q.broker_name for q in route.read_queues}):
            try:
                address = await routes.broker_address(body.topic, name, master=True)
                conn = self.client.connection(address)
                reply = await conn.call(RequestCode.RESET_CONSUMER_OFFSET, body, ResetOffsetReply)
            except FabricError as exc:
                first = first or exc
                continue
            done[name] = {q.queue_id: q.offset for q in sorted(reply.offsets, key=_queue_id)}
        if first is not None:
            raise first
        if not done:
            raise NoRouteError(f"no readable queue of {body.topic}", code=ResponseCode.NO_ROUTE)
        return done

    async def consumers(self, group: str) -> list[str]:
        """The live members of ``group``: the union of what every live master knows."""
        found: set[str] = set()
        body = ConsumerGroupBody(consumer_group=group)
        for address in (await self.targets(None, None)).values():
            conn = self.client.connection(address)
            reply = await conn.call(RequestCode.GET_CONSUMER_LIST_BY_GROUP, body, ConsumerListReply)
            found.update(reply.client_ids)
        return sorted(found, key=lambda cid: cid.encode())


def _queue_id(offset: Any) -> int:
    return int(offset.queue_id)


def _time_ms(value: Position, what: str) -> int:
    """A point in time as ms since the epoch (digits, ISO text, datetime or int)."""
    try:
        where, ms = parse_position(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    if where is not ConsumeFrom.TIMESTAMP:
        raise ValueError(f"{what} must be a time (ms since the epoch or ISO), got {value!r}")
    return ms


def _again(letter: MessageExt) -> Message:
    """The message to send for a dead letter: its original topic, id, keys and the rest."""
    return Message(
        letter.topic,
        letter.body,
        tags=letter.tags,
        keys=letter.keys,
        properties=letter.properties,
        flag=letter.flag,
        msg_id=letter.msg_id,
    )


class Admin:
    """Topic administration across the brokers the NameServers know (blocking).

    Args:
        nameservers: ``"ep1;ep2"``, ``"ep1,ep2"`` or a list of NameServer endpoints.
        timeout: seconds each request waits for its reply.

    Usage::

        with Admin("tcp://127.0.0.1:9876") as admin:
            admin.create_topic("Orders", queues=8)
    """

    def __init__(self, nameservers: str | Sequence[str], *, timeout: float = DEFAULT_TIMEOUT):
        self.nameservers = parse_nameservers(nameservers)
        self.timeout = timeout
        self._runner: LoopRunner | None = None
        self._core: _AdminCore | None = None

    async def _make_core(self, context: Any) -> _AdminCore:
        return _AdminCore(
            ClientCore(context, self.nameservers, timeout=self.timeout, route_refresh=0)
        )

    def start(self) -> Admin:
        """Start the I/O thread. Returns self."""
        if self._runner is None:
            runner = LoopRunner("fabric-admin")
            self._core = runner.start(self._make_core)
            self._runner = runner
        return self

    def _started(self) -> tuple[_AdminCore, LoopRunner]:
        if self._core is None or self._runner is None:
            raise RuntimeError("the admin is not started")
        return self._core, self._runner

    def _wait(self, brokers: int = 1) -> float:
        return self.timeout * (len(self.nameservers) + brokers + 1)

    def cluster_info(self) -> ClusterInfo:
        """GET_CLUSTER_INFO from the NameServers."""
        core, runner = self._started()
        return runner.run(core.client.routes.cluster_info(), self._wait())

    def _config(
        self,
        topic: str,
        queues: int | None,
        read_queues: int | None,
        write_queues: int | None,
        perm: int,
    ) -> TopicConfig:
        problem = check_topic(topic)
        if problem is not None:
            raise InvalidNameError(problem, code=ResponseCode.INVALID_TOPIC_NAME, name=topic)
        default = DEFAULT_QUEUE_NUMS if queues is None else queues
        read = default if read_queues is None else read_queues
        write = default if write_queues is None else write_queues
        for n in (read, write):
            if not 0 <= n <= MAX_QUEUE_NUMS:
                raise ValueError(f"queue counts must be in 0..{MAX_QUEUE_NUMS}, got {n}")
        return TopicConfig(topic=topic, read_queue_nums=read, write_queue_nums=write, perm=perm)

    def _put(
        self,
        code: RequestCode,
        topic: str,
        queues: int | None,
        read_queues: int | None,
        write_queues: int | None,
        perm: int,
        broker: str | None,
        cluster: str | None,
    ) -> dict[str, TopicConfig]:
        core, runner = self._started()
        config = self._config(topic, queues, read_queues, write_queues, perm)

        async def go() -> dict[str, TopicConfig]:
            targets = await core.targets(broker, cluster)
            return await core.put_topic(code, config, targets)

        return runner.run(go(), self._wait(8))

    def create_topic(
        self,
        topic: str,
        *,
        queues: int | None = None,
        read_queues: int | None = None,
        write_queues: int | None = None,
        perm: int = DEFAULT_TOPIC_PERM,
        broker: str | None = None,
        cluster: str | None = None,
    ) -> dict[str, TopicConfig]:
        """CREATE_TOPIC on the chosen brokers (default: every live master).

        Args:
            topic: the topic.
            queues: read and write queues per broker (default 4).
            read_queues, write_queues: set one count apart from ``queues``.
            perm: Perm bits (default READ|WRITE).
            broker: only this broker name; cluster: only the brokers of this cluster.

        Returns:
            Broker name -> the TopicConfig it stored.

        Raises:
            TopicExistsError: a broker has the topic already (the others still got it).
            NoRouteError: no such broker or cluster is alive.
        """
        return self._put(
            RequestCode.CREATE_TOPIC,
            topic,
            queues,
            read_queues,
            write_queues,
            perm,
            broker,
            cluster,
        )

    def update_topic(
        self,
        topic: str,
        *,
        queues: int | None = None,
        read_queues: int | None = None,
        write_queues: int | None = None,
        perm: int = DEFAULT_TOPIC_PERM,
        broker: str | None = None,
        cluster: str | None = None,
    ) -> dict[str, TopicConfig]:
        """UPDATE_TOPIC on the chosen brokers; arguments as :meth:`create_topic`.

        Raises:
            TopicNotExistError: a broker does not have the topic (the others were updated).
        """
        return self._put(
            RequestCode.UPDATE_TOPIC,
            topic,
            queues,
            read_queues,
            write_queues,
            perm,
            broker,
            cluster,
        )

    def delete_topic(
        self, topic: str, *, broker: str | None = None, cluster: str | None = None
    ) -> list[str]:
        """DELETE_TOPIC on the chosen brokers; the names of those that had it.

        Raises:
            TopicNotExistError: none of them had it.
        """
        core, runner = self._started()

        async def go() -> list[str]:
            return await core.delete_topic(topic, await core.targets(broker, cluster))

        return runner.run(go(), self._wait(8))

    def list_topics(
        self, *, broker: str | None = None, cluster: str | None = None
    ) -> dict[str, dict[str, TopicConfig]]:
        """Topic -> {broker name -> TopicConfig}, from the chosen brokers, sorted by topic."""
        core, runner = self._started()

        async def go() -> dict[str, dict[str, TopicConfig]]:
            return await core.list_topics(await core.targets(broker, cluster))

        return runner.run(go(), self._wait(8))

    def reset_offset(
        self, group: str, topic: str, to: Position = "earliest"
    ) -> dict[str, dict[int, int]]:
        """Move ``group``'s committed offsets of ``topic`` on every broker of the topic.

        Args:
            group: the consumer group.
            topic: the topic.
            to: ``"earliest"``, ``"latest"``, a timestamp in ms, an ISO time (local time
                without a zone), a datetime, or a ConsumeFrom.

        Returns:
            Broker name -> {queue id -> the new committed offset}. The group's push
            consumers reopen their streams there.

        Raises:
            InvalidNameError: a bad group or topic name.
            ValueError: ``to`` names no position.
            NoRouteError: no NameServer knows the topic.
        """
        for problem, code, name in (
            (check_group(group), ResponseCode.INVALID_GROUP_NAME, group),
            (check_topic(topic), ResponseCode.INVALID_TOPIC_NAME, topic),
        ):
            if problem is not None:
                raise InvalidNameError(problem, code=code, name=name)
        where, timestamp = parse_position(to)
        body = ResetOffsetBody(
            consumer_group=group, topic=topic, to=int(where), timestamp=timestamp
        )
        core, runner = self._started()
        return runner.run(core.reset_offset(body), self._wait(8))

    def consumers(self, group: str) -> list[str]:
        """The client ids of ``group``'s live members (from every live master), sorted."""
        problem = check_group(group)
        if problem is not None:
            raise InvalidNameError(problem, code=ResponseCode.INVALID_GROUP_NAME, name=group)
        core, runner = self._started()
        return runner.run(core.consumers(group), self._wait(8))

    # -- messages (SPEC M19) -----------------------------------------------------------

    def query_by_id(self, topic: str, msg_id: str) -> MessageExt:
        """The newest record of the uniq id ``msg_id`` in ``topic`` (VIEW_MESSAGE_BY_ID at
        every broker of the topic).

        Raises:
            OffsetNotFoundError: no broker has it (code QUERY_NOT_FOUND).
            NoRouteError: no NameServer knows the topic.
            InvalidNameError: a bad topic name.
        """
        check_topic_name(topic)
        if not msg_id:
            raise ValueError("no message id")
        core, runner = self._started()
        return runner.run(core.messages.by_id(topic, msg_id), self._wait(8))

    def query_by_key(
        self,
        topic: str,
        key: str,
        max_num: int = 32,
        begin: Position | None = None,
        end: Position | None = None,
    ) -> list[MessageExt]:
        """Up to ``max_num`` messages of ``topic`` whose keys include ``key``, newest first
        (QUERY_MESSAGE at every broker of the topic, merged).

        Args:
            topic: the topic.
            key: one key.
            max_num: at most this many (1..1024).
            begin, end: store time bounds: ms since the epoch, an ISO time (local without
                a zone) or a datetime; None: unbounded.
        """
        check_topic_name(topic)
        if not key:
            raise ValueError("no key")
        if not 1 <= max_num <= MAX_QUERY_NUM:
            raise ValueError(f"max_num must be in 1..{MAX_QUERY_NUM}, got {max_num}")
        begin_ms = 0 if begin is None else _time_ms(begin, "begin")
        end_ms = 0 if end is None else _time_ms(end, "end")
        core, runner = self._started()
        coro = core.messages.by_key(topic, key, max_num, begin_ms, end_ms)
        return runner.run(coro, self._wait(8))

    def trace(self, msg_id: str, topic: str | None = None) -> list[TraceEvent]:
        """The trace events of the message ``msg_id`` (SPEC M21, docs/PROTOCOL.md 14.6),
        sorted by timestamp: QUERY_MESSAGE on ``%TRACE%`` with the id as key, bodies
        decoded, the events of that id kept ([] when nothing was traced).

        Args:
            msg_id: the message's id (uniq id).
            topic: only the events of this topic.
        """
        if not msg_id:
            raise ValueError("no message id")
        if topic is not None:
            check_topic_name(topic)
        core, runner = self._started()
        return runner.run(core.messages.trace(msg_id, topic), self._wait(8))

    def query_by_time(
        self, topic: str, begin: Position, end: Position, max_num: int = 32
    ) -> list[MessageExt]:
        """Up to ``max_num`` messages of ``topic`` stored in [begin, end], oldest first
        (SEARCH_OFFSET_BY_TIMESTAMP and pulls on every queue, docs/PROTOCOL.md 14.5).

        Args:
            begin, end: ms since the epoch, an ISO time (local without a zone) or a datetime.
        """
        check_topic_name(topic)
        begin_ms, end_ms = _time_ms(begin, "begin"), _time_ms(end, "end")
        if end_ms < begin_ms:
            raise ValueError("end is before begin")
        if max_num < 1:
            raise ValueError(f"max_num must be >= 1, got {max_num}")
        core, runner = self._started()
        coro = core.messages.by_time(topic, begin_ms, end_ms, max_num)
        return runner.run(coro, self._wait(8 + max_num))

    # -- dead letters (SPEC M15) --------------------------------------------------------

    def dlq_list(
        self, group: str, max_num: int = 32, *, include_resent: bool = False
    ) -> list[DeadLetter]:
        """Up to ``max_num`` dead letters of ``group`` (``%DLQ%<group>``), oldest first.

        Each :class:`~fabric.admin_messages.DeadLetter` has the message (reported under
        its original topic, with ``dlq_reason``) and whether :meth:`dlq_resend` sent it
        again; those are left out unless ``include_resent``. A group with no dead letter
        (no DLQ topic yet) gets [].
        """
        check_group_name(group)
        if max_num < 1:
            raise ValueError(f"max_num must be >= 1, got {max_num}")
        core, runner = self._started()
        coro = core.messages.dlq_list(group, max_num, include_resent)
        return runner.run(coro, self._wait(8 + max_num))

    def dlq_resend(
        self, group: str, msg_ids: Sequence[str] | None = None
    ) -> list[tuple[MessageExt, SendResult]]:
        """Send ``group``'s dead letters (or those with ``msg_ids``) again to their
        original topics, with their uniq ids, keys, tags and properties.

        Letters sent again are remembered on the brokers (the committed offset of the
        reserved group ``FABRIC_ADMIN`` on each DLQ queue, and, for letters past it, a
        record of the id in the original topic stored after the letter), so a second
        call does not send them again.

        Returns:
            (dead letter, send result) for each letter sent, in DLQ order.

        Raises:
            FabricError: a send or request failed (what was sent before stays recorded).
        """
        check_group_name(group)
        wanted = None if msg_ids is None else set(msg_ids)
        core, runner = self._started()
        pending = runner.run(core.messages.dlq_pending(group), self._wait(64))
        done: list[tuple[MessageExt, SendResult]] = []
        if not any(p.letters for p in pending):
            return done
        with Producer(ADMIN_GROUP, nameservers=self.nameservers) as producer:
            for queue in pending:
                offset, advancing = queue.start, True
                try:
                    for letter in queue.letters:
                        chosen = wanted is None or letter.msg_id in wanted
                        if chosen and letter.dead_letter:
                            check = core.messages.resent_already(letter)
                            if not runner.run(check, self._wait(8)):
                                done.append((letter, producer.send(_again(letter))))
                        else:
                            advancing = False  # not chosen (or no ORIGIN_TOPIC): pending
                        if advancing:
                            offset = letter.queue_offset + 1
                finally:
                    if offset > queue.start:
                        runner.run(core.messages.commit(queue.queue, offset), self._wait())
        return done

    def shutdown(self) -> None:
        """Close the connections and stop the I/O thread. Idempotent."""
        core, runner = self._core, self._runner
        self._core = self._runner = None
        if core is not None and runner is not None:
            runner.stop(core.client.close, self.timeout)

    def __enter__(self) -> Admin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``fabric admin``'s options and sub-subcommands to ``parser``."""
    parser.add_argument(
        "--nameserver",
        required=True,
        metavar="EP[,EP...]",
        help="NameServer endpoints, comma- or semicolon-separated",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"seconds each request waits (default {DEFAULT_TIMEOUT:g})",
    )
    objects = parser.add_subparsers(dest="object", metavar="OBJECT")
    objects.required = True
    _add_group_arguments(objects)
    add_message_commands(objects)
    add_dlq_commands(objects)
    topic = objects.add_parser("topic", help="create, update, delete and list topics")
    actions = topic.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for name, help_text in (("create", "create a topic"), ("update", "change a topic")):
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--topic", required=True)
        p.add_argument(
            "--queues",
            type=int,
            default=None,
            metavar="N",
            help=f"read and write queues per broker (default {DEFAULT_QUEUE_NUMS})",
        )
        p.add_argument("--read-queues", type=int, default=None, metavar="N")
        p.add_argument("--write-queues", type=int, default=None, metavar="N")
        p.add_argument(
            "--perm", choices=sorted(_PERMS), default="rw", help="permission (default rw)"
        )
        _add_scope(p)
    p = actions.add_parser("delete", help="delete a topic", description="delete a topic")
    p.add_argument("--topic", required=True)
    _add_scope(p)
    p = actions.add_parser(
        "list", help="list topics and their queues", description="list topics and their queues"
    )
    _add_scope(p)


def _add_group_arguments(objects: Any) -> None:
    group = objects.add_parser("group", help="consumer groups: reset offsets, list members")
    actions = group.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    text = "move a group's committed offsets of a topic"
    p = actions.add_parser("reset-offset", help=text, description=text)
    p.add_argument("group", metavar="GROUP")
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument(
        "--to",
        required=True,
        metavar="WHERE",
        help="earliest, latest, a timestamp in ms, or an ISO time (local without a zone)",
    )
    text = "list the live members of a consumer group"
    p = actions.add_parser("consumers", help=text, description=text)
    p.add_argument("group", metavar="GROUP")


def _add_scope(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--broker", metavar="NAME", help="only this broker")
    scope.add_argument("--cluster", metavar="NAME", help="only the brokers of this cluster")


def run(args: argparse.Namespace) -> int:
    """Run one admin command; the exit status (0, or 1 on failure)."""
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.enable("fabric")
    try:
        with Admin(args.nameserver, timeout=args.timeout) as admin:
            return _run(admin, args)
    except FabricError as exc:
        print(f"fabric admin: {_describe(exc)}", file=sys.stderr)
        return 1
    except (ValueError, TimeoutError) as exc:
        print(f"fabric admin: {exc}", file=sys.stderr)
        return 1


def _run(admin: Admin, args: argparse.Namespace) -> int:
    if args.object == "group":
        return _run_group(admin, args)
    if args.object == "message":
        return run_message_command(admin, args)
    if args.object == "dlq":
        return run_dlq_command(admin, args)
    scope = {"broker": args.broker, "cluster": args.cluster}
    if args.action in ("create", "update"):
        put = admin.create_topic if args.action == "create" else admin.update_topic
        done = put(
            args.topic,
            queues=args.queues,
            read_queues=args.read_queues,
            write_queues=args.write_queues,
            perm=_PERMS[args.perm],
            **scope,
        )
        verb = "created" if args.action == "create" else "updated"
        for name, config in done.items():
            print(f"{verb} {config.topic} on {name}: {_queues(config)}")
    elif args.action == "delete":
        for name in admin.delete_topic(args.topic, **scope):
            print(f"deleted {args.topic} on {name}")
    else:
        for topic, by_broker in admin.list_topics(**scope).items():
            parts = [f"{name}:{_queues(config)}" for name, config in by_broker.items()]
            print(topic, *parts)
    return 0


def _run_group(admin: Admin, args: argparse.Namespace) -> int:
    if args.action == "reset-offset":
        done = admin.reset_offset(args.group, args.topic, args.to)
        for name, offsets in done.items():
            parts = " ".join(f"q{q}={o}" for q, o in offsets.items())
            print(f"reset {args.group} {args.topic} on {name}: {parts}")
    else:
        for client_id in admin.consumers(args.group):
            print(client_id)
    return 0


def _queues(config: TopicConfig) -> str:
    text = f"r{config.read_queue_nums}/w{config.write_queue_nums}"
    if config.perm != DEFAULT_TOPIC_PERM:
        text += f"/perm={config.perm}"
    return text


def _describe(exc: FabricError) -> str:
    code = exc.code
    if isinstance(code, ResponseCode):
        head = f"{code.name} ({int(code)})"
    elif code is not None:
        head = f"code {code}"
    else:
        head = type(exc).__name__
    text = f"{head}: {exc.message}"
    if exc.address:
        text += f" (addr={exc.address})"
    return text
