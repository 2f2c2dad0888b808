"""Redis Streams (Debian's redis-server, redis-py): AOF everysec, consumer group.

Server: ``redis-server`` started here on 127.0.0.1 and a free port, in a temporary
directory, ``appendonly yes``, ``appendfsync everysec``, no RDB snapshots; stopped by its
PID. Workloads (peers-bench.md):

* produce: XADD pipelined 500 at a time (``transaction=False``); an ack is the reply.
* consume: XREADGROUP COUNT 500 (BLOCK 1000 ms), the XACK of each batch pipelined with the
  next XREADGROUP, a final XACK; then XPENDING must be 0.
* sync latency: one XADD at a time.

Durability: the reply comes before the fsync, which runs once a second; up to about a
second of acknowledged writes can be lost on a crash.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final

import redis

from bench.peers.common import (
    BenchError,
    Group,
    Job,
    Outcome,
    Ready,
    check_counts,
    check_equal,
    debian_version,
    free_port,
    missing_binary,
    payload,
    python_version_of,
    serving,
    single_row,
    time_round_trips,
)

MODULE: Final = __name__
BINARY: Final = "redis-server"
PIPELINE: Final = 500
READ_COUNT: Final = 500
GROUP: Final = "peers"
FIELD: Final = b"d"


@contextlib.contextmanager
def server(scratch: Path) -> Iterator[Mapping[str, Any]]:
    scratch.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        BINARY,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(scratch),
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--logfile", "",
        "--supervised", "no",
    ]  # fmt: skip
    with serving("redis-server", args, scratch / "redis.log", lambda: bool(_client(port).ping())):
        appendonly = _client(port).config_get("appendonly").get("appendonly")
        if appendonly != "yes":
            raise BenchError(f"redis-server runs with appendonly={appendonly}")
        yield {"host": "127.0.0.1", "port": port}


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=30)


def _connect(job: Job) -> redis.Redis:
    return _client(int(job.params["port"]))


def prepare(job: Job, ready: Ready) -> Outcome:
    _connect(job).delete(job.dest)
    return Outcome()


def cleanup(job: Job, ready: Ready) -> Outcome:
    _connect(job).delete(job.dest)
    return Outcome()


def produce(job: Job, ready: Ready) -> Outcome:
    """XADD ``job.count`` entries, PIPELINE per round trip."""
    r = _connect(job)
    body = payload(job.size)
    fields = {FIELD: body}
    out = Outcome()
    acked = 0
    r.ping()  # connected before the clock starts
    pipe = r.pipeline(transaction=False)
    out.first = time.monotonic()
    left = job.count
    while left > 0:
        n = min(PIPELINE, left)
        for _ in range(n):
            pipe.xadd(job.dest, fields)  # type: ignore[arg-type]
        ids = pipe.execute()
        acked += sum(1 for i in ids if isinstance(i, bytes))
        left -= n
    out.last = time.monotonic()
    check_equal("XADD ids returned", acked, job.count)
    out.messages = int(r.xlen(job.dest))
    out.bytes = out.messages * len(body)
    check_counts("stream length after XADD", out.messages, out.bytes, job.count, job.size)
    return out


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for entries in reply.values() for e in entries[0]]
    return [e for _, entries in reply for e in entries]


def consume(job: Job, ready: Ready) -> Outcome:
    """XREADGROUP batches of READ_COUNT, each batch's XACK pipelined with the next read."""
    r = _connect(job)
    key = job.dest
    r.xgroup_create(key, GROUP, id="0", mkstream=True)
    ready(None)
    out = Outcome()
    messages = nbytes = 0
    deadline = job.deadline()
    pipe = r.pipeline(transaction=False)
    to_ack: list[bytes] = []
    out.first = time.monotonic()
    while messages < job.count:
        if time.monotonic() > deadline:
            raise BenchError(f"{messages} of {job.count} read within {job.timeout_s}s")
        if to_ack:
            pipe.xack(key, GROUP, *to_ack)
        pipe.xreadgroup(GROUP, "c1", {key: ">"}, count=READ_COUNT, block=1000)
        replies = pipe.execute()
        entries = _entries(replies[-1])
        if to_ack:
            check_equal("XACK count", int(replies[0]), len(to_ack))
        to_ack = [entry_id for entry_id, _ in entries]
        messages += len(entries)
        nbytes += sum(len(fields[FIELD]) for _, fields in entries)
    if to_ack:
        check_equal("final XACK count", int(r.xack(key, GROUP, *to_ack)), len(to_ack))
    out.last = time.monotonic()
    out.messages, out.bytes = messages, nbytes
    check_counts("read with XREADGROUP", messages, nbytes, job.count, job.size)
    pending = r.xpending(key, GROUP)
    check_equal("entries left pending (unacked)", int(pending["pending"]), 0)
    info = {g["name"]: g for g in r.xinfo_groups(key)}
    check_equal("entries the group has not read", int(info[GROUP.encode()].get("lag") or 0), 0)
    return out


def sync_latency(job: Job, ready: Ready) -> Outcome:
    """One XADD in flight: ``job.samples`` round trips (capped at ``job.cap_s``)."""
    r = _connect(job)
    fields = {FIELD: payload(job.size)}
    out = Outcome()
    key = job.dest
    time_round_trips(job, out, partial(r.xadd, key, fields))  # type: ignore[arg-type]
    out.messages = int(r.xlen(key))
    out.bytes = out.messages * job.size
    sent = job.warmup + len(out.latencies_ns)
    check_counts("stream length", out.messages, out.bytes, sent, job.size)
    return out


def groups() -> list[Group]:
    return single_row(
        "redis",
        server,
        MODULE,
        label=(
            f"Redis Streams: XADD pipelined x{PIPELINE}, XREADGROUP {READ_COUNT} + pipelined XACK"
        ),
        durability=(
            "AOF appendfsync everysec: ack before the fsync (up to ~1 s of acked "
            "writes can be lost)"
        ),
    )


def missing() -> list[str]:
    return missing_binary(BINARY, "redis-server")


def versions() -> dict[str, str | None]:
    return {"redis-server": debian_version("redis-server"), "redis": python_version_of("redis")}
