"""The workers of fabric bench: a producer or a consumer that counts what it does into Reports.

A worker runs in a thread of the bench process (when it is the only worker of the run)
or in a process of its own (``multiprocessing`` with ``spawn``, so that the GIL of one
interpreter does not cap the load of several). Either way it gets a
:class:`WorkerSpec`, a :class:`Controls` (four events set by the runner) and a sink (a
queue) for its :class:`~fabric.bench.stats.Report` objects:

* it reports ``ready`` once set up (a producer after its warm-up sends), waits for its
  go event, works, reports its counts every ``tick`` seconds, and ends with ``final``;
* a producer stops after ``count`` messages, after ``duration`` seconds, or when
  ``stop_produce`` is set; a consumer consumes until ``stop_consume`` is set (the runner
  decides when enough arrived);
* any exception ends the worker with an ``error`` report.

Every message body starts with the header of fabric.bench.body (run id, producer
index, sequence number) and is padded with random bytes. Consumers use the header
to tell this run's messages (counted per producer in bitmaps, to find lost and
duplicated ones) from warm-up messages (ignored) and from anything else in the topic
(counted as foreign).

Latency is born-to-acknowledged for sends (``perf_counter_ns`` around ``send`` and
``send_batch``; from the ``send_async`` call to its callback), and born-to-consumed for
consumers: the consume time minus the message's ``born_timestamp``, which the producer
stamps in milliseconds, so consumer latencies have a resolution of 1 ms.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import msgspec
from loguru import logger

from fabric.bench.body import KIND_MEASURED, KIND_WARMUP, body_maker, parse_header
from fabric.bench.stats import Recorder, Report
from fabric.consumer import PullConsumer
from fabric.message import Message, MessageExt, MessageQueue
from fabric.producer import Producer
from fabric.protocol.codes import PullStatus, SendStatus

__all__ = [
    "Controls",
    "Event",
    "ReportSink",
    "WorkerSpec",
    "process_main",
    "push_consumer_available",
    "run_worker",
]

#: Most messages one pull of the pull-consumer fallback asks for.
_PULL_BATCH: Final = 64
#: Seconds a pull of the fallback waits on an empty queue (long polling).
_PULL_WAIT: Final = 0.5
_SUCCESS: Final = SendStatus.SEND_OK


class Event(Protocol):
    """threading.Event or a multiprocessing Event."""

    def is_set(self) -> bool: ...

    def set(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class ReportSink(Protocol):
    """queue.Queue or a multiprocessing Queue of Reports."""

    def put(self, obj: Report, /) -> None: ...


class Controls:
    """The events through which the runner drives its workers.

    Args:
        factory: makes one event (``threading.Event``, or a multiprocessing context's
            ``Event`` for worker processes).
    """

    def __init__(self, factory: Callable[[], Event]) -> None:
        #: Consumers start consuming.
        self.go_consume = factory()
        #: Producers start sending.
        self.go_produce = factory()
        #: Producers stop early (duration reached elsewhere, Ctrl-C).
        self.stop_produce = factory()
        #: Consumers stop.
        self.stop_consume = factory()

    def stop_all(self) -> None:
        """Stop every worker."""
        self.stop_produce.set()
        self.stop_consume.set()


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What one worker does."""

    role: str
    index: int
    nameserver: str
    topic: str
    size: int
    #: Identifies this run's messages in the topic.
    run_id: int
    #: Producers: messages to send, or with ``duration`` > 0, seconds to send for.
    count: int = 0
    duration: float = 0.0
    mode: str = "async"
    batch_size: int = 64
    warmup: int = 0
    group: str = "fabric_bench"
    #: Seconds between two reports.
    tick: float = 0.2
    send_timeout: float = 10.0
    #: Consumers: "push" or "pull", the window per queue, how many consumers there are
    #: (the pull fallback splits the queues), and where to start ("earliest", "latest").
    api: str = "push"
    prefetch: int = 1000
    consumers: int = 1
    consume_from: str = "earliest"
    #: The runner's pid when the worker is a process (it exits if orphaned), else 0.
    parent_pid: int = 0


def push_consumer_available() -> bool:
    """True when ``fabric.PushConsumer`` exists (then consumers use it)."""
    try:
        from fabric import PushConsumer  # noqa: F401
    except ImportError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Worker:
    """What producers and consumers share: the spec, the events, the sink, the recorder."""

    def __init__(self, spec: WorkerSpec, controls: Controls, sink: ReportSink) -> None:
        self.spec = spec
        self.controls = controls
        self.sink = sink
        self.pid = os.getpid()
        self.recorder = Recorder(spec.role, spec.index)

    def orphaned(self) -> bool:
        """True when this worker is a process whose runner is gone."""
        return bool(self.spec.parent_pid) and os.getppid() != self.spec.parent_pid

    def wait_for(self, go: Event, stop: Event) -> bool:
        """Wait for ``go``; False when ``stop`` was set (or the runner died) first."""
        while not go.wait(self.spec.tick):
            if stop.is_set() or self.orphaned():
                return False
        return not stop.is_set()

    def report(self, kind: str, **extra: Any) -> None:
        self.sink.put(self.recorder.take(kind, self.pid, **extra))


