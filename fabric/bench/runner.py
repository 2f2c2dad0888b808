"""The fabric bench runner: prepares the fabric and topic, drives the workers, merges the results.

:func:`run` takes a :class:`BenchConfig` and returns the result dict that the table and
the JSON output show (fabric.bench.report), and the exit status. Its steps:

1. start a local fabric if asked (fabric.bench.local), otherwise use ``--nameserver``;
2. create the topic with fabric.admin (a fresh ``BenchTopic-<hex>`` unless ``--topic``)
   and wait until the NameServer routes it;
3. for ``consumer``, pre-load it (one async producer in this process; not measured);
4. start the workers (fabric.bench.workloads): in a thread of this process when the run
   has one worker, else one ``spawn`` process each; wait until all are ready;
5. by workload: ``producer``/``latency`` let the producers go and wait for their final
   reports; ``consumer`` lets the consumers go and stops them once ``count`` messages
   arrived (or after ``duration``, or when nothing arrived for ``idle_timeout``); ``e2e``
   starts the consumers, waits until every queue is assigned, lets the producers go,
   and stops the consumers once every acknowledged message arrived (or nothing did for
   ``idle_timeout``), then compares the producers' and consumers' id bitmaps;
6. on every way out (errors, Ctrl-C, SIGTERM) stop the workers (events, then terminate)
   and the local fabric.

While it waits, the runner merges the workers' reports (fabric.bench.stats) and shows
the live line (fabric.bench.progress) every ``interval`` seconds.
"""

from __future__ import annotations

import datetime
import multiprocessing
import multiprocessing.context
import os
import platform
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec
import zmq

import fabric
from fabric.admin import Admin
from fabric.bench.body import body_maker
from fabric.bench.local import LocalFabric
from fabric.bench.progress import LiveLine, role_status
from fabric.bench.stats import Histogram, IdSet, Report, first_ids
from fabric.bench.workloads import (
    Controls,
    ReportSink,
    WorkerSpec,
    process_main,
    push_consumer_available,
    run_worker,
)
from fabric.consumer import PullConsumer
from fabric.errors import FabricError, NoRouteError, TopicExistsError
from fabric.message import Message, MessageQueue
from fabric.producer import Producer
from fabric.protocol.codes import SendStatus

__all__ = ["BenchConfig", "run"]

#: Seconds workers get to start (spawned interpreters import fabric) and to finish.
_START_LIMIT: Final = 60.0
_FINISH_LIMIT: Final = 30.0
#: Seconds e2e waits for the consumers to own every queue before producing anyway.
_ASSIGN_LIMIT: Final = 30.0
#: Seconds a route may take to appear after the topic was created.
_ROUTE_LIMIT: Final = 15.0
#: Seconds a dead worker's last reports may still be on their way.
_DEAD_GRACE: Final = 3.0
_LIST_LIMIT: Final = 10


class BenchConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A benchmark run, as the command line gave it."""

    workload: str
    nameserver: str = "tcp://127.0.0.1:9876"
    #: "async" or "sync": start a local fabric with this flush mode ("": use nameserver).
    start_local: str = ""
    topic: str = ""
    queues: int = 8
    size: int = 1024
    #: Messages in all (count mode), or 0 with ``duration`` > 0.
    count: int = 100_000
    duration: float = 0.0
    producers: int = 1
    consumers: int = 1
    mode: str = "async"
    batch_size: int = 64
    warmup: int = 100
    preload: int = 0
    prefetch: int = 1000
    #: Use the pull consumer even when PushConsumer exists.
    pull: bool = False
    interval: float = 1.0
    idle_timeout: float = 10.0
    send_timeout: float = 10.0
    json: bool = False


class _Interrupted(Exception):
    """SIGTERM arrived (SIGINT raises KeyboardInterrupt)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


