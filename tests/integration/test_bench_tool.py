"""fabric bench (issue 7): each workload as a subprocess, its JSON, and nothing left running.

Every run goes through ``python -m fabric bench ... --json``: stdout must hold exactly one
JSON object, the counts must match, no message may fail, the latency percentiles must
be ordered and positive, and every process the tool started (the local fabric's
NameServer and broker, worker processes) must be gone once it exited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fabric.bench.stats import BUCKETS, Histogram
from fabric.testing import run_broker, run_nameserver

COUNT = 2000
#: Seconds one bench run may take (each test stays well under 30 s).
RUN_LIMIT = 28.0


def bench(*args: str, status: int = 0) -> dict[str, Any]:
    """Run ``python -m fabric bench *args --json``; its JSON (stdout is nothing else)."""
    command = [sys.executable, "-m", "fabric", "bench", *args, "--json"]
    done = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
        check=False,
    )
    assert done.returncode == status, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["exit_status"] == status
    return result


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def started_pids(result: dict[str, Any]) -> list[int]:
    """The processes the tool reported: local servers and worker processes."""
    pids = [pid for pids in result["workers"].values() for pid in pids if pid]
    local = result["local"]
    if local is not None:
        pids += [local["nameserver_pid"], local["broker_pid"]]
    return pids


def check_latency(latency: dict[str, float] | None) -> None:
    assert latency is not None
    assert latency["count"] > 0
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p999"]
    assert latency["p999"] <= latency["max"]
    assert latency["min"] <= latency["p50"]


def check_common(result: dict[str, Any], workload: str) -> None:
    assert result["workload"] == workload
    assert result["ok"] is True
    assert result["failures"] == 0
    assert result["errors"] == []
    assert result["machine"]["cpus"] >= 1
    assert result["machine"]["pyzmq"]
    assert result["topic"]["created"] is True
    assert result["topic"]["name"].startswith("BenchTopic-")
    pids = started_pids(result)
    still = [pid for pid in pids if alive(pid)]
    assert not still, f"left running: {still} of {pids}"


def check_local(result: dict[str, Any], flush: str) -> None:
    local = result["local"]
    assert local["flush"] == flush
    assert local["nameserver_pid"] > 0 and local["broker_pid"] > 0
    assert not os.path.exists(local["data"]), "the local fabric's data was not removed"
    assert result["server_errors"] == []


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_producer_on_a_local_fabric(mode: str) -> None:
    result = bench("producer", "--start-local", "async", "--mode", mode, "--count", str(COUNT))
    check_common(result, "producer")
    check_local(result, "async")
    producer = result["results"]["producer"]
    assert producer["mode"] == mode
    assert producer["messages"] == COUNT
    assert producer["bytes"] == COUNT * 1024
    assert producer["failures"] == 0
    assert producer["msgs_per_s"] > 0 and producer["mb_per_s"] > 0
    check_latency(producer["latency_us"])
    assert producer["latency_us"]["count"] == COUNT


def test_latency_on_a_sync_flush_fabric() -> None:
    result = bench("latency", "--start-local", "sync", "--count", str(COUNT), "--size", "256")
    check_common(result, "latency")
    check_local(result, "sync")
    producer = result["results"]["producer"]
    assert producer["mode"] == "sync" and producer["workers"] == 1
    assert producer["messages"] == COUNT
    assert producer["bytes"] == COUNT * 256
    check_latency(producer["latency_us"])
    assert "one message in flight" in producer["latency"]


@pytest.mark.parametrize("api", ["push", "pull"])
def test_consumer_with_preload(api: str) -> None:
    extra = ["--pull"] if api == "pull" else []
    result = bench(
        "consumer", "--start-local", "async", "--preload", str(COUNT), "--count", str(COUNT),
        *extra,
    )  # fmt: skip
    check_common(result, "consumer")
    check_local(result, "async")
    assert result["preload"] == {"messages": COUNT, "failures": 0}
    consumer = result["results"]["consumer"]
    assert consumer["api"] == api
    assert consumer["messages"] == COUNT
    assert consumer["missing"] == 0 and consumer["duplicates"] == 0 and consumer["foreign"] == 0
    assert "1 ms resolution" in consumer["latency"]
    check_latency(consumer["latency_us"])


def test_e2e_counts_every_message() -> None:
    result = bench("e2e", "--start-local", "async", "--count", str(COUNT))
    check_common(result, "e2e")
    check_local(result, "async")
    results = result["results"]
    assert results["producer"]["messages"] == COUNT
    assert results["consumer"]["messages"] == COUNT
    e2e = results["e2e"]
    assert e2e["expected"] == COUNT and e2e["consumed_unique"] == COUNT
    assert e2e["lost"] == 0 and e2e["duplicates"] == 0 and e2e["unexpected"] == 0
    assert e2e["lost_ids"] == [] and e2e["duplicate_ids"] == []
    assert e2e["msgs_per_s"] > 0
    check_latency(e2e["latency_us"])
    check_latency(results["producer"]["latency_us"])


def test_bad_argument_exits_2_with_a_clear_message() -> None:
    command = [sys.executable, "-m", "fabric", "bench", "producer", "--size", "8", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_LIMIT, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "argument --size: must be at least 20 bytes" in done.stderr


def test_against_a_running_fabric_with_worker_processes(tmp_path: Path) -> None:
    with (
        run_nameserver(log_level="WARNING") as ns,
        run_broker(tmp_path / "broker", ns.endpoint, log_level="WARNING") as broker,
    ):
        result = bench(
            "e2e", "--nameserver", ns.endpoint, "--count", str(COUNT),
            "--producers", "2", "--consumers", "2", "--mode", "batch", "--batch-size", "32",
        )  # fmt: skip
        assert broker.alive and ns.alive  # the tool stops only what it started
    assert ns.error_lines() == [] and broker.error_lines() == []
    check_common(result, "e2e")
    assert result["local"] is None
    assert result["nameserver"] == ns.endpoint
    workers = result["workers"]
    assert len(workers["producer"]) == 2 and len(workers["consumer"]) == 2
    assert all(pid for pids in workers.values() for pid in pids)  # processes, not threads
    results = result["results"]
    assert results["producer"]["messages"] == COUNT
    assert results["e2e"]["lost"] == 0 and results["e2e"]["duplicates"] == 0
    assert results["e2e"]["consumed_unique"] == COUNT


def test_histogram_memory_is_fixed_and_percentiles_close() -> None:
    hist = Histogram()
    for value in range(1, 200_001):
        hist.record(value)
    assert len(hist.counts) == BUCKETS
    summary = hist.summary()
    assert summary["count"] == 200_000 and summary["min"] == 1 and summary["max"] == 200_000
    for name, exact in (("p50", 100_000), ("p90", 180_000), ("p99", 198_000)):
        assert exact <= summary[name] <= exact * 1.016, (name, summary[name])
    assert summary["p999"] <= summary["max"]
