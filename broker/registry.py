"""Registration with the NameServers: register, heartbeat, re-register, unregister.

One task on the broker's loop runs a round every ``interval`` seconds (and at once when
:meth:`Registry.poke` says the topics changed). A round talks to every NameServer
concurrently, so a dead one never delays the others:

* REGISTER_BROKER (all topic configs) when this NameServer has not acknowledged the
  current ``data_version`` yet: at start, after a topic change, after a failure;
* otherwise the lighter BROKER_HEARTBEAT; a BROKER_NOT_REGISTERED answer (the
  NameServer restarted or expired us) is followed by REGISTER_BROKER in the same round.

At shutdown the broker sends UNREGISTER_BROKER to each (best effort, short timeout), so
its routes disappear at once instead of at expiry. Log lines: one when a NameServer
accepts us (first time or after a failure), one when it becomes unreachable or refuses;
nothing per heartbeat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final

import zmq.asyncio
from loguru import logger

from fabric.errors import FabricError
from fabric.protocol.codes import RequestCode, ResponseCode
from fabric.protocol.messages import (
    BrokerHeartbeatBody,
    RegisterBrokerBody,
    UnregisterBrokerBody,
)
from fabric.transport import Connection

__all__ = ["Registry"]

_UNREGISTER_TIMEOUT: Final = 0.5


class Registry:
    """Keeps one broker registered with every NameServer in a list.

    Args:
        context: the zmq asyncio context of the broker's loop.
        nameservers: NameServer endpoints.
        body: builds the current REGISTER_BROKER body (topics and data_version included).
        interval: seconds between two rounds.
        timeout: seconds one request may take.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        nameservers: Sequence[str],
        body: Callable[[], RegisterBrokerBody],
        *,
        interval: float,
        timeout: float,
    ) -> None:
        self._context = context
        self.nameservers = list(dict.fromkeys(nameservers))
        self._body = body
        self.interval = interval
        self.timeout = timeout
        self._conns: dict[str, Connection] = {}
        #: NameServer -> the data_version it acknowledged (None: must register).
        self.registered: dict[str, int | None] = {ns: None for ns in self.nameservers}
        self._failing: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Called after the next round that starts (poke's ``then``).
        self._after: list[Callable[[], None]] = []
        #: Completed rounds (for tests and stats).
        self.rounds = 0
        #: Set when the first round is over (each NameServer accepted, refused or timed out).
        self.first_round = asyncio.Event()

    def start(self) -> None:
        """Connect and start the rounds (on the running loop). The first round starts now."""
        for ns in self.nameservers:
            self._conns[ns] = Connection(self._context, ns, timeout=self.timeout)
        if self.nameservers:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="registry")

    def poke(self, then: Callable[[], None] | None = None) -> None:
        """Run a round now (the topics changed); ``then`` is called on the loop once a
        round that started after this call is over (at once with no NameServer)."""
        if then is not None:
            if self._task is None:
                asyncio.get_running_loop().call_soon(then)
            else:
                self._after.append(then)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            after, self._after = self._after, []
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("registry: a registration round failed; will retry")
            for callback in after:
                try:
                    callback()
                except Exception:
                    logger.exception("registry: a callback after a round failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def round(self) -> None:
        """Register or heartbeat with every NameServer once, concurrently."""
        body = self._body()
        try:
            await asyncio.gather(*(self._one(ns, body) for ns in self.nameservers))
        finally:
            self.rounds += 1
            self.first_round.set()

    async def _one(self, ns: str, body: RegisterBrokerBody) -> None:
        conn = self._conns[ns]
        try:
            if self.registered.get(ns) == body.data_version:
                heartbeat = BrokerHeartbeatBody(
                    cluster_name=body.cluster_name,
                    broker_name=body.broker_name,
                    broker_id=body.broker_id,
                    broker_addr=body.broker_addr,
                    data_version=body.data_version,
                )
                reply = await conn.request(RequestCode.BROKER_HEARTBEAT, heartbeat)
                if reply.code == ResponseCode.SUCCESS:
                    return
                if reply.code == ResponseCode.BROKER_NOT_REGISTERED:
                    logger.info("nameserver {} does not know us (any more): registering", ns)
                else:
                    logger.warning("nameserver {} refused a heartbeat: {}", ns, reply)
            self.registered[ns] = None
            reply = await conn.request(RequestCode.REGISTER_BROKER, body)
        except FabricError as exc:
            self.registered[ns] = None
            if ns not in self._failing:
                self._failing.add(ns)
                logger.warning("nameserver {} unreachable: {}", ns, exc)
            return
        if reply.code != ResponseCode.SUCCESS:
            if ns not in self._failing:
                self._failing.add(ns)
                logger.warning("nameserver {} refused the registration: {}", ns, reply)
            return
        first = ns in self._failing or self.registered.get(ns) is None
        self._failing.discard(ns)
        self.registered[ns] = body.data_version
        logger.log(
            "INFO" if first else "DEBUG",
            "registered with nameserver {} as {}/{} at {} ({} topics, version {})",
            ns,
            body.cluster_name,
            body.broker_name,
            body.broker_addr,
            len(body.topics),
            body.data_version,
        )

    async def close(self, unregister: bool = True) -> None:
        """Stop the rounds, unregister from every NameServer (best effort), disconnect."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if unregister and self._conns:
            body = self._body()
            leave = UnregisterBrokerBody(
                cluster_name=body.cluster_name,
                broker_name=body.broker_name,
                broker_id=body.broker_id,
                broker_addr=body.broker_addr,
            )
            results = await asyncio.gather(
                *(
                    conn.request(RequestCode.UNREGISTER_BROKER, leave, timeout=_UNREGISTER_TIMEOUT)
                    for conn in self._conns.values()
                ),
                return_exceptions=True,
            )
            for ns, result in zip(self._conns, results, strict=True):
                if isinstance(result, BaseException):
                    logger.debug("nameserver {}: unregister failed: {}", ns, result)
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()
