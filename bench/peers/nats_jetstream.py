"""NATS JetStream (Debian's nats-server, nats-py): file stream, pull consumer.

Server: ``nats-server -js`` started here on 127.0.0.1 and a free port with its store in a
temporary directory; stopped by its PID. One stream per job (file storage, subject =
stream name). Workloads (peers-bench.md):

* produce: ``js.publish_async`` with at most 4000 acks pending, then
  ``publish_async_completed``; every PubAck is checked.
* consume: a durable pull consumer (AckPolicy.ALL), ``fetch(500)``, the last message of
  each batch acked (which acks the batch); then no ack may be pending.
* sync latency: ``js.publish`` (publish and wait for the PubAck), one at a time.

Durability: JetStream acks once the message is in the page cache; the server fsyncs
every 2 minutes by default (``sync_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType

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
)

MODULE: Final = __name__
BINARY: Final = "nats-server"
MAX_PENDING: Final = 4000
FETCH: Final = 500
DURABLE: Final = "peers"

T = TypeVar("T")


def _info_line(port: int) -> bool:
    """True when the server on ``port`` greets with an INFO line announcing JetStream."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.settimeout(1.0)
        greeting = sock.recv(4096)
    return greeting.startswith(b"INFO ") and b'"jetstream":true' in greeting


@contextlib.contextmanager
def server(scratch: Path) -> Iterator[Mapping[str, Any]]:
    scratch.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [BINARY, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(scratch / "js")]
    with serving("nats-server", args, scratch / "nats.log", lambda: _info_line(port)):
        yield {"url": f"nats://127.0.0.1:{port}"}


def _run(job: Job, body: Callable[[NATS], Awaitable[T]]) -> T:
    """Connect, run ``body(nc)`` within the job's timeout, close."""

    async def go() -> T:
        nc = await nats.connect(job.params["url"], allow_reconnect=False, connect_timeout=10)
        try:
            return await asyncio.wait_for(body(nc), job.timeout_s)
        finally:
            await nc.close()

    return asyncio.run(go())


def prepare(job: Job, ready: Ready) -> Outcome:
    async def body(nc: NATS) -> None:
        await nc.jetstream().add_stream(
            name=job.dest, subjects=[job.dest], storage=StorageType.FILE
        )

    _run(job, body)
    return Outcome()


def cleanup(job: Job, ready: Ready) -> Outcome:
    async def body(nc: NATS) -> None:
        await nc.jetstream().delete_stream(job.dest)

    _run(job, body)
    return Outcome()


def produce(job: Job, ready: Ready) -> Outcome:
    """``publish_async`` of ``job.count`` messages, until every PubAck arrived."""
    data = payload(job.size)
    out = Outcome()

    async def body(nc: NATS) -> None:
        js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
        publish_async, subject = js.publish_async, job.dest
        futures = []
        out.first = time.monotonic()
        for _ in range(job.count):
            futures.append(await publish_async(subject, data))
        await js.publish_async_completed()
        out.last = time.monotonic()
        seqs = {f.result().seq for f in futures}  # raises on a failed publish
        check_equal("distinct PubAck sequence numbers", len(seqs), job.count)
        state = (await js.stream_info(job.dest)).state
        out.messages = state.messages
        out.bytes = state.messages * len(data)

    _run(job, body)
    check_counts(
        "stream messages after publish_async", out.messages, out.bytes, job.count, job.size
    )
    return out


def consume(job: Job, ready: Ready) -> Outcome:
    """Durable pull consumer: fetch(FETCH), ack the batch's last message (AckPolicy.ALL)."""
    out = Outcome()

    async def body(nc: NATS) -> None:
        js = nc.jetstream()
        config = ConsumerConfig(ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL)
        psub = await js.pull_subscribe(job.dest, durable=DURABLE, stream=job.dest, config=config)
        ready(None)
        messages = nbytes = 0
        deadline = job.deadline()
        out.first = time.monotonic()
        while messages < job.count:
            try:
                msgs = await psub.fetch(FETCH, timeout=1.0)
            except nats.errors.TimeoutError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{messages} of {job.count} fetched in time") from None
                continue
            messages += len(msgs)
            nbytes += sum(len(m.data) for m in msgs)
            await msgs[-1].ack()
        await nc.flush()
        out.last = time.monotonic()
        out.messages, out.bytes = messages, nbytes
        # The acks are processed by the server after the flush's PONG; wait (with a
        # timeout) until the ack floor reached the last message.
        until = time.monotonic() + 10.0
        while True:
            info = await psub.consumer_info()
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            if floor >= job.count or time.monotonic() > until:
                break
            await asyncio.sleep(0.01)
        check_equal("consumer ack floor (stream seq)", floor or 0, job.count)
        check_equal("messages awaiting an ack", info.num_ack_pending or 0, 0)
        check_equal("messages not yet delivered", info.num_pending or 0, 0)

    _run(job, body)
    check_counts("fetched", out.messages, out.bytes, job.count, job.size)
    return out


def sync_latency(job: Job, ready: Ready) -> Outcome:
    """``js.publish`` (wait for the PubAck), one at a time."""
    data = payload(job.size)
    out = Outcome()

    async def body(nc: NATS) -> None:
        js = nc.jetstream()
        publish, subject = js.publish, job.dest
        samples = out.latencies_ns
        clock = time.perf_counter_ns
        for _ in range(job.warmup):
            await publish(subject, data)
        out.first = time.monotonic()
        stop = out.first + job.cap_s
        for _ in range(job.samples):
            began = clock()
            await publish(subject, data)
            samples.append(clock() - began)
            if time.monotonic() > stop:
                break
        out.last = time.monotonic()
        out.messages = (await js.stream_info(job.dest)).state.messages
        out.bytes = out.messages * len(data)

    _run(job, body)
    sent = job.warmup + len(out.latencies_ns)
    check_counts("stream messages after publish", out.messages, out.bytes, sent, job.size)
    return out


def groups() -> list[Group]:
    return single_row(
        "nats",
        server,
        MODULE,
        label=(
            f"NATS JetStream: file stream, publish_async (≤{MAX_PENDING} pending), "
            f"pull fetch({FETCH}), ack-all once per batch"
        ),
        durability=(
            "file stream: ack after the write to the page cache; fsync every "
            "2 min (default sync_interval)"
        ),
    )


def missing() -> list[str]:
    return missing_binary(BINARY, "nats-server")


def versions() -> dict[str, str | None]:
    return {"nats-server": debian_version("nats-server"), "nats-py": python_version_of("nats-py")}
