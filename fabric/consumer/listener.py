"""Listener dispatch: ConsumeStatus, and the pools that call listeners off (or on) the loop.

A push consumer's core lives on one loop and must never block it, so listeners run
elsewhere: :class:`ThreadDispatcher` calls plain functions on worker threads (the
blocking API, and plain functions given to ``fabric.aio.PushConsumer``);
:class:`TaskDispatcher` awaits coroutine functions on the loop itself, in a fixed
number of worker tasks. Both take :class:`Job` objects on the loop and hand finished
jobs back to it in batches through one ``on_done(jobs)`` callback: a worker thread
wakes the loop only when no batch is already on its way, so a busy consumer costs one
``call_soon_threadsafe`` per batch, not per message.

No queue here needs a bound of its own: the broker pushes at most a window of messages
per queue (docs/PROTOCOL.md section 13.3), so the jobs waiting are bounded by the sum of
the windows of the queues a consumer owns.

A job whose queue stopped accepting (the queue was handed over, or the consumer shuts
down) before a worker took it is not run: it comes back with ``status`` None.

The messages of one push go to the worker threads in chunks (:meth:`ThreadDispatcher.
submit_all`): about one chunk per thread, at most ``MAX_CHUNK`` jobs each. A worker
runs its chunk's jobs one after the other. Handing each message to a thread on its own
cost a queue put, a thread wake-up and a GIL hand-over per message, which made the
hand-over, not the listener, the consumer's limit (end-to-end runs, issue 7).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from fabric.message import MessageExt

__all__ = [
    "AsyncListener",
    "ConsumeStatus",
    "Dispatcher",
    "Job",
    "Listener",
    "TaskDispatcher",
    "ThreadDispatcher",
]


class ConsumeStatus(enum.IntEnum):
    """What a listener returns for a message (RocketMQ ``ConsumeConcurrentlyStatus``)."""

    #: The message is done: its offset may be committed.
    CONSUME_SUCCESS = 0
    #: Not done: deliver it again later (a raised exception means the same).
    RECONSUME_LATER = 1


_SUCCESS: Final = ConsumeStatus.CONSUME_SUCCESS
_LATER: Final = ConsumeStatus.RECONSUME_LATER

#: Most jobs one worker thread takes at once (ThreadDispatcher.submit_all).
MAX_CHUNK: Final = 16

#: A listener for the blocking API: ``listener(msg) -> ConsumeStatus``.
Listener = Callable[[MessageExt], ConsumeStatus]
#: A coroutine listener for ``fabric.aio``: ``await listener(msg) -> ConsumeStatus``.
AsyncListener = Callable[[MessageExt], Awaitable[ConsumeStatus]]


class _Source(Protocol):
    """What a job needs of its queue: whether it still accepts work."""

    accepting: bool


class Job:
    """One message to hand to a listener, and, once done, the outcome.

    Attributes:
        source: the queue the message came from (its ``accepting`` is read by workers).
        msg: the message.
        listener: the function to call.
        status: CONSUME_SUCCESS or RECONSUME_LATER once run; None when it was not run.
        error: the exception the listener raised, or a TypeError for a bad return value.
        elapsed: seconds the listener took.
    """

    __slots__ = ("elapsed", "error", "listener", "msg", "source", "status")

    def __init__(self, source: _Source, msg: MessageExt, listener: Callable[[MessageExt], Any]):
        self.source = source
        self.msg = msg
        self.listener = listener
        self.status: ConsumeStatus | None = None
        self.error: BaseException | None = None
        self.elapsed = 0.0

    def settle(self, result: object) -> None:
        """Record the listener's return value (anything but a ConsumeStatus is a failure)."""
        if result is _SUCCESS or result is _LATER:
            self.status = result
        elif type(result) is int and result in (0, 1):
            self.status = ConsumeStatus(result)
        else:
            self.status = _LATER
            self.error = TypeError(f"the listener returned {result!r}, not a ConsumeStatus")


class Dispatcher(Protocol):
    """Where the core hands jobs (on its loop)."""

    def submit(self, job: Job) -> None:
        """Run ``job`` soon; its outcome comes back through ``on_done``."""

    def submit_all(self, jobs: list[Job]) -> None:
        """Run every job of ``jobs`` soon (in any order); outcomes through ``on_done``."""

    def stop(self) -> None:
        """Stop taking jobs; workers end once idle."""


