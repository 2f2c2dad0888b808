"""Keeps the pages just ahead of the CommitLog writer faulted in, from another core.

The first write into a never-touched page of a fresh segment costs an allocation, a
zero-fill and a page-table update: about 2.5 us per 1 KiB record on this machine kind,
more than the rest of an append. ``MappedFile.populate`` (madvise MADV_POPULATE_WRITE
through ctypes, which releases the GIL) does that work without changing any byte, so
this thread can run it beside the writer. The writer wakes it whenever it passes the
half-way mark of the warmed window (one comparison per append).
"""

from __future__ import annotations

import collections
import threading

from loguru import logger

from .commitlog import CommitLog
from .mapped_file import MappedFile

__all__ = ["PageWarmer"]


class PageWarmer:
    """Populates up to ``ahead`` bytes past the write position, in ``chunk``-byte steps."""

    def __init__(self, log: CommitLog, ahead: int, chunk: int = 1 << 20) -> None:
        self._log = log
        self._ahead = ahead
        self._chunk = chunk
        self._wake = threading.Event()
        self._stopping = False
        self.warmed = log.wrote
        self.supported = True
        self._files: collections.deque[MappedFile] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="store-warmer", daemon=True)

    def start(self) -> None:
        """Start the thread and hook it to the log's write position."""
        self._log.on_warm_mark = self._wake.set
        self._log.warm_mark = self._log.wrote
        self._thread.start()
        self._wake.set()

    def populate_later(self, mf: MappedFile) -> None:
        """Fault in a whole new file (a ConsumeQueue or Index file) in the background."""
        if self.supported and not self._stopping:
            self._files.append(mf)
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._warm()
                self._warm_files()
            except Exception:
                logger.exception("page warmer failed; appends go on unwarmed")
            if not self.supported:
                logger.info("page warming unsupported here (needs Linux 5.14+); disabled")
                self._log.warm_mark = 1 << 62
                return

    def _warm(self) -> None:
        log = self._log
        wrote = log.wrote
        active = log.segments.find(wrote)
        if active is None:
            return
        target = min(wrote + self._ahead, active.end)
        pos = max(self.warmed, wrote)
        if pos >= target:
            log.warm_mark = max(wrote, target - self._ahead // 2)
            return
        while pos < target and not self._stopping:
            n = min(self._chunk, target - pos)
            if not active.populate(pos - active.start, n):
                if not active.mm.closed:
                    self.supported = False
                return
            pos += n
            self.warmed = pos
            # Wake again once the writer is half-way through what is warm.
            log.warm_mark = pos - self._ahead // 2

    def _warm_files(self) -> None:
        while self._files and not self._stopping:
            mf = self._files.popleft()
            for pos in range(0, mf.size, self._chunk):
                if self._stopping or mf.mm.closed or not mf.populate(pos, self._chunk):
                    break
            if self._log.wrote > self._log.warm_mark:  # the log writer needs us first
                self._warm()

    def stop(self) -> None:
        """Stop the thread."""
        self._stopping = True
        self._log.warm_mark = 1 << 62
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