class _Handle:
    """One worker: a thread of this process or a spawned process."""

    def __init__(
        self,
        spec: WorkerSpec,
        controls: Controls,
        sink: ReportSink,
        ctx: multiprocessing.context.SpawnContext | None,
    ) -> None:
        self.spec = spec
        self.process: multiprocessing.process.BaseProcess | None = None
        self.thread: threading.Thread | None = None
        name = f"fabric-bench-{spec.role}-{spec.index}"
        if ctx is not None:
            self.process = ctx.Process(
                target=process_main, args=(spec, controls, sink), name=name, daemon=True
            )
        else:
            self.thread = threading.Thread(
                target=run_worker, args=(spec, controls, sink), name=name, daemon=True
            )
        self.dead_since = 0.0
        self.started = False

    def start(self) -> None:
        self.started = True
        if self.process is not None:
            self.process.start()
        elif self.thread is not None:
            self.thread.start()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        if self.process is not None:
            return self.process.is_alive()
        return self.thread is not None and self.thread.is_alive()

    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the worker to end; then terminate (processes)."""
        if self.thread is not None:
            if self.thread.ident is not None:
                self.thread.join(timeout)
            return
        process = self.process
        if process is None or process.pid is None:
            return
        process.join(timeout)
        if process.exitcode is None:
            process.terminate()
            process.join(5.0)
        if process.exitcode is None:
            process.kill()
            process.join(5.0)


class _Role:
    """The merged reports of one role's workers."""

    def __init__(self, name: str, workers: int) -> None:
        self.name = name
        self.workers = workers
        self.total = Histogram()
        self.interval = Histogram()
        self.ok = self.failed = self.nbytes = 0
        self.unique = self.duplicates = self.foreign = 0
        self.interval_ok = self.interval_bytes = 0
        self.first = 0.0
        self.last = 0.0
        self.reasons: dict[str, int] = {}
        self.ready: set[int] = set()
        self.final: set[int] = set()
        self.errors: dict[int, str] = {}
        self.pids: dict[int, int] = {}
        self.queues: dict[int, list[str]] = {}
        self.ids: list[dict[int, bytes]] = []
        self.duplicate_ids: list[str] = []
        self.api = ""
        #: When ok last grew (monotonic), for the idle timeout.
        self.progress_at = time.monotonic()

    def add(self, report: Report) -> None:
        if report.pid:
            self.pids[report.index] = report.pid
        if report.api:
            self.api = report.api
        if report.kind == "ready":
            self.ready.add(report.index)
            return
        if report.ok:
            self.progress_at = time.monotonic()
        self.ok += report.ok
        self.failed += report.failed
        self.nbytes += report.nbytes
        self.unique += report.unique
        self.duplicates += report.duplicates
        self.foreign += report.foreign
        self.interval_ok += report.ok
        self.interval_bytes += report.nbytes
        for reason, n in report.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.total.merge(report.buckets, report.low, report.high, report.total)
        self.interval.merge(report.buckets, report.low, report.high, report.total)
        if report.first and (not self.first or report.first < self.first):
            self.first = report.first
        if report.last > self.last:
            self.last = report.last
        if report.kind == "tick" and report.queues:
            self.queues[report.index] = report.queues
        if report.kind in ("final", "error"):
            self.final.add(report.index)
            self.ids.append(report.ids)
            self.duplicate_ids += report.duplicate_ids
            self.queues.pop(report.index, None)
        if report.kind == "error":
            self.errors[report.index] = report.error

    @property
    def all_ready(self) -> bool:
        return len(self.ready | self.final) >= self.workers

    @property
    def all_final(self) -> bool:
        return len(self.final) >= self.workers

    def status(self, dt: float, since_go: float) -> str:
        """This role's part of the live line; resets the interval figures."""
        rate = self.interval_ok / dt if dt > 0 else 0.0
        average = self.ok / since_go if since_go > 0 else 0.0
        mb = self.interval_bytes / dt / 1e6 if dt > 0 else 0.0
        hist = self.interval
        p50 = float(hist.percentile(0.5)) if hist.count else None
        p99 = float(hist.percentile(0.99)) if hist.count else None
        self.interval = Histogram()
        self.interval_ok = self.interval_bytes = 0
        return role_status(self.name, rate, average, mb, p50, p99)

    def result(self, seconds: float, latency: str) -> dict[str, Any]:
        """This role's figures for the table and the JSON output."""
        out: dict[str, Any] = {
            "workers": self.workers,
            "pids": [self.pids[i] for i in sorted(self.pids)],
            "messages": self.ok,
            "failures": self.failed,
            "failure_reasons": dict(sorted(self.reasons.items())),
            "bytes": self.nbytes,
            "seconds": round(seconds, 4),
            "msgs_per_s": round(self.ok / seconds, 1) if seconds > 0 else 0.0,
            "mb_per_s": round(self.nbytes / seconds / 1e6, 2) if seconds > 0 else 0.0,
            "latency": latency,
            "latency_us": self.total.summary() if self.total.count else None,
        }
        if self.errors:
            out["errors"] = [self.errors[i] for i in sorted(self.errors)]
        return out


