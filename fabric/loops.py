"""The event loop the fabric's own loops run on: uvloop where it is installed, else asyncio's.

Why (issue 7): the broker serves every request from one loop, and each request is one
wake-up of it. asyncio's loop spends its per-wake-up work in Python (the selector, the
ready queue, handle bookkeeping); uvloop does it in C on libuv. Measured on this machine
kind with the broker on uvloop: a sync send's p50 169-195 us against 204-218 us with
asyncio's loop, alternating runs, with the same throughput; every integration test
passed on it. The choice is made for the loops the fabric creates itself (``fabric
broker``, ``fabric nameserver``, the clients' I/O threads); ``fabric.aio`` runs on
whatever loop its caller runs.

``FABRIC_LOOP=asyncio`` in the environment forces asyncio's loop (to compare, or to rule
the loop out when debugging); ``FABRIC_LOOP=uvloop`` insists on uvloop and fails when it
is missing. uvloop is a dependency on CPython under Linux and macOS (pyproject.toml);
elsewhere asyncio's loop is used.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["ENV", "loop_factory", "new_event_loop", "run", "uses_uvloop"]

T = TypeVar("T")

#: The environment variable that picks the loop: "asyncio", "uvloop" or unset (auto).
ENV = "FABRIC_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The function that makes a new loop, as ``FABRIC_LOOP`` and the installed packages say.

    Raises:
        ValueError: ``FABRIC_LOOP`` names no known loop.
        ImportError: ``FABRIC_LOOP=uvloop`` and uvloop is not installed.
    """
    choice = os.environ.get(ENV, "").strip().lower()
    if choice not in ("", "auto", "asyncio", "uvloop"):
        raise ValueError(f"{ENV}={choice!r}: expected asyncio or uvloop")
    if choice == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the chosen kind (not set as the current one)."""
    return loop_factory()()


def uses_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    """True when ``loop`` is a uvloop loop."""
    return type(loop).__module__.startswith("uvloop")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on a new loop of the chosen kind."""
    runner_class = getattr(asyncio, "Runner", None)  # Python 3.11+
    if runner_class is None:
        return _Runner().run(main)
    with runner_class(loop_factory=loop_factory()) as runner:
        result: T = runner.run(main)
        return result


class _Runner:
    """What asyncio.Runner does for ``run``, for Python 3.10: the loop closed after the run."""

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        loop = new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(main)
        finally:
            try:
                _cancel_all(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
