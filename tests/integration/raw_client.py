"""A raw DEALER client for broker tests that speak the frames themselves.

A plain module (pytest collects only ``test_*.py``): import it as
``tests.integration.raw_client``. Requests are built from the protocol Structs, and
pushes are told from replies by the PUSH flag, so the tests pin the broker, not the
client library. Every wait polls the socket with a deadline; nothing sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
import zmq

from fabric.protocol import Flag, RequestCode, ResponseCode, encode_request, parse_reply
from fabric.protocol.frames import Reply

__all__ = ["PUSH_FLAGS", "RawClient"]

T = TypeVar("T")

#: Flags of every push: RESPONSE | PUSH.
PUSH_FLAGS = int(Flag.RESPONSE | Flag.PUSH)


class RawClient:
    """A DEALER that sends requests and keeps replies and pushes apart (by the PUSH flag)."""

    def __init__(self, endpoint: str, rcvhwm: int | None = None) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndtimeo = 5000
        if rcvhwm is not None:
            self.sock.rcvhwm = rcvhwm
            self.sock.rcvbuf = 4096
        self.sock.connect(endpoint)
        self.next_id = 0
        self.replies: dict[int, Reply] = {}
        self.pushes: list[Reply] = []

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def send(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        frames: list[bytes] | None = None,
        *,
        oneway: bool = False,
    ) -> int:
        self.next_id += 1
        flags = int(Flag.ONEWAY) if oneway else 0
        self.sock.send_multipart(
            encode_request(code, self.next_id, body, frames or [], flags=flags)
        )
        return self.next_id

    def _receive(self, timeout: float) -> bool:
        """Read one message within ``timeout`` seconds; False when none came."""
        if not self.sock.poll(max(0, int(timeout * 1000))):
            return False
        reply = parse_reply(self.sock.recv_multipart())
        if reply.flags & Flag.PUSH:
            assert reply.flags == PUSH_FLAGS, reply.flags
            self.pushes.append(reply)
        else:
            self.replies[reply.request_id] = reply
        return True

    def request(
        self,
        code: RequestCode,
        body: msgspec.Struct,
        frames: list[bytes] | None = None,
        timeout: float = 5.0,
    ) -> Reply:
        return self.reply_to(self.send(code, body, frames), timeout)

    def reply_to(self, rid: int, timeout: float = 5.0) -> Reply:
        """The reply to request ``rid`` (pushes arriving meanwhile are kept)."""
        deadline = time.monotonic() + timeout
        while rid not in self.replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no reply to request {rid} within {timeout}s")
            self._receive(remaining)
        return self.replies.pop(rid)

    def call(self, code: RequestCode, body: msgspec.Struct, cls: type[T]) -> T:
        reply = self.request(code, body)
        assert reply.code == ResponseCode.SUCCESS, reply
        return reply.decode(cls)

    def take(
        self,
        predicate: Callable[[Reply], bool],
        timeout: float,
        tick: Callable[[], object] | None = None,
    ) -> Reply | None:
        """The first push (buffered or arriving within ``timeout``) that satisfies ``predicate``.

        ``tick`` runs every 0.25 s meanwhile (heartbeats that keep clients alive).
        """
        deadline = time.monotonic() + timeout
        next_tick = time.monotonic()
        while True:
            for i, push in enumerate(self.pushes):
                if predicate(push):
                    return self.pushes.pop(i)
            now = time.monotonic()
            if now >= deadline:
                return None
            if tick is not None and now >= next_tick:
                tick()
                next_tick = now + 0.25
            self._receive(min(deadline, next_tick if tick else deadline) - now)
