"""The fabric's side of the peer comparison: the same workloads through the Python client.

A throwaway local fabric per flush mode (``fabric.testing``: one ``fabric nameserver`` and
one ``fabric broker --flush async|sync``, 127.0.0.1 port 0, the broker's data in the
benchmark's scratch directory, default store settings as ``fabric up`` has them).

* produce: ``Producer.send_async`` of ``count`` messages, timed from the first call until
  every future resolved (``Producer.flush``); every result must be SEND_OK. Under
  SYNC_FLUSH a SEND_OK comes after the fsync that covers the message (group commit).
* produce, send_batch rows: ``Producer.send_batch`` of BATCH messages per call, one call
  after the other.
* consume and end to end: :func:`consume_messages` (see there): a PushConsumer whose
  acks reopen its window and commit its offsets on the broker.
* sync latency: ``Producer.send``, one message in flight.

Each topic is created (4 queues) before its job and deleted after it, so every count is
exact: produce checks what the queues hold, consume checks messages, bytes and that the
committed offset of every queue reached its end.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final

from bench.peers.common import (
    BenchError,
    CountMismatchError,
    Group,
    Job,
    Outcome,
    Ready,
    Scenario,
    check_counts,
    check_equal,
    payload,
    time_round_trips,
    wait_for,
    wait_idle,
)
from fabric import (
    ConsumeStatus,
    Message,
    MessageExt,
    Producer,
    PullConsumer,
    PushConsumer,
    SendResult,
    SendStatus,
)
from fabric.admin import Admin
from fabric.errors import NoRouteError
from fabric.testing import ServerProcess, run_broker, run_nameserver

MODULE: Final = __name__
PRODUCER_GROUP: Final = "peers_producer"
#: Messages per send_batch call in the batch rows.
BATCH: Final = 256
#: The push consumer's window per queue, in messages (its default).
PREFETCH: Final = 1000
QUEUES: Final = 4

DURABILITY: Final = {
    "async": "ASYNC_FLUSH: ack after the mmap write (page cache); flushed in the background",
    "sync": "SYNC_FLUSH: ack after the fsync covering the message (group commit)",
}


# ---------------------------------------------------------------------------------------
# The fabric under test
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def server(scratch: Path, flush: str) -> Iterator[Mapping[str, Any]]:
    """A NameServer and a broker (``--flush flush``); yields {"nameserver": endpoint}."""
    scratch.mkdir(parents=True, exist_ok=True)
    started: list[ServerProcess] = []
    try:
        nameserver = run_nameserver(log_level="WARNING")
        started.append(nameserver)
        broker = run_broker(
            scratch / "broker", nameserver.endpoint, flush=flush, log_level="WARNING"
        )
        started.append(broker)
        wait_idle(broker.pid, f"fabric broker ({flush})")
        yield {"nameserver": nameserver.endpoint, "flush": flush}
        errors = [line for s in started for line in s.error_lines()]
        if errors:
            raise BenchError("the fabric logged errors:\n" + "\n".join(errors[:20]))
    finally:
        for process in reversed(started):
            process.stop()


def prepare(job: Job, ready: Ready) -> Outcome:
    """Create the topic (QUEUES queues) and wait until the NameServer routes it."""
    nameserver = job.params["nameserver"]
    with Admin(nameserver) as admin:
        admin.create_topic(job.dest, queues=QUEUES)
    consumer = PullConsumer("peers_prepare", nameservers=nameserver)
    consumer.start()
    try:

        def routed() -> bool:
            try:
                return len(consumer.queues(job.dest)) == QUEUES
            except NoRouteError:
                return False

        wait_for(routed, 30.0, f"the route of {job.dest}")
    finally:
        consumer.shutdown()
    return Outcome()


def cleanup(job: Job, ready: Ready) -> Outcome:
    with Admin(job.params["nameserver"]) as admin:
        admin.delete_topic(job.dest)
    return Outcome()


def stored(nameserver: str, topic: str) -> int:
    """How many messages the topic's queues hold (sum of max offsets)."""
    consumer = PullConsumer("peers_check", nameservers=nameserver)
    consumer.start()
    try:
        return sum(consumer.max_offset(mq) for mq in consumer.queues(topic))
    finally:
        consumer.shutdown()


def _check_results(results: list[SendResult], job: Job, what: str) -> None:
    bad = [r.status for r in results if r.status is not SendStatus.SEND_OK]
    if bad:
        raise CountMismatchError(f"{what}: {len(bad)} sends not SEND_OK, e.g. {bad[:3]}")
    check_equal(f"{what}: SEND_OK results", len(results), job.count)


def _check_sent(result: SendResult) -> None:
    if result.status is not SendStatus.SEND_OK:
        raise CountMismatchError(f"send returned {result.status}")


def _new_producer(job: Job) -> Producer:
    producer = Producer(PRODUCER_GROUP, nameservers=job.params["nameserver"], send_timeout=30.0)
    producer.start()
    return producer


# ---------------------------------------------------------------------------------------
# Worker functions
# ---------------------------------------------------------------------------------------


