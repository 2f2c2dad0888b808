"""The NameServer: holds the route table that brokers register into and clients look up."""

from __future__ import annotations

from loguru import logger

logger.disable("nameserver")
