"""Test helpers: run fabric servers as real processes on loopback ports, and always stop them.

A server is started as ``python -m fabric <role> ...`` with port 0 in its ``--bind``; the
helper waits, with a timeout, for the ``READY <role> <endpoint>`` line on its stdout and
returns a :class:`ServerProcess` that knows the real endpoint. Stopping is always
terminate, wait, then kill (the nats-server helper pattern); processes still running at
interpreter exit are stopped too. Both output pipes are drained by daemon threads, so a
chatty server never blocks on a full pipe, and its stderr stays available for asserts.

Usage::

    with run_nameserver(heartbeat_expiry=1.0) as ns:
        with run_broker(tmp_path / "b", ns.endpoint) as broker:
            ...  # connect to ns.endpoint and broker.endpoint
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import IO, Final

__all__ = [
    "LOOPBACK",
    "READY_TIMEOUT",
    "SMALL_STORE",
    "STOP_TIMEOUT",
    "ServerProcess",
    "run_broker",
    "run_nameserver",
    "spawn",
    "write_broker_config",
]

#: Bind here in tests: loopback, port chosen by the OS.
LOOPBACK: Final = "tcp://127.0.0.1:0"
#: Seconds a server gets to print its READY line.
READY_TIMEOUT: Final = 15.0
#: Seconds a server gets to exit after SIGTERM, before SIGKILL.
STOP_TIMEOUT: Final = 5.0
#: Store settings for tests: small segments and index files, no page warmer (a broker
#: starts in milliseconds and a test directory stays small).
SMALL_STORE: Final[Mapping[str, object]] = {
    "segment_size": 8 * 1024 * 1024,
    "cq_entries_per_file": 4096,
    "index_slots": 4096,
    "index_entries": 16384,
    "warm_ahead_bytes": 0,
}
_LOG_LINES: Final = 5000
_EOF: Final = object()

_live: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


def _nothing() -> None:
    pass


class ServerProcess:
    """A running server process and the endpoints it announced.

    Attributes:
        args: the full command line.
        process: the ``subprocess.Popen``.
        endpoints: role -> endpoint, from the READY lines.
    """

    def __init__(self, args: Sequence[str], process: subprocess.Popen[str]) -> None:
        self.args = list(args)
        self.process = process
        self.endpoints: dict[str, str] = {}
        self._stdout: queue.Queue[object] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._stdout_lines: collections.deque[str] = collections.deque(maxlen=_LOG_LINES)
        self._threads = [
            _drain(process.stdout, self._on_stdout, self._on_eof, f"stdout {process.pid}"),
            _drain(process.stderr, self._stderr.append, _nothing, f"stderr {process.pid}"),
        ]
        _live.add(self)

    def _on_stdout(self, line: str) -> None:
        self._stdout_lines.append(line)
        self._stdout.put(line)

    def _on_eof(self) -> None:
        self._stdout.put(_EOF)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def endpoint(self) -> str:
        """The endpoint of the first role announced."""
        return next(iter(self.endpoints.values()))

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def wait_ready(self, roles: Sequence[str], timeout: float = READY_TIMEOUT) -> None:
        """Wait until a ``READY <role> <endpoint>`` line arrived for each of ``roles``.

        Raises:
            RuntimeError: the process exited first, or the time ran out (the process is
                then stopped); the message ends with the tail of its stderr.
        """
        deadline = time.monotonic() + timeout
        missing = [r for r in roles if r not in self.endpoints]
        while missing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError(f"no READY {missing} within {timeout}s{self._tail()}")
            try:
                line = self._stdout.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is _EOF:
                code = self.process.wait(STOP_TIMEOUT)
                raise RuntimeError(f"exited with status {code} before READY{self._tail()}")
            assert isinstance(line, str)
            parts = line.split()
            if len(parts) == 3 and parts[0] == "READY" and parts[1] in missing:
                self.endpoints[parts[1]] = parts[2]
                missing.remove(parts[1])

    def _tail(self, lines: int = 30) -> str:
        self._join_drains(0.5)
        tail = list(self._stderr)[-lines:]
        return "\n--- stderr of " + " ".join(self.args) + " ---\n" + "\n".join(tail)

    def log_lines(self) -> list[str]:
        """Lines the process wrote to stderr so far (the last few thousand)."""
        return list(self._stderr)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The first stderr line containing ``text``, waiting up to ``timeout`` seconds.

        stderr is read by a thread of its own, so a line the process logged before its
        READY line (or before a reply) may reach :meth:`log_lines` just after it.

        Raises:
            AssertionError: no such line within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            for line in list(self._stderr):
                if text in line:
                    return line
            if time.monotonic() >= deadline:
                raise AssertionError(f"no log line with {text!r} within {timeout}s")
            pause.wait(0.02)

    def stdout_lines(self) -> list[str]:
        """Lines the process wrote to stdout so far (READY lines included)."""
        return list(self._stdout_lines)

    def error_lines(self) -> list[str]:
        """stderr lines logged at ERROR or CRITICAL, and tracebacks."""
        marks = ("| ERROR ", "| CRITICAL ", "Traceback (most recent call last)")
        return [line for line in self._stderr if any(m in line for m in marks)]

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process (when it still runs)."""
        if self.alive:
            self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit; its status. Raises subprocess.TimeoutExpired."""
        code = self.process.wait(timeout)
        self._join_drains(timeout)
        return code

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Terminate, wait up to ``timeout``, then kill; returns the exit status. Idempotent."""
        process = self.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._join_drains(timeout)
        _live.discard(self)
        return process.returncode

    def _join_drains(self, timeout: float) -> None:
        """After the process exited: let the drains reach EOF, then close the pipes."""
        if self.process.poll() is None:
            return
        for thread in self._threads:
            thread.join(timeout)
        if any(t.is_alive() for t in self._threads):
            return  # a grandchild holds the pipe open; leave it to the daemon threads
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.process.returncode}"
        return f"<ServerProcess pid={self.pid} {state} {self.endpoints}>"


