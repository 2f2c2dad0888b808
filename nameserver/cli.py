"""The ``fabric nameserver`` subcommand: arguments, logging, run until SIGINT or SIGTERM.

``fabric nameserver [--bind ENDPOINT] [--heartbeat-expiry SECONDS] [--log-level LEVEL]``
binds, prints exactly one line on stdout, ``READY nameserver tcp://HOST:PORT`` (the real
port when ``--bind`` says 0), then serves until SIGINT or SIGTERM and exits 0. It exits
1 when it cannot bind. Logs go to stderr.
"""

from __future__ import annotations

import argparse

from fabric import loops
from fabric.errors import TransportError
from fabric.protocol.codes import DEFAULT_BROKER_EXPIRY
from fabric.serving import add_log_level, positive_float, serve_until_signal, setup_logging

from .server import DEFAULT_BIND, NameServer

__all__ = ["add_arguments", "run"]


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
        type=positive_float,
        default=DEFAULT_BROKER_EXPIRY,
        metavar="SECONDS",
        help="drop a broker this long after its last heartbeat "
        f"(default {DEFAULT_BROKER_EXPIRY:g})",
    )
    add_log_level(parser)


def run(args: argparse.Namespace) -> int:
    """Run the NameServer until SIGINT or SIGTERM; the exit status."""
    setup_logging(args.log_level, "fabric", "nameserver")
    return loops.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    server = NameServer(args.bind, expiry=args.heartbeat_expiry)
    return await serve_until_signal("nameserver", server, (TransportError,))
