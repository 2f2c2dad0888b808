"""The broker: stores messages in an mmap CommitLog and serves producers and consumers."""

from __future__ import annotations

from loguru import logger

logger.disable("broker")
