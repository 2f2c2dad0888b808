"""The ``fabric`` command line: one entry point, one subcommand per role.

Each subcommand lives in the module that owns it and registers itself here through
``_SUBCOMMANDS``: a name, a help line and the dotted path of a module exposing
``add_arguments(parser)`` and ``run(args) -> int``. Only the modules named here are
imported, when the parser is built; nothing else of a server is loaded.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# name -> (help, module path). The module provides add_arguments(parser) and run(args).
_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "nameserver": ("run a NameServer (route discovery)", "nameserver.cli"),
    "broker": ("run a broker (stores and serves messages)", "broker.cli"),
    "up": ("run a local fabric: one NameServer and one broker", "fabric.up"),
    "admin": (
        "administer topics, consumer groups, message queries and dead letters",
        "fabric.admin",
    ),
    "bench": ("benchmark a fabric: producer, consumer, e2e, latency", "fabric.bench.cli"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fabric", description="zmq-fabric command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, module_path) in _SUBCOMMANDS.items():
        module = importlib.import_module(module_path)
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen subcommand."""
    parser = _build_parser()
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    result: int = args._run(args)
    return result
