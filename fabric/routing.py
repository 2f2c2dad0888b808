"""The client's route cache: topic routes from the NameServers, refreshed, with NameServer failover.

A client asks a NameServer GET_ROUTE_INFO_BY_TOPIC before it uses a topic, then again
every ``refresh_interval`` seconds (30 s, RocketMQ's ``pollNameServerInterval``) and
soon after a failure (SPEC C3). :class:`NameServerClient` talks to one NameServer at a
time and moves on to the next one of its list when that one does not answer (SPEC C2);
it starts at a random one so that clients spread over the list.

A topic no NameServer knows yet may still be sent to when brokers create topics on first
use (auto-create, on by default): :meth:`RouteCache.get` with ``provisional=True``
answers NO_ROUTE with a *provisional* route, queue 0 of every live master of the
cluster (GET_CLUSTER_INFO), re-asked after ``provisional_ttl`` seconds until the real
route appears (docs/PROTOCOL.md section 11).

Everything here runs on the loop that owns the connections (fabric.iothread).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Final, TypeVar

import msgspec
import zmq.asyncio
from loguru import logger

from fabric.errors import (
    ConnectionClosedError,
    FabricError,
    InvalidNameError,
    NoRouteError,
    TransportError,
)
from fabric.message import MessageQueue
from fabric.protocol.codes import Perm, RequestCode, ResponseCode
from fabric.protocol.messages import (
    ClusterInfo,
    Empty,
    GetRouteInfoBody,
    TopicList,
    TopicRouteData,
)
from fabric.protocol.names import check_topic
from fabric.transport import DEFAULT_TIMEOUT, Connection

__all__ = [
    "DEFAULT_ROUTE_REFRESH",
    "NameServerClient",
    "RouteCache",
    "TopicRoute",
    "parse_nameservers",
]

T = TypeVar("T")

#: Seconds between two route refreshes of a topic in use (RocketMQ 30 s).
DEFAULT_ROUTE_REFRESH: Final = 30.0
#: Seconds a provisional route (topic not known to any NameServer yet) is used before
#: the NameServers are asked again.
DEFAULT_PROVISIONAL_TTL: Final = 1.0
_MASTER: Final = 0
_WRITE: Final = int(Perm.WRITE)
_READ: Final = int(Perm.READ)


def parse_nameservers(nameservers: str | Sequence[str]) -> list[str]:
    """``"ep1;ep2"``, ``"ep1,ep2"`` or a list to a list of ZeroMQ endpoints.

    ``host:port`` without a scheme means ``tcp://host:port``.

    Raises:
        ValueError: no endpoint at all.
    """
    if isinstance(nameservers, str):
        parts = nameservers.replace(";", ",").split(",")
    else:
        parts = [str(p) for p in nameservers]
    endpoints = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        endpoints.append(part if "://" in part else f"tcp://{part}")
    if not endpoints:
        raise ValueError(f"no NameServer endpoint in {nameservers!r}")
    return endpoints


class TopicRoute(msgspec.Struct, frozen=True):
    """The queues of one topic, as the client uses them.

    Attributes:
        topic: the topic.
        write_queues: queues to send to: every writable queue of every broker name whose
            master is live, sorted by (broker name, queue id).
        read_queues: queues to pull from: every readable queue of every broker name with
            a live broker, sorted likewise.
        provisional: True when no NameServer knows the topic yet (see the module doc).
        refresh_at: loop time after which the route should be asked for again.
    """

    topic: str
    write_queues: list[MessageQueue]
    read_queues: list[MessageQueue]
    provisional: bool = False
    refresh_at: float = 0.0


def _route_from(topic: str, data: TopicRouteData, refresh_at: float) -> TopicRoute:
    addrs = {b.broker_name: b.broker_addrs for b in data.broker_datas}
    write: list[MessageQueue] = []
    read: list[MessageQueue] = []
    for q in sorted(data.queue_datas, key=lambda q: q.broker_name):
        live = addrs.get(q.broker_name) or {}
        if q.perm & _WRITE and _MASTER in live:
            write.extend(MessageQueue(topic, q.broker_name, i) for i in range(q.write_queue_nums))
        if q.perm & _READ and live:
            read.extend(MessageQueue(topic, q.broker_name, i) for i in range(q.read_queue_nums))
    return TopicRoute(topic, write, read, refresh_at=refresh_at)


class NameServerClient:
    """Requests to the NameServers, one at a time, failing over along the list.

    Args:
        context: the zmq asyncio context of the loop.
        endpoints: the NameServers.
        timeout: seconds each NameServer gets to answer one request.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        endpoints: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not endpoints:
            raise ValueError("no NameServer endpoint")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._context = context
        self._index = random.randrange(len(self.endpoints))
        self._conn: Connection | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def current(self) -> str:
        """The NameServer asked first."""
        return self.endpoints[self._index]

    async def call(self, code: RequestCode, body: msgspec.Struct, reply_type: type[T]) -> T:
        """One request, answered by the first NameServer that answers.

        Raises:
            FabricError: the error reply of a NameServer (NoRouteError, ...), or the
                TransportError of the last one tried when none answered.
        """
        last: TransportError | None = None
        for _ in range(len(self.endpoints)):
            if self._closed:
                raise ConnectionClosedError("the NameServer client is closed")
            conn = self._conn
            if conn is None or conn.closed:
                conn = self._conn = Connection(
                    self._context, self.current, timeout=self.timeout, monitor=True
                )
            try:
                return await conn.call(code, body, reply_type)
            except TransportError as exc:
                last = exc
                await self._fail_over(exc)
        assert last is not None
        raise last

    async def _fail_over(self, exc: TransportError) -> None:
        if len(self.endpoints) > 1:
            nxt = self.endpoints[(self._index + 1) % len(self.endpoints)]
            logger.warning("nameserver {} failed ({}); trying {}", self.current, exc, nxt)
        conn, self._conn = self._conn, None
        self._index = (self._index + 1) % len(self.endpoints)
        if conn is not None:
            await conn.close()

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


