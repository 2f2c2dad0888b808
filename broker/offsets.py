"""Committed consumer offsets: group -> topic -> queue id -> the next offset to consume.

Commits change memory only (they are on the pull path); the table is written to
``<data>/config/offsets.json`` (msgspec JSON, atomically: temp file + fsync +
``os.replace``) every ``offset_persist_interval`` seconds when it changed, and at
shutdown. A broker killed with SIGKILL therefore loses at most the commits of the last
interval: consumers then re-read a few messages (at-least-once), never skip any.

File format::

    {"offsets": {"<group>": {"<topic>": {"<queue id>": <offset>, ...}, ...}, ...}}
"""

from __future__ import annotations

import msgspec
from loguru import logger

from .persist import read_file, write_atomic

__all__ = ["ConsumerOffsets"]

_Table = dict[str, dict[str, dict[int, int]]]


class _OffsetsFile(msgspec.Struct, kw_only=True):
    offsets: _Table = {}


_decoder = msgspec.json.Decoder(_OffsetsFile)
_encoder = msgspec.json.Encoder()


class ConsumerOffsets:
    """The committed offsets of every consumer group, with a dirty flag for persisting.

    Args:
        path: the JSON file; None keeps offsets in memory only (tests).

    Raises:
        ValueError: the file exists but cannot be decoded.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._table: _Table = {}
        #: True when there are commits not yet written.
        self.dirty = False
        data = read_file(path) if path is not None else None
        if data is not None:
            try:
                self._table = _decoder.decode(data).offsets
            except msgspec.DecodeError as exc:
                raise ValueError(f"offset table {path} is unreadable: {exc}") from None

    def commit(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        """Record ``offset`` as the group's next offset to consume in that queue."""
        topics = self._table.get(group)
        if topics is None:
            topics = self._table[group] = {}
        queues = topics.get(topic)
        if queues is None:
            queues = topics[topic] = {}
        queues[queue_id] = offset
        self.dirty = True

    def query(self, group: str, topic: str, queue_id: int) -> int | None:
        """The committed offset, or None when the group never committed one here."""
        topics = self._table.get(group)
        if topics is None:
            return None
        queues = topics.get(topic)
        if queues is None:
            return None
        return queues.get(queue_id)

    def delete_topic(self, topic: str) -> int:
        """Forget every group's offsets of ``topic``; how many groups had some."""
        count = 0
        for group in list(self._table):
            topics = self._table[group]
            if topics.pop(topic, None) is not None:
                count += 1
                self.dirty = True
                if not topics:
                    del self._table[group]
        return count

    def groups(self) -> list[str]:
        """Every group with a committed offset, sorted."""
        return sorted(self._table)

    def snapshot(self) -> bytes:
        """The encoded table; clears the dirty flag (call :meth:`mark_dirty` if the write fails)."""
        self.dirty = False
        return _encoder.encode(_OffsetsFile(offsets=self._table))

    def mark_dirty(self) -> None:
        """A snapshot was not written after all: write again next time."""
        self.dirty = True

    def write(self, data: bytes) -> None:
        """Write a snapshot to the file (any thread; the snapshot is immutable bytes)."""
        if self.path is not None:
            write_atomic(self.path, data)

    def persist(self) -> bool:
        """Write the table now when it changed (blocking); True when written."""
        if not self.dirty:
            return False
        data = self.snapshot()
        try:
            self.write(data)
        except BaseException:
            self.mark_dirty()
            raise
        logger.debug("consumer offsets written to {}", self.path)
        return True