class _ProducerWorker(_Worker):
    def run(self) -> None:
        spec = self.spec
        producer = Producer(
            spec.group,
            nameservers=spec.nameserver,
            send_timeout=spec.send_timeout,
            compress_threshold=-1,
        )
        producer.start()
        try:
            self._run(producer)
        finally:
            producer.shutdown(spec.send_timeout)

    def _run(self, producer: Producer) -> None:
        spec = self.spec
        body = body_maker(spec.size, spec.run_id, spec.index)
        for seq in range(spec.warmup):
            producer.send(Message(spec.topic, body(seq, KIND_WARMUP)))
        self.sink.put(Report(kind="ready", role=spec.role, index=spec.index, pid=self.pid))
        if not self.wait_for(self.controls.go_produce, self.controls.stop_produce):
            self.report("final", final=True)
            return
        send = self._sender(producer, body)
        rec = self.recorder
        stop = self.controls.stop_produce
        tick = spec.tick
        # With a duration the count is open: only the deadline (or a stop) ends the loop.
        count = sys.maxsize if spec.duration > 0 else spec.count
        step = spec.batch_size if spec.mode == "batch" else 1
        clock = time.monotonic
        began = clock()
        deadline = began + spec.duration if spec.duration > 0 else float("inf")
        next_tick = began + tick
        rec.first = time.time()
        seq = 0
        while seq < count:
            n = min(step, count - seq)
            send(seq, n)
            seq += n
            now = clock()
            if now >= next_tick:
                self.report("tick")
                next_tick = now + tick
                if stop.is_set() or self.orphaned():
                    break
            if now >= deadline:
                break
        flushed = producer.flush(spec.send_timeout + 5.0)
        rec.last = time.time()
        if not flushed:
            # Sends still open after the flush timeout have no outcome: count them failed.
            rec.failed("no outcome (flush timed out)", max(0, seq - self._outcomes()))
        self.report("final", final=True)

    def _outcomes(self) -> int:
        rec = self.recorder
        return rec.total_ok + rec.total_failed

    def _sender(self, producer: Producer, body: Callable[..., bytes]) -> Callable[[int, int], None]:
        """The function sending ``n`` messages from sequence number ``seq`` in this mode."""
        spec = self.spec
        topic, size, index = spec.topic, spec.size, spec.index
        sent, ack, fail = self.recorder.sent, self.recorder.ack, self.recorder.failed
        clock = time.perf_counter_ns
        mode = spec.mode

        if mode == "sync":
            send = producer.send

            def sync(seq: int, n: int) -> None:
                msg = Message(topic, body(seq))
                began = clock()
                try:
                    result = send(msg)
                except Exception as exc:
                    fail(type(exc).__name__)
                    return
                if result.status is _SUCCESS:
                    ack(seq, size, (clock() - began) // 1000)
                else:
                    fail(result.status.name)

            return sync

        if mode == "async":
            send_async = producer.send_async

            def done(seq: int, began: int, outcome: object) -> None:
                # Runs on the producer's I/O thread: count, never raise.
                status = getattr(outcome, "status", None)
                if status is _SUCCESS:
                    ack(seq, size, (clock() - began) // 1000)
                elif isinstance(outcome, BaseException):
                    fail(type(outcome).__name__)
                else:
                    fail(getattr(status, "name", "unknown outcome"))

            def async_(seq: int, n: int) -> None:
                msg = Message(topic, body(seq))
                began = clock()
                try:
                    send_async(msg, functools.partial(done, seq, began))
                except Exception as exc:
                    fail(type(exc).__name__)

            return async_

        if mode == "oneway":
            send_oneway = producer.send_oneway

            def oneway(seq: int, n: int) -> None:
                try:
                    send_oneway(Message(topic, body(seq)))
                except Exception as exc:
                    fail(type(exc).__name__)
                    return
                sent(index, seq, size, None)

            return oneway

        send_batch = producer.send_batch

        def batch(seq: int, n: int) -> None:
            msgs = [Message(topic, body(s)) for s in range(seq, seq + n)]
            began = clock()
            try:
                results = send_batch(msgs)
            except Exception as exc:
                fail(type(exc).__name__, n)
                return
            # Every message of a call has the call's latency.
            latency = (clock() - began) // 1000
            for i, result in enumerate(results):
                if result.status is _SUCCESS:
                    sent(index, seq + i, size, latency)
                else:
                    fail(result.status.name)

        return batch


class _ConsumerWorker(_Worker):
    def run(self) -> None:
        spec, controls = self.spec, self.controls
        self.sink.put(
            Report(kind="ready", role=spec.role, index=spec.index, pid=self.pid, api=spec.api)
        )
        if not self.wait_for(controls.go_consume, controls.stop_consume):
            self.report("final", final=True, api=spec.api)
            return
        run: _PushRun | _PullRun
        run = _PushRun(spec, self.on_message) if spec.api == "push" else _PullRun(spec, self)
        try:
            run.start()
            while not controls.stop_consume.wait(spec.tick):
                if self.orphaned():
                    break
                self.report("tick", queues=run.assignment(), api=spec.api)
        finally:
            run.shutdown()
        self.report("final", final=True, api=spec.api)

    def on_message(self, msg: MessageExt) -> None:
        """Count one message."""
        now = time.time()
        # born_timestamp is in ms: the latency is good to 1 ms (see the module docstring).
        latency = int(now * 1_000_000) - msg.born_timestamp * 1000
        body = msg.body
        header = parse_header(body)
        if header is None or header[1] != self.spec.run_id:
            self.recorder.consumed(None, 0, len(body), latency, now, msg.msg_id)
        elif header[0] == KIND_MEASURED:
            self.recorder.consumed(header[2], header[3], len(body), latency, now, msg.msg_id)


class _PushRun:
    """A fabric.PushConsumer subscribed to the topic with the worker's listener."""

    def __init__(self, spec: WorkerSpec, listener: Callable[[MessageExt], None]) -> None:
        from fabric import ConsumeStatus, PushConsumer

        success = ConsumeStatus.CONSUME_SUCCESS

        def listen(msg: MessageExt) -> Any:
            listener(msg)
            return success

        self.consumer = PushConsumer(
            spec.group,
            nameservers=spec.nameserver,
            prefetch=spec.prefetch,
            consume_from=spec.consume_from,
        )
        self.consumer.subscribe(spec.topic, "*", listen)

    def start(self) -> None:
        self.consumer.start()

    def assignment(self) -> list[str]:
        return [_queue_name(mq) for mq in self.consumer.assignment()]

    def shutdown(self) -> None:
        self.consumer.shutdown()


class _PullRun:
    """The fallback without PushConsumer: a PullConsumer, one long-polling thread per queue.

    Consumer ``i`` of ``n`` takes every n-th queue of the topic (sorted), from the first
    offset still stored ("earliest") or from the end ("latest").
    """

    def __init__(self, spec: WorkerSpec, worker: _ConsumerWorker) -> None:
        self.spec = spec
        self.worker = worker
        self.consumer = PullConsumer(spec.group, nameservers=spec.nameserver)
        self.queues: list[MessageQueue] = []
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    def start(self) -> None:
        spec = self.spec
        self.consumer.start()
        self.queues = sorted(self.consumer.queues(spec.topic))[spec.index :: spec.consumers]
        for mq in self.queues:
            if spec.consume_from == "earliest":
                offset = self.consumer.min_offset(mq)
            else:
                offset = self.consumer.max_offset(mq)
            thread = threading.Thread(
                target=self._pull, args=(mq, offset), name=f"bench-pull {mq}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def _pull(self, mq: MessageQueue, offset: int) -> None:
        pull, handle = self.consumer.pull, self.worker.on_message
        stopping = self.stopping
        while not stopping.is_set():
            try:
                result = pull(mq, offset, _PULL_BATCH, _PULL_WAIT)
            except Exception as exc:
                if stopping.is_set():
                    return
                self.worker.recorder.failed(f"pull: {type(exc).__name__}")
                stopping.wait(_PULL_WAIT)  # back off before asking the broker again
                continue
            if result.status is PullStatus.FOUND:
                for msg in result.messages:
                    handle(msg)
            offset = result.next_offset

    def assignment(self) -> list[str]:
        return [_queue_name(mq) for mq in self.queues]

    def shutdown(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(_PULL_WAIT + self.consumer.request_timeout * 2)
        self.consumer.shutdown()


def _queue_name(mq: MessageQueue) -> str:
    return f"{mq.broker_name}#{mq.queue_id}"


def run_worker(spec: WorkerSpec, controls: Controls, sink: ReportSink) -> None:
    """Run one worker to the end; any exception becomes an ``error`` Report."""
    worker: _ProducerWorker | _ConsumerWorker
    if spec.role == "producer":
        worker = _ProducerWorker(spec, controls, sink)
    else:
        worker = _ConsumerWorker(spec, controls, sink)
    try:
        worker.run()
    except Exception as exc:
        logger.opt(exception=exc).debug("fabric bench: {} {} failed", spec.role, spec.index)
        worker.report("error", final=True, error=_describe(exc), api=spec.api)


def process_main(spec: WorkerSpec, controls: Controls, sink: ReportSink) -> None:
    """Entry point of a worker process: quiet stdout, WARNING logs to stderr, no SIGINT.

    The runner alone handles Ctrl-C (a terminal sends SIGINT to the whole process group)
    and stops its workers through ``controls``. Anything printed goes to stderr, so the
    runner's stdout holds only its table or JSON.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout = sys.stderr
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.enable("fabric")
    run_worker(spec, controls, sink)
