"""Every example runs as a script against a real NameServer and broker, and exits 0 (SPEC I4)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric.testing import ServerProcess, run_broker, run_nameserver

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def fabric_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One NameServer and one broker for the module; the NameServer endpoint."""
    ns: ServerProcess = run_nameserver()
    broker: ServerProcess | None = None
    try:
        broker = run_broker(
            tmp_path_factory.mktemp("examples-broker"), ns.endpoint, heartbeat_interval=1.0
        )
        yield ns.endpoint
    finally:
        if broker is not None:
            broker.stop()
        ns.stop()


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>`` as a script; return its stdout, failing on a non-zero exit."""
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_every_example_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {
        "send_sync.py",
        "send_async.py",
        "send_oneway.py",
        "send_batch.py",
        "send_ordered.py",
        "pull_consumer.py",
        "push_consumer.py",
        "broadcasting_consumer.py",
        "ordered_consumer.py",
        "tag_filter.py",
        "sql_filter.py",
        "delayed_message.py",
        "timed_message.py",
        "transaction.py",
        "retry_dead_letter.py",
        "query_message.py",
    }


def test_send_sync(fabric_endpoint: str) -> None:
    out = run_example("send_sync.py", "--nameserver", fabric_endpoint, "--topic", "ExSync")
    assert out.count("sent ") == 10


def test_send_async(fabric_endpoint: str) -> None:
    out = run_example("send_async.py", "--nameserver", fabric_endpoint, "--topic", "ExAsync")
    assert "100 messages acknowledged; 100 callbacks ran" in out


def test_send_oneway_then_pull(fabric_endpoint: str) -> None:
    out = run_example("send_oneway.py", "--nameserver", fabric_endpoint, "--topic", "ExOneway")
    assert "10 oneway messages sent" in out
    out = run_example(
        "pull_consumer.py",
        "--nameserver",
        fabric_endpoint,
        "--topic",
        "ExOneway",
        "--expect",
        "10",
    )
    assert out.count("log line") == 10


def test_send_batch(fabric_endpoint: str) -> None:
    out = run_example("send_batch.py", "--nameserver", fabric_endpoint, "--topic", "ExBatch")
    assert "batch of 32 stored" in out


def test_send_ordered(fabric_endpoint: str) -> None:
    out = run_example("send_ordered.py", "--nameserver", fabric_endpoint, "--topic", "ExOrders")
    assert out.count("every step in queue") == 2


def test_pull_consumer_reads_what_was_sent_and_commits(fabric_endpoint: str) -> None:
    run_example("send_sync.py", "--nameserver", fabric_endpoint, "--topic", "ExPull")
    first = run_example(
        "pull_consumer.py", "--nameserver", fabric_endpoint, "--topic", "ExPull", "--expect", "10"
    )
    assert first.count("hello ") == 10
    # The offsets were committed: a second run of the same group finds nothing new.
    again = run_example("pull_consumer.py", "--nameserver", fabric_endpoint, "--topic", "ExPull")
    assert "read 0 messages" in again


def test_push_consumer(fabric_endpoint: str) -> None:
    args = ("--nameserver", fabric_endpoint, "--topic", "ExPush", "--count", "20")
    out = run_example("push_consumer.py", *args)
    assert out.count(": hello ") == 20
    assert "consumed 20 of 20 messages" in out
    # The group committed its offsets: a second run consumes only its own messages.
    again = run_example("push_consumer.py", *args)
    assert "consumed 20 of 20 messages (and 0 of earlier runs)" in again


def test_broadcasting_consumer(fabric_endpoint: str, tmp_path: Path) -> None:
    args = ("--nameserver", fabric_endpoint, "--topic", "ExBroadcast")
    out = run_example("broadcasting_consumer.py", *args, "--offset-dir", str(tmp_path))
    assert "instance a consumed 10 of 10 messages (and 0 of earlier runs)" in out
    assert "instance b consumed 10 of 10 messages (and 0 of earlier runs)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "example-broadcast@a.json",
        "example-broadcast@b.json",
    ]
    # Restarted, each instance carries on from its own offset file.
    out = run_example("broadcasting_consumer.py", *args, "--offset-dir", str(tmp_path))
    assert "instance a consumed 10 of 10 messages (and 0 of earlier runs)" in out
    assert "instance b consumed 10 of 10 messages (and 0 of earlier runs)" in out


def test_ordered_consumer(fabric_endpoint: str) -> None:
    out = run_example("ordered_consumer.py", "--nameserver", fabric_endpoint, "--topic", "ExOrd")
    assert out.count("created -> paid -> shipped -> delivered") == 4


def test_tag_filter(fabric_endpoint: str) -> None:
    out = run_example("tag_filter.py", "--nameserver", fabric_endpoint, "--topic", "ExTags")
    assert "received by tag: {'TagA': 5, 'TagB': 4}" in out


def test_sql_filter(fabric_endpoint: str) -> None:
    out = run_example("sql_filter.py", "--nameserver", fabric_endpoint, "--topic", "ExSql")
    assert "refused at subscribe time:" in out and "column" in out
    assert "received 3 messages, expected 3" in out


def test_retry_dead_letter(fabric_endpoint: str) -> None:
    out = run_example("retry_dead_letter.py", "--nameserver", fabric_endpoint, "--topic", "ExRetry")
    assert "'poison' delivery 1: fails" in out
    assert "'poison' delivery 2 (from the retry topic): fails" in out
    assert "dead letter: " in out and "reason='max reconsume times 1 reached'" in out
    assert "'poison' delivery 1: ok" in out, "the resent letter is a new message"
    assert "the dead letter was consumed after its resend" in out


def test_query_message(fabric_endpoint: str) -> None:
    out = run_example("query_message.py", "--nameserver", fabric_endpoint, "--topic", "ExQuery")
    assert out.count("body='order ") == 11  # 1 by id, 5 by key, 5 by time
    assert "every query found what was sent" in out


def test_delayed_message(fabric_endpoint: str) -> None:
    out = run_example("delayed_message.py", "--nameserver", fabric_endpoint, "--topic", "ExDelay")
    assert "with delay level 1, queue offset -1" in out
    assert "received after" in out  # and not before its 1 s (else the exit is 1)


def test_timed_message(fabric_endpoint: str) -> None:
    out = run_example("timed_message.py", "--nameserver", fabric_endpoint, "--topic", "ExTimed")
    assert "s after its time" in out


def test_transaction(fabric_endpoint: str) -> None:
    out = run_example("transaction.py", "--nameserver", fabric_endpoint, "--topic", "ExTx")
    assert "order paid: " in out and " COMMIT" in out
    assert "order unpaid: " in out and " ROLLBACK" in out
    assert "received: ['paid']" in out