DoneCallback = Callable[[list[Job]], object]


def _run(job: Job) -> None:
    started = time.monotonic()
    try:
        job.settle(job.listener(job.msg))
    except Exception as exc:
        job.status, job.error = _LATER, exc
    except BaseException as exc:  # SystemExit in a listener: still hand the job back
        job.status, job.error = _LATER, exc
        raise
    finally:
        job.elapsed = time.monotonic() - started


class ThreadDispatcher:
    """Plain-function listeners on ``threads`` daemon worker threads.

    Args:
        loop: the core's loop, where ``on_done`` runs.
        threads: the number of worker threads.
        on_done: called on the loop with a batch of finished jobs.
        name: a prefix for the threads' names.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, threads: int, on_done: DoneCallback, name: str
    ) -> None:
        self._loop = loop
        self._on_done = on_done
        self._jobs: queue.SimpleQueue[Job | list[Job] | None] = queue.SimpleQueue()
        self._done: list[Job] = []
        self._lock = threading.Lock()
        self._scheduled = False
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` for a worker thread."""
        self._jobs.put(job)

    def submit_all(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` in chunks: about one per thread, at most MAX_CHUNK jobs each."""
        n = len(jobs)
        if n <= 1:
            if n:
                self._jobs.put(jobs[0])
            return
        size = min(MAX_CHUNK, -(-n // len(self._threads)))
        put = self._jobs.put
        for i in range(0, n, size):
            put(jobs[i : i + size])

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            item = jobs.get()
            if item is None:
                return
            chunk: list[Job] = item if isinstance(item, list) else [item]
            try:
                for job in chunk:
                    if job.source.accepting:
                        _run(job)
            finally:
                # A BaseException in a listener ends this thread: every job of the chunk
                # still goes back (those not run with status None).
                self._finish(chunk)

    def _finish(self, chunk: list[Job]) -> None:
        with self._lock:
            self._done.extend(chunk)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:
            pass  # the loop is closed: the consumer is gone, nobody wants the outcome

    def _drain(self) -> None:
        with self._lock:
            jobs, self._done = self._done, []
            self._scheduled = False
        if jobs:
            self._on_done(jobs)

    def stop(self) -> None:
        """Tell every worker to end once the jobs queued before are taken."""
        if not self._stopped:
            self._stopped = True
            for _ in self._threads:
                self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the workers to end; True when all did.

        A worker still inside a listener is left running (it is a daemon thread).
        """
        self.stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)


class TaskDispatcher:
    """Coroutine listeners awaited on the loop, at most ``tasks`` at a time.

    Args:
        loop: the loop (the caller's, for fabric.aio).
        tasks: the most listener calls in progress at once.
        on_done: called on the loop with each finished job.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tasks: int, on_done: DoneCallback) -> None:
        self._loop = loop
        self._limit = tasks
        self._on_done = on_done
        self._waiting: collections.deque[Job] = collections.deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._stopped = False

    def submit(self, job: Job) -> None:
        """Run ``job`` in a worker task, starting one when fewer than the limit run."""
        if self._stopped:
            self._on_done([job])  # status None: not run
            return
        self._waiting.append(job)
        if len(self._workers) < self._limit:
            task = self._loop.create_task(self._work())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def submit_all(self, jobs: list[Job]) -> None:
        """Run every job of ``jobs`` (see :meth:`submit`)."""
        for job in jobs:
            self.submit(job)

    async def _work(self) -> None:
        waiting = self._waiting
        while waiting:
            job = waiting.popleft()
            try:
                if job.source.accepting and not self._stopped:
                    started = time.monotonic()
                    try:
                        job.settle(await job.listener(job.msg))
                    except Exception as exc:
                        job.status, job.error = _LATER, exc
                    finally:
                        job.elapsed = time.monotonic() - started
            finally:
                self._on_done([job])

    def stop(self) -> None:
        """Run no more jobs; jobs still waiting come back not run."""
        self._stopped = True

    async def cancel(self) -> None:
        """Cancel the listener calls still in progress (after shutdown's timeout)."""
        self._stopped = True
        tasks = list(self._workers)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a listener may swallow its cancellation (or wait_for may, gh-86296).
            await asyncio.wait(tasks, timeout=1.0)
