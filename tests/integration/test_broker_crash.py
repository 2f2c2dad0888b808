"""Durability under SYNC_FLUSH: SIGKILL the broker mid-stream; every acknowledged message survives.

A client thread sends a stream of sync sends and records each SUCCESS (queue offset and
body). The broker is killed with SIGKILL while the stream runs, restarted on the same
data directory, and every acknowledged message is pulled back intact, at its offset.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from pathlib import Path

from broker.store import decode_message
from fabric.errors import FabricError
from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.testing import ServerProcess, run_broker, write_broker_config
from fabric.transport import BlockingConnection

TOPIC = "Durable"
#: Kill the broker once this many sends were acknowledged.
KILL_AFTER = 300


def _body(i: int) -> bytes:
    digest = hashlib.sha256(str(i).encode()).digest()
    return f"message {i} ".encode() + digest * (1 + i % 7)


class _Producer(threading.Thread):
    """Sync sends in a stream until the broker stops answering."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="crash-producer", daemon=True)
        self.endpoint = endpoint
        self.acked: dict[int, tuple[int, bytes]] = {}  # queue offset -> (i, body)
        self.enough = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with BlockingConnection(self.endpoint, timeout=1.0) as conn:
                for i in range(100_000):
                    header = m.SendMessageBody(
                        producer_group="pg", topic=TOPIC, queue_id=0, tags=f"t{i % 3}"
                    )
                    body = _body(i)
                    try:
                        reply = conn.request(RequestCode.SEND_MESSAGE, header, [body])
                    except FabricError:
                        return  # the broker is gone: the stream ends
                    if reply.code == ResponseCode.SUCCESS:
                        offset = reply.decode(m.SendReply).queue_offset
                        self.acked[offset] = (i, body)
                        if len(self.acked) >= KILL_AFTER:
                            self.enough.set()
        except BaseException as exc:  # reported by the test
            self.failure = exc
        finally:
            self.enough.set()


def test_acknowledged_sync_sends_survive_sigkill(tmp_path: Path) -> None:
    config = write_broker_config(tmp_path / "b.json")
    data = tmp_path / "data"
    servers: list[ServerProcess] = []
    try:
        first = run_broker(data, flush="sync", config=config)
        servers.append(first)
        producer = _Producer(first.endpoint)
        producer.start()
        assert producer.enough.wait(30.0), "the producer made no progress"
        first.process.send_signal(signal.SIGKILL)
        assert first.wait(10.0) == -signal.SIGKILL
        producer.join(10.0)
        assert not producer.is_alive()
        assert producer.failure is None, producer.failure
        acked = dict(producer.acked)
        assert len(acked) >= KILL_AFTER

        second = run_broker(data, flush="sync", config=config)
        servers.append(second)
        assert any("store recovery" in line for line in second.log_lines())
        found: dict[int, bytes] = {}
        with BlockingConnection(second.endpoint, timeout=5.0) as conn:
            offset = 0
            while True:
                body = m.PullMessageBody(
                    consumer_group="cg",
                    topic=TOPIC,
                    queue_id=0,
                    queue_offset=offset,
                    max_msgs=256,
                )
                reply = conn.request(RequestCode.PULL_MESSAGE, body)
                if reply.code == ResponseCode.PULL_NOT_FOUND:
                    break
                assert reply.code == ResponseCode.SUCCESS, reply
                for frame in reply.frames:
                    msg = decode_message(bytes(frame))
                    found[msg.queue_offset] = msg.body
                offset = reply.decode(m.PullReply).next_offset
        missing = [q for q in acked if q not in found]
        assert not missing, f"{len(missing)} acknowledged messages lost, first {missing[:5]}"
        damaged = [q for q, (_, body) in acked.items() if found[q] != body]
        assert not damaged, f"acknowledged messages damaged at offsets {damaged[:5]}"
        # The queue has no holes: offsets 0..n-1, the acknowledged ones among them.
        assert sorted(found) == list(range(len(found)))
        assert not second.error_lines(), "\n".join(second.log_lines())
    finally:
        for server in servers:
            server.stop()