def _drain(
    pipe: IO[str] | None,
    on_line: Callable[[str], object],
    on_eof: Callable[[], object],
    name: str,
) -> threading.Thread:
    assert pipe is not None

    def run() -> None:
        try:
            for line in pipe:
                on_line(line.rstrip("\n"))
        except (OSError, ValueError):
            pass  # the pipe was closed under us during teardown
        finally:
            on_eof()

    thread = threading.Thread(target=run, name=f"drain {name}", daemon=True)
    thread.start()
    return thread


def spawn(
    command: Sequence[str],
    *,
    ready: Sequence[str],
    ready_timeout: float = READY_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> ServerProcess:
    """Start ``python -m fabric *command`` and wait for a READY line for each of ``ready``.

    Args:
        command: the subcommand and its arguments, e.g. ``["nameserver", "--bind", ...]``.
        ready: the roles to wait for, e.g. ``["nameserver"]``.
        ready_timeout: seconds to wait for all READY lines.
        env: extra environment variables for the process.
        cwd: its working directory.

    Raises:
        RuntimeError: no READY in time, or the process exited; it is stopped either way.
    """
    args = [sys.executable, "-m", "fabric", *command]
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=full_env,
        cwd=cwd,
    )
    server = ServerProcess(args, process)
    try:
        server.wait_ready(ready, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def run_nameserver(
    bind: str = LOOPBACK,
    *,
    heartbeat_expiry: float | None = None,
    log_level: str = "INFO",
    ready_timeout: float = READY_TIMEOUT,
) -> ServerProcess:
    """Start ``fabric nameserver`` (port 0 by default) and wait for its READY line."""
    command = ["nameserver", "--bind", bind, "--log-level", log_level]
    if heartbeat_expiry is not None:
        command += ["--heartbeat-expiry", repr(heartbeat_expiry)]
    return spawn(command, ready=["nameserver"], ready_timeout=ready_timeout)


def run_broker(
    data: str | os.PathLike[str],
    nameservers: str | Sequence[str] = (),
    *,
    bind: str = LOOPBACK,
    flush: str | None = None,
    cluster: str | None = None,
    name: str | None = None,
    config: str | os.PathLike[str] | None = None,
    heartbeat_interval: float | None = None,
    auto_create_topics: bool | None = None,
    extra_args: Sequence[str] = (),
    log_level: str = "INFO",
    ready_timeout: float = READY_TIMEOUT,
) -> ServerProcess:
    """Start ``fabric broker`` on ``data`` (port 0 by default) and wait for its READY line.

    Args:
        data: the broker's data directory (store, topics, offsets).
        nameservers: NameServer endpoints, a list or one comma-separated string; none
            leaves the broker unregistered (clients then connect to it directly).
        bind: the ROUTER endpoint.
        flush: "async" or "sync" (default: the broker's, async).
        cluster: cluster name; name: broker name.
        config: a TOML or JSON config file (``--config``).
        heartbeat_interval: seconds between registrations.
        auto_create_topics: turn auto-creation on or off (default: the broker's, on).
        extra_args: more command-line arguments, as given.
        log_level: the broker's stderr log level.
        ready_timeout: seconds to wait for READY.
    """
    command = ["broker", "--data", os.fspath(data), "--bind", bind, "--log-level", log_level]
    endpoints = [nameservers] if isinstance(nameservers, str) else list(nameservers)
    if endpoints:
        command += ["--nameserver", ",".join(endpoints)]
    if flush is not None:
        command += ["--flush", flush]
    if cluster is not None:
        command += ["--cluster", cluster]
    if name is not None:
        command += ["--name", name]
    if config is not None:
        command += ["--config", os.fspath(config)]
    if heartbeat_interval is not None:
        command += ["--heartbeat-interval", repr(heartbeat_interval)]
    if auto_create_topics is not None:
        command.append("--auto-create-topics" if auto_create_topics else "--no-auto-create-topics")
    command += list(extra_args)
    return spawn(command, ready=["broker"], ready_timeout=ready_timeout)


def write_broker_config(
    path: str | os.PathLike[str],
    store: Mapping[str, object] | None = None,
    **fields: object,
) -> str:
    """Write a broker JSON config file for ``run_broker(config=...)``; returns its path.

    Args:
        path: the file to write (``.json``).
        store: the ``store`` table; default :data:`SMALL_STORE`.
        fields: top-level BrokerConfig fields, e.g. ``max_message_size=1024``.
    """
    data = {**fields, "store": dict(SMALL_STORE if store is None else store)}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return os.fspath(path)


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        server.stop()
