"""``python -m bench.peers``: see bench/peers/cli.py."""

from __future__ import annotations

from bench.peers.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
