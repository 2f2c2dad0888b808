"""The fabric runs on uvloop where installed and on asyncio's loop when told (fabric.loops)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from fabric import ConsumeStatus, Message, MessageExt, Producer, PullConsumer, PushConsumer, loops
from fabric.admin import Admin
from fabric.testing import run_broker, run_nameserver
from tests.integration.cluster import wait_until

WAIT_S = 20.0


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_the_environment_picks_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")  # a dependency wherever CI runs (pyproject.toml)
    monkeypatch.delenv(loops.ENV, raising=False)
    assert loops.run(_loop_module()) == "uvloop"
    monkeypatch.setenv(loops.ENV, "asyncio")
    assert loops.run(_loop_module()) == "asyncio"
    monkeypatch.setenv(loops.ENV, "uvloop")
    assert loops.run(_loop_module()) == "uvloop"
    monkeypatch.setenv(loops.ENV, "tokio")
    with pytest.raises(ValueError, match="FABRIC_LOOP"):
        loops.new_event_loop()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_servers_and_clients_work_on_either_loop(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    # Inherited by the servers' processes and read by this process's client I/O threads.
    monkeypatch.setenv(loops.ENV, kind)
    nameserver = run_nameserver()
    broker = None
    try:
        broker = run_broker(tmp_path / "b", nameserver.endpoint, flush="sync")
        for server in (nameserver, broker):
            server.wait_for_log(f"event loop {kind}", WAIT_S)
        with Admin(nameserver.endpoint) as admin:
            admin.create_topic("Loops", queues=2)
        producer = Producer("loops_p", nameservers=nameserver.endpoint).start()
        try:
            sent = [producer.send(Message("Loops", b"sync-%d" % i)) for i in range(5)]
            futures = [producer.send_async(Message("Loops", b"async-%d" % i)) for i in range(50)]
            sent += [f.result(WAIT_S) for f in futures]
        finally:
            producer.shutdown()
        assert len({r.msg_id for r in sent}) == 55
        got: list[bytes] = []
        lock = threading.Lock()

        def listener(msg: MessageExt) -> ConsumeStatus:
            with lock:
                got.append(msg.body)
            return ConsumeStatus.CONSUME_SUCCESS

        consumer = PushConsumer("loops_c", nameservers=nameserver.endpoint, consume_from="earliest")
        consumer.subscribe("Loops", "*", listener)
        consumer.start()
        try:
            wait_until("55 messages pushed", lambda: len(got) >= 55, WAIT_S)
        finally:
            consumer.shutdown()
        expected = [b"sync-%d" % i for i in range(5)] + [b"async-%d" % i for i in range(50)]
        assert sorted(got) == sorted(expected)
        checker = PullConsumer("loops_c", nameservers=nameserver.endpoint).start()
        try:
            assert sum(checker.committed(mq) for mq in checker.queues("Loops")) == 55
        finally:
            checker.shutdown()
    finally:
        if broker is not None:
            broker.stop()
        nameserver.stop()
