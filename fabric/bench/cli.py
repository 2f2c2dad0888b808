"""The ``fabric bench`` command line (and ``fabric-bench``): options, checks, output.

``fabric bench WORKLOAD [options]`` with WORKLOAD one of:

* ``producer``: send and report msgs/s, MB/s, born-to-acknowledged latency, failures;
* ``consumer``: consume the topic from its earliest offset (``--preload N`` first; a
  fresh topic is pre-loaded with ``--count`` messages) and report msgs/s, MB/s and
  born-to-consumed latency;
* ``e2e``: consumers subscribe, then producers send; end-to-end msgs/s (first send to
  last consumed), born-to-consumed latency, and a check that every acknowledged message
  was consumed (lost and duplicated messages, by id);
* ``latency``: one message in flight (sync sends from one producer); percentiles.

Against a running fabric (``--nameserver EP``, default tcp://127.0.0.1:9876) or a
throwaway local one (``--start-local async|sync``). While it runs, a live line on stderr;
at the end a table on stdout, or with ``--json`` one JSON object and nothing else.
Exit status 0 when all went well, 1 when a message failed or was lost, 2 for a bad
argument, 128 + N after signal N (Ctrl-C: 130).

Examples::

    fabric bench producer --start-local async --mode async --count 200000
    fabric bench e2e --nameserver tcp://127.0.0.1:9876 --producers 2 --consumers 2
    fabric bench latency --start-local sync --count 5000 --json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from loguru import logger

from fabric.bench.body import HEADER
from fabric.protocol.frames import MAX_BATCH_MESSAGES
from fabric.protocol.messages import MAX_QUEUE_NUMS

if TYPE_CHECKING:
    from fabric.bench.runner import BenchConfig

__all__ = ["MODES", "WORKLOADS", "add_arguments", "config_from", "main", "run"]

WORKLOADS: Final = ("producer", "consumer", "e2e", "latency")
MODES: Final = ("sync", "async", "oneway", "batch")
DEFAULT_NAMESERVER: Final = "tcp://127.0.0.1:9876"
#: Messages per run unless --count or --duration (latency sends one at a time: fewer).
DEFAULT_COUNT: Final = 100_000
DEFAULT_LATENCY_COUNT: Final = 10_000
_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

_HELP: Final = {
    "producer": "send: msgs/s, MB/s, born-to-acknowledged latency, failures",
    "consumer": "consume from the earliest offset: msgs/s, MB/s, born-to-consumed latency",
    "e2e": "consumers subscribe, producers send: end-to-end rate, latency, lost/duplicates",
    "latency": "one message in flight (sync sends): latency percentiles",
}


def _int_in(low: int, high: int | None = None, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {span}{why}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _common() -> argparse.ArgumentParser:
    """The options every workload takes."""
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument(
        "--nameserver",
        default=DEFAULT_NAMESERVER,
        metavar="EP[,EP...]",
        help=f"NameServer endpoints of a running fabric (default {DEFAULT_NAMESERVER})",
    )
    where.add_argument(
        "--start-local",
        choices=("async", "sync"),
        metavar="FLUSH",
        help="start a throwaway local fabric (NameServer and broker on port 0, temporary "
        "data, stopped on exit) whose broker flushes async or sync",
    )
    common.add_argument(
        "--topic", default="", help="topic (default: a fresh BenchTopic-<random>, created)"
    )
    common.add_argument(
        "--queues",
        type=_int_in(1, MAX_QUEUE_NUMS),
        default=8,
        metavar="N",
        help="queues per broker of a topic this run creates (default 8)",
    )
    common.add_argument(
        "--size",
        type=_int_in(HEADER.size, why=" bytes (the bench header)"),
        default=1024,
        metavar="BYTES",
        help="message body size (default 1024)",
    )
    amount = common.add_mutually_exclusive_group()
    amount.add_argument(
        "--count",
        type=_int_in(1),
        default=None,
        metavar="N",
        help=f"messages in all (default {DEFAULT_COUNT:,}; latency {DEFAULT_LATENCY_COUNT:,})",
    )
    amount.add_argument(
        "--duration", type=_seconds, default=None, metavar="SECONDS", help="run this long"
    )
    common.add_argument(
        "--warmup",
        type=_int_in(0),
        default=100,
        metavar="N",
        help="unmeasured sends per producer before the start (default 100)",
    )
    common.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two live lines on stderr (default 1)",
    )
    common.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="consumers: give up when nothing arrived for this long (default 10)",
    )
    common.add_argument(
        "--send-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds one send may take, retries included (default 10)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LEVELS,
        default="WARNING",
        metavar="LEVEL",
        help="client log level on stderr (default WARNING)",
    )
    return common


def _add_producer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--producers",
        type=_int_in(1),
        default=1,
        metavar="N",
        help="producers (more than one worker: one process each)",
    )
    parser.add_argument("--mode", choices=MODES, default="async", help="send mode (default async)")
    parser.add_argument(
        "--batch-size",
        type=_int_in(1, MAX_BATCH_MESSAGES),
        default=64,
        metavar="N",
        help="messages per send_batch call in batch mode (default 64)",
    )


def _add_consumer_options(parser: argparse.ArgumentParser, preload: bool) -> None:
    parser.add_argument(
        "--consumers",
        type=_int_in(1),
        default=1,
        metavar="N",
        help="consumers in one group (more than one worker: one process each)",
    )
    parser.add_argument(
        "--prefetch",
        type=_int_in(1, 65536),
        default=1000,
        metavar="N",
        help="push consumer window per queue, in messages (default 1000)",
    )
    parser.add_argument(
        "--pull",
        action="store_true",
        help="use PullConsumer (one thread per queue) even when PushConsumer exists",
    )
    if preload:
        parser.add_argument(
            "--preload",
            type=_int_in(0),
            default=None,
            metavar="N",
            help="send N messages first, unmeasured (default: --count into a fresh topic)",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the workloads of ``fabric bench`` and their options to ``parser``."""
    common = _common()
    workloads = parser.add_subparsers(dest="workload", metavar="WORKLOAD")
    workloads.required = True
    for name in WORKLOADS:
        sub = workloads.add_parser(
            name, parents=[common], help=_HELP[name], description=_HELP[name]
        )
        if name in ("producer", "e2e"):
            _add_producer_options(sub)
        if name in ("consumer", "e2e"):
            _add_consumer_options(sub, preload=name == "consumer")


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig of parsed arguments (defaults that depend on the workload filled in)."""
    from fabric.bench.runner import BenchConfig

    workload = args.workload
    duration = args.duration or 0.0
    if duration:
        count = 0
    elif args.count is not None:
        count = args.count
    else:
        count = DEFAULT_LATENCY_COUNT if workload == "latency" else DEFAULT_COUNT
    preload = getattr(args, "preload", None)
    if workload == "consumer":
        if preload is None:
            # A fresh topic is empty: fill it with what the run will consume.
            preload = 0 if args.topic else (count or DEFAULT_COUNT)
        if args.count is None and not duration and preload:
            count = preload
    return BenchConfig(
        workload=workload,
        nameserver=args.nameserver,
        start_local=args.start_local or "",
        topic=args.topic,
        queues=args.queues,
        size=args.size,
        count=count,
        duration=duration,
        producers=getattr(args, "producers", 1),
        consumers=getattr(args, "consumers", 1),
        mode="sync" if workload == "latency" else getattr(args, "mode", "async"),
        batch_size=getattr(args, "batch_size", 64),
        warmup=args.warmup,
        preload=preload or 0,
        prefetch=getattr(args, "prefetch", 1000),
        pull=getattr(args, "pull", False),
        interval=args.interval,
        idle_timeout=args.idle_timeout,
        send_timeout=args.send_timeout,
        json=args.json,
    )


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``fabric bench`` command; the exit status.

    The runner and the client library are imported here, not when ``fabric`` builds
    its parser, so other subcommands do not pay for them.
    """
    from fabric.bench import runner
    from fabric.bench.progress import LiveLine
    from fabric.bench.report import render_json, render_table

    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    logger.enable("fabric")
    config = config_from(args)
    line = LiveLine(sys.stderr)
    result, status = runner.run(config, line)
    if config.json:
        print(render_json(result), flush=True)
    else:
        print("\n".join(render_table(result)), flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``fabric-bench``: the same as ``fabric bench``."""
    parser = argparse.ArgumentParser(prog="fabric-bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    return run(args)
