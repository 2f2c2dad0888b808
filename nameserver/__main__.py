"""``python -m nameserver``: the same as ``fabric nameserver`` (see nameserver.cli)."""

from __future__ import annotations

import argparse

from nameserver import cli

__all__: list[str] = []


def main() -> int:
    """Parse the command line and run the NameServer."""
    parser = argparse.ArgumentParser(prog="python -m nameserver", description=cli.__doc__)
    cli.add_arguments(parser)
    return cli.run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
