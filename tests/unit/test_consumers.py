"""ConsumerManager: members by heartbeat, expiry, leave callbacks, coalesced notifications."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from broker.consumers import ConsumerManager
from broker.push import Delivery
from fabric.protocol import RequestCode, parse_reply
from fabric.protocol import messages as m
from fabric.protocol.frames import Buffer


class FakePusher:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, int, int, str]] = []

    def push(self, identity: bytes, frames: Sequence[Buffer]) -> Delivery:
        reply = parse_reply(list(frames))
        group = reply.decode(m.ConsumerGroupBody).consumer_group
        self.sent.append((identity, reply.code, reply.request_id, group))
        return Delivery.SENT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _data(*groups: str) -> dict[str, m.ConsumerData]:
    return {g: m.ConsumerData(group=g) for g in groups}


async def _settle() -> None:
    """Let the callbacks scheduled with call_soon run."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_membership_notifications_and_expiry() -> None:
    async def scenario() -> None:
        pusher = FakePusher()
        clock = Clock()
        left: list[tuple[str, frozenset[str] | None]] = []
        manager = ConsumerManager(
            asyncio.get_running_loop(),
            pusher,
            expiry=5.0,
            on_leave=lambda cid, groups: left.append((cid, groups)),
            clock=clock,
        )
        manager.heartbeat("b", b"conn-b", [], _data("G", "H"))
        manager.heartbeat("a", b"conn-a", ["P"], _data("G"))
        manager.heartbeat("p", b"conn-p", ["P"], {})  # a producer is no member
        assert manager.members("G") == ["a", "b"]
        assert manager.members("H") == ["b"]
        assert manager.identity("p") is None
        await _settle()
        # One notification per group and member, however many joined meanwhile.
        code = int(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED)
        assert sorted(pusher.sent) == [
            (b"conn-a", code, 0, "G"),
            (b"conn-b", code, 0, "G"),
            (b"conn-b", code, 0, "H"),
        ]
        pusher.sent.clear()

        # A heartbeat on another connection moves the member's notifications there.
        clock.now += 3
        manager.heartbeat("a", b"conn-a2", ["P"], _data("G"))
        assert manager.identity("a") == b"conn-a2"
        await _settle()
        assert pusher.sent == []  # no change of members, no notification

        clock.now += 2.5  # b silent for 5.5 s, a for 2.5 s
        assert manager.expire() == ["b"]
        assert left == [("b", frozenset({"G", "H"}))]
        assert manager.members("G") == ["a"]
        assert manager.groups() == ["G"]
        await _settle()
        assert pusher.sent == [(b"conn-a2", code, 0, "G")]
        assert [c.client_id for c in manager.live_clients()] == ["a", "b", "p"]

        # Unregistering some groups, then everything.
        manager.heartbeat("c", b"conn-c", [], _data("G", "H"))
        manager.unregister("c", [], ["H"])
        assert left[-1] == ("c", frozenset({"H"}))
        assert manager.members("G") == ["a", "c"]
        manager.unregister("c", [], [])
        assert left[-1] == ("c", frozenset({"G"}))
        assert manager.members("G") == ["a"]
        # Not a member: locks and streams of the groups named are freed all the same.
        manager.unregister("ghost", [], ["G"])
        assert left[-1] == ("ghost", frozenset({"G"}))
        manager.unregister("ghost", [], [])
        assert left[-1] == ("ghost", None)
        manager.close()

    asyncio.run(scenario())


def test_the_timer_expires_silent_members() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        gone: list[str] = []
        done = loop.create_future()

        def on_leave(client_id: str, groups: frozenset[str] | None) -> None:
            gone.append(client_id)
            if not done.done():
                done.set_result(None)

        manager = ConsumerManager(loop, FakePusher(), expiry=0.05, on_leave=on_leave)
        manager.heartbeat("quiet", b"q", [], _data("G"))
        started = loop.time()
        await asyncio.wait_for(done, 2.0)
        assert loop.time() - started >= 0.04
        assert manager.members("G") == []
        manager.close()
        return gone

    assert asyncio.run(scenario()) == ["quiet"]
