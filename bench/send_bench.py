"""Send-path benchmark: sync-send latency and async-send throughput against a real fabric.

Usage:
    python bench/send_bench.py [--count N] [--async-count N] [--size BYTES] [--repeat R]
                               [--blocks B] [--flush async|sync] [--warmup N] [--no-extra]
                               [--json]

Starts its own throwaway fabric (one ``fabric nameserver`` and one ``fabric broker``, as
``fabric up`` does, on 127.0.0.1 port 0, data in a temporary directory removed afterwards)
and measures, in one run and on the same machine:

  * raw: the ceiling, a blocking ZeroMQ DEALER -> ROUTER round trip shaped like a
    SEND_MESSAGE (frame 0: a msgspec-encoded MessagePack header ``[code, version,
    request_id, flags, body]``; frame 1: the raw body) against a ROUTER in a separate
    process that decodes the header and answers at once with a small MessagePack reply
    header; p50 and p99 over ``--count`` round trips;
  * direct: the same blocking DEALER round trips against the real broker (a real
    SEND_MESSAGE, stored): the broker's share of the send path, without the client library;
  * sync: ``Producer.send`` of the same size, p50 and p99 over ``--count`` sends, and
    its p50 over the raw p50;
  * async: ``Producer.send_async`` of ``--async-count`` messages, timed from the first
    call until every future is resolved (``Producer.flush``); messages/s, MB/s, failures;
  * oneway (unless ``--no-extra``): ``Producer.send_oneway`` of ``--async-count``
    messages, timed until the broker's queues hold all of them;
  * batch (unless ``--no-extra``): ``Producer.send_batch`` of 64-message lists, one after
    the other, ``--async-count`` messages in all.

Every part runs ``--repeat`` times (interleaved: raw, direct, sync, async, ... then again), each
with a fresh producer; within a repeat the three latency parts alternate in ``--blocks``
blocks (raw, direct, sync, raw, ...), so that noise from other work on a shared machine
falls on all three alike; medians and every sample are reported, with the CPU use of the
client (split by thread) and of the server in each timed section. Each part starts after
``os.sync()``, so that none pays for the page-cache writeback of the parts before it.
Prints a table, or with ``--json`` one JSON object with every figure. Every wait has a
timeout, and every process the benchmark starts is stopped on the way out (errors, Ctrl-C
and SIGTERM included).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import msgspec
import zmq

from bench.peers.common import machine_busy, percentile
from fabric import Message, Producer, PullConsumer, SendResult, SendStatus
from fabric.protocol.codes import PROTOCOL_VERSION, RequestCode
from fabric.protocol.messages import SendMessageBody
from fabric.testing import ServerProcess, run_broker, run_nameserver

TOPIC = "BenchTopic"
GROUP = "bench_producer"
#: Messages per send_batch call.
BATCH = 64
#: Seconds any single wait may take before the benchmark gives up.
WAIT = 60.0
SYNC_TARGET = 1.5
ASYNC_TARGET = 100_000

# The raw ceiling's server: a plain ROUTER loop in its own interpreter. It decodes each
# request header (it needs the request id to answer) and replies at once with a small
# header shaped like a SEND_MESSAGE reply. It exits when its stdin closes, so it cannot
# outlive the benchmark even if the benchmark is killed with SIGKILL.
RAW_SERVER = r"""
import os, sys, threading
import msgspec, zmq

def _orphaned():
    sys.stdin.buffer.read()
    os._exit(0)

