"""Atomic, durable small-file writes (base layer: stdlib only).

A reader (or a process restarted after a crash) sees either the old file or the new
one, never a mix: the data goes to ``<path>.tmp``, is fsynced, renamed over ``path``
with ``os.replace``, and the directory is fsynced so the rename itself is durable.
Used by the broker's own state files and by a BROADCASTING consumer's offset file.
"""

from __future__ import annotations

import os

__all__ = ["write_atomic"]


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (creates the directory)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
