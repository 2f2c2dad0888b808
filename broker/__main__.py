"""``python -m broker``: the same as ``fabric broker`` (see broker.cli)."""

from __future__ import annotations

import argparse

from broker import cli

__all__: list[str] = []


def main() -> int:
    """Parse the command line and run the broker."""
    parser = argparse.ArgumentParser(prog="python -m broker", description=cli.__doc__)
    cli.add_arguments(parser)
    return cli.run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
