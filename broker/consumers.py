"""Clients and consumer groups: who is alive (HEARTBEAT), who left, and telling the group.

Every HEARTBEAT records its client: the producer groups it names (kept for admin,
forgotten :data:`PRODUCER_EXPIRY` seconds after the last heartbeat, pruned lazily) and
the consumer groups it is a member of. A client is a **member** of a consumer group from
its first HEARTBEAT naming the group until UNREGISTER_CLIENT, a HEARTBEAT that no longer
names it, or ``expiry`` seconds (``client_expiry``, DEFAULT_CLIENT_EXPIRY) without any
HEARTBEAT. The routing id of the connection its last HEARTBEAT came on is where its
notifications go, and, for a producer heard within ``expiry``, where the transaction
checks of its producer groups go (:meth:`ConsumerManager.producer_identity`).

Expiry costs one loop timer, never a scan per heartbeat: members sit in an ordered dict,
oldest heartbeat first (a heartbeat moves its client to the end), and the timer is set
at the oldest member's deadline; when it fires it drops every member past its deadline
and sets itself for the next.

Whenever the members of a group change, every member the group has afterwards gets a
NOTIFY_CONSUMER_IDS_CHANGED push (once per group and loop iteration, however many
members came and went). So does every member of a group subscribed to a topic whose
readable queues or permission an update changed, once the NameServers have the new route
(:meth:`ConsumerManager.notify_topic`): members read their routes again on it. When a
client expires or unregisters, ``on_leave`` is called with the groups it left: the broker
closes its push streams there and frees its queue locks (``BrokerContext`` in
broker.processors wires that).

Everything runs on the broker's loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Final

import msgspec
from loguru import logger

from fabric.protocol.codes import RequestCode
from fabric.protocol.messages import ConsumerData, ConsumerGroupBody

from .push import Pusher, encode_push

__all__ = ["PRODUCER_EXPIRY", "ClientInfo", "ConsumerManager"]

#: Seconds after its last heartbeat when a client's producer groups are forgotten (RocketMQ: 120 s).
PRODUCER_EXPIRY: Final = 120.0
_PRUNE_AT: Final = 1024


class ClientInfo(msgspec.Struct, kw_only=True):
    """What the last heartbeat of one client said."""

    client_id: str
    producer_groups: list[str]
    consumer_groups: list[str]
    #: Loop time of the last heartbeat.
    last_seen: float
    #: Routing id of the connection the last heartbeat came on (CHECK_TRANSACTION_STATE).
    identity: bytes = b""


class _Member:
    """A client that is a member of at least one consumer group."""

    __slots__ = ("client_id", "groups", "identity", "last_seen")

    def __init__(self, client_id: str, identity: bytes, last_seen: float) -> None:
        self.client_id = client_id
        self.identity = identity
        self.last_seen = last_seen
        self.groups: dict[str, ConsumerData] = {}


class ConsumerManager:
    """The clients of one broker and the live members of each consumer group.

    Args:
        loop: the broker's loop (the expiry timer and notifications run there).
        pusher: sends NOTIFY_CONSUMER_IDS_CHANGED (the server).
        expiry: seconds without a heartbeat after which a member leaves its groups.
        on_leave: ``on_leave(client_id, groups)`` after a client expired or unregistered
            from ``groups`` (None: every group, for a client that was not a member).
        clock: monotonic seconds; the loop's clock by default.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pusher: Pusher,
        *,
        expiry: float,
        on_leave: Callable[[str, frozenset[str] | None], None],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._loop = loop
        self._pusher = pusher
        self.expiry = expiry
        self._on_leave = on_leave
        self._clock = loop.time if clock is None else clock
        self._clients: dict[str, ClientInfo] = {}
        self._next_prune = _PRUNE_AT
        self._members: OrderedDict[str, _Member] = OrderedDict()
        self._groups: dict[str, set[str]] = {}
        self._changed: set[str] = set()
        self._notify_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        #: NOTIFY_CONSUMER_IDS_CHANGED pushes sent since the start.
        self.notifications = 0

    # -- requests -------------------------------------------------------------------------

    def heartbeat(
        self,
        client_id: str,
        identity: bytes,
        producer_groups: list[str],
        consumers: Mapping[str, ConsumerData],
    ) -> None:
        """A HEARTBEAT (checked) from ``client_id`` on connection ``identity``.

        Args:
            client_id: the client.
            identity: the routing id of the connection it came on.
            producer_groups: its producer groups.
            consumers: consumer group -> what the client says of its consumer there.
        """
        now = self._clock()
        self._clients[client_id] = ClientInfo(
            client_id=client_id,
            producer_groups=producer_groups,
            consumer_groups=sorted(consumers),
            last_seen=now,
            identity=identity,
        )
        if len(self._clients) >= self._next_prune:
            self._prune(now)
        member = self._members.get(client_id)
        if member is None:
            if not consumers:
                return
            member = self._members[client_id] = _Member(client_id, identity, now)
        else:
            member.identity = identity
            member.last_seen = now
            self._members.move_to_end(client_id)
        old = member.groups
        member.groups = dict(consumers)
        for group in member.groups.keys() - old.keys():
            self._groups.setdefault(group, set()).add(client_id)
            self._mark_changed(group)
        for group in old.keys() - member.groups.keys():
            self._remove(group, client_id)
        if not member.groups:
            del self._members[client_id]
        self._arm()

    def unregister(
        self, client_id: str, producer_groups: Collection[str], consumer_groups: Collection[str]
    ) -> None:
        """UNREGISTER_CLIENT: ``client_id`` leaves these groups; every group when none is named."""
        everything = not producer_groups and not consumer_groups
        info = self._clients.get(client_id)
        if info is not None:
            if everything:
                del self._clients[client_id]
            else:
                info.producer_groups = [g for g in info.producer_groups if g not in producer_groups]
                info.consumer_groups = [g for g in info.consumer_groups if g not in consumer_groups]
        member = self._members.get(client_id)
        if member is None:
            if everything or consumer_groups:
                self._on_leave(client_id, None if everything else frozenset(consumer_groups))
            return
        left = frozenset(member.groups) if everything else frozenset(consumer_groups)
        if not left:
            return
        self._leave(member, left)
        logger.info("client {} left consumer groups {}", client_id, sorted(left))

    def members(self, group: str) -> list[str]:
        """The live members' client ids, sorted (code point order: UTF-8 byte order)."""
        return sorted(self._groups.get(group, ()))

    def identity(self, client_id: str) -> bytes | None:
        """The routing id of a member's last heartbeat; None when it is no member."""
        member = self._members.get(client_id)
        return None if member is None else member.identity

    def producer_identity(self, group: str) -> bytes | None:
        """The routing id of a live producer of ``group`` (heard within ``expiry``), or None.

        The producer heard from most recently wins. A scan of the clients: for the
        transaction checks (broker.transactions), which ask once per group and round.
        """
        cutoff = self._clock() - self.expiry
        best: ClientInfo | None = None
        for info in self._clients.values():
            if (
                info.last_seen >= cutoff
                and group in info.producer_groups
                and info.identity
                and (best is None or info.last_seen > best.last_seen)
            ):
                best = info
        return None if best is None else best.identity

    @property
    def pusher(self) -> Pusher:
        """What pushes go through (the server); the transaction checks use it too."""
        return self._pusher

    def subscriptions(self, group: str, client_id: str) -> ConsumerData | None:
        """What a member said of its consumer in ``group`` (None when it is no member)."""
        member = self._members.get(client_id)
        return None if member is None else member.groups.get(group)

    def live_clients(self) -> list[ClientInfo]:
        """Clients heard from within PRODUCER_EXPIRY seconds (or still members), by id."""
        now = self._clock()
        return [
            info
            for cid, info in sorted(self._clients.items())
            if now - info.last_seen <= PRODUCER_EXPIRY or cid in self._members
        ]

    def groups(self) -> list[str]:
        """The consumer groups with at least one live member, sorted."""
        return sorted(self._groups)

    # -- expiry ---------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> list[str]:
        """Drop every member whose last heartbeat is ``expiry`` seconds old; their ids."""
        now = self._clock() if now is None else now
        members = self._members
        gone: list[str] = []
        while members:
            member = next(iter(members.values()))
            if member.last_seen + self.expiry > now:
                break
            gone.append(member.client_id)
            groups = frozenset(member.groups)
            logger.info(
                "client {} expired ({:.1f}s without a heartbeat): left consumer groups {}",
                member.client_id,
                now - member.last_seen,
                sorted(groups),
            )
            self._leave(member, groups)
        return gone

    def _arm(self) -> None:
        if self._timer is not None or self._closed or not self._members:
            return
        oldest = next(iter(self._members.values()))
        delay = max(0.0, oldest.last_seen + self.expiry - self._clock())
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.expire()
        except Exception:
            logger.exception("consumers: expiring clients failed")
        self._arm()

    def close(self) -> None:
        """Stop the timer (broker shutdown)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- membership changes ---------------------------------------------------------------

    def _leave(self, member: _Member, groups: frozenset[str]) -> None:
        """``member`` leaves ``groups``: tell the rest of each group, free what it held."""
        for group in groups:
            if member.groups.pop(group, None) is not None:
                self._remove(group, member.client_id)
        if not member.groups:
            self._members.pop(member.client_id, None)
        self._on_leave(member.client_id, groups)

    def _remove(self, group: str, client_id: str) -> None:
        ids = self._groups.get(group)
        if ids is None:
            return
        ids.discard(client_id)
        if not ids:
            del self._groups[group]
        self._mark_changed(group)

    def _mark_changed(self, group: str) -> None:
        self._changed.add(group)
        if not self._notify_scheduled and not self._closed:
            self._notify_scheduled = True
            self._loop.call_soon(self._notify)

    def notify_topic(self, topic: str) -> None:
        """``topic``'s route changed (its readable queues or its permission): push
        NOTIFY_CONSUMER_IDS_CHANGED to every member of each group subscribed to it, so
        they read the route again and rebalance at once."""
        groups = {
            group
            for member in self._members.values()
            for group, data in member.groups.items()
            if any(sub.topic == topic for sub in data.subscriptions)
        }
        for group in groups:
            self._mark_changed(group)
        if groups:
            logger.info("topic {} changed: notifying consumer groups {}", topic, sorted(groups))

    def _notify(self) -> None:
        """Push NOTIFY_CONSUMER_IDS_CHANGED to every member of each changed group."""
        self._notify_scheduled = False
        changed, self._changed = self._changed, set()
        if self._closed:
            return
        for group in sorted(changed):
            ids = self._groups.get(group)
            if not ids:
                continue
            frames = encode_push(
                RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, 0, ConsumerGroupBody(consumer_group=group)
            )
            for client_id in ids:
                # Best effort: a member that is gone or not reading misses it, and its
                # periodic rebalance catches up.
                self._pusher.push(self._members[client_id].identity, frames)
                self.notifications += 1

    def _prune(self, now: float) -> None:
        dead = [
            cid
            for cid, info in self._clients.items()
            if now - info.last_seen > PRODUCER_EXPIRY and cid not in self._members
        ]
        for cid in dead:
            del self._clients[cid]
        self._next_prune = max(_PRUNE_AT, 2 * len(self._clients))
