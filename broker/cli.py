"""The ``fabric broker`` subcommand: arguments, logging, run until SIGINT or SIGTERM.

``fabric broker --nameserver EP[,EP...] --data DIR [--bind ENDPOINT] [--cluster NAME]
[--name NAME] [--flush async|sync] [--config FILE] [--log-level LEVEL]`` opens the store,
binds, prints exactly one line on stdout, ``READY broker tcp://HOST:PORT`` (the real port
when ``--bind`` says 0), registers with every NameServer, then serves until SIGINT or
SIGTERM: it stops accepting, answers what waits, unregisters, flushes and closes the
store, and exits 0. It exits 1 when it cannot start (address in use, store locked by
another broker) and 2 for a bad configuration. Logs go to stderr.

Flags override the config file (broker.config), which overrides the defaults.
"""

from __future__ import annotations

import argparse
import gc

from loguru import logger

from fabric import loops
from fabric.serving import add_log_level, positive_float, serve_until_signal, setup_logging

from .config import DEFAULT_BIND, BrokerConfig, BrokerConfigError, load_config

__all__ = ["add_arguments", "config_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the broker's options to ``parser``."""
    parser.add_argument(
        "--nameserver",
        metavar="EP[,EP...]",
        help="NameServer endpoints to register with, comma-separated",
    )
    parser.add_argument("--data", metavar="DIR", help="data directory (store, topics, offsets)")
    parser.add_argument(
        "--bind",
        metavar="ENDPOINT",
        help=f"ROUTER endpoint to bind; port 0 picks a free port (default {DEFAULT_BIND})",
    )
    parser.add_argument(
        "--advertise",
        metavar="ENDPOINT",
        help="endpoint registered with the NameServers (default: the bound one)",
    )
    parser.add_argument("--cluster", metavar="NAME", help="cluster name (default DefaultCluster)")
    parser.add_argument("--name", metavar="NAME", help="broker name (default broker-a)")
    parser.add_argument(
        "--flush",
        choices=("async", "sync"),
        help="async: acknowledge once in the page cache (default); sync: after fsync",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML (.toml) or JSON config file")
    parser.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        metavar="SECONDS",
        help="seconds between registrations with each NameServer (default 30)",
    )
    parser.add_argument(
        "--auto-create-topics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="create unknown topics on first send (default on)",
    )
    add_log_level(parser)


def config_from_args(args: argparse.Namespace) -> BrokerConfig:
    """The config file named by ``--config`` with the flags applied (validated).

    Raises:
        BrokerConfigError: unreadable file or a bad value.
    """
    nameservers = None
    if args.nameserver is not None:
        nameservers = [ep.strip() for ep in args.nameserver.split(",") if ep.strip()]
    return load_config(
        args.config,
        nameservers=nameservers,
        data_dir=args.data,
        bind=args.bind,
        advertise=args.advertise,
        cluster_name=args.cluster,
        broker_name=args.name,
        flush=args.flush,
        heartbeat_interval=args.heartbeat_interval,
        auto_create_topics=args.auto_create_topics,
    )


def run(args: argparse.Namespace) -> int:
    """Run the broker until SIGINT or SIGTERM; the exit status."""
    setup_logging(args.log_level, "fabric", "broker")
    try:
        config = config_from_args(args)
    except BrokerConfigError as exc:
        logger.error("broker: bad configuration: {}", exc)
        return 2
    _tune_gc()
    return loops.run(_serve(config))


#: Allocations between two young-generation collections in the broker (CPython's default
#: is 700). See _tune_gc.
GC_YOUNG_THRESHOLD = 50_000


def _tune_gc() -> None:
    """Make the cyclic GC cheaper for a long-running server process (entry point only).

    Every request allocates a few container objects; with the default threshold the
    collector ran every few hundred messages and its older generations rescanned the
    whole heap (modules, tables). ``gc.freeze`` moves what exists at start-up out of the
    collector's reach, and a larger young threshold collects in bigger, rarer steps.
    Measured on this machine kind: broker main-thread CPU 7.0 -> 6.5 us a message during
    async sends, +5% throughput. Cycles are still collected.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _serve(config: BrokerConfig) -> int:
    # Imported here: `fabric --help` and the other subcommands never load the server.
    from fabric.errors import TransportError

    from .server import BrokerServer
    from .store import StoreError

    server = BrokerServer(config)
    return await serve_until_signal(
        "broker", server, (TransportError, StoreError, ValueError, OSError)
    )
