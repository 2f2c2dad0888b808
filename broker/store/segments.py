"""An ordered run of equal-size MappedFiles named by their 20-digit start offset.

Used by the CommitLog (one run for the whole log) and by every ConsumeQueue. The
list of files is replaced, never mutated in place, so a reader that took
``files`` keeps a consistent snapshot while a writer rolls or retention deletes.
"""

from __future__ import annotations

import os

from loguru import logger

from .mapped_file import MappedFile, segment_name

__all__ = ["SegmentQueue"]


class SegmentQueue:
    """Segments of ``file_size`` bytes in ``directory``; offset o lives in file o // file_size."""

    def __init__(self, directory: str, file_size: int) -> None:
        self.directory = directory
        self.file_size = file_size
        self.files: list[MappedFile] = []

    def load(self) -> None:
        """Map every existing segment. Files that are not segments are left alone."""
        os.makedirs(self.directory, exist_ok=True)
        names = sorted(n for n in os.listdir(self.directory) if len(n) == 20 and n.isdigit())
        files: list[MappedFile] = []
        for name in names:
            start = int(name)
            if start % self.file_size:
                raise ValueError(
                    f"segment {name} in {self.directory} is not aligned to {self.file_size}"
                )
            if files and start != files[-1].end:
                logger.warning(
                    "gap before segment {} in {}: expected start {}",
                    name,
                    self.directory,
                    files[-1].end,
                )
            files.append(
                MappedFile(os.path.join(self.directory, name), start, self.file_size, create=False)
            )
        self.files = files

    @property
    def min_offset(self) -> int:
        """Start of the first segment (0 when there is none)."""
        files = self.files
        return files[0].start if files else 0

    @property
    def last(self) -> MappedFile | None:
        """The newest segment, or None."""
        files = self.files
        return files[-1] if files else None

    def create(self, start: int) -> MappedFile:
        """Create and append a new segment starting at ``start`` (a multiple of file_size)."""
        assert start % self.file_size == 0, start
        os.makedirs(self.directory, exist_ok=True)
        mf = MappedFile(
            os.path.join(self.directory, segment_name(start)), start, self.file_size, create=True
        )
        self.files = [*self.files, mf]
        return mf

    def find(self, offset: int) -> MappedFile | None:
        """The segment holding ``offset``, or None if it is below, above or in a gap."""
        files = self.files
        if not files:
            return None
        idx = (offset - files[0].start) // self.file_size
        if 0 <= idx < len(files):
            mf = files[idx]
            if mf.start <= offset < mf.end:
                return mf
        for mf in files:  # after a gap the arithmetic is off: fall back to a scan
            if mf.start <= offset < mf.end:
                return mf
        return None

    def drop_first(self) -> MappedFile | None:
        """Remove the oldest segment from the list (the caller destroys it)."""
        files = self.files
        if not files:
            return None
        self.files = files[1:]
        return files[0]

    def drop_after(self, offset: int) -> list[MappedFile]:
        """Remove every segment that starts at or after ``offset``; return them."""
        keep = [f for f in self.files if f.start < offset]
        gone = [f for f in self.files if f.start >= offset]
        self.files = keep
        return gone

    def close(self) -> None:
        """Close every segment."""
        for mf in self.files:
            mf.close()
        self.files = []