threading.Thread(target=_orphaned, daemon=True).start()
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
sock.linger = 0
sock.bind(sys.argv[1])
print("READY raw", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
decode = msgspec.msgpack.Decoder().decode
encode = msgspec.msgpack.Encoder().encode
recv, send = sock.recv_multipart, sock.send_multipart
n = 0
while True:
    ident, header, *bodies = recv()
    h = decode(header)
    n += 1
    body = {"msg_id": h[4]["uniq_id"], "queue_id": h[4]["queue_id"], "queue_offset": n}
    send([ident, encode((0, h[1], h[2], 1, "", body))])
"""


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def latency_figures(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {
        "n": len(s),
        "p50_us": round(percentile(s, 50) / 1000, 1),
        "p99_us": round(percentile(s, 99) / 1000, 1),
        "mean_us": round(statistics.fmean(s) / 1000, 1),
        "max_us": round(s[-1] / 1000, 1),
    }


def throughput_figures(count: int, elapsed: float, size: int) -> dict[str, float]:
    return {
        "messages": count,
        "seconds": round(elapsed, 4),
        "msgs_per_s": round(count / elapsed, 1),
        "mb_per_s": round(count * size / elapsed / 1e6, 1),
    }


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, grouped: main, zmq (libzmq's), other."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"main": 0.0, "zmq": 0.0, "other": 0.0}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as fh:
                text = fh.read()
        except OSError:
            continue  # the thread ended meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        group = "main" if int(tid) == pid else "zmq" if comm.startswith("ZMQbg") else "other"
        out[group] += seconds
    return out


class CpuMeter:
    """CPU use (% of one core) of this process and of server processes over a timed section.

    Each process is reported in total and split by thread: ``main`` (the main thread),
    ``zmq`` (libzmq's I/O threads) and ``other`` (everything else: in the client, the
    producer's asyncio I/O thread; in the broker, the store's flush and warmer threads).
    ``machine`` is how busy all CPUs were, every process included (out of 100 x CPUs).
    """

    def __init__(self, servers: dict[str, int]) -> None:
        self.pids = {"client": os.getpid(), **servers}
        self.pct: dict[str, dict[str, int]] = {}

    def __enter__(self) -> CpuMeter:
        self.before = {name: thread_cpu(pid) for name, pid in self.pids.items()}
        self.busy = machine_busy()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall
        for name, pid in self.pids.items():
            after = thread_cpu(pid)
            split = {k: round(100 * (after[k] - self.before[name][k]) / wall) for k in after}
            self.pct[name] = {"total": sum(split.values()), **split}
        busy, total = machine_busy()
        if total > self.busy[1]:
            share = (busy - self.busy[0]) / (total - self.busy[1])
            self.pct["machine"] = {"total": round(100 * share * (os.cpu_count() or 1))}


def start_raw_server() -> ServerProcess:
    """The raw ROUTER in a separate interpreter, on a free loopback port."""
    args = [sys.executable, "-c", RAW_SERVER, "tcp://127.0.0.1:0"]
    process = subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    server = ServerProcess(args, process)
    try:
        server.wait_ready(["raw"], timeout=15.0)
    except BaseException:
        stop_raw_server(server)
        raise
    return server


def stop_raw_server(server: ServerProcess) -> None:
    try:
        if server.process.stdin is not None:
            server.process.stdin.close()
    except OSError:
        pass
    server.stop()


# ---------------------------------------------------------------------------------------
# The measured parts
# ---------------------------------------------------------------------------------------


def request_round_trips(
    endpoint: str, count: int, warmup: int, body: bytes, meter: CpuMeter
) -> list[int]:
    """Blocking DEALER round trips of SEND_MESSAGE requests; latencies in ns.

    Against the raw ROUTER this is the ceiling; against the broker ("direct") it is a
    real SEND_MESSAGE without the client library. The header Struct is built and encoded
    inside the timed part (as the client does for every message); the reply header is
    decoded and its request id and code checked.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    encode = msgspec.msgpack.Encoder().encode
    decode = msgspec.msgpack.Decoder().decode
    code = int(RequestCode.SEND_MESSAGE)
    wait_ms = int(WAIT * 1000)
    samples: list[int] = []
    clock = time.perf_counter_ns

    def one(i: int) -> int:
        began = clock()
        header = SendMessageBody(
            producer_group=GROUP,
            topic=TOPIC,
            queue_id=i & 3,
            uniq_id=f"{i:032X}",
            born_timestamp=int(time.time() * 1000),
        )
        send([encode((code, PROTOCOL_VERSION, i, 0, header)), body])
        if not poll(wait_ms):
            raise TimeoutError(f"{endpoint} did not answer within {WAIT}s")
        reply = decode(recv()[0])
        ended = clock()
        if reply[2] != i or reply[0] != 0:
            raise RuntimeError(f"reply {reply[:3]} to request {i}, expected a SUCCESS")
        return ended - began

    try:
        sock.connect(endpoint)
        send, recv, poll = sock.send_multipart, sock.recv_multipart, sock.poll
        for i in range(warmup):
            one(i)
        with meter:
            for i in range(warmup, warmup + count):
                samples.append(one(i))
    finally:
        sock.close(0)
        ctx.term()
    return samples


def new_producer(nameserver: str) -> Producer:
    producer = Producer(GROUP, nameservers=nameserver, send_timeout=10.0)
    producer.start()
    return producer


def sync_sends(
    nameserver: str, count: int, warmup: int, body: bytes, meter: CpuMeter
) -> tuple[list[int], int]:
    """``Producer.send`` one at a time; latencies in ns and the number of failures."""
    msg = Message(TOPIC, body)
    samples: list[int] = []
    failures = 0
    clock = time.perf_counter_ns
    with new_producer(nameserver) as producer:
        send = producer.send
        for _ in range(warmup):
            send(msg)
        with meter:
            for _ in range(count):
                began = clock()
                try:
                    result = send(msg)
                except Exception:
                    failures += 1
                    continue
                samples.append(clock() - began)
                if result.status is not SendStatus.SEND_OK:
                    failures += 1
    return samples, failures


def async_sends(
    nameserver: str, count: int, warmup: int, body: bytes, meter: CpuMeter
) -> dict[str, Any]:
    """``Producer.send_async`` of ``count`` messages; timed until all futures resolved."""
    msg = Message(TOPIC, body)
    with new_producer(nameserver) as producer:
        for _ in range(warmup):
            producer.send(msg)
        send_async = producer.send_async
        futures: list[concurrent.futures.Future[SendResult]] = []
        append = futures.append
        with meter:
            began = time.perf_counter()
            for _ in range(count):
                append(send_async(msg))
            handed_over = time.perf_counter()
            if not producer.flush(WAIT):
                raise TimeoutError(f"async sends not finished within {WAIT}s")
            elapsed = time.perf_counter() - began
    failures = 0
    for future in futures:
        if (
            not future.done()
            or future.exception() is not None
            or future.result().status is not SendStatus.SEND_OK
        ):
            failures += 1
    out = throughput_figures(count, elapsed, len(body))
    out["handover_s"] = round(handed_over - began, 4)
    out["failures"] = failures
    return out


def stored_total(consumer: PullConsumer, queues: list[Any]) -> int:
    return sum(consumer.max_offset(mq) for mq in queues)


def oneway_sends(
    nameserver: str, count: int, warmup: int, body: bytes, meter: CpuMeter
) -> dict[str, Any]:
    """``Producer.send_oneway`` of ``count`` messages; timed until the broker stored them.

    The broker's queues are polled every 5 ms (GET_MAX_OFFSET of each queue) once every
    message is handed over; nothing is lost when their sum grows by ``count``.
    """
    msg = Message(TOPIC, body)
    consumer = PullConsumer("bench_consumer", nameservers=nameserver)
    consumer.start()
    try:
        with new_producer(nameserver) as producer:
            for _ in range(warmup):
                producer.send(msg)
            queues = consumer.queues(TOPIC)
            before = stored_total(consumer, queues)
            target = before + count
            send_oneway = producer.send_oneway
            with meter:
                began = time.perf_counter()
                for _ in range(count):
                    send_oneway(msg)
                handed_over = time.perf_counter()
                deadline = began + WAIT
                while True:
                    stored = stored_total(consumer, queues)
                    if stored >= target or time.perf_counter() > deadline:
                        break
                    time.sleep(0.005)
                elapsed = time.perf_counter() - began
    finally:
        consumer.shutdown()
    out = throughput_figures(stored - before, elapsed, len(body))
    out["handover_s"] = round(handed_over - began, 4)
    out["lost"] = target - stored
    return out


def batch_sends(
    nameserver: str, count: int, warmup: int, body: bytes, meter: CpuMeter
) -> dict[str, Any]:
    """``Producer.send_batch`` of BATCH-message lists, one call after the other."""
    batch = [Message(TOPIC, body) for _ in range(BATCH)]
    calls = max(1, count // BATCH)
    failures = 0
    with new_producer(nameserver) as producer:
        for _ in range(max(1, warmup // BATCH)):
            producer.send_batch(batch)
        send_batch = producer.send_batch
        with meter:
            began = time.perf_counter()
            for _ in range(calls):
                try:
                    results = send_batch(batch)
                except Exception:
                    failures += BATCH
                    continue
                failures += sum(r.status is not SendStatus.SEND_OK for r in results)
            elapsed = time.perf_counter() - began
    out = throughput_figures(calls * BATCH, elapsed, len(body))
    out["calls"] = calls
    out["failures"] = failures
    return out


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------

LATENCY_PARTS = ("raw", "direct", "sync")
THROUGHPUT_PARTS = ("async", "oneway", "batch")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def median_of(samples: list[dict[str, Any]], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def run(args: argparse.Namespace) -> dict[str, Any]:
    body = os.urandom(args.size)
    scratch = tempfile.mkdtemp(prefix="send-bench-")
    servers: list[ServerProcess] = []
    raw: ServerProcess | None = None
    samples: dict[str, list[dict[str, Any]]] = {p: [] for p in LATENCY_PARTS + THROUGHPUT_PARTS}
    try:
        nameserver = run_nameserver(log_level="WARNING")
        servers.append(nameserver)
        broker = run_broker(
            os.path.join(scratch, "broker"),
            nameserver.endpoint,
            flush=args.flush,
            log_level="WARNING",
        )
        servers.append(broker)
        raw = start_raw_server()
        ns = nameserver.endpoint
        # The first send auto-creates the topic (4 queues) and registers it.
        with new_producer(ns) as producer:
            producer.send(Message(TOPIC, body))
        on_broker = {"broker": broker.pid}

        def latency(name: str, samples_ns: list[int], meter: CpuMeter, **extra: Any) -> None:
            samples[name].append({**latency_figures(samples_ns), **extra, "cpu_pct": meter.pct})

        per_block = max(1, args.count // args.blocks)
        for _ in range(args.repeat):
            # Every part starts with the data of the parts before it written back, so no
            # part pays for another's page-cache writeback (a SYNC_FLUSH fsync waits for it).
            os.sync()
            # The three latency parts alternate in blocks, so that a burst of noise on a
            # shared machine hits all three alike and their ratios stay honest; CPU is
            # metered over each part's last block.
            pooled: dict[str, list[int]] = {"raw": [], "direct": [], "sync": []}
            meters: dict[str, CpuMeter] = {}
            failures = 0
            for block in range(args.blocks):
                warmup = args.warmup if block == 0 else min(args.warmup, 50)
                meters["raw"] = CpuMeter({"raw_router": raw.pid})
                pooled["raw"] += request_round_trips(
                    raw.endpoint, per_block, warmup, body, meters["raw"]
                )
                meters["direct"] = CpuMeter(on_broker)
                pooled["direct"] += request_round_trips(
                    broker.endpoint, per_block, warmup, body, meters["direct"]
                )
                meters["sync"] = CpuMeter(on_broker)
                lat, failed = sync_sends(ns, per_block, warmup, body, meters["sync"])
                pooled["sync"] += lat
                failures += failed
            latency("raw", pooled["raw"], meters["raw"])
            latency("direct", pooled["direct"], meters["direct"])
            latency("sync", pooled["sync"], meters["sync"], failures=failures)
            for name in ("direct", "sync"):
                x = samples[name][-1]
                x["vs_raw_p50"] = round(x["p50_us"] / samples["raw"][-1]["p50_us"], 3)

            parts: list[tuple[str, Callable[..., dict[str, Any]]]] = [("async", async_sends)]
            if not args.no_extra:
                parts += [("oneway", oneway_sends), ("batch", batch_sends)]
            for name, part in parts:
                os.sync()
                meter = CpuMeter(on_broker)
                figures = part(ns, args.async_count, args.warmup, body, meter)
                samples[name].append({**figures, "cpu_pct": meter.pct})
        problems = [line for s in servers for line in s.error_lines()]
    finally:
        if raw is not None:
            stop_raw_server(raw)
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return summarize(args, samples, problems)


def summarize(
    args: argparse.Namespace, samples: dict[str, list[dict[str, Any]]], problems: list[str]
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "cpus": os.cpu_count(),
        "flush": args.flush,
        "body_bytes": args.size,
        "count": args.count,
        "async_count": args.async_count,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "blocks": args.blocks,
    }
    for name in LATENCY_PARTS:
        runs = samples[name]
        results[name] = {
            "p50_us": median_of(runs, "p50_us"),
            "p99_us": median_of(runs, "p99_us"),
            "all_p50_us": [r["p50_us"] for r in runs],
            "all_p99_us": [r["p99_us"] for r in runs],
            "samples": runs,
        }
    results["sync"]["failures"] = sum(r["failures"] for r in samples["sync"])
    for name in THROUGHPUT_PARTS:
        runs = samples[name]
        if not runs:
            continue
        results[name] = {
            "msgs_per_s": median_of(runs, "msgs_per_s"),
            "mb_per_s": median_of(runs, "mb_per_s"),
            "all_msgs_per_s": [r["msgs_per_s"] for r in runs],
            "samples": runs,
        }
        if name == "oneway":
            results[name]["lost"] = sum(r["lost"] for r in runs)
        else:
            results[name]["failures"] = sum(r["failures"] for r in runs)
    raw_p50 = results["raw"]["p50_us"]
    ratio = results["sync"]["p50_us"] / raw_p50
    results["direct_vs_raw_p50"] = round(results["direct"]["p50_us"] / raw_p50, 3)
    results["sync_vs_raw_p50"] = round(ratio, 3)
    results["all_sync_vs_raw_p50"] = [r["vs_raw_p50"] for r in samples["sync"]]
    results["targets"] = {
        "sync_p50_vs_raw_max": SYNC_TARGET,
        "sync_met": ratio <= SYNC_TARGET,
        "async_msgs_per_s_min": ASYNC_TARGET,
        "async_met": results["async"]["msgs_per_s"] >= ASYNC_TARGET,
    }
    results["server_errors"] = problems[:20]
    return results


def _cpu(sample: dict[str, Any]) -> str:
    return ", ".join(f"{name} {v['total']}%" for name, v in sample["cpu_pct"].items())


def print_table(r: dict[str, Any]) -> None:
    print(
        f"send benchmark {r['date']}: flush={r['flush']}, {r['body_bytes']} B bodies, "
        f"{r['count']} round trips / sync sends, {r['async_count']} messages per throughput "
        f"run, medians of {r['repeat']}"
    )
    print(f"{'latency':<10}{'p50 us':>10}{'p99 us':>10}  {'all p50 / all p99':<40} cpu (last run)")
    for name in LATENCY_PARTS:
        x = r[name]
        spread = f"{x['all_p50_us']} / {x['all_p99_us']}"
        print(
            f"{name:<10}{x['p50_us']:>10,.1f}{x['p99_us']:>10,.1f}  {spread:<40} "
            f"{_cpu(x['samples'][-1])}"
        )
    print(f"{'throughput':<10}{'msg/s':>10}{'MB/s':>10}  {'all msg/s':<40} cpu (last run)")
    for name in THROUGHPUT_PARTS:
        if name in r:
            x = r[name]
            spread = str([round(v) for v in x["all_msgs_per_s"]])
            print(
                f"{name:<10}{x['msgs_per_s']:>10,.0f}{x['mb_per_s']:>10,.1f}  {spread:<40} "
                f"{_cpu(x['samples'][-1])}"
            )
    print(
        f"failures: sync {r['sync']['failures']}, async {r['async']['failures']}"
        + (f", oneway lost {r['oneway']['lost']}" if "oneway" in r else "")
        + (f", batch {r['batch']['failures']}" if "batch" in r else "")
    )
    print(f"direct p50 / raw p50 = {r['direct_vs_raw_p50']:.2f}x (broker without the client)")
    print(
        f"sync p50 / raw p50 = {r['sync_vs_raw_p50']:.2f}x (target <= {SYNC_TARGET}x)"
        f"  [per repeat: {r['all_sync_vs_raw_p50']}]"
    )
    print(f"async sends: {r['async']['msgs_per_s']:,.0f} msg/s (target >= {ASYNC_TARGET:,})")
    for line in r["server_errors"]:
        print("server error:", line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=10_000, help="round trips and sync sends per repeat"
    )
    parser.add_argument(
        "--async-count", type=int, default=100_000, help="messages per throughput run"
    )
    parser.add_argument("--size", type=int, default=1024, help="body size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each part; medians")
    parser.add_argument(
        "--blocks", type=int, default=10, help="latency parts alternate in this many blocks"
    )
    parser.add_argument("--flush", choices=("async", "sync"), default="async")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured sends per part")
    parser.add_argument("--no-extra", action="store_true", help="skip oneway and batch")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if min(args.count, args.async_count, args.repeat, args.size, args.blocks) < 1:
        parser.error("--count, --async-count, --repeat, --size and --blocks must be positive")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        results = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(results))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
