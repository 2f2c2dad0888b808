"""The ``fabric nameserver`` subcommand: arguments, logging, run until SIGINT or SIGTERM.

``fabric nameserver [--bind ENDPOINT] [--heartbeat-expiry SECONDS] [--log-level LEVEL]``
binds, prints exactly one line on stdout, ``READY nameserver tcp://HOST:PORT`` (the real
port when ``--bind`` says 0), then serves until SIGINT or SIGTERM and exits 0. It exits
1 when it cannot bind. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from loguru import logger

from fabric.errors import TransportError
from fabric.protocol.codes import DEFAULT_BROKER_EXPIRY

from .server import DEFAULT_BIND, NameServer

__all__ = ["add_arguments", "run"]

_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the nameserver's options to ``parser``."""
    parser.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        metavar="ENDPOINT",
        help=f"ROUTER endpoint to bind; port 0 picks a free port (default {DEFAULT_BIND})",
    )
    parser.add_argument(
        "--heartbeat-expiry",
        type=_positive_float,
        default=DEFAULT_BROKER_EXPIRY,
        metavar="SECONDS",
        help="drop a broker this long after its last heartbeat "
        f"(default {DEFAULT_BROKER_EXPIRY:g})",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LEVELS,
        default="INFO",
        metavar="LEVEL",
        help="stderr log level: " + ", ".join(_LEVELS) + " (default INFO)",
    )


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the NameServer until SIGINT or SIGTERM; the exit status."""
    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    logger.enable("fabric")
    logger.enable("nameserver")
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    server = NameServer(args.bind, expiry=args.heartbeat_expiry)
    try:
        endpoint = await server.start()
    except TransportError as exc:
        logger.error("nameserver cannot start: {}", exc)
        await server.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(f"READY nameserver {endpoint}", flush=True)
        await stop.wait()
        logger.info("nameserver: signal received, shutting down")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.close()
    return 0
