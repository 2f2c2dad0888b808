"""Start server processes for a test and check them when it ends (a plain helper module).

Import it as ``tests.servers``; pytest collects only ``test_*.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fabric.testing import ServerProcess

__all__ = ["started_servers"]


@contextmanager
def started_servers(
    run: Callable[..., ServerProcess],
) -> Iterator[Callable[..., ServerProcess]]:
    """Yield ``start(**kwargs)``, which runs ``run(**kwargs)`` and keeps the server.

    On leaving, every server started is stopped; then (unless the block raised) each
    must not have logged an ERROR line or a traceback.
    """
    started: list[ServerProcess] = []

    def start(**kwargs: object) -> ServerProcess:
        server = run(**kwargs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
    for server in started:
        assert not server.error_lines(), "\n".join(server.log_lines())