def produce(job: Job, ready: Ready) -> Outcome:
    """``Producer.send_async`` of ``job.count`` messages, until every send is over.

    Outcomes are counted by a callback (on the producer's I/O thread), as the peers count
    their confirms: holding 100,000 futures until the end would make the run measure the
    cyclic GC rescanning them, not the sends.
    """
    msg = Message(job.dest, payload(job.size))
    out = Outcome()
    lock = threading.Lock()
    outcomes: dict[str, int] = {}

    def count(result: SendResult | BaseException) -> None:
        key = result.status.name if isinstance(result, SendResult) else type(result).__name__
        with lock:
            outcomes[key] = outcomes.get(key, 0) + 1

    with _new_producer(job) as producer:
        send_async = producer.send_async
        out.first = time.monotonic()
        for _ in range(job.count):
            send_async(msg, count)
        if not producer.flush(job.timeout_s):
            raise BenchError(f"async sends not over within {job.timeout_s}s")
        out.last = time.monotonic()
    ok = outcomes.pop(SendStatus.SEND_OK.name, 0)
    if outcomes:
        raise CountMismatchError(f"send_async: sends not SEND_OK: {outcomes}")
    check_equal("send_async: SEND_OK results", ok, job.count)
    out.messages = stored(job.params["nameserver"], job.dest)
    out.bytes = out.messages * len(msg.body)
    check_counts("stored after send_async", out.messages, out.bytes, job.count, job.size)
    return out


def produce_batch(job: Job, ready: Ready) -> Outcome:
    """``Producer.send_batch`` of BATCH messages per call, one call after the other."""
    body = payload(job.size)
    out = Outcome()
    results: list[SendResult] = []
    with _new_producer(job) as producer:
        send_batch = producer.send_batch
        out.first = time.monotonic()
        left = job.count
        while left > 0:
            n = min(BATCH, left)
            results += send_batch([Message(job.dest, body) for _ in range(n)])
            left -= n
        out.last = time.monotonic()
    _check_results(results, job, "send_batch")
    out.messages = stored(job.params["nameserver"], job.dest)
    out.bytes = out.messages * job.size
    check_counts("stored after send_batch", out.messages, out.bytes, job.count, job.size)
    return out


def sync_latency(job: Job, ready: Ready) -> Outcome:
    """``Producer.send``, one at a time: ``job.samples`` sends (capped at ``job.cap_s``)."""
    msg = Message(job.dest, payload(job.size))
    out = Outcome()
    with _new_producer(job) as producer:
        time_round_trips(job, out, partial(producer.send, msg), check=_check_sent)
    sent = job.warmup + len(out.latencies_ns)
    out.messages = stored(job.params["nameserver"], job.dest)
    out.bytes = out.messages * job.size
    check_counts("stored after sync sends", out.messages, out.bytes, sent, job.size)
    return out


def consume(job: Job, ready: Ready) -> Outcome:
    """Read and acknowledge ``job.count`` messages of the topic (see consume_messages)."""
    return consume_messages(
        job.params["nameserver"],
        job.dest,
        f"peers_{job.dest}",
        job.count,
        job.size,
        ready,
        job.timeout_s,
    )


def consume_messages(
    nameserver: str,
    topic: str,
    group: str,
    count: int,
    size: int,
    ready: Ready,
    timeout: float,
) -> Outcome:
    """Subscribe a PushConsumer to ``topic`` as ``group``, call ``ready``, consume ``count``.

    The broker pushes within the consumer's window (PREFETCH per queue); the listener
    counts messages and bytes and returns CONSUME_SUCCESS, which acks them (acks reopen
    the window and commit the offset). Returns an Outcome whose ``first`` is when the
    consumer was started and ``last`` when the listener finished the last message.
    Raises CountMismatchError if messages or bytes differ, or if after the consumer's
    shutdown (which commits) a queue's committed offset is not at its end.
    """
    out = Outcome()
    lock = threading.Lock()
    done = threading.Event()
    state = {"messages": 0, "bytes": 0}

    def listener(msg: MessageExt) -> ConsumeStatus:
        with lock:
            state["messages"] += 1
            state["bytes"] += len(msg.body)
            if state["messages"] >= count and not done.is_set():
                out.last = time.monotonic()
                done.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(
        group, nameservers=nameserver, consume_from="earliest", prefetch=PREFETCH
    )
    consumer.subscribe(topic, "*", listener)
    out.first = time.monotonic()
    consumer.start()
    try:
        ready(None)
        if not done.wait(timeout):
            raise CountMismatchError(
                f"{state['messages']} of {count} messages consumed within {timeout}s"
            )
    finally:
        consumer.shutdown()
    out.messages, out.bytes = state["messages"], state["bytes"]
    check_counts("consumed", out.messages, out.bytes, count, size)
    # Nothing left unacknowledged: shutdown committed every queue to its end.
    checker = PullConsumer(group, nameservers=nameserver).start()
    try:
        queues = checker.queues(topic)
        for mq in queues:
            committed, end = checker.committed(mq), checker.max_offset(mq)
            if end == 0 and committed <= 0:
                continue  # an empty queue: nothing to commit
            check_equal(f"committed offset of queue {mq.queue_id} (its end)", committed, end)
        out.extra["queues"] = len(queues)
    finally:
        checker.shutdown()
    return out


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------


def _rows(flush: str) -> list[Scenario]:
    name = f"{flush.upper()}_FLUSH"
    return [
        Scenario(
            key=f"fabric_{flush}",
            peer="fabric",
            label=(
                f"fabric {name}: send_async, PushConsumer (window {PREFETCH} per queue, "
                "acks commit), send"
            ),
            durability=DURABILITY[flush],
            module=MODULE,
        ),
        Scenario(
            key=f"fabric_{flush}_batch",
            peer="fabric",
            label=f"fabric {name}: send_batch of {BATCH}, one call at a time",
            durability=DURABILITY[flush],
            module=MODULE,
            workloads=("produce",),
            produce="produce_batch",
        ),
    ]


def groups() -> list[Group]:
    return [
        Group(name=f"fabric-{flush}", server=partial(server, flush=flush), scenarios=_rows(flush))
        for flush in ("async", "sync")
    ]


def missing() -> list[str]:
    return []


def versions() -> dict[str, str | None]:
    import fabric

    return {"zmq-fabric": fabric.__version__}
