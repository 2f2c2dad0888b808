"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.store import MessageStore, StoreConfig


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MessageStore]:
    """A small real MessageStore under tmp_path (a module may define its own ``store``)."""
    config = StoreConfig(
        segment_size=4 * 1024 * 1024,
        max_message_size=64 * 1024,
        cq_entries_per_file=4096,
        index_slots=64,
        index_entries=256,
        warm_ahead_bytes=0,
    )
    with MessageStore(str(tmp_path / "store"), config) as opened:
        yield opened
