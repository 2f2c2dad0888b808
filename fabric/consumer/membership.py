"""A push consumer's group requests: heartbeats, members, assignment and queue locks.

docs/PROTOCOL.md sections 13.2, 13.4 and 13.5. :class:`GroupMembership` sends, on the
consumer's loop, the requests that concern the group rather than one stream: HEARTBEAT
to every broker of every subscribed topic, UNREGISTER_CLIENT at shutdown,
GET_CONSUMER_LIST_BY_GROUP to learn the members, and LOCK_BATCH_MQ for ordered
consumption; :meth:`GroupMembership.assignment` turns routes and members into the queues
this consumer should own (fabric.consumer.rebalance). Failures are logged through a
:class:`LogThrottle` (one line per subject every 10 s) and never raised, except a filter
or group name a broker refuses, which the consumer's start reports. The group's retry
topic (``%RETRY%<group>``) has no route until a broker creates it on the first send-back
(docs/PROTOCOL.md 14.2): that is expected, and is not logged; each rebalance asks again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from loguru import logger

from fabric.client import ClientCore
from fabric.consumer.rebalance import allocate
from fabric.consumer.subscription import Subscription
from fabric.errors import FabricError, InvalidFilterError, InvalidNameError, NoRouteError
from fabric.message import MessageQueue
from fabric.protocol.codes import MessageModel, RequestCode
from fabric.protocol.messages import (
    ClientHeartbeatBody,
    ConsumerData,
    ConsumerGroupBody,
    ConsumerListReply,
    Empty,
    LockBatchBody,
    LockBatchReply,
    QueueRef,
    UnregisterClientBody,
)
from fabric.protocol.names import RETRY_PREFIX

__all__ = ["LOG_INTERVAL", "GroupMembership", "LogThrottle"]

#: Seconds between two log lines about one subject (a queue, a broker, a topic).
LOG_INTERVAL: Final = 10.0


class LogThrottle:
    """Warnings limited to one line per subject every ``interval`` seconds.

    Args:
        clock: the time source (the loop's ``time``).
        interval: seconds between two lines about one subject.
    """

    def __init__(self, clock: Callable[[], float], interval: float = LOG_INTERVAL) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[object, float] = {}

    def warn(self, subject: object, message: str, *args: object) -> bool:
        """Log ``message`` unless a line about ``subject`` was logged recently; True if logged."""
        now = self._clock()
        if now - self._last.get(subject, now - self._interval) < self._interval:
            return False
        self._last[subject] = now
        logger.opt(depth=1).warning(message, *args)
        return True


class GroupMembership:
    """The group-wide requests of one consumer.

    Args:
        client: routes and connections on the consumer's loop.
        group: the consumer group.
        client_id: this consumer's id.
        model: CLUSTERING or BROADCASTING.
        orderly: ordered consumption (said in heartbeats).
        allocation: the allocation strategy's name.
        throttle: where warnings go.
    """

    def __init__(
        self,
        client: ClientCore,
        group: str,
        client_id: str,
        *,
        model: MessageModel,
        orderly: bool,
        allocation: str,
        throttle: LogThrottle,
    ) -> None:
        self.client = client
        self.routes = client.routes
        self.group = group
        self.client_id = client_id
        self.model = model
        self.orderly = orderly
        self.allocation = allocation
        self.throttle = throttle
        #: Every broker a heartbeat went to (UNREGISTER_CLIENT goes to them all).
        self.brokers: set[str] = set()

    async def broker_addresses(self, topics: Iterable[str]) -> set[str]:
        """The brokers serving ``topics`` (their routes asked for when missing)."""
        found: set[str] = set()
        for topic in topics:
            if topic.startswith(RETRY_PREFIX):
                # Not asked for here (it may not exist yet): the rebalance asks for it.
                cached = self.routes.cached(topic)
                if cached is None:
                    continue
            try:
                route = await self.routes.get(topic)
            except FabricError as exc:
                self.throttle.warn(
                    ("route", topic), "consumer {}: no route for {}: {}", self.group, topic, exc
                )
                continue
            for name in sorted({q.broker_name for q in route.read_queues}):
                address = self.routes.reader(name)
                if address is not None:
                    found.add(address)
        return found

    async def heartbeat(self, subscriptions: Mapping[str, Subscription], strict: bool) -> None:
        """HEARTBEAT to every broker of the subscribed topics, concurrently.

        Raises:
            InvalidFilterError, InvalidNameError: with ``strict``, a broker refused the
                subscriptions or the group (otherwise such a refusal is logged).
        """
        data = ConsumerData(
            group=self.group,
            model=int(self.model),
            orderly=self.orderly,
            subscriptions=[s.data for s in subscriptions.values()],
        )
        body = ClientHeartbeatBody(
            client_id=self.client_id, consumer_groups=[self.group], consumers=[data]
        )
        addresses = await self.broker_addresses(list(subscriptions))
        self.brokers |= addresses
        results = await asyncio.gather(*(self._heartbeat(a, body) for a in sorted(addresses)))
        for refusal in results:
            if refusal is not None:
                if strict:
                    raise refusal
                self.throttle.warn(("refused",), "consumer {}: {}", self.group, refusal)

    async def _heartbeat(self, address: str, body: ClientHeartbeatBody) -> FabricError | None:
        try:
            await self.client.connection(address).call(RequestCode.HEARTBEAT, body, Empty)
        except (InvalidFilterError, InvalidNameError) as exc:
            return exc
        except FabricError as exc:
            self.throttle.warn(
                ("heartbeat", address),
                "consumer {}: heartbeat to {} failed: {}",
                self.group,
                address,
                exc,
            )
        return None

    async def unregister(self) -> None:
        """UNREGISTER_CLIENT at every broker a heartbeat went to (errors are ignored)."""
        body = UnregisterClientBody(client_id=self.client_id, consumer_groups=[self.group])

        async def one(address: str) -> None:
            try:
                conn = self.client.connection(address)
                await conn.call(RequestCode.UNREGISTER_CLIENT, body, Empty)
            except FabricError as exc:
                logger.debug("consumer {}: unregister at {}: {}", self.group, address, exc)

        await asyncio.gather(*(one(a) for a in sorted(self.brokers)))

    async def members(self, broker_names: Iterable[str]) -> list[str] | None:
        """The group's client ids, from the first of ``broker_names`` that answers."""
        body = ConsumerGroupBody(consumer_group=self.group)
        for name in broker_names:
            address = self.routes.reader(name)
            if address is None:
                continue
            try:
                conn = self.client.connection(address)
                reply = await conn.call(
                    RequestCode.GET_CONSUMER_LIST_BY_GROUP, body, ConsumerListReply
                )
            except FabricError as exc:
                self.throttle.warn(
                    ("members", address),
                    "consumer {}: members from {}: {}",
                    self.group,
                    address,
                    exc,
                )
                continue
            return reply.client_ids
        return None

    async def assignment(
        self, subscriptions: Mapping[str, Subscription]
    ) -> dict[str, set[MessageQueue]]:
        """Topic -> the queues this consumer should own now.

        A topic whose route or members could not be learnt, or whose brokers do not list
        this consumer even after one more heartbeat (a broker that just appeared), is
        left out: the caller keeps what it has for it.
        """
        found: dict[str, set[MessageQueue]] = {}
        for topic in list(subscriptions):
            try:
                route = await self.routes.get(topic)
            except NoRouteError as exc:
                if not topic.startswith(RETRY_PREFIX):  # created on the first send-back
                    self.throttle.warn(
                        ("route", topic), "consumer {}: no route for {}: {}", self.group, topic, exc
                    )
                continue
            except FabricError as exc:
                self.throttle.warn(
                    ("route", topic), "consumer {}: no route for {}: {}", self.group, topic, exc
                )
                continue
            queues = route.read_queues
            if self.model == MessageModel.BROADCASTING:
                found[topic] = set(queues)
                continue
            names = sorted({q.broker_name for q in queues})
            ids = await self.members(names)
            if ids is not None and self.client_id not in ids:
                await self.heartbeat(subscriptions, strict=False)
                ids = await self.members(names)
            if ids is None:
                continue
            if self.client_id not in ids:
                self.throttle.warn(
                    ("absent", topic),
                    "consumer {}: {} is not yet a member at the brokers of {}",
                    self.group,
                    self.client_id,
                    topic,
                )
                continue
            found[topic] = set(allocate(self.allocation, self.client_id, ids, queues))
        return found

    async def lock(
        self, queues: Iterable[MessageQueue]
    ) -> tuple[set[MessageQueue], set[MessageQueue]]:
        """LOCK_BATCH_MQ ``queues``, one request per broker.

        Returns:
            The queues this consumer now holds, and those whose broker answered (a queue
            answered and not held is held by another member).
        """
        by_address: dict[str, list[MessageQueue]] = {}
        for mq in queues:
            address = self.routes.reader(mq.broker_name)
            if address is not None:
                by_address.setdefault(address, []).append(mq)
        held: set[MessageQueue] = set()
        answered: set[MessageQueue] = set()
        for address, mqs in by_address.items():
            body = LockBatchBody(
                consumer_group=self.group,
                client_id=self.client_id,
                queues=[QueueRef(topic=q.topic, queue_id=q.queue_id) for q in mqs],
            )
            try:
                conn = self.client.connection(address)
                reply = await conn.call(RequestCode.LOCK_BATCH_MQ, body, LockBatchReply)
            except FabricError as exc:
                self.throttle.warn(
                    ("lock", address), "consumer {}: lock at {}: {}", self.group, address, exc
                )
                continue
            locked = {(r.topic, r.queue_id) for r in reply.locked}
            answered.update(mqs)
            held.update(q for q in mqs if (q.topic, q.queue_id) in locked)
        return held, answered