class _Bench:
    """One run's workers, events, report queue and merged figures."""

    def __init__(
        self,
        config: BenchConfig,
        nameserver: str,
        topic: str,
        queue_names: list[str],
        run_id: int,
        consume_from: str,
        line: LiveLine,
    ) -> None:
        self.config = config
        self.line = line
        self.queue_names = queue_names
        self.notes: list[str] = []
        workload = config.workload
        producers = 0 if workload == "consumer" else config.producers
        consumers = config.consumers if workload in ("consumer", "e2e") else 0
        if workload == "latency":
            producers = 1
        self.roles = {
            "producer": _Role("producer", producers),
            "consumer": _Role("consumer", consumers),
        }
        ctx = multiprocessing.get_context("spawn") if producers + consumers > 1 else None
        self.sink: Any = ctx.Queue() if ctx is not None else queue.Queue()
        factory: Any = ctx.Event if ctx is not None else threading.Event
        self.controls = Controls(factory)
        self.api = "pull" if config.pull or not push_consumer_available() else "push"
        base = WorkerSpec(
            role="producer",
            index=0,
            nameserver=nameserver,
            topic=topic,
            size=config.size,
            run_id=run_id,
            tick=min(0.2, config.interval),
            send_timeout=config.send_timeout,
            parent_pid=os.getpid() if ctx is not None else 0,
        )
        self.handles: list[_Handle] = []
        for i in range(producers):
            spec = msgspec.structs.replace(
                base,
                index=i,
                count=config.count // producers + (1 if i < config.count % producers else 0),
                duration=config.duration,
                mode="sync" if workload == "latency" else config.mode,
                batch_size=config.batch_size,
                warmup=config.warmup,
                group="fabric_bench_producer",
            )
            self.handles.append(_Handle(spec, self.controls, self.sink, ctx))
        for i in range(consumers):
            spec = msgspec.structs.replace(
                base,
                role="consumer",
                index=i,
                group=f"fabric_bench_{run_id:08x}",
                api=self.api,
                prefetch=config.prefetch,
                consumers=consumers,
                consume_from=consume_from,
            )
            self.handles.append(_Handle(spec, self.controls, self.sink, ctx))
        self.go_at = 0.0
        #: Since when the idle timeout counts (monotonic).
        self.idle_from = 0.0
        self.next_line = float("inf")
        self.line_at = 0.0
        self.aborted = False
        self.interrupted = 0
        self.timed_out = False

    # --- the report pump -------------------------------------------------------------

    def pump(self, done: Callable[[], bool], limit: float) -> bool:
        """Merge reports and show the live line until ``done()``; False after ``limit`` s."""
        end = time.monotonic() + limit
        while not done():
            now = time.monotonic()
            if now >= end:
                return False
            if now >= self.next_line:
                self.show(now)
            wait = min(self.next_line, end, now + 0.1) - now
            try:
                report = self.sink.get(timeout=max(wait, 0.001))
            except queue.Empty:
                self.check_alive()
                continue
            self.handle(report)
        return True

    def handle(self, report: Report) -> None:
        self.roles[report.role].add(report)
        if report.kind == "error" and not self.aborted:
            self.line.note(f"{report.role} {report.index} failed: {report.error}")
            self.abort()

    def abort(self) -> None:
        """Stop every worker: the run cannot go on."""
        self.aborted = True
        self.controls.stop_all()

    def check_alive(self) -> None:
        """A worker that ended without a final report is an error (after a grace period)."""
        now = time.monotonic()
        for handle in self.handles:
            role = self.roles[handle.spec.role]
            index = handle.spec.index
            if index in role.final or handle.alive or not handle.started:
                continue
            if not handle.dead_since:
                handle.dead_since = now
            elif now - handle.dead_since > _DEAD_GRACE:
                code = handle.process.exitcode if handle.process is not None else None
                self.handle(
                    Report(
                        kind="error",
                        role=handle.spec.role,
                        index=index,
                        pid=handle.pid or 0,
                        error=f"exited with status {code} without a final report",
                    )
                )

    def show(self, now: float) -> None:
        dt = now - self.line_at
        since = now - self.go_at
        parts = [role.status(dt, since) for role in self.roles.values() if role.workers]
        failures = sum(role.failed for role in self.roles.values())
        self.line.show(since, parts, failures)
        self.line_at = now
        self.next_line = now + self.config.interval

    def start_clock(self) -> None:
        self.go_at = self.line_at = self.idle_from = time.monotonic()
        self.next_line = self.go_at + self.config.interval

    # --- the phases ------------------------------------------------------------------

    def start_workers(self) -> bool:
        # A worker process starts with SIGINT ignored (an ignored signal stays ignored
        # across exec): a terminal's Ctrl-C reaches the whole process group, but only
        # this process may act on it, even while a worker is still importing.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for handle in self.handles:
                handle.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        ready = self.pump(
            lambda: all(r.all_ready for r in self.roles.values()) or self.aborted, _START_LIMIT
        )
        if not ready:
            self.line.note(f"workers not ready within {_START_LIMIT:g}s")
            self.abort()
        return not self.aborted

    def run_producers(self) -> None:
        self.controls.go_produce.set()
        self.start_clock()
        self.pump(lambda: self.roles["producer"].all_final, float("inf"))

    def run_consumers(self, target: Callable[[], int]) -> None:
        """Consume until ``target()`` messages (unique for e2e) arrived, or duration/idle."""
        consumer = self.roles["consumer"]
        config = self.config
        e2e = config.workload == "e2e"

        def enough() -> bool:
            if self.aborted or consumer.all_final:
                return True
            now = time.monotonic()
            if not e2e and config.duration > 0:
                return now - self.go_at >= config.duration
            got = consumer.unique if e2e else consumer.ok
            if got >= target():
                return True
            if now - max(consumer.progress_at, self.idle_from) >= config.idle_timeout:
                self.timed_out = True
                return True
            return False

        self.idle_from = time.monotonic()
        self.pump(enough, float("inf"))
        self.controls.stop_consume.set()

    def wait_assigned(self) -> None:
        """e2e: wait until the consumers own every queue, each exactly once."""
        consumer = self.roles["consumer"]
        wanted = sorted(self.queue_names)

        def assigned() -> bool:
            owned = [q for queues in consumer.queues.values() for q in queues]
            return self.aborted or sorted(owned) == wanted

        if not self.pump(assigned, _ASSIGN_LIMIT):
            self.note(f"consumers did not own every queue within {_ASSIGN_LIMIT:g}s; producing")

    def finish(self) -> None:
        """Stop every worker and collect the final reports still coming."""
        self.controls.stop_all()
        self.pump(lambda: all(r.all_final for r in self.roles.values()), _FINISH_LIMIT)

    def close(self) -> None:
        """Make sure no worker is left (terminate what did not stop), close the queue."""
        self.controls.stop_all()
        for handle in self.handles:
            handle.stop(5.0)
        close = getattr(self.sink, "close", None)
        if close is not None:
            close()
            self.sink.cancel_join_thread()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.line.note(text)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "platform": platform.platform(),
        "fabric": fabric.__version__,
    }


