"""Message queries with real processes (SPEC M19, docs/PROTOCOL.md 14.5).

``Admin.query_by_id`` (VIEW_MESSAGE_BY_ID on every broker of the topic),
``query_by_key`` (QUERY_MESSAGE on every broker, merged newest first) and
``query_by_time`` (SEARCH_OFFSET_BY_TIMESTAMP and pulls), and the ``fabric admin
message id|key|time`` commands, against two brokers so that merging is exercised.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric import Message, Producer
from fabric.admin import Admin
from fabric.errors import OffsetNotFoundError
from fabric.testing import ServerProcess, run_broker, write_broker_config
from tests.integration import cluster
from tests.integration.cluster import wait_registered


@pytest.fixture
def brokers(nameserver: ServerProcess, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two registered brokers, broker-a and broker-b."""
    started: list[ServerProcess] = []
    try:
        for name in ("broker-a", "broker-b"):
            config = write_broker_config(tmp_path / f"{name}.json")
            started.append(
                run_broker(
                    tmp_path / name,
                    nameserver.endpoint,
                    name=name,
                    config=config,
                    heartbeat_interval=1.0,
                )
            )
        wait_registered(nameserver, {"broker-a", "broker-b"})
        yield started
    finally:
        for server in started:
            server.stop()
    for server in started:
        assert not server.error_lines(), "\n".join(server.log_lines())


@pytest.fixture
def admin(nameserver: ServerProcess, brokers: list[ServerProcess]) -> Iterator[Admin]:
    with Admin(nameserver.endpoint, timeout=5.0) as a:
        yield a


@pytest.fixture
def producer(nameserver: ServerProcess, brokers: list[ServerProcess]) -> Iterator[Producer]:
    with Producer("pg", nameservers=nameserver.endpoint) as p:
        yield p


def make_topic(admin: Admin, nameserver: ServerProcess, topic: str, queues: int) -> None:
    """Create ``topic`` and wait until both brokers serve it."""
    cluster.make_topic(admin, nameserver, topic, queues, lambda route: len(route.queue_datas) == 2)


def cli(nameserver: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fabric", "admin", "--nameserver", nameserver.endpoint]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_query_by_id_key_and_time(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Orders", 2)
    before = int(time.time() * 1000) - 1
    sent = [
        producer.send(Message("Orders", f"order {i}".encode(), tags="New", keys=[f"o{i}", "all"]))
        for i in range(12)
    ]
    after = int(time.time() * 1000) + 1
    assert len({r.queue.broker_name for r in sent}) == 2, "both brokers hold messages"
    time.sleep(0.05)
    later = producer.send(Message("Orders", b"later", keys=["all"]))

    for i, result in enumerate(sent):
        msg = admin.query_by_id("Orders", result.msg_id)
        assert (msg.msg_id, msg.body, msg.topic) == (result.msg_id, f"order {i}".encode(), "Orders")
        assert (msg.queue, msg.queue_offset) == (result.queue, result.queue_offset)
    with pytest.raises(OffsetNotFoundError):
        admin.query_by_id("Orders", "0123456789ABCDEF0123456789ABCDEF")

    [one] = admin.query_by_key("Orders", "o5")
    assert one.msg_id == sent[5].msg_id and one.keys == ["o5", "all"]
    every = admin.query_by_key("Orders", "all")
    assert every[0].msg_id == later.msg_id, "newest first"
    assert {x.msg_id for x in every} == {r.msg_id for r in [*sent, later]}
    stamps = [x.store_timestamp for x in every]
    assert stamps == sorted(stamps, reverse=True)
    assert len(admin.query_by_key("Orders", "all", max_num=3)) == 3
    assert admin.query_by_key("Orders", "nothing") == []
    bounded = admin.query_by_key("Orders", "all", begin=before, end=after)
    assert {x.msg_id for x in bounded} == {r.msg_id for r in sent}

    window = admin.query_by_time("Orders", before, after, max_num=100)
    assert {x.msg_id for x in window} == {r.msg_id for r in sent}
    stamps = [x.store_timestamp for x in window]
    assert stamps == sorted(stamps), "oldest first"
    assert len(admin.query_by_time("Orders", before, after, max_num=5)) == 5
    assert admin.query_by_time("Orders", before - 60_000, before - 30_000) == []
    with pytest.raises(ValueError, match="end is before begin"):
        admin.query_by_time("Orders", after, before)


def test_message_commands_print_one_line_per_message(
    nameserver: ServerProcess, admin: Admin, producer: Producer
) -> None:
    make_topic(admin, nameserver, "Cli", 1)
    before = int(time.time() * 1000) - 1
    first = producer.send(Message("Cli", b"first body", tags="T1", keys=["k1", "both"]))
    second = producer.send(Message("Cli", b"\xff\x00binary", keys=["both"]))
    after = int(time.time() * 1000) + 1

    out = cli(nameserver, "message", "id", "Cli", first.msg_id)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith(f"{first.msg_id} Cli queue={first.queue} offset={first.queue_offset} ")
    assert "stored=" in line and "tags=T1 keys=k1,both body='first body'" in line

    out = cli(nameserver, "message", "key", "Cli", "both", "--max", "10")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(second.msg_id) and lines[0].endswith("body=<8 bytes>")
    assert lines[1].startswith(first.msg_id)
    assert lines[2] == "2 message(s) of Cli with key 'both'"

    out = cli(nameserver, "message", "time", "Cli", "--begin", str(before), "--end", str(after))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [x.split()[0] for x in lines[:2]] == [first.msg_id, second.msg_id]
    assert lines[2].startswith("2 message(s) of Cli stored between")
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(before / 1000 - 5))
    out = cli(nameserver, "message", "time", "Cli", "--begin", iso, "--end", str(after))
    assert out.returncode == 0 and "2 message(s)" in out.stdout

    # Errors: exit 1, one line on stderr.
    out = cli(nameserver, "message", "id", "Cli", "NOSUCHID")
    assert out.returncode == 1 and "QUERY_NOT_FOUND" in out.stderr
    out = cli(nameserver, "message", "key", "NoSuchTopic", "k")
    assert out.returncode == 1 and "NO_ROUTE" in out.stderr
    out = cli(nameserver, "message", "time", "Cli", "--begin", "yesterday", "--end", "1")
    assert out.returncode == 1 and "begin" in out.stderr
    out = cli(nameserver, "message", "key", "bad topic!", "k")
    assert out.returncode == 1 and "INVALID_TOPIC_NAME" in out.stderr
