"""The NameServer's route table: live brokers, the topics they serve, and when they expire.

A plain data structure: no sockets, no clock, no loop. Every method that depends on time
takes ``now`` (seconds on a monotonic clock chosen by the caller), so expiry is a pure
function of the table and ``now``, and tests drive it without sleeping.

Ownership. The unit of state is a :class:`BrokerEntry`: one per (broker name, broker id),
written only by that broker's REGISTER_BROKER and carrying the broker's own
``version`` (its data_version) and a time to live. Everything a route lookup returns is
derived from the live entries; nothing else is stored.

Sharing (SPEC C2, a later issue). Each local change gets the next sequence number and is
returned as a :class:`RouteUpdate`: a gossip publisher sends :meth:`RouteTable.snapshot`
to a newcomer, then the updates in order (a subscriber that sees a gap asks for a new
snapshot). A receiver merges with :meth:`RouteTable.apply`, where the owner's version
decides (last writer wins), and with :meth:`RouteTable.load`. Wall-clock deadlines never
cross the wire: updates carry the time left (``ttl_left``), which each table turns into a
deadline on its own clock.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import msgspec

from fabric.protocol.codes import DEFAULT_BROKER_EXPIRY
from fabric.protocol.messages import (
    BrokerData,
    ClusterInfo,
    QueueData,
    RegisterBrokerBody,
    TopicConfig,
    TopicRouteData,
)

__all__ = [
    "BrokerEntry",
    "BrokerKey",
    "RouteSnapshot",
    "RouteTable",
    "RouteUpdate",
]


class BrokerKey(NamedTuple):
    """Who owns an entry: a broker name (master and slaves share it) and a broker id."""

    broker_name: str
    broker_id: int


class BrokerEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One broker's registration, as that broker sent it."""

    cluster_name: str
    broker_name: str
    broker_id: int
    broker_addr: str
    #: The topics this broker serves, by name.
    topics: dict[str, TopicConfig]
    #: The broker's data_version; a larger version replaces a smaller one.
    version: int
    #: Seconds this entry lives after its last registration or heartbeat.
    ttl: float

    @property
    def key(self) -> BrokerKey:
        return BrokerKey(self.broker_name, self.broker_id)


class RouteUpdate(msgspec.Struct, kw_only=True, frozen=True):
    """One numbered change of a table.

    ``op`` is "put" (a registration: ``entry`` is the new entry), "touch" (a heartbeat:
    ``entry`` is the unchanged entry, its life restarts) or "delete" (``reason`` says why:
    "unregistered" or "expired"; ``entry`` is the removed entry).
    """

    seq: int
    op: Literal["put", "touch", "delete"]
    entry: BrokerEntry
    ttl_left: float = 0.0
    reason: str = ""


class RouteSnapshot(msgspec.Struct, kw_only=True, frozen=True):
    """The whole table at sequence number ``seq``: entries with the time each has left."""

    seq: int
    entries: list[tuple[BrokerEntry, float]]