def _prepare_topic(
    config: BenchConfig, nameserver: str, probe: PullConsumer
) -> tuple[str, bool, list[MessageQueue]]:
    """Create the topic unless it exists; wait for its route; (name, created, queues)."""
    topic = config.topic or f"BenchTopic-{secrets.token_hex(4)}"
    created = True
    deadline = time.monotonic() + _ROUTE_LIMIT
    backoff = threading.Event()
    with Admin(nameserver, timeout=config.send_timeout) as admin:
        while True:
            try:
                admin.create_topic(topic, queues=config.queues)
            except TopicExistsError:
                created = False
            except NoRouteError:
                # A broker that just printed READY registers a moment later.
                if time.monotonic() > deadline:
                    raise
                backoff.wait(0.05)
                continue
            break
    while True:
        try:
            queues = probe.queues(topic)
        except NoRouteError:
            queues = []
        if queues:
            return topic, created, sorted(queues)
        if time.monotonic() > deadline:
            raise NoRouteError(f"no route to topic {topic} within {_ROUTE_LIMIT:g}s")
        # The broker registers the new topic at once, but asynchronously: ask again soon.
        backoff.wait(0.05)


def _preload(config: BenchConfig, nameserver: str, topic: str, run_id: int, line: LiveLine) -> int:
    """Send ``config.preload`` messages (async, not measured); the number that failed."""
    line.note(f"pre-loading {config.preload:,} messages into {topic}")
    body = body_maker(config.size, run_id, 0)
    futures = []
    with Producer(
        "fabric_bench_preload",
        nameservers=nameserver,
        send_timeout=config.send_timeout,
        compress_threshold=-1,
    ) as producer:
        for seq in range(config.preload):
            futures.append(producer.send_async(Message(topic, body(seq))))
        producer.flush(config.send_timeout + 30.0)
    failed = 0
    for future in futures:
        if (
            not future.done()
            or future.exception() is not None
            or future.result().status is not SendStatus.SEND_OK
        ):
            failed += 1
    return failed


