"""Fixtures of the store suite: stores that always close, and a loguru guard on ERROR lines."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from broker.store import MessageStore, StoreConfig

from ._support import small_config


class StoreLog:
    """WARNING and ERROR lines the store logged during one test.

    An ERROR line fails the test unless the test allowed it (``allow``), so a background
    thread that hits an exception cannot go unnoticed (tornado's ``ExpectLog`` habit).
    """

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        """Accept ERROR lines matching ``pattern`` (a regular expression)."""
        self._allowed.append(re.compile(pattern))

    def messages(self, level: str = "WARNING") -> list[str]:
        """The messages logged at ``level``."""
        return [msg for lvl, msg in self.lines if lvl == level]

    def unexpected_errors(self) -> list[str]:
        return [
            msg
            for lvl, msg in self.lines
            if lvl in ("ERROR", "CRITICAL") and not any(p.search(msg) for p in self._allowed)
        ]


@pytest.fixture
def store_log() -> Iterator[StoreLog]:
    """Collect the store's WARNING+ lines; fail the test on an unexpected ERROR."""
    log = StoreLog()

    def sink(message: Any) -> None:
        record = message.record
        log.lines.append((record["level"].name, record["message"]))

    logger.enable("broker.store")
    sink_id = logger.add(
        sink, level="WARNING", filter=lambda r: (r["name"] or "").startswith("broker.store")
    )
    try:
        yield log
    finally:
        logger.remove(sink_id)
        logger.disable("broker.store")
    unexpected = log.unexpected_errors()
    assert not unexpected, f"unexpected ERROR lines from the store: {unexpected}"


class Stores:
    """Opens MessageStores under one directory and closes every one of them at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._opened: list[MessageStore] = []

    def open(
        self,
        config: StoreConfig | None = None,
        root: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> MessageStore:
        store = MessageStore(
            str(root if root is not None else self.root), config or small_config(), **kwargs
        )
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        while self._opened:
            self._opened.pop().close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The store directory of a test."""
    return tmp_path / "store"


@pytest.fixture
def stores(root: Path, store_log: StoreLog) -> Iterator[Stores]:
    """A factory of stores rooted at ``root``; every store it opened is closed afterwards."""
    factory = Stores(root)
    try:
        yield factory
    finally:
        factory.close_all()