class RouteTable:
    """Live brokers by (name, id), indexed by topic and by broker name.

    Args:
        default_ttl: seconds a broker lives after its last registration or heartbeat,
            unless it asks for another value.
    """

    def __init__(self, default_ttl: float = DEFAULT_BROKER_EXPIRY) -> None:
        self.default_ttl = default_ttl
        #: The sequence number of the last local change (0: none yet).
        self.seq = 0
        self._entries: dict[BrokerKey, BrokerEntry] = {}
        self._deadlines: dict[BrokerKey, float] = {}
        self._by_topic: dict[str, set[BrokerKey]] = {}
        self._by_name: dict[str, set[BrokerKey]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: BrokerKey) -> BrokerEntry | None:
        """The entry of ``key``, or None."""
        return self._entries.get(key)

    def deadline(self, key: BrokerKey) -> float | None:
        """When ``key`` expires (on the caller's clock), or None when unknown."""
        return self._deadlines.get(key)

    def entries(self) -> list[BrokerEntry]:
        """All live entries, sorted by key."""
        return [self._entries[k] for k in sorted(self._entries)]

    # -- local changes ------------------------------------------------------------------

    def register(self, body: RegisterBrokerBody, now: float) -> RouteUpdate:
        """Store a broker's registration; it replaces whatever the broker sent before.

        A registration comes from the owner itself, so it always wins, whatever its
        version (a restarted broker's clock may have gone back).
        """
        ttl = body.heartbeat_timeout_ms / 1000.0 if body.heartbeat_timeout_ms > 0 else None
        entry = BrokerEntry(
            cluster_name=body.cluster_name,
            broker_name=body.broker_name,
            broker_id=body.broker_id,
            broker_addr=body.broker_addr,
            topics={t.topic: t for t in body.topics},
            version=body.data_version,
            ttl=self.default_ttl if ttl is None else ttl,
        )
        self._put(entry, now + entry.ttl)
        return self._update("put", entry, entry.ttl)

    def heartbeat(
        self, key: BrokerKey, address: str, version: int, now: float
    ) -> RouteUpdate | None:
        """Restart the life of a registered broker.

        Returns:
            The "touch" update; None when the table has no such broker at this address
            and version: the broker must register again (BROKER_NOT_REGISTERED).
        """
        entry = self._entries.get(key)
        if entry is None or entry.broker_addr != address or entry.version != version:
            return None
        self._deadlines[key] = now + entry.ttl
        return self._update("touch", entry, entry.ttl)

    def unregister(self, key: BrokerKey, address: str) -> RouteUpdate | None:
        """Remove a broker that leaves; only its registered address may remove it.

        Returns:
            The "delete" update, or None when there was nothing to remove.
        """
        entry = self._entries.get(key)
        if entry is None or entry.broker_addr != address:
            return None
        self._remove(key)
        return self._update("delete", entry, 0.0, "unregistered")

    def expire(self, now: float) -> list[RouteUpdate]:
        """Remove every broker whose deadline is at or before ``now``; pure in ``now``."""
        dead = sorted(k for k, deadline in self._deadlines.items() if deadline <= now)
        updates = []
        for key in dead:
            entry = self._entries[key]
            self._remove(key)
            updates.append(self._update("delete", entry, 0.0, "expired"))
        return updates

    def next_deadline(self) -> float | None:
        """The earliest deadline in the table, or None when it is empty."""
        return min(self._deadlines.values(), default=None)

    # -- merging (gossip) ---------------------------------------------------------------

    def apply(self, update: RouteUpdate, now: float) -> bool:
        """Merge an update from another table; the owner's version decides.

        Does not renumber or record the update (no echo). Returns True when it changed
        this table.
        """
        entry = update.entry
        key = entry.key
        local = self._entries.get(key)
        if update.op == "delete":
            if local is None or local.version > entry.version:
                return False
            self._remove(key)
            return True
        if local is not None and local.version > entry.version:
            return False
        if update.op == "touch" and (local is None or local.version != entry.version):
            return False  # a touch of an entry we never saw: wait for a put or a snapshot
        self._put(entry, now + update.ttl_left)
        return True

    def snapshot(self, now: float) -> RouteSnapshot:
        """The whole table, as of :attr:`seq`, with each entry's time left."""
        return RouteSnapshot(
            seq=self.seq,
            entries=[(e, max(0.0, self._deadlines[e.key] - now)) for e in self.entries()],
        )

    def load(self, snapshot: RouteSnapshot, now: float) -> None:
        """Replace the whole table with ``snapshot`` (its ``seq`` becomes this table's)."""
        self._entries.clear()
        self._deadlines.clear()
        self._by_topic.clear()
        self._by_name.clear()
        for entry, ttl_left in snapshot.entries:
            self._put(entry, now + ttl_left)
        self.seq = snapshot.seq

    # -- queries ------------------------------------------------------------------------

    def route(self, topic: str) -> TopicRouteData | None:
        """The queues and broker addresses of ``topic``, or None when no live broker has it.

        Master and slaves of a broker name share its queues: the queue data comes from the
        lowest broker id that lists the topic (the master, while it lives), and the
        addresses are those of every live id of that name.
        """
        keys = self._by_topic.get(topic)
        if not keys:
            return None
        source: dict[str, BrokerKey] = {}
        for key in keys:
            best = source.get(key.broker_name)
            if best is None or key.broker_id < best.broker_id:
                source[key.broker_name] = key
        queue_datas = []
        broker_datas = []
        for name in sorted(source):
            config = self._entries[source[name]].topics[topic]
            queue_datas.append(
                QueueData(
                    broker_name=name,
                    read_queue_nums=config.read_queue_nums,
                    write_queue_nums=config.write_queue_nums,
                    perm=config.perm,
                )
            )
            broker_datas.append(self._broker_data(name, source[name]))
        return TopicRouteData(queue_datas=queue_datas, broker_datas=broker_datas)

    def cluster_info(self) -> ClusterInfo:
        """Live brokers by name, and broker names by cluster (both sorted)."""
        brokers: dict[str, BrokerData] = {}
        clusters: dict[str, list[str]] = {}
        for name in sorted(self._by_name):
            first = min(self._by_name[name])
            data = self._broker_data(name, first)
            brokers[name] = data
            clusters.setdefault(data.cluster_name, []).append(name)
        return ClusterInfo(brokers=brokers, clusters=clusters)

    def topic_names(self) -> list[str]:
        """Every topic some live broker serves, sorted."""
        return sorted(self._by_topic)

    # -- internals ----------------------------------------------------------------------

    def _broker_data(self, name: str, owner: BrokerKey) -> BrokerData:
        keys = sorted(self._by_name[name])
        return BrokerData(
            cluster_name=self._entries[owner].cluster_name,
            broker_name=name,
            broker_addrs={k.broker_id: self._entries[k].broker_addr for k in keys},
        )

    def _update(
        self,
        op: Literal["put", "touch", "delete"],
        entry: BrokerEntry,
        ttl_left: float,
        reason: str = "",
    ) -> RouteUpdate:
        self.seq += 1
        return RouteUpdate(seq=self.seq, op=op, entry=entry, ttl_left=ttl_left, reason=reason)

    def _put(self, entry: BrokerEntry, deadline: float) -> None:
        key = entry.key
        old = self._entries.get(key)
        if old is not None:
            for topic in old.topics.keys() - entry.topics.keys():
                self._unindex_topic(topic, key)
        self._entries[key] = entry
        self._deadlines[key] = deadline
        for topic in entry.topics:
            self._by_topic.setdefault(topic, set()).add(key)
        self._by_name.setdefault(key.broker_name, set()).add(key)

    def _remove(self, key: BrokerKey) -> None:
        entry = self._entries.pop(key)
        del self._deadlines[key]
        for topic in entry.topics:
            self._unindex_topic(topic, key)
        names = self._by_name[key.broker_name]
        names.discard(key)
        if not names:
            del self._by_name[key.broker_name]

    def _unindex_topic(self, topic: str, key: BrokerKey) -> None:
        keys = self._by_topic[topic]
        keys.discard(key)
        if not keys:
            del self._by_topic[topic]