def _stored(probe: PullConsumer, queues: list[MessageQueue]) -> int:
    return sum(probe.max_offset(mq) for mq in queues)


def _wait_stored(
    probe: PullConsumer, queues: list[MessageQueue], target: int, limit: float
) -> tuple[int, float]:
    """Oneway: poll the queues' max offsets until they reach ``target``; (stored, when)."""
    deadline = time.monotonic() + limit
    backoff = threading.Event()
    while True:
        stored = _stored(probe, queues)
        if stored >= target or time.monotonic() > deadline:
            return stored, time.time()
        # No event says "stored": a oneway send has no reply. Ask again in 5 ms.
        backoff.wait(0.005)


def _verify(bench: _Bench) -> dict[str, Any]:
    """e2e: compare acknowledged and consumed ids (bitmaps per producer)."""
    producer, consumer = bench.roles["producer"], bench.roles["consumer"]
    acked: dict[int, int] = {}
    for ids in producer.ids:
        for p, bits in ids.items():
            acked[p] = acked.get(p, 0) | IdSet(bits).as_int()
    seen: dict[int, int] = {}
    dup: dict[int, int] = {}
    for ids in consumer.ids:
        for p, bits in ids.items():
            value = IdSet(bits).as_int()
            dup[p] = dup.get(p, 0) | (seen.get(p, 0) & value)
            seen[p] = seen.get(p, 0) | value
    lost = unexpected = 0
    lost_ids: list[str] = []
    for p in sorted(set(acked) | set(seen)):
        missing = acked.get(p, 0) & ~seen.get(p, 0)
        extra = seen.get(p, 0) & ~acked.get(p, 0)
        lost += missing.bit_count()
        unexpected += extra.bit_count()
        if len(lost_ids) < _LIST_LIMIT:
            lost_ids += [f"p{p}-{s}" for s in first_ids(missing, _LIST_LIMIT - len(lost_ids))]
    cross = sum(v.bit_count() for v in dup.values())
    duplicate_ids = list(consumer.duplicate_ids)
    for p in sorted(dup):
        if len(duplicate_ids) >= _LIST_LIMIT:
            break
        duplicate_ids += [f"p{p}-{s}" for s in first_ids(dup[p], _LIST_LIMIT - len(duplicate_ids))]
    return {
        "expected": sum(v.bit_count() for v in acked.values()),
        "consumed_unique": sum(v.bit_count() for v in seen.values()),
        "lost": lost,
        "duplicates": consumer.duplicates + cross,
        "unexpected": unexpected,
        "lost_ids": lost_ids,
        "duplicate_ids": duplicate_ids[:_LIST_LIMIT],
    }


