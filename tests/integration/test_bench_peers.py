"""bench/peers: a tiny run of the raw ZeroMQ and fabric parts (no Debian peers needed).

Checks the shape of the JSON and of the Markdown table, that every run's counts were
checked, that a count or byte mismatch fails loudly, and that nothing is left running.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.peers import cli
from bench.peers.common import (
    CountMismatchError,
    Job,
    check_counts,
    workers,
)

ZMQ_ROWS = ["zmq_push_raw", "zmq_push_msgspec", "zmq_reqack_raw", "zmq_reqack_msgspec"]
FABRIC_ROWS = ["fabric_async", "fabric_async_batch", "fabric_sync", "fabric_sync_batch"]
COUNT = 300
SIZE = 256


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (zombies included: they were not reaped)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.timeout(60)
def test_quick_run_of_zmq_and_fabric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = descendants(os.getpid())
    table_file = tmp_path / "peers.md"
    argv = ["--only", "zmq,fabric", "--quick", "--runs", "1", "--count", str(COUNT)]
    argv += ["--size", str(SIZE), "--sync-samples", "50", "--sync-cap", "2"]
    argv += ["--json", "--out", str(table_file)]
    assert cli.main(argv) == 0
    results = json.loads(capsys.readouterr().out)

    assert set(results) == {"meta", "rows", "ratios"}
    assert results["meta"]["command"] == "python -m bench.peers " + " ".join(argv)
    assert results["meta"]["settings"]["count"] == COUNT
    rows = {row["key"]: row for row in results["rows"]}
    assert list(rows) == ZMQ_ROWS + FABRIC_ROWS
    measured = {key: sorted(row["cells"]) for key, row in rows.items()}
    assert measured["zmq_push_raw"] == ["e2e"]
    assert measured["zmq_reqack_msgspec"] == ["e2e", "sync", "sync_p50_us", "sync_p99_us"]
    full = ["consume", "e2e", "produce", "sync", "sync_p50_us", "sync_p99_us"]
    assert measured["fabric_async"] == measured["fabric_sync"] == full
    assert measured["fabric_sync_batch"] == ["produce"]
    for key, row in rows.items():
        assert row["durability"], key
        count = 2 * COUNT if key.startswith("zmq") else COUNT
        assert row["count"] == count
        for workload in ("produce", "consume", "e2e"):
            for run in row["cells"].get(workload, {}).get("runs", []):
                # What was checked in the run: every message and every byte.
                assert (run["messages"], run["bytes"]) == (count, count * SIZE), (key, workload)
                assert run["msgs_per_s"] > 0
        if "sync" in row["cells"]:
            (run,) = row["cells"]["sync"]["runs"]
            assert 0 < run["p50_us"] <= run["p99_us"]
            assert 1 <= run["n"] <= 50

    ratios = {r["key"]: r for r in results["ratios"]}
    assert len(ratios) == 5
    # Redis and RabbitMQ were not run: their targets are "not run", the zmq one is judged.
    assert ratios["e2e_vs_redis"]["met"] is None
    assert ratios["sync_p50_vs_rabbitmq"]["ratio"] is None
    zmq_target = ratios["sync_p50_vs_zmq"]
    assert isinstance(zmq_target["met"], bool)
    assert zmq_target["ratio"] == pytest.approx(zmq_target["fabric"] / zmq_target["peer"], 1e-2)

    table = table_file.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| System / scenario"))
    body = table[header + 2 : header + 2 + len(rows)]
    assert all(line.count(" | ") == 6 for line in body), body
    assert any(line.startswith("| Target (issue 7) |") for line in table)
    assert sum(line.endswith(("| PASS |", "| MISS |", "| not run |")) for line in table) == 5

    assert descendants(os.getpid()) - before == set()


@pytest.mark.timeout(60)
def test_count_and_byte_mismatches_fail_loudly() -> None:
    check_counts("right", 10, 10 * SIZE, 10, SIZE)
    with pytest.raises(CountMismatchError, match="9 messages"):
        check_counts("one lost", 9, 9 * SIZE, 10, SIZE)
    with pytest.raises(CountMismatchError, match="bytes"):
        check_counts("short body", 10, 10 * SIZE - 1, 10, SIZE)

    before = descendants(os.getpid())
    module = "bench.peers.zmq_raw"
    options = {"codec": "msgspec"}
    with workers("test-producer", "test-consumer") as (producer, consumer):
        # The consumer expects 50 bodies of SIZE bytes; the producer sends 49: a message
        # is missing once the consumer's 1 s runs out.
        expect = Job(params={}, dest="x", count=50, size=SIZE, timeout_s=1.0, options=options)
        consumer.submit(module, "pull_consume", expect)
        via = consumer.wait_ready(30.0)
        sent = Job(params={}, dest="x", count=49, size=SIZE, via=via, options=options)
        producer.call(module, "push_produce", sent, 30.0)
        with pytest.raises(CountMismatchError, match="49 messages"):
            consumer.result(30.0)
        # All 50 arrive, but one byte short each.
        consumer.submit(module, "pull_consume", expect)
        via = consumer.wait_ready(30.0)
        short = Job(params={}, dest="x", count=50, size=SIZE - 1, via=via, options=options)
        producer.call(module, "push_produce", short, 30.0)
        with pytest.raises(CountMismatchError, match="bytes"):
            consumer.result(30.0)
    assert descendants(os.getpid()) - before == set()