class RouteCache:
    """Topic routes and broker addresses, from the NameServers, kept fresh.

    Args:
        context: the zmq asyncio context of the loop.
        nameservers: the NameServer endpoints.
        timeout: seconds a NameServer gets to answer.
        refresh_interval: seconds between two refreshes of the topics in use.
        provisional_ttl: seconds a provisional route is used before asking again.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        nameservers: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        refresh_interval: float = DEFAULT_ROUTE_REFRESH,
        provisional_ttl: float = DEFAULT_PROVISIONAL_TTL,
    ) -> None:
        self.nameservers = NameServerClient(context, nameservers, timeout=timeout)
        self.refresh_interval = refresh_interval
        self.provisional_ttl = provisional_ttl
        self._loop = asyncio.get_running_loop()
        self._routes: dict[str, TopicRoute] = {}
        #: broker name -> {broker id: address}, from every route and cluster info seen
        self._brokers: dict[str, dict[int, str]] = {}
        self._fetching: dict[str, asyncio.Future[TopicRoute]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[object]] = set()

    def start(self) -> None:
        """Start the periodic refresh (call on the loop)."""
        if self._refresher is None and self.refresh_interval > 0:
            self._refresher = self._loop.create_task(self._refresh_loop(), name="fabric-routes")

    async def close(self) -> None:
        """Stop refreshing and close the NameServer connection."""
        tasks = [t for t in (self._refresher, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refresher = None
        await self.nameservers.close()

    # -- lookups ------------------------------------------------------------------------

    def cached(self, topic: str) -> TopicRoute | None:
        """The cached route of ``topic`` (None if none); starts a refresh when it is due."""
        route = self._routes.get(topic)
        if route is not None and route.refresh_at <= self._loop.time():
            self.refresh_soon(topic, provisional=route.provisional)
        return route

    async def get(self, topic: str, *, provisional: bool = False) -> TopicRoute:
        """The route of ``topic``: cached, or asked for now (one request for many callers).

        Args:
            provisional: answer NO_ROUTE with a provisional route (for sends to topics
                that brokers create on first use).

        Raises:
            NoRouteError: no NameServer knows the topic (and no provisional route).
            FabricError: the NameServers failed.
        """
        route = self._routes.get(topic)
        if route is not None:
            return route
        return await self.fetch(topic, provisional=provisional)

    async def fetch(self, topic: str, *, provisional: bool = False) -> TopicRoute:
        """Ask the NameServers for the route of ``topic`` now and cache it."""
        pending = self._fetching.get(topic)
        if pending is None:
            pending = self._loop.create_future()
            self._fetching[topic] = pending
            try:
                route = await self._fetch(topic, provisional)
            except asyncio.CancelledError:
                pending.cancel()
                raise
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved here: other waiters may not exist
                raise
            else:
                pending.set_result(route)
                return route
            finally:
                del self._fetching[topic]
        return await asyncio.shield(pending)

    async def _fetch(self, topic: str, provisional: bool) -> TopicRoute:
        problem = check_topic(topic)
        if problem is not None:
            raise InvalidNameError(problem, code=ResponseCode.INVALID_TOPIC_NAME, name=topic)
        now = self._loop.time()
        try:
            data = await self.nameservers.call(
                RequestCode.GET_ROUTE_INFO_BY_TOPIC, GetRouteInfoBody(topic=topic), TopicRouteData
            )
        except NoRouteError:
            if not provisional:
                self._forget(topic)
                raise
            route = await self._provisional(topic, now)
        else:
            for b in data.broker_datas:
                self._brokers[b.broker_name] = dict(b.broker_addrs)
            route = _route_from(topic, data, now + self.refresh_interval)
        old = self._routes.get(topic)
        self._routes[topic] = route
        if old is None or (old.write_queues, old.read_queues) != (
            route.write_queues,
            route.read_queues,
        ):
            logger.info("route of {}: {}", topic, _describe(route))
        return route

    async def _provisional(self, topic: str, now: float) -> TopicRoute:
        info = await self.cluster_info()
        masters = sorted(name for name, b in info.brokers.items() if _MASTER in b.broker_addrs)
        if not masters:
            raise NoRouteError(
                f"no route for topic {topic} and no live broker to create it",
                code=ResponseCode.NO_ROUTE,
            )
        # Queue 0 only: it exists whatever default queue count the broker creates with.
        queues = [MessageQueue(topic, name, 0) for name in masters]
        return TopicRoute(
            topic, queues, [], provisional=True, refresh_at=now + self.provisional_ttl
        )

    async def cluster_info(self) -> ClusterInfo:
        """GET_CLUSTER_INFO; also refreshes the broker addresses."""
        info = await self.nameservers.call(RequestCode.GET_CLUSTER_INFO, Empty(), ClusterInfo)
        for name, b in info.brokers.items():
            self._brokers[name] = dict(b.broker_addrs)
        return info

    async def topic_list(self) -> list[str]:
        """GET_ALL_TOPIC_LIST: every topic some live broker serves."""
        reply = await self.nameservers.call(RequestCode.GET_ALL_TOPIC_LIST, Empty(), TopicList)
        return reply.topics

    def master(self, broker_name: str) -> str | None:
        """The address of the master of ``broker_name`` (where sends go), if known."""
        return self._brokers.get(broker_name, {}).get(_MASTER)

    def reader(self, broker_name: str) -> str | None:
        """Where to pull from ``broker_name``: its master, else its lowest live slave."""
        addrs = self._brokers.get(broker_name)
        if not addrs:
            return None
        return addrs.get(_MASTER) or addrs[min(addrs)]

    async def broker_address(self, topic: str, broker_name: str, *, master: bool) -> str:
        """The address of ``broker_name``, asking for ``topic``'s route if it is not known.

        Raises:
            NoRouteError: the broker name serves no route the NameServers know.
        """
        find = self.master if master else self.reader
        addr = find(broker_name)
        if addr is None:
            try:
                await self.fetch(topic)
            except NoRouteError:
                pass
            addr = find(broker_name)
            if addr is None:
                await self.cluster_info()
                addr = find(broker_name)
        if addr is None:
            role = "master" if master else "live broker"
            raise NoRouteError(
                f"no {role} of broker {broker_name} is known", code=ResponseCode.NO_ROUTE
            )
        return addr

    # -- refreshing ---------------------------------------------------------------------

    def refresh_soon(self, topic: str, *, provisional: bool = False) -> None:
        """Ask for ``topic``'s route in the background (after a failure, or when due)."""
        if topic in self._fetching or self.nameservers.closed:
            return
        task = self._loop.create_task(self._refresh_one(topic, provisional))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refresh_one(self, topic: str, provisional: bool) -> None:
        try:
            await self.fetch(topic, provisional=provisional)
        except NoRouteError:
            pass  # _fetch forgot it; the next send asks again
        except FabricError as exc:
            logger.warning("route of {}: refresh failed: {}", topic, exc)
            self._postpone(topic)
        except Exception:
            logger.exception("route of {}: refresh failed", topic)
            self._postpone(topic)

    def _postpone(self, topic: str) -> None:
        # Keep the old route (better than none while the NameServers are away), and
        # ask again after one refresh interval rather than on every use.
        route = self._routes.get(topic)
        if route is not None:
            self._routes[topic] = msgspec.structs.replace(
                route, refresh_at=self._loop.time() + max(self.provisional_ttl, 1.0)
            )

    def _forget(self, topic: str) -> None:
        if self._routes.pop(topic, None) is not None:
            logger.info("route of {}: gone", topic)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                for topic, route in list(self._routes.items()):
                    await self._refresh_one(topic, route.provisional)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("route refresh failed")


def _describe(route: TopicRoute) -> str:
    counts: dict[str, list[int]] = {}
    for q in route.write_queues:
        counts.setdefault(q.broker_name, [0, 0])[0] += 1
    for q in route.read_queues:
        counts.setdefault(q.broker_name, [0, 0])[1] += 1
    parts = [f"{name} w{w}/r{r}" for name, (w, r) in sorted(counts.items())]
    text = ", ".join(parts) or "no queues"
    return f"{text} (provisional)" if route.provisional else text