_SEND_LATENCY: Final = "born-to-acknowledged (us clock)"
_CONSUME_LATENCY: Final = "born-to-consumed (1 ms resolution: born_timestamp is in ms)"


def _results(
    bench: _Bench, probe_stored: tuple[int, float, int] | None
) -> tuple[dict[str, Any], int]:
    """Per-role results and the failure count."""
    config = bench.config
    producer, consumer = bench.roles["producer"], bench.roles["consumer"]
    out: dict[str, Any] = {}
    failures = 0
    if producer.workers:
        seconds = producer.last - producer.first if producer.first else 0.0
        latency = "none (oneway: no acknowledgement)" if config.mode == "oneway" else _SEND_LATENCY
        if config.workload == "latency":
            latency = _SEND_LATENCY + ", one message in flight"
        elif config.mode == "batch":
            latency = _SEND_LATENCY + f", per send_batch call of {config.batch_size}"
        if probe_stored is not None:
            stored, stored_at, before = probe_stored
            seconds = stored_at - producer.first
        out["producer"] = producer.result(seconds, latency)
        out["producer"]["mode"] = "sync" if config.workload == "latency" else config.mode
        failures += producer.failed
        if probe_stored is not None:
            stored, _, before = probe_stored
            lost = max(0, producer.ok - (stored - before))
            out["producer"]["stored"] = stored - before
            out["producer"]["lost"] = lost
            failures += lost
    if consumer.workers:
        # The consumers' own rate: first to last message consumed (e2e adds its own row).
        seconds = consumer.last - consumer.first if consumer.first else 0.0
        out["consumer"] = consumer.result(seconds, _CONSUME_LATENCY)
        out["consumer"]["api"] = consumer.api or bench.api
        out["consumer"]["foreign"] = consumer.foreign
        out["consumer"]["duplicates"] = consumer.duplicates
        failures += consumer.failed
        if config.workload == "consumer":
            target = config.count
            short = 0 if config.duration > 0 else max(0, target - consumer.ok)
            out["consumer"]["expected"] = 0 if config.duration > 0 else target
            out["consumer"]["missing"] = short
            failures += short
    if config.workload == "e2e":
        check = _verify(bench)
        seconds = consumer.last - producer.first if consumer.first and producer.first else 0.0
        check["seconds"] = round(seconds, 4)
        check["messages"] = check["consumed_unique"]
        check["msgs_per_s"] = round(check["consumed_unique"] / seconds, 1) if seconds > 0 else 0.0
        check["mb_per_s"] = (
            round(check["consumed_unique"] * config.size / seconds / 1e6, 2) if seconds > 0 else 0.0
        )
        check["latency"] = _CONSUME_LATENCY
        check["latency_us"] = out["consumer"]["latency_us"]
        out["e2e"] = check
        failures += check["lost"]
    return out, failures


def _drive(bench: _Bench) -> None:
    """The workload's phases, once every worker is ready."""
    config = bench.config
    if config.workload in ("producer", "latency"):
        bench.run_producers()
    elif config.workload == "consumer":
        bench.controls.go_consume.set()
        bench.start_clock()
        bench.run_consumers(lambda: config.count)
    else:
        bench.controls.go_consume.set()
        bench.wait_assigned()
        if bench.aborted:
            return
        bench.run_producers()
        producer = bench.roles["producer"]
        if not bench.aborted:
            bench.run_consumers(lambda: producer.ok)


