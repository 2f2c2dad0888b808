"""``fabric up``: one command starts a NameServer and a broker, serves, and stops cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.store import decode_message
from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.testing import LOOPBACK, ServerProcess, spawn
from fabric.transport import BlockingConnection


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc); [] where that is not available."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still "exists"; its state letter says it is dead.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.fixture
def up(tmp_path: Path) -> Iterator[ServerProcess]:
    process = spawn(
        [
            "up",
            "--data",
            str(tmp_path / "fabric-data"),
            "--nameserver-bind",
            LOOPBACK,
            "--broker-bind",
            LOOPBACK,
            "--flush",
            "sync",
        ],
        ready=["nameserver", "broker"],
        ready_timeout=30.0,
    )
    children = _children(process.pid)
    try:
        yield process
    finally:
        process.stop()
        for pid in children:  # never leave a server behind, whatever happened
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        # `fabric up` uses the production store defaults (1 GiB segments): do not keep them.
        shutil.rmtree(tmp_path / "fabric-data", ignore_errors=True)


def test_up_serves_and_stops_cleanly(up: ServerProcess, tmp_path: Path) -> None:
    lines = up.stdout_lines()
    assert lines[0] == f"READY nameserver {up.endpoints['nameserver']}"
    assert lines[1] == f"READY broker {up.endpoints['broker']}"
    for endpoint in up.endpoints.values():
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
    children = _children(up.pid)
    assert len(children) == 2, children

    with BlockingConnection(up.endpoints["broker"], timeout=5.0) as broker:
        header = m.SendMessageBody(producer_group="pg", topic="UpTopic", queue_id=0, tags="t")
        sent = broker.call(RequestCode.SEND_MESSAGE, header, m.SendReply, [b"hello up"])
        body = m.PullMessageBody(consumer_group="cg", topic="UpTopic", queue_id=0, queue_offset=0)
        reply = broker.request(RequestCode.PULL_MESSAGE, body)
        assert reply.code == ResponseCode.SUCCESS, reply
        assert [decode_message(bytes(f)).body for f in reply.frames] == [b"hello up"]
        assert sent.queue_offset == 0

    with BlockingConnection(up.endpoints["nameserver"], timeout=5.0) as ns:
        deadline = time.monotonic() + 10.0
        while True:
            route = ns.request(
                RequestCode.GET_ROUTE_INFO_BY_TOPIC, m.GetRouteInfoBody(topic="UpTopic")
            )
            if route.ok or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # bounded retry: the broker registers the new topic right away
        assert route.ok, route
        data = route.decode(m.TopicRouteData)
        assert data.broker_datas[0].broker_addrs == {0: up.endpoints["broker"]}

    up.send_signal(signal.SIGTERM)
    assert up.wait(20.0) == 0
    assert all(_gone(pid) for pid in children)
    assert (tmp_path / "fabric-data" / "broker" / "store" / "commitlog").is_dir()
    assert not up.error_lines(), "\n".join(up.log_lines())


def test_up_exits_nonzero_when_a_child_dies(up: ServerProcess) -> None:
    children = _children(up.pid)
    brokers = [pid for pid in children if " broker " in _cmdline(pid)]
    if not brokers:
        pytest.skip("cannot find the broker child process (no /proc)")
    os.kill(brokers[0], signal.SIGKILL)
    assert up.wait(20.0) != 0
    assert all(_gone(pid) for pid in children)
    assert any("broker exited" in line for line in up.log_lines())
