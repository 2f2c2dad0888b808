"""Fixed-size mmap segment file: the only user of ``mmap`` in the store.

A MappedFile is created at its full size (disk blocks reserved up front with
``posix_fallocate`` so that a full disk shows at creation, not as SIGBUS on a later
write into the mapping) and mapped shared read-write. Durability comes from
``os.fdatasync`` on the file descriptor, which on Linux writes back the pages
dirtied through the mapping and, unlike ``mmap.flush``, releases the GIL while it
waits for the disk.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import sys
from typing import Any

__all__ = ["CLOSED_ERRORS", "MADV_NORMAL", "MADV_RANDOM", "MappedFile", "segment_name"]

#: What touching a file that another thread (retention) unmapped raises: ValueError from
#: slicing, msync or fdatasync here, TypeError from struct.pack_into/unpack_from on a
#: closed mmap. Readers and flushers catch these and treat the file as gone.
CLOSED_ERRORS = (ValueError, TypeError)

#: madvise(2) advice that faults pages in writable without touching their contents
#: (Linux 5.14+). Used to warm pages ahead of the writer on another core.
_MADV_POPULATE_WRITE = 23


_MS_SYNC = 4
#: madvise(2) advice for the segment being written, and for the others (see ``MappedFile.advise``).
MADV_NORMAL = 0
MADV_RANDOM = 1


def _load_libc(name: str) -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


# ctypes releases the GIL around foreign calls, so populating and ranged flushes run
# beside the Python threads (mmap.flush holds the GIL for the whole msync).
_madvise = _load_libc("madvise")
_msync = _load_libc("msync")


def segment_name(start: int) -> str:
    """File name of a segment: its start offset as 20 zero-padded digits."""
    return f"{start:020d}"


class MappedFile:
    """One segment: ``size`` bytes mapped from ``path``, holding offsets [start, start + size).

    Attributes:
        path: the file.
        start: the offset of its first byte in the whole log or queue.
        size: its fixed size in bytes.
        mm: the mapping (read and write through slices and ``struct.pack_into``).
    """

    __slots__ = ("_addr", "fd", "mm", "path", "size", "start")

    def __init__(self, path: str, start: int, size: int, *, create: bool) -> None:
        self.path = path
        self.start = start
        self.size = size
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o644)
        try:
            if create:
                _preallocate(fd, size)
            else:
                actual = os.fstat(fd).st_size
                if actual < size:
                    # A segment shorter than configured (torn creation): extend with zeros.
                    _preallocate(fd, size)
                elif actual > size:
                    raise ValueError(f"{path} is {actual} bytes, larger than segment size {size}")
            self.mm = mmap.mmap(fd, size)
            self._addr = _address_of(self.mm)
        except BaseException:
            os.close(fd)
            if create:
                _unlink_quietly(path)
            raise
        self.fd = fd

    @property
    def end(self) -> int:
        """The offset one past the last byte of this segment."""
        return self.start + self.size

    def flush(self) -> None:
        """Make every write so far durable.

        Raises:
            ValueError: the file is (or was, during the call) closed by another thread.
        """
        fd = self.fd
        if fd < 0:
            raise ValueError("segment is closed")
        try:
            os.fdatasync(fd)
        except OSError:
            if self.fd < 0:  # closed by another thread (retention) during the call
                raise ValueError("segment was closed during the flush") from None
            raise

    def flush_range(self, pos: int, length: int) -> None:
        """Make the writes in [pos, pos + length) durable, and only those pages.

        A ranged msync(MS_SYNC) writes back just that range (and commits the journal),
        so pages warmed ahead of the writer are neither written back as zeros nor
        write-protected again. Falls back to ``flush`` where ctypes/msync is missing.
        """
        if _msync is None or self._addr == 0:
            self.flush()
            return
        if self.mm.closed:
            raise ValueError("segment is closed")
        page = mmap.PAGESIZE
        start = pos - pos % page
        end = min(self.size, pos + length)
        if end <= start:
            return
        if _msync(self._addr + start, end - start, _MS_SYNC) != 0:
            err = ctypes.get_errno()
            if self.mm.closed:
                # Unmapped by another thread (retention) between the check above and the
                # call: ENOMEM for a range no longer mapped. Callers treat this as closed.
                raise ValueError("segment was closed during the flush")
            raise OSError(err, f"msync of {self.path} failed: {os.strerror(err)}")

    def populate(self, pos: int, length: int) -> bool:
        """Fault in [pos, pos + length) writable, without the GIL; False when unsupported.

        Never changes the contents, so it is safe beside a writer. The first write to a
        page that was never touched costs several microseconds (allocate, zero, map);
        doing it here, ahead of the writer, takes that off the append path.
        """
        if _madvise is None or self._addr == 0 or self.mm.closed:
            return False
        length = min(length, self.size - pos)
        if length <= 0:
            return True
        page = mmap.PAGESIZE
        start = pos - pos % page
        return _madvise(self._addr + start, length + (pos - start), _MADV_POPULATE_WRITE) == 0

    def advise(self, advice: int) -> bool:
        """Tell the kernel how the mapping will be used (``MADV_RANDOM``, ``MADV_NORMAL``).

        Why the CommitLog's write segment is ``MADV_RANDOM``: with normal advice, faults
        on a file read ahead, and on Linux 6.16+ (ext4 large folios) the page cache then
        grows large folios as the writer moves on sequentially. Dirty state is per folio,
        so the ranged msync of one small record writes a whole large folio back: measured
        on this machine kind, a 1 KiB SYNC_FLUSH msync went from ~120 us to ~500 us once
        ~50 MB of a segment had been written. With MADV_RANDOM the faults (and the page
        warmer's populate) map single pages, and the msync writes one page. Returns False
        where madvise is unavailable.
        """
        if _madvise is None or self._addr == 0 or self.mm.closed:
            return False
        return _madvise(self._addr, self.size, advice) == 0

    def close(self) -> None:
        """Unmap and close (idempotent)."""
        if not self.mm.closed:
            self.mm.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def destroy(self) -> None:
        """Close and delete the file."""
        self.close()
        _unlink_quietly(self.path)

    def __repr__(self) -> str:
        return f"MappedFile({self.path!r}, start={self.start}, size={self.size})"


def _address_of(mm: mmap.mmap) -> int:
    """The mapping's address (the buffer export is released at once, so close() still works)."""
    if _madvise is None:
        return 0
    anchor = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def _preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        # Filesystems without fallocate support get a sparse file instead.
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
