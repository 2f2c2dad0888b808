"""``python -m fabric``: the same command line as the ``fabric`` console script."""

from __future__ import annotations

from fabric.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
