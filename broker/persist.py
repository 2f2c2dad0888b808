"""Atomic small-file writes for the broker's own state (topic table, consumer offsets).

:func:`write_atomic` is :func:`fabric.atomic.write_atomic` (shared with the consumer's
offset file): a reader (or a broker restarted after a crash) sees either the old file or
the new one, never a mix.
"""

from __future__ import annotations

from fabric.atomic import write_atomic

__all__ = ["read_file", "write_atomic"]


def read_file(path: str) -> bytes | None:
    """The content of ``path``, or None when it does not exist."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
