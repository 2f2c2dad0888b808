"""Per-message CPU floors of the end-to-end path, each stage measured alone in a hot loop.

Usage:
    python bench/floor_bench.py [--count N] [--batch N] [--size BYTES] [--repeat N] [--json]

Why it exists (issue 7): the end-to-end target asks one producer, one broker and one push
consumer, three Python processes sharing this machine's two cores, to move at least
3.5x what Redis Streams moves (about 235,000 messages/s against Redis's 67,000). At
rate R on C cores the three processes together can spend at most C / R seconds of CPU
per message: 8.5 µs at 235,000/s on two cores. This benchmark measures, in one run,
the least CPU each stage of the path costs per 1 KiB message, with nothing else in the
loop (no socket, no thread hand-over, warm caches), so the sum is a floor the real path
cannot go below:

* **produce**: what the producer does per message before a socket sees it: build the
  Message, ``ProducerCore.prepare`` (validate, unique id, compression check, the batch
  entry), and its share of the packed SEND_BATCH_MESSAGE header (msgspec, BATCH per
  request) and body join (docs/PROTOCOL.md 7.3);
* **store**: the broker's side of a SEND_BATCH_MESSAGE: its share of decoding the
  header, the PutMessage per message, and ``MessageStore.append_batch`` (one record per
  message with its ConsumeQueue and index entries, as SPEC M5 has it: a batch is "stored
  as separate messages"), under ASYNC_FLUSH;
* **read**: the broker's read for a push, ``MessageStore.get_messages`` of 32 records;
* **decode**: the consumer's ``MessageExt.decode`` of each record.

Not counted, though the real path pays them: ZeroMQ and the kernel (two hops, each
message's record is one frame of a push), request parsing and replies, listener
dispatch, acks and offset commits, and the cold caches of processes that take turns on
two cores. Prints each stage's median µs per message, their sum, and the highest
end-to-end rate that sum allows on this machine's cores (``cores / sum``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import msgspec

from broker.store import FlushMode, GetStatus, MessageStore, PutMessage, PutStatus, StoreConfig
from fabric import Message, MessageExt, Producer
from fabric.protocol.messages import SendBatchBody

TOPIC = "FloorTopic"
QUEUES = 4
#: The target of issue 7: end to end at least this many times Redis Streams.
TARGET_RATIO = 3.5


def produce_stage(count: int, batch: int, body: bytes) -> tuple[float, list[bytes]]:
    """µs per message of Message, ProducerCore.prepare and the batch's header and body
    join; and the encoded SEND_BATCH_MESSAGE headers (the broker stage's input)."""
    # No NameServer is needed: prepare never asks for a route.
    producer = Producer("floor_bench", nameservers="tcp://127.0.0.1:9")
    producer.start()
    try:
        core, _ = producer._started()  # the real per-message code, without a socket
        encode = msgspec.msgpack.encode
        join = b"".join
        prepare = core.prepare
        headers: list[bytes] = []
        began = time.perf_counter()
        for n in range(count // batch):
            items = [prepare(Message(TOPIC, body, tags="T")) for _ in range(batch)]
            headers.append(
                encode(
                    SendBatchBody(
                        producer_group="floor_bench",
                        topic=TOPIC,
                        queue_id=n % QUEUES,
                        messages=[item.entry for item in items],
                        body_sizes=[len(item.payload) for item in items],
                    )
                )
            )
            packed = join([item.payload for item in items])
            if len(packed) != batch * len(body):
                raise RuntimeError("a payload differs from the body (compressed?)")
        elapsed = time.perf_counter() - began
        return elapsed / count * 1e6, headers
    finally:
        producer.shutdown()


def _timed(fn: Callable[[], int]) -> float:
    """Seconds ``fn`` took (it checks its own count)."""
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def broker_stages(
    directory: str, headers: list[bytes], count: int, body: bytes, segment_mb: int
) -> tuple[float, float, list[bytes]]:
    """µs per message of the broker (store a SEND_BATCH_MESSAGE, read for a push), and
    the first records of queue 0 as stored (the consumer's input)."""
    batch = count // len(headers)
    packed = body * batch
    size = len(body)
    decode = msgspec.msgpack.Decoder(SendBatchBody).decode
    cfg = StoreConfig(flush_mode=FlushMode.ASYNC_FLUSH, segment_size=segment_mb << 20)
    with MessageStore(directory, cfg) as store:
        append_batch = store.append_batch

        def store_run() -> int:
            stored = 0
            for header in headers:
                req = decode(header)
                view = memoryview(packed)
                msgs = []
                pos = 0
                for e, n in zip(req.messages, req.body_sizes, strict=True):
                    msgs.append(
                        PutMessage(
                            topic=req.topic,
                            queue_id=req.queue_id,
                            body=bytes(view[pos : pos + n]),
                            tags=e.tags,
                            keys=list(e.keys),
                            uniq_id=e.uniq_id,
                            properties=e.properties,
                            flag=e.flag,
                            sysflag=e.sysflag,
                            born_timestamp=e.born_timestamp,
                        )
                    )
                    pos += n
                results = append_batch(msgs)
                stored += sum(r.status is PutStatus.PUT_OK for r in results)
            if stored != count:
                raise RuntimeError(f"stored {stored} of {count}")
            return stored

        store_us = _timed(store_run) / count * 1e6

        def read_run() -> int:
            read = 0
            for qid in range(QUEUES):
                offset = 0
                while True:
                    got = store.get_messages(TOPIC, qid, offset, 32, 32 * (size + 512))
                    if got.status is not GetStatus.FOUND:
                        break
                    read += len(got.records)
                    offset = got.next_offset
            if read != count:
                raise RuntimeError(f"read {read} of {count}")
            return read

        read_us = _timed(read_run) / count * 1e6
        got = store.get_messages(TOPIC, 0, 0, 32, 32 * (size + 512))
        records = [bytes(r) for r in got.records]
    return store_us, read_us, records


def decode_stage(records: list[bytes], count: int) -> float:
    """µs per record of MessageExt.decode (the consumer's per-message decode)."""
    rounds = max(1, count // len(records))

    def run() -> int:
        n = 0
        for _ in range(rounds):
            for record in records:
                MessageExt.decode(record, "broker-a")
                n += 1
        return n

    return _timed(run) / (rounds * len(records)) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=100_000, help="messages per stage run")
    parser.add_argument("--batch", type=int, default=64, help="messages per SEND_BATCH")
    parser.add_argument("--size", type=int, default=1024, help="body size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each stage; medians")
    parser.add_argument("--segment-mb", type=int, default=1024, help="CommitLog segment MiB")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.count < args.batch or args.batch < 1 or args.size < 1 or args.repeat < 1:
        parser.error("need --count >= --batch >= 1, --size >= 1, --repeat >= 1")
    count = args.count // args.batch * args.batch
    body = os.urandom(args.size)
    runs: dict[str, list[float]] = {"produce": [], "store": [], "read": [], "decode": []}
    for _ in range(args.repeat):
        produce_us, headers = produce_stage(count, args.batch, body)
        runs["produce"].append(produce_us)
        scratch = tempfile.mkdtemp(prefix="floor-bench-", dir=args.dir)
        try:
            os.sync()
            store_us, read_us, records = broker_stages(
                scratch, headers, count, body, args.segment_mb
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        runs["store"].append(store_us)
        runs["read"].append(read_us)
        runs["decode"].append(decode_stage(records, count))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    total = sum(medians.values())
    cores = os.cpu_count() or 1
    ceiling = cores / total * 1e6
    result: dict[str, Any] = {
        "count": count,
        "batch": args.batch,
        "size": args.size,
        "repeat": args.repeat,
        "cores": cores,
        "us_per_msg": {k: round(v, 3) for k, v in medians.items()},
        "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "sum_us": round(total, 3),
        "ceiling_msgs_per_s": round(ceiling),
        "budget_us_at_rate": {
            str(rate): round(cores / rate * 1e6, 2) for rate in (100_000, 190_000, 235_000)
        },
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"per-message CPU floors, {args.size} B bodies, batches of {args.batch}, "
        f"{count} messages, medians of {args.repeat}"
    )
    for stage, us in medians.items():
        print(f"  {stage:8s} {us:7.2f} µs   runs {', '.join(f'{x:.2f}' for x in runs[stage])}")
    print(f"  {'sum':8s} {total:7.2f} µs")
    print(f"end-to-end ceiling on {cores} cores: {ceiling:,.0f} msg/s (cores / sum)")
    for rate, budget in result["budget_us_at_rate"].items():
        print(f"  budget at {int(rate):,} msg/s: {budget} µs of CPU per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
