"""HEARTBEAT from clients: who is alive and in which producer and consumer groups.

The table is kept for admin and later features (rebalance, transaction checks); a client
not heard from for ``CLIENT_EXPIRY`` seconds is forgotten (pruned lazily, on heartbeats).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

import msgspec

from fabric.errors import ProtocolError
from fabric.protocol.codes import ResponseCode
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import Empty, HeartbeatRequest

from . import BrokerContext, Outcome

__all__ = ["CLIENT_EXPIRY", "AdminProcessor", "ClientInfo"]

#: Seconds after its last heartbeat when a client is forgotten (RocketMQ: 120 s).
CLIENT_EXPIRY: Final = 120.0
_MAX_CLIENT_ID: Final = 255
_MAX_GROUPS: Final = 1024
_PRUNE_AT: Final = 1024
_EMPTY: Final = Empty()


class ClientInfo(msgspec.Struct, kw_only=True):
    """What the last heartbeat of one client said."""

    client_id: str
    producer_groups: list[str]
    consumer_groups: list[str]
    last_seen: float


class AdminProcessor:
    """Client heartbeats."""

    def __init__(self, ctx: BrokerContext) -> None:
        self._ctx = ctx
        #: client id -> its last heartbeat.
        self.clients: dict[str, ClientInfo] = {}
        self._next_prune = _PRUNE_AT

    def heartbeat(
        self, request: HeartbeatRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """HEARTBEAT: record the client and its groups."""
        b = request.body
        if not 0 < len(b.client_id) <= _MAX_CLIENT_ID:
            raise ProtocolError(f"client_id must have 1..{_MAX_CLIENT_ID} characters")
        if len(b.producer_groups) + len(b.consumer_groups) > _MAX_GROUPS:
            raise ProtocolError(f"at most {_MAX_GROUPS} groups per heartbeat")
        for group in (*b.producer_groups, *b.consumer_groups):
            self._ctx.check_group(group)
        now = time.monotonic()
        self.clients[b.client_id] = ClientInfo(
            client_id=b.client_id,
            producer_groups=b.producer_groups,
            consumer_groups=b.consumer_groups,
            last_seen=now,
        )
        if len(self.clients) >= self._next_prune:
            self._prune(now)
        return ResponseCode.SUCCESS, _EMPTY, (), ""

    def _prune(self, now: float) -> None:
        dead = [cid for cid, info in self.clients.items() if now - info.last_seen > CLIENT_EXPIRY]
        for cid in dead:
            del self.clients[cid]
        self._next_prune = max(_PRUNE_AT, 2 * len(self.clients))

    def live_clients(self) -> list[ClientInfo]:
        """Clients heard from within CLIENT_EXPIRY seconds, by id."""
        now = time.monotonic()
        return [
            self.clients[cid]
            for cid in sorted(self.clients)
            if now - self.clients[cid].last_seen <= CLIENT_EXPIRY
        ]
