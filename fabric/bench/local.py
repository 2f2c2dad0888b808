"""A throwaway local fabric for fabric bench: one NameServer and one broker, always cleaned up.

``--start-local async|sync`` starts ``python -m fabric nameserver`` and ``python -m
fabric broker`` (the programs ``fabric up`` runs, with the broker's default store
settings) on 127.0.0.1 port 0, the broker's data in a fresh temporary directory, and
waits for their READY lines (fabric.testing.ServerProcess). :meth:`LocalFabric.stop`
stops the broker, then the NameServer (SIGTERM, wait, SIGKILL), and removes the
directory; the runner calls it on every way out, Ctrl-C and SIGTERM included.

Like ``fabric up``, the children run in their own session, so a terminal's Ctrl-C
reaches the bench alone and it stops them in order, and on Linux they get SIGTERM should
the bench die without stopping them (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Final

from fabric.testing import LOOPBACK, ServerProcess
from fabric.up import _die_with_parent

__all__ = ["LocalFabric"]

#: Seconds a server gets to print READY, and to exit after SIGTERM.
READY_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0


def _spawn(command: list[str], role: str) -> ServerProcess:
    """Start ``python -m fabric *command``; wait for READY ``role`` (stopped on failure).

    The Popen is fabric.testing.spawn's plus what ``fabric up`` gives its children: a
    session of their own and, on Linux, SIGTERM should the bench die (fabric.up's
    preexec_fn). fabric.testing.spawn takes neither, hence this function.
    """
    args = [sys.executable, "-m", "fabric", *command]
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
        preexec_fn=_die_with_parent(),
    )
    server = ServerProcess(args, process)
    try:
        server.wait_ready([role], READY_TIMEOUT)
    except BaseException:
        server.stop(STOP_TIMEOUT)
        raise
    return server


class LocalFabric:
    """One NameServer and one broker as child processes, in a temporary data directory.

    Args:
        flush: the broker's flush mode, "async" or "sync".
        log_level: the servers' stderr log level (their stderr is kept, not shown).

    Attributes:
        nameserver, broker: the ServerProcess of each, once started.
        data: the temporary directory.
    """

    def __init__(self, flush: str, log_level: str = "WARNING") -> None:
        self.flush = flush
        self.log_level = log_level
        self.nameserver: ServerProcess | None = None
        self.broker: ServerProcess | None = None
        self.data = ""

    def start(self) -> str:
        """Start both servers; the NameServer's endpoint.

        Raises:
            RuntimeError: a server exited or printed no READY line in time (both are
                stopped and the directory removed).
        """
        self.data = tempfile.mkdtemp(prefix="fabric-bench-")
        try:
            self.nameserver = _spawn(
                ["nameserver", "--bind", LOOPBACK, "--log-level", self.log_level], "nameserver"
            )
            self.broker = _spawn(
                [
                    "broker",
                    "--nameserver",
                    self.nameserver.endpoint,
                    "--data",
                    os.path.join(self.data, "broker"),
                    "--bind",
                    LOOPBACK,
                    "--flush",
                    self.flush,
                    "--log-level",
                    self.log_level,
                ],
                "broker",
            )
        except BaseException:
            self.stop()
            raise
        return self.nameserver.endpoint

    def describe(self) -> dict[str, object]:
        """What the JSON output says about the local fabric."""
        return {
            "flush": self.flush,
            "nameserver": self.nameserver.endpoint if self.nameserver else None,
            "broker": self.broker.endpoint if self.broker else None,
            "nameserver_pid": self.nameserver.pid if self.nameserver else None,
            "broker_pid": self.broker.pid if self.broker else None,
            "data": self.data,
        }

    def error_lines(self) -> list[str]:
        """ERROR lines and tracebacks the servers logged so far."""
        return [line for s in (self.nameserver, self.broker) if s for line in s.error_lines()]

    def stop(self) -> None:
        """Stop the broker, then the NameServer, and remove the data. Idempotent."""
        for server in (self.broker, self.nameserver):
            if server is not None:
                server.stop(STOP_TIMEOUT)
        if self.data:
            shutil.rmtree(self.data, ignore_errors=True)
