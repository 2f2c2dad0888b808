"""Storage-engine benchmark: 1 KiB puts per second and MB/s, against a plain mmap baseline.

Usage:
    python bench/store_bench.py [--count N] [--seconds S] [--size BYTES] [--dir DIR] [--json]

Measures, in one run and on the same disk:
  * baseline: the plainest Python loop that appends a (length, CRC32) header plus the
    body into an mmap (no store, no queues, no index);
  * ASYNC_FLUSH: ``MessageStore.put`` with ConsumeQueue and Index dispatch (every
    message carries a unique id, as every producer's message does);
  * SYNC_FLUSH: 1, 16 and 64 writer threads each calling ``put`` (acknowledged after
    fsync; group commit lets one fsync cover many writers).
Prints a table, or with ``--json`` one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from broker.store import FlushMode, MessageStore, PutMessage, PutStatus, StoreConfig

GIB = 1 << 30


def baseline(directory: str, count: int, body: bytes) -> dict[str, float]:
    """Append (len, crc32) + body into a fresh mmap in a plain loop; flush once at the end."""
    path = os.path.join(directory, "baseline")
    record = 8 + len(body)
    size = (count * record // 4096 + 1) * 4096
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, size)
    mm = mmap.mmap(fd, size)
    pack_into = struct.Struct(">II").pack_into
    crc32 = zlib.crc32
    n = len(body)
    pos = 0
    began = time.perf_counter()
    for _ in range(count):
        pack_into(mm, pos, n, crc32(body))
        mm[pos + 8 : pos + 8 + n] = body
        pos += record
    elapsed = time.perf_counter() - began
    mm.close()
    os.close(fd)
    os.unlink(path)
    return _figures(count, elapsed, len(body))


def _figures(count: int, elapsed: float, size: int) -> dict[str, float]:
    return {
        "puts": count,
        "seconds": round(elapsed, 4),
        "puts_per_s": round(count / elapsed, 1),
        "mb_per_s": round(count * size / elapsed / 1e6, 1),
    }


def async_puts(directory: str, count: int, body: bytes, batch: int) -> dict[str, float]:
    """``count`` puts (or batches of ``batch``) under ASYNC_FLUSH, queues and index included."""
    cfg = StoreConfig(flush_mode=FlushMode.ASYNC_FLUSH, segment_size=GIB)
    msgs = [
        PutMessage(topic="BenchTopic", queue_id=i % 8, body=body, tags="T", uniq_id=f"U{i:012d}")
        for i in range(count)
    ]
    with MessageStore(os.path.join(directory, f"async{batch}"), cfg) as store:
        began = time.perf_counter()
        if batch <= 1:
            put = store.put
            for m in msgs:
                r = put(m)
            assert r.status is PutStatus.PUT_OK, r
        else:
            for i in range(0, count, batch):
                store.put_batch(msgs[i : i + batch])
        elapsed = time.perf_counter() - began
    return _figures(count, elapsed, len(body))


def sync_puts(directory: str, writers: int, seconds: float, body: bytes) -> dict[str, float]:
    """``writers`` concurrent writers putting under SYNC_FLUSH for ``seconds``.

    The writers are modelled the way the broker serves concurrent producers: one thread
    appends, and a writer's next put waits until a flush covers its previous one. The
    flush thread reports each new flushed offset once (``add_flush_listener``), which
    releases every writer that flush covered: group commit, one fsync per batch.
    """
    cfg = StoreConfig(flush_mode=FlushMode.SYNC_FLUSH, segment_size=GIB)
    cond = threading.Condition()
    state = {"flushed": 0}
    with MessageStore(os.path.join(directory, f"sync{writers}"), cfg) as store:

        def on_flush(offset: int) -> None:
            with cond:
                state["flushed"] = offset
                cond.notify()

        store.add_flush_listener(on_flush)
        flushes_before = store.stats().flushes
        pending: list[tuple[int, int]] = []  # (end offset, writer) awaiting a flush
        done = failures = 0
        seq = 0
        began = time.perf_counter()
        deadline = began + seconds
        ready = list(range(writers))  # writers whose previous put is acknowledged
        while True:
            for w in ready:
                r = store.append(
                    PutMessage(topic="BenchTopic", queue_id=w % 8, body=body, uniq_id=f"{w}-{seq}")
                )
                seq += 1
                if r.status is PutStatus.PUT_OK:
                    pending.append((r.end_offset, w))
                    store.request_flush(r.end_offset)
                else:
                    failures += 1
            ready = []
            if time.perf_counter() >= deadline:
                break
            first_end = pending[0][0]
            with cond:
                if not cond.wait_for(
                    lambda end=first_end: state["flushed"] >= end,  # type: ignore[misc]
                    timeout=5.0,
                ):
                    raise RuntimeError("flush did not complete within 5 s")
                flushed = state["flushed"]
            still = []
            for end, w in pending:
                if end <= flushed:
                    done += 1
                    ready.append(w)
                else:
                    still.append((end, w))
            pending = still
        elapsed = time.perf_counter() - began
        flushes = store.stats().flushes - flushes_before
    out = _figures(done, elapsed, len(body))
    out["writers"] = writers
    out["failures"] = failures
    out["flushes"] = flushes
    out["puts_per_flush"] = round(done / max(flushes, 1), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300_000, help="puts per async run")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each sync run")
    parser.add_argument("--size", type=int, default=1024, help="body size in bytes")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    body = os.urandom(args.size)
    scratch = tempfile.mkdtemp(prefix="store-bench-", dir=args.dir)
    runs: dict[str, Callable[[str], dict[str, float]]] = {
        "baseline": lambda d: baseline(d, args.count, body),
        "async": lambda d: async_puts(d, args.count, body, batch=1),
        "async_batch32": lambda d: async_puts(d, args.count, body, batch=32),
        "sync_1": lambda d: sync_puts(d, 1, args.seconds, body),
        "sync_16": lambda d: sync_puts(d, 16, args.seconds, body),
        "sync_64": lambda d: sync_puts(d, 64, args.seconds, body),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    try:
        for _ in range(args.repeat):
            for name, run in runs.items():
                # Each run starts with the previous one's data gone and written back, so
                # that no run pays for another's page-cache writeback.
                work = tempfile.mkdtemp(dir=scratch)
                os.sync()
                samples[name].append(run(work))
                shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results: dict[str, Any] = {"body_bytes": args.size, "count": args.count, "repeat": args.repeat}
    for name, rs in samples.items():
        median = sorted(rs, key=lambda r: r["puts_per_s"])[len(rs) // 2]
        results[name] = {**median, "all_puts_per_s": [r["puts_per_s"] for r in rs]}
    base = results["baseline"]["puts_per_s"]
    results["async_vs_baseline"] = round(results["async"]["puts_per_s"] / base, 3)
    results["async_batch32_vs_baseline"] = round(results["async_batch32"]["puts_per_s"] / base, 3)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'run':<16}{'puts/s':>12}{'MB/s':>10}  notes")
        for name, r in results.items():
            if isinstance(r, dict):
                notes = ""
                if "writers" in r:
                    notes = f"{r['puts_per_flush']} puts per fsync, {r['failures']} failures"
                print(f"{name:<16}{r['puts_per_s']:>12,.0f}{r['mb_per_s']:>10,.1f}  {notes}")
        print(
            f"ASYNC_FLUSH put / baseline: {results['async_vs_baseline']}x "
            f"(batched: {results['async_batch32_vs_baseline']}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
