"""``python -m fabric.bench``: the same as ``fabric bench`` and ``fabric-bench``."""

from __future__ import annotations

from fabric.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
