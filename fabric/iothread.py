"""The client I/O thread: one asyncio loop in a background thread that owns every client socket.

The threading rule (stated here once; every other module relies on it):

    Each ZeroMQ socket is owned by one thread and one asyncio loop, and is created, used and
    closed only there. In a client process that thread is the IOThread: the blocking API
    never touches a socket, it hands work to the loop only through
    ``asyncio.run_coroutine_threadsafe`` (:meth:`IOThread.submit`, :meth:`IOThread.run`) or
    ``loop.call_soon_threadsafe`` (:meth:`IOThread.call_soon`), and waits on the returned
    ``concurrent.futures.Future``. Code already running on the loop (the ``fabric.aio``
    API, callbacks) awaits directly and must never block.

One front uses sockets of its own outside the IOThread: a blocking ``Producer.send``
sends on a DEALER owned by the calling thread (fabric.direct), and the rule holds there
too: one thread per socket, handed over under a lock only to close it.

pyzmq sockets are not thread-safe (its changelog and ``zeromq/pyzmq#2043``), and this is
the same rule as tornado's ``IOLoop.add_callback``. Servers follow it too: a server
process runs one asyncio loop in its main thread, which owns all of its sockets.

Usage::

    io = IOThread().start()
    try:
        result = io.run(some_coroutine(), timeout=5.0)
    finally:
        io.stop()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import zmq
import zmq.asyncio
from loguru import logger

from fabric.loops import new_event_loop

__all__ = ["IOThread"]

T = TypeVar("T")

_START_TIMEOUT = 10.0


class IOThread:
    """A daemon thread running one asyncio loop, plus the zmq context its sockets come from.

    Args:
        name: the thread's name (shows in logs and debuggers).
    """

    def __init__(self, name: str = "fabric-io") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._context: zmq.asyncio.Context | None = None
        self._ready = threading.Event()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> IOThread:
        """Start the thread and wait until its loop runs. Returns self."""
        if self._thread is not None:
            raise RuntimeError("IOThread already started")
        self._context = zmq.asyncio.Context()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"IOThread {self.name} did not start within {_START_TIMEOUT}s")
        return self

    def _main(self) -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Close what registered with :meth:`on_stop`, cancel all tasks, stop and join.

        Safe to call twice, and from any thread but the loop's own.
        """
        if self._stopped or self._thread is None or self._loop is None:
            self._stopped = True
            return
        self._stopped = True
        if self.in_loop_thread():
            raise RuntimeError("IOThread.stop() called from its own loop: it would deadlock")
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(timeout)
        except Exception:
            logger.exception("IOThread {}: shutdown did not finish cleanly", self.name)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error("IOThread {} did not stop within {}s", self.name, timeout)
        if self._context is not None:
            # Every socket is closed by now (closers ran with linger=0); destroy() also
            # closes any socket someone forgot, so term() cannot hang.
            self._context.destroy(linger=0)

    async def _shutdown(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                logger.exception("IOThread {}: a closer failed", self.name)
        self._closers.clear()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> IOThread:
        return self.start() if self._thread is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access -------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop (only for ``call_soon_threadsafe``-style use from other threads)."""
        if self._loop is None:
            raise RuntimeError("IOThread not started")
        return self._loop

    @property
    def context(self) -> zmq.asyncio.Context:
        """The zmq context; create sockets from it on the loop only."""
        if self._context is None:
            raise RuntimeError("IOThread not started")
        return self._context

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def on_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``await closer()`` on the loop when the thread stops (last registered first).

        Call it from the loop thread (e.g. right after creating a socket there).
        """
        self._closers.append(closer)

    def forget(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Undo :meth:`on_stop` (for an object closed before the thread stops)."""
        if closer in self._closers:
            self._closers.remove(closer)

    # -- handing work to the loop -------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a future any thread may wait on."""
        if self._stopped:
            coro.close()
            raise RuntimeError("IOThread stopped")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it returns (blocking API only).

        Raises:
            RuntimeError: called from the loop thread (it would deadlock).
            TimeoutError: no result within ``timeout`` seconds (the coroutine is cancelled).
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("IOThread.run() called from its own loop: await instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the coroutine itself raised TimeoutError
                raise
            future.cancel()
            raise TimeoutError(f"no result within {timeout}s") from None

    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Call ``callback(*args)`` on the loop, soon (``call_soon_threadsafe``)."""
        self.loop.call_soon_threadsafe(callback, *args)
