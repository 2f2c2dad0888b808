"""Command-line plumbing shared by the server entry points (fabric nameserver, fabric broker).

The ``--log-level`` flag, the stderr sink (only entry points add sinks), and the life of a
server process: start, print ``READY <role> <endpoint>``, run until SIGINT or SIGTERM,
close. Imports only the stdlib and loguru, so both servers may use it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Final, Protocol

from loguru import logger

__all__ = [
    "LEVELS",
    "Server",
    "add_log_level",
    "positive_float",
    "serve_until_signal",
    "setup_logging",
]

LEVELS: Final = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class Server(Protocol):
    """What ``serve_until_signal`` runs: a server that starts on an endpoint and closes."""

    async def start(self) -> str: ...

    async def close(self) -> None: ...


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """Add ``--log-level LEVEL`` (default INFO)."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default="INFO",
        metavar="LEVEL",
        help="stderr log level: " + ", ".join(LEVELS) + " (default INFO)",
    )


def positive_float(text: str) -> float:
    """argparse type: a number greater than zero."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def setup_logging(level: str, *packages: str) -> None:
    """Send log lines at ``level`` and above to stderr and enable ``packages``' loggers."""
    logger.remove()
    logger.add(sys.stderr, level=level)
    for package in packages:
        logger.enable(package)


async def serve_until_signal(
    role: str, server: Server, start_errors: tuple[type[BaseException], ...]
) -> int:
    """Start ``server``, print its READY line, serve until SIGINT/SIGTERM, close it.

    Returns the exit status: 0 after a clean shutdown, 1 when the server cannot start
    (one of ``start_errors``, logged).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            endpoint = await server.start()
        except start_errors as exc:
            logger.error("{} cannot start: {}", role, exc)
            await server.close()
            return 1
        logger.info("{}: event loop {}", role, type(loop).__module__.split(".")[0])
        print(f"READY {role} {endpoint}", flush=True)
        await stop.wait()
        logger.info("{}: signal received, shutting down", role)
        await server.close()
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
    return 0
