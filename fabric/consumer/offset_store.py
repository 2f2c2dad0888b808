"""The local offset file of a BROADCASTING consumer: one JSON file per group and instance.

In BROADCASTING every member consumes every message, so the group's offsets on the
broker mean nothing; each member keeps its own (RocketMQ ``LocalFileOffsetStore``). The
file is ``<directory>/<group>@<instance>.json``: a restarted consumer with the same
group and ``instance_name`` finds its offsets and carries on where it stopped. Layout::

    {"version": 1, "group": "g", "instance": "DEFAULT",
     "offsets": [{"topic": "T", "broker_name": "broker-a", "queue_id": 0, "offset": 42}]}

``offset`` is the next offset to consume, as a committed offset on a broker. Writes are
atomic and durable: the data goes to ``<file>.tmp``, is fsynced, renamed over the file
with ``os.replace``, and the directory is fsynced; a reader sees the old file or the new
one, never a mix. A file that cannot be decoded is renamed to ``<file>.corrupt`` (with
a warning) and the consumer starts as a new one would.
"""

from __future__ import annotations

import os
import threading
from typing import Final

import msgspec
from loguru import logger

from fabric.atomic import write_atomic
from fabric.message import MessageQueue

__all__ = ["FILE_VERSION", "LocalOffsetStore", "offset_file_name"]

#: The ``version`` this module writes and reads.
FILE_VERSION: Final = 1


class _Entry(msgspec.Struct, kw_only=True):
    topic: str
    broker_name: str
    queue_id: int
    offset: int


class _File(msgspec.Struct, kw_only=True):
    version: int = FILE_VERSION
    group: str = ""
    instance: str = ""
    offsets: list[_Entry] = []


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(_File)


def offset_file_name(group: str, instance: str) -> str:
    """The file name (no directory) of a group's and instance's offsets."""
    return f"{group}@{instance}.json"


class LocalOffsetStore:
    """Offsets of one BROADCASTING consumer, in memory and in its file.

    :meth:`update` and :meth:`get` are cheap (a dict); :meth:`persist` writes the file
    when something changed. Thread-safe: the consumer updates on its loop and may
    persist from a worker thread.

    Args:
        directory: where the file lives (``~`` is expanded; created on first write).
        group: the consumer group.
        instance: the consumer's stable instance name.
    """

    def __init__(self, directory: str, group: str, instance: str) -> None:
        self.group = group
        self.instance = instance
        self.path = os.path.join(os.path.expanduser(directory), offset_file_name(group, instance))
        self._offsets: dict[MessageQueue, int] = {}
        self._dirty = False
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def load(self) -> dict[MessageQueue, int]:
        """Read the file (a missing file is an empty store); the offsets found."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return {}
        try:
            content = _decoder.decode(data)
            if content.version != FILE_VERSION:
                raise ValueError(f"version {content.version}, expected {FILE_VERSION}")
        except (msgspec.DecodeError, ValueError) as exc:
            aside = self.path + ".corrupt"
            logger.warning(
                "offset file {} cannot be read ({}); moved to {}, starting afresh",
                self.path,
                exc,
                aside,
            )
            os.replace(self.path, aside)
            return {}
        found = {
            MessageQueue(e.topic, e.broker_name, e.queue_id): e.offset
            for e in content.offsets
            if e.offset >= 0
        }
        with self._lock:
            self._offsets.update(found)
        return found

    def get(self, mq: MessageQueue) -> int:
        """The offset of ``mq``; -1 when none is known."""
        return self._offsets.get(mq, -1)

    def update(self, mq: MessageQueue, offset: int) -> None:
        """Remember ``offset`` (the next to consume) for ``mq``; written by :meth:`persist`."""
        if offset < 0:
            return
        with self._lock:
            if self._offsets.get(mq) != offset:
                self._offsets[mq] = offset
                self._dirty = True

    def snapshot(self) -> dict[MessageQueue, int]:
        """A copy of every offset."""
        with self._lock:
            return dict(self._offsets)

    def persist(self) -> bool:
        """Write the file when an offset changed since the last write; True when written.

        Raises:
            OSError: the file cannot be written (the offsets stay dirty).
        """
        with self._write_lock:
            with self._lock:
                if not self._dirty:
                    return False
                offsets = sorted(self._offsets.items())
                self._dirty = False
            content = _File(
                group=self.group,
                instance=self.instance,
                offsets=[
                    _Entry(topic=q.topic, broker_name=q.broker_name, queue_id=q.queue_id, offset=o)
                    for q, o in offsets
                ],
            )
            try:
                write_atomic(self.path, _encoder.encode(content))
            except OSError:
                with self._lock:
                    self._dirty = True
                raise
            return True