def run(config: BenchConfig, line: LiveLine) -> tuple[dict[str, Any], int]:
    """Run the benchmark ``config`` describes; (result dict, exit status).

    Call it from the main thread: it handles SIGINT and SIGTERM while it runs.

    The exit status is 0 when every message was sent (and, for ``consumer`` and
    ``e2e``, consumed), 1 when any failed or was lost or a worker failed, and
    128 + the signal number after SIGINT or SIGTERM (the partial results are returned).
    """
    run_id = secrets.randbits(32)
    started = datetime.datetime.now(datetime.timezone.utc)
    local: LocalFabric | None = None
    probe: PullConsumer | None = None
    bench: _Bench | None = None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    result: dict[str, Any] = {
        "tool": "fabric bench",
        "workload": config.workload,
        "date": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "config": msgspec.structs.asdict(config),
        "machine": _machine(),
        "nameserver": config.nameserver,
        "local": None,
        "run_id": f"{run_id:08x}",
    }
    errors: list[str] = []
    interrupted = 0
    probe_stored: tuple[int, float, int] | None = None
    try:
        try:
            nameserver = config.nameserver
            if config.start_local:
                local = LocalFabric(config.start_local)
                nameserver = local.start()
                result["nameserver"] = nameserver
                result["local"] = local.describe()
                line.note(
                    f"local fabric: nameserver {nameserver}, broker "
                    f"{local.describe()['broker']} (flush {config.start_local})"
                )
            probe = PullConsumer("fabric_bench_probe", nameservers=nameserver)
            probe.start()
            topic, created, queues = _prepare_topic(config, nameserver, probe)
            result["topic"] = {"name": topic, "queues": len(queues), "created": created}
            line.note(f"topic {topic} ({len(queues)} queues{'' if created else ', existing'})")
            if config.workload == "consumer" and config.preload:
                failed = _preload(config, nameserver, topic, run_id, line)
                result["preload"] = {"messages": config.preload, "failures": failed}
                if failed:
                    errors.append(f"pre-loading: {failed} messages failed")
            consume_from = "latest" if config.workload == "e2e" and not created else "earliest"
            names = [f"{mq.broker_name}#{mq.queue_id}" for mq in queues]
            bench = _Bench(config, nameserver, topic, names, run_id, consume_from, line)
            oneway = config.mode == "oneway" and config.workload == "producer"
            stored_before = 0
            if not errors and bench.start_workers():
                if oneway:
                    # After the warm-up sends: every producer is ready, none has begun.
                    stored_before = _stored(probe, queues)
                _drive(bench)
                bench.finish()
                if oneway and not bench.aborted:
                    target = stored_before + bench.roles["producer"].ok
                    stored, when = _wait_stored(probe, queues, target, _FINISH_LIMIT)
                    probe_stored = (stored, when, stored_before)
        except (KeyboardInterrupt, _Interrupted) as exc:
            interrupted = exc.args[0] if isinstance(exc, _Interrupted) else int(signal.SIGINT)
            line.note("interrupted: stopping")
            if bench is not None:
                bench.interrupted = interrupted
                try:
                    bench.finish()
                except (KeyboardInterrupt, _Interrupted):
                    pass  # a second signal: stop waiting for final reports
        except (FabricError, RuntimeError, TimeoutError, OSError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            line.note(f"{type(exc).__name__}: {exc}")
    finally:
        # Nothing may interrupt the cleanup: every process started here must be stopped.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            line.close()
            if bench is not None:
                bench.close()
            if probe is not None:
                probe.shutdown()
            if local is not None:
                local.stop()
                result["server_errors"] = local.error_lines()[-20:]
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, previous)
    failures = 0
    if bench is not None:
        results, failures = _results(bench, probe_stored)
        result["results"] = results
        for role in bench.roles.values():
            errors += [f"{role.name} {i}: {text}" for i, text in sorted(role.errors.items())]
        if bench.timed_out:
            errors.append(f"nothing consumed for {config.idle_timeout:g}s: stopped waiting")
        result["notes"] = bench.notes
        result["workers"] = {
            name: [h.pid for h in bench.handles if h.spec.role == name]
            for name in ("producer", "consumer")
        }
    result["failures"] = failures
    result["errors"] = errors
    result["interrupted"] = bool(interrupted)
    status = 128 + interrupted if interrupted else (1 if failures or errors else 0)
    result["ok"] = status == 0
    result["exit_status"] = status
    return result, status
