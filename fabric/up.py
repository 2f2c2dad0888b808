"""The ``fabric up`` subcommand: a whole local fabric (one NameServer, one broker) in one command.

``fabric up [--data DIR] [--flush async|sync] [--nameserver-bind EP] [--broker-bind EP]``
starts ``python -m fabric nameserver`` and then ``python -m fabric broker`` as child
processes (this module imports neither: they are separate programs), relays their READY
lines on stdout::

    READY nameserver tcp://127.0.0.1:9876
    READY broker tcp://127.0.0.1:10911

and runs until SIGINT or SIGTERM, which it forwards (broker first, so it can unregister
and flush, then the NameServer); it exits 0 once both exited cleanly. If a child dies
on its own, the other is stopped and ``fabric up`` exits 1. The children write their
logs to this process's stderr; their own process group keeps a terminal's Ctrl-C for
``fabric up`` alone, which stops them in order (on Linux they also get SIGTERM should
``fabric up`` itself die).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["add_arguments", "run"]

DEFAULT_DATA: Final = "./fabric-data"
DEFAULT_NAMESERVER_BIND: Final = "tcp://127.0.0.1:9876"
DEFAULT_BROKER_BIND: Final = "tcp://127.0.0.1:10911"
#: Seconds a child gets to print its READY line.
READY_TIMEOUT: Final = 30.0
#: Seconds a child gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT: Final = 10.0
_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_PR_SET_PDEATHSIG: Final = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``fabric up`` to ``parser``."""
    parser.add_argument(
        "--data",
        default=DEFAULT_DATA,
        metavar="DIR",
        help=f"data directory; the broker keeps its files in DIR/broker (default {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--flush",
        choices=("async", "sync"),
        default="async",
        help="broker flush mode (default async)",
    )
    parser.add_argument(
        "--nameserver-bind",
        default=DEFAULT_NAMESERVER_BIND,
        metavar="EP",
        help=f"NameServer endpoint (default {DEFAULT_NAMESERVER_BIND})",
    )
    parser.add_argument(
        "--broker-bind",
        default=DEFAULT_BROKER_BIND,
        metavar="EP",
        help=f"broker endpoint (default {DEFAULT_BROKER_BIND})",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=_LEVELS,
        default="INFO",
        metavar="LEVEL",
        help="log level of both servers (default INFO)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the local fabric until SIGINT or SIGTERM; the exit status."""
    return asyncio.run(_up(args))


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when this process dies, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


class _Child:
    """One server process: started, waited for READY, stopped."""

    def __init__(self, role: str, process: asyncio.subprocess.Process) -> None:
        self.role = role
        self.process = process
        self.endpoint = ""
        self._relay: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, role: str, argv: list[str]) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fabric",
            role,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        return cls(role, process)

    async def wait_ready(self, timeout: float) -> str:
        """The endpoint of the child's READY line; RuntimeError when it exits or times out."""
        stdout = self.process.stdout
        assert stdout is not None

        async def read() -> str:
            while True:
                line = await stdout.readline()
                if not line:
                    code = await self.process.wait()
                    raise RuntimeError(f"{self.role} exited with status {code} before READY")
                parts = line.decode("utf-8", "replace").split()
                if len(parts) == 3 and parts[0] == "READY" and parts[1] == self.role:
                    return parts[2]

        try:
            self.endpoint = await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{self.role} printed no READY line within {timeout:g}s") from None
        # Keep draining stdout so the child never blocks on a full pipe.
        self._relay = asyncio.get_running_loop().create_task(self._drain(stdout))
        return self.endpoint

    async def _drain(self, stdout: asyncio.StreamReader) -> None:
        while await stdout.readline():
            pass

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; the exit status."""
        if self.running:
            try:
                self.process.terminate()
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except asyncio.TimeoutError:
                print(f"fabric up: {self.role} did not stop; killing it", file=sys.stderr)
                self.process.kill()
        code = await self.process.wait()
        if self._relay is not None:
            self._relay.cancel()
        return code


async def _up(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    children: list[_Child] = []
    try:
        try:
            ns = await _Child.start(
                "nameserver", ["--bind", args.nameserver_bind, "--log-level", args.log_level]
            )
            children.append(ns)
            ns_endpoint = await _ready(ns, stop)
            print(f"READY nameserver {ns_endpoint}", flush=True)
            broker = await _Child.start(
                "broker",
                [
                    "--nameserver",
                    ns_endpoint,
                    "--data",
                    os.path.join(args.data, "broker"),
                    "--bind",
                    args.broker_bind,
                    "--flush",
                    args.flush,
                    "--log-level",
                    args.log_level,
                ],
            )
            children.append(broker)
            broker_endpoint = await _ready(broker, stop)
            print(f"READY broker {broker_endpoint}", flush=True)
        except (RuntimeError, OSError) as exc:
            print(f"fabric up: {exc}", file=sys.stderr)
            return 1
        except _Stopped:
            return 0 if await _stop_all(children) else 1
        waits = {asyncio.ensure_future(c.process.wait()): c for c in children}
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopping, *waits], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for future in waits:
            future.cancel()
        if stop.is_set():
            return 0 if await _stop_all(children) else 1
        dead = next(child for child in children if not child.running)
        print(
            f"fabric up: {dead.role} exited with status {dead.process.returncode}; stopping",
            file=sys.stderr,
        )
        await _stop_all(children)
        return 1
    finally:
        await _stop_all(children)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


class _Stopped(Exception):
    """A signal arrived while a child was starting."""


async def _ready(child: _Child, stop: asyncio.Event) -> str:
    ready = asyncio.ensure_future(child.wait_ready(READY_TIMEOUT))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if ready.done():
        return ready.result()
    ready.cancel()
    raise _Stopped


async def _stop_all(children: list[_Child]) -> bool:
    """Stop the children, newest first (the broker before the NameServer); True if all exited 0."""
    ok = True
    for child in reversed(children):
        was_running = child.running
        code = await child.stop()
        if was_running and code != 0:
            ok = False
    return ok
