"""Flushing the CommitLog: ASYNC_FLUSH on an interval, SYNC_FLUSH by group commit.

One thread owns the flushing. Under SYNC_FLUSH a writer asks for its end offset to
become durable (``request``) and waits (``wait_flushed``); the thread takes whatever
has been written by the time it wakes, makes it durable with one fdatasync, and wakes
every writer the flush covers. Writers that arrive during a flush are served by the
next one, so one flush serves a whole batch of puts (group commit). Listeners
(``add_listener``) hear each new flushed offset once per flush, not once per put, which
lets an event loop resolve its own waiters in bulk.

``flush_inline`` lets the writer's own thread do a small flush when it is about to go
idle and the flush thread is not busy: a lone SYNC_FLUSH send then costs one msync and
no thread hand-over in either direction (two wake-ups of ~25-50 us each on this machine
kind). Only one flush runs at a time (``_flushing``); a large range, or a flush already
running, stays with the thread so the writer's loop never stalls on a long msync.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from loguru import logger

from .commitlog import CommitLog
from .config import FlushMode

__all__ = ["FlushService"]


class FlushService:
    """The flush thread and the waiting room of SYNC_FLUSH writers."""

    def __init__(
        self,
        log: CommitLog,
        mode: FlushMode,
        interval_ms: int,
        before_flush: Callable[[], None] | None = None,
    ) -> None:
        self._log = log
        self._mode = mode
        self._interval = interval_ms / 1000
        self._before_flush = before_flush
        self._work = threading.Condition(threading.Lock())
        self._done = threading.Condition(threading.Lock())
        self._requested = 0
        self._stopping = False
        self._listeners: list[Callable[[int], None]] = []
        # Held by whoever flushes: the thread, or a writer in flush_inline.
        self._flushing = threading.Lock()
        #: Offset known durable; only this service's thread raises it.
        self.flushed = log.flushed
        #: Flushes done and the duration of the last one, for stats.
        self.flush_count = 0
        self.last_flush_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="store-flush", daemon=True)

    def start(self) -> None:
        """Start the flush thread."""
        self._thread.start()

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(flushed_offset)`` from the flush thread after every flush."""
        self._listeners.append(listener)

    def request(self, offset: int) -> None:
        """Ask for everything below ``offset`` to become durable soon (wakes a SYNC flusher)."""
        with self._work:
            if offset > self._requested:
                self._requested = offset
                self._work.notify()

    def wait_flushed(self, offset: int, timeout: float) -> bool:
        """Block until everything below ``offset`` is durable; False after ``timeout`` seconds."""
        if self.flushed >= offset:
            return True
        self.request(offset)
        deadline = time.monotonic() + timeout
        with self._done:
            while self.flushed < offset:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    return self.flushed >= offset
                self._done.wait(remaining)
        return True

    def _run(self) -> None:
        sync = self._mode is FlushMode.SYNC_FLUSH
        while True:
            with self._work:
                if sync:
                    # Flush when a writer asks; and on the interval anyway, so that appends
                    # nobody waits for (oneway sends) become durable too.
                    if self._requested <= self.flushed and not self._stopping:
                        self._work.wait(self._interval)
                elif not self._stopping:
                    self._work.wait(self._interval)
                stopping = self._stopping
            try:
                self._flush_once()
            except Exception:  # a failing disk must not kill the thread silently
                logger.exception("commitlog flush failed; will retry")
                with self._work:
                    if not self._stopping:
                        self._work.wait(0.1)
            if stopping:
                return

    def flush_inline(self, offset: int, max_bytes: int) -> int | None:
        """Flush on the calling thread when that is quick: return the new flushed offset.

        Returns None, and flushes nothing, when the flush thread is flushing right now or
        more than ``max_bytes`` wait to be flushed; the caller then asks the thread
        (``request``). Listeners are not called: the caller has the offset.
        """
        if self.flushed >= offset:
            return self.flushed
        if self._log.wrote - self.flushed > max_bytes or self._stopping:
            return None
        if not self._flushing.acquire(blocking=False):
            return None
        try:
            self._flush_locked()
        finally:
            self._flushing.release()
        return self.flushed

    def _flush_once(self) -> None:
        with self._flushing:
            flushed = self._flush_locked()
        if flushed is None:
            return
        for listener in self._listeners:
            try:
                listener(flushed)
            except Exception:
                logger.exception("flush listener failed")

    def _flush_locked(self) -> int | None:
        """Flush what is written (``_flushing`` held); the new offset, None if nothing new."""
        if self._log.wrote <= self.flushed:
            return None  # nothing new: an idle interval, or flushed inline meanwhile
        if self._before_flush is not None:
            self._before_flush()
        began = time.monotonic()
        flushed = self._log.flush()
        self.last_flush_seconds = time.monotonic() - began
        self.flush_count += 1
        with self._done:
            self.flushed = flushed
            self._done.notify_all()
        return flushed

    def stop(self) -> None:
        """Flush what is written, stop the thread and release every waiter."""
        with self._work:
            self._stopping = True
            self._work.notify()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self._flush_once()
        with self._done:
            self._done.notify_all()
