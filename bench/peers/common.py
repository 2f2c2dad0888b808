"""What every peer module shares: settings, jobs and outcomes, worker processes, servers.

The parts:

* :class:`Settings`: counts, size and limits of one invocation.
* :class:`Job` and :class:`Outcome`: what a worker function gets and returns. Every peer
  module implements the same worker functions, each ``fn(job, ready) -> Outcome`` and
  defined at module level (they run in a worker process):

  - ``produce``: one producer sends ``job.count`` messages of ``job.size`` bytes to
    ``job.dest``; ``first`` is the first send, ``last`` the last acknowledgement.
  - ``consume``: subscribe to ``job.dest``, call ``ready(info)``, then read and
    acknowledge ``job.count`` messages; ``first`` is when reading began, ``last`` the last
    acknowledgement. Used both to drain a pre-loaded destination and, subscribed first,
    for the end-to-end run.
  - ``sync_latency``: one message in flight, ``job.samples`` times (capped at
    ``job.cap_s`` seconds); ``latencies_ns``.
  - ``prepare`` / ``cleanup``: create and delete ``job.dest``.

  Each checks what it sent or read (messages and bytes) and raises
  :class:`CountMismatchError` on any difference.
* :class:`Scenario` and :class:`Group`: the rows of the table, and the server they run on.
* :class:`Worker`: a spawned Python process that runs worker functions on request.
* :class:`ServerProcess`: a peer server started on 127.0.0.1 with its own data directory,
  waited for (with a timeout) and stopped by its own PID (terminate, wait, kill).

Times are ``time.monotonic()``, which is CLOCK_MONOTONIC on Linux and so comparable
between the producer and the consumer processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final, Protocol

#: Seconds a server gets to become ready.
READY_TIMEOUT: Final = 60.0
#: Seconds a server gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT: Final = 20.0
#: Seconds a worker process gets to start and to stop.
WORKER_TIMEOUT: Final = 30.0
#: Unmeasured round trips before the measured ones of a sync-latency job.
SYNC_WARMUP: Final = 100


class BenchError(RuntimeError):
    """A benchmark step failed (a server did not start, a worker failed or timed out)."""


class CountMismatchError(BenchError):
    """Messages or bytes sent, stored or read differ from what the run expected."""


def check_counts(what: str, messages: int, nbytes: int, count: int, size: int) -> None:
    """Raise CountMismatchError unless ``messages == count`` and ``nbytes == count * size``."""
    if messages != count or nbytes != count * size:
        raise CountMismatchError(
            f"{what}: {messages} messages / {nbytes} bytes, expected {count} / {count * size}"
        )


def check_equal(what: str, got: int, expected: int) -> None:
    """Raise CountMismatchError unless ``got == expected``."""
    if got != expected:
        raise CountMismatchError(f"{what}: {got}, expected {expected}")


# ---------------------------------------------------------------------------------------
# Settings, jobs, outcomes, scenarios
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """One invocation's parameters."""

    #: Messages per throughput run (brokers); raw ZeroMQ runs send twice as many.
    count: int = 100_000
    #: Body size in bytes.
    size: int = 1024
    #: Runs of each scenario; cells are medians.
    runs: int = 3
    #: Sync-latency samples per run (RabbitMQ takes a quarter of them).
    sync_samples: int = 20_000
    #: Seconds a sync-latency run may take; it stops early at this cap.
    sync_cap_s: float = 20.0
    #: Seconds any single job may take before the benchmark fails.
    job_timeout_s: float = 180.0


@dataclasses.dataclass(frozen=True)
class Job:
    """What a worker function is asked to do."""

    #: Connection parameters from the server (host, port, endpoints...).
    params: Mapping[str, Any]
    #: The queue, stream or topic of this job.
    dest: str
    count: int = 0
    size: int = 1024
    #: Seconds the job may take before it fails.
    timeout_s: float = 180.0
    #: Sync latency: samples wanted, the cap in seconds, unmeasured warm-up round trips.
    samples: int = 0
    cap_s: float = 20.0
    warmup: int = 0
    #: What the consumer's ``ready`` passed on (e.g. the endpoint it bound).
    via: Mapping[str, Any] | None = None
    #: True for the producer of an end-to-end run (a consumer is draining concurrently).
    e2e: bool = False
    #: The scenario's own options (Scenario.options).
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def deadline(self) -> float:
        """The monotonic time by which the job must be over."""
        return time.monotonic() + self.timeout_s


@dataclasses.dataclass
class Outcome:
    """What a worker function measured."""

    first: float = 0.0
    last: float = 0.0
    messages: int = 0
    bytes: int = 0
    latencies_ns: list[int] = dataclasses.field(default_factory=list)
    #: Anything else worth keeping in the JSON (acks pending at the end, statuses...).
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.last - self.first


Ready = Callable[[Mapping[str, Any] | None], None]


class WorkerFn(Protocol):
    def __call__(self, job: Job, ready: Ready) -> Outcome: ...


#: The workloads, in the order they run (and the table's columns).
WORKLOADS: Final = ("produce", "consume", "e2e", "sync")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One row of the table: the worker functions of ``module`` that measure it.

    ``workloads`` names what this row measures; the others show a dash. ``consume`` drains
    what ``produce`` loaded (produced untimed when "produce" is not measured). ``e2e``
    runs the consume function subscribed first and then the produce function, unless
    ``e2e_solo`` names one function that measures it alone (req/ack pipelines).
    """

    #: Short id, unique over all rows (JSON key, ``--only`` matches its ``peer``).
    key: str
    #: The ``--only`` name of the peer.
    peer: str
    #: Row label.
    label: str
    #: What an acknowledgement means for durability.
    durability: str
    #: The module holding the worker functions.
    module: str
    workloads: tuple[str, ...] = WORKLOADS
    produce: str = "produce"
    consume: str = "consume"
    e2e_solo: str | None = None
    sync: str = "sync_latency"
    prepare: str | None = "prepare"
    cleanup: str | None = "cleanup"
    #: Messages per throughput run, as a multiple of Settings.count.
    count_factor: float = 1.0
    #: Sync-latency samples per run, as a multiple of Settings.sync_samples.
    sync_factor: float = 1.0
    #: Passed to every job of the row as Job.options.
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Group:
    """Scenarios that share one server: ``server(scratch)`` yields its connection params."""

    name: str
    server: Callable[[Path], contextlib.AbstractContextManager[Mapping[str, Any]]]
    scenarios: Sequence[Scenario]


def single_row(
    name: str,
    server: Callable[[Path], contextlib.AbstractContextManager[Mapping[str, Any]]],
    module: str,
    label: str,
    durability: str,
    **fields: Any,
) -> list[Group]:
    """``groups()`` of a peer with one server and one row: group, key and peer ``name``."""
    row = Scenario(key=name, peer=name, label=label, durability=durability, module=module, **fields)
    return [Group(name=name, server=server, scenarios=[row])]


def payload(size: int) -> bytes:
    """The body every peer sends: ``size`` incompressible bytes (the same in one process)."""
    return os.urandom(size)


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def progress(text: str) -> None:
    """One progress line on stderr."""
    print(f"[peers {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it is true; BenchError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def time_round_trips(
    job: Job,
    out: Outcome,
    one: Callable[[], Any],
    check: Callable[[Any], None] | None = None,
    warmup: int | None = None,
) -> None:
    """The loop of every sync-latency job: one call of ``one()`` in flight at a time.

    ``warmup`` unmeasured calls (default ``job.warmup``), then up to ``job.samples``
    timed ones into ``out.latencies_ns``, stopping early once ``job.cap_s`` seconds have
    passed; sets ``out.first`` and ``out.last``. ``check`` gets each timed call's result,
    outside the timing.
    """
    samples = out.latencies_ns
    clock = time.perf_counter_ns
    for _ in range(job.warmup if warmup is None else warmup):
        one()
    out.first = time.monotonic()
    stop = out.first + job.cap_s
    for _ in range(job.samples):
        began = clock()
        result = one()
        samples.append(clock() - began)
        if check is not None:
            check(result)
        if time.monotonic() > stop:
            break
    out.last = time.monotonic()


def missing_binary(binary: str, package: str) -> list[str]:
    """[] when ``binary`` is on PATH, else the line saying which Debian package has it."""
    if shutil.which(binary) is None:
        return [f"no {binary} on PATH (Debian package {package})"]
    return []


# ---------------------------------------------------------------------------------------
# Machine figures
# ---------------------------------------------------------------------------------------


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs together, from /proc/stat (idle and iowait idle)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            values = [float(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values) - idle, sum(values)


def busy_pct(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """How busy all CPUs were between two machine_busy() readings (out of 100 x CPUs)."""
    total = after[1] - before[1]
    if total <= 0:
        return None
    return round(100 * (after[0] - before[0]) / total * (os.cpu_count() or 1), 1)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, what: str, threshold: float = 0.15, timeout: float = 30.0) -> None:
    """Wait until process ``pid`` uses under ``threshold`` of a core over half a second.

    Servers are busy for a while after they announce readiness (RabbitMQ's boot, the
    broker's page warmer); no run should start while they are. Gives up after
    ``timeout`` seconds with a progress line, not an error.
    """
    deadline = time.monotonic() + timeout
    window = 0.5
    while True:
        before, began = process_cpu_seconds(pid), time.monotonic()
        time.sleep(window)  # the measuring window of a CPU-use poll
        after = process_cpu_seconds(pid)
        if before is None or after is None:
            raise BenchError(f"{what} (pid {pid}) exited")
        if (after - before) / (time.monotonic() - began) < threshold:
            return
        if time.monotonic() > deadline:
            progress(f"{what} still busy after {timeout:.0f}s; starting anyway")
            return


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def debian_version(package: str) -> str | None:
    """The installed version of a Debian package, or None."""
    if shutil.which("dpkg-query") is None:
        return None
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def python_version_of(distribution: str) -> str | None:
    """The installed version of a Python distribution, or None."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------
# Peer servers
# ---------------------------------------------------------------------------------------


class ServerProcess:
    """A peer server this benchmark started: stopped by its own PID, never left behind.

    The command runs in a new session (so its PID is also the id of a process group
    holding only what it started), with its output in ``log``. When ``setpriv`` is there,
    the server also gets SIGTERM should the benchmark die without stopping it.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        command = list(args)
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, check: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
        """Poll ``check`` until it is true; BenchError (with the log's tail) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with status {self.process.returncode}{self.tail()}"
                )
            try:
                if check():
                    return
            except Exception:  # not up yet: connection refused, handshake cut...
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready within {timeout:.0f}s{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ""
        return f"\n--- last lines of {self.log} ---\n" + "\n".join(text[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate, wait up to ``timeout``, then kill; the process group goes too."""
        process = self.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                progress(f"{self.name} (pid {process.pid}) ignored SIGTERM; killing it")
                process.kill()
                process.wait(timeout)
        # Whatever the server started and left in its own process group (its id is our
        # child's PID): a shell wrapper's exec'd VM, helper processes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    """Stop ``server`` however the block ends."""
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serving(
    name: str,
    args: Sequence[str],
    log: Path,
    ready: Callable[[], bool],
    *,
    env: Mapping[str, str] | None = None,
    idle: bool = True,
) -> Iterator[ServerProcess]:
    """Start a ServerProcess, wait until ``ready()``, then (``idle``) until it is idle.

    The server is stopped however the block ends, its start included.
    """
    with running(ServerProcess(name, args, log, env=env)) as proc:
        proc.wait_ready(ready)
        if idle:
            wait_idle(proc.pid, name)
        yield proc


# ---------------------------------------------------------------------------------------
# Child Python processes
# ---------------------------------------------------------------------------------------

#: The directory holding the ``bench`` package (the repository root).
ROOT: Final = str(Path(__file__).resolve().parents[2])

# A child's bootstrap: wrap the inherited socket in a Connection, call module:function.
# Plain subprocesses rather than multiprocessing: nothing else (no resource tracker, no
# fork server) is started, and every process has a PID this benchmark stops itself.
_BOOT: Final = (
    "import importlib, sys\n"
    "from multiprocessing.connection import Connection\n"
    "module, function = sys.argv[1].split(':')\n"
    "getattr(importlib.import_module(module), function)(Connection(int(sys.argv[2])))\n"
)


class Child:
    """A Python process running ``module:function(conn)``, ``conn`` a Connection to us.

    The child sees EOF on its connection as soon as we are gone, whatever way we went.
    Its stdout goes nowhere (ours may carry JSON); its stderr is ours.
    """

    def __init__(self, name: str, target: str) -> None:
        self.name = name
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, target, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self._stopped = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, message: object = ("stop",), timeout: float = 5.0) -> None:
        """Send ``message`` (None: nothing), close our end; terminate, then kill. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if message is not None and self.alive():
            with contextlib.suppress(OSError):
                self.conn.send(message)
        self.conn.close()
        process = self.process
        for action in (None, process.terminate, process.kill):
            if action is not None and process.poll() is None:
                action()
            try:
                process.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue


def worker_main(conn: Connection) -> None:
    """A worker process: run ("call", module, function, job) requests until told to stop."""

    def ready(info: Mapping[str, Any] | None = None) -> None:
        conn.send(("ready", dict(info) if info else None))

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request[0] != "call":
            return
        _, module, function, job = request
        try:
            fn: WorkerFn = getattr(importlib.import_module(module), function)
            outcome = fn(job, ready)
        except BaseException as exc:
            kind = "mismatch" if isinstance(exc, CountMismatchError) else "error"
            conn.send((kind, f"{module}.{function}({job.dest}): {exc!r}\n{traceback.format_exc()}"))
            if not isinstance(exc, Exception):
                return
            continue
        conn.send(("ok", outcome))


class Worker:
    """A Python process that runs worker functions, one call at a time.

    ``submit`` sends a call; ``wait_ready`` waits for the function's ``ready(info)``;
    ``result`` waits for its Outcome. A failure in the function raises here (a
    CountMismatchError stays one); a timeout stops the process.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.child = Child(name, f"{__name__}:worker_main")
        self._busy = False

    def submit(self, module: str, function: str, job: Job) -> None:
        if self._busy:
            raise BenchError(f"worker {self.name} is busy")
        self.child.conn.send(("call", module, function, job))
        self._busy = True

    def _receive(self, timeout: float, what: str) -> tuple[str, Any]:
        conn = self.child.conn
        if not conn.poll(timeout):
            self.stop()
            raise BenchError(f"worker {self.name}: no {what} within {timeout:.0f}s")
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            code = self.child.process.poll()
            raise BenchError(f"worker {self.name} died (exit status {code})") from None
        if kind == "mismatch":
            self._busy = False
            raise CountMismatchError(value)
        if kind == "error":
            self._busy = False
            raise BenchError(value)
        return kind, value

    def wait_ready(self, timeout: float) -> Mapping[str, Any] | None:
        """Wait for the running function's ready(info); returns info."""
        kind, value = self._receive(timeout, "ready")
        if kind != "ready":
            raise BenchError(f"worker {self.name}: finished before it said ready")
        return value  # type: ignore[no-any-return]

    def result(self, timeout: float) -> Outcome:
        """Wait for the running function's Outcome (skipping ready messages)."""
        deadline = time.monotonic() + timeout
        while True:
            kind, value = self._receive(max(0.0, deadline - time.monotonic()), "result")
            if kind == "ok":
                self._busy = False
                assert isinstance(value, Outcome)
                return value

    def call(self, module: str, function: str, job: Job, timeout: float) -> Outcome:
        self.submit(module, function, job)
        return self.result(timeout)

    def stop(self) -> None:
        """Ask the process to exit (terminate it if busy), then make sure. Idempotent."""
        self.child.stop(None if self._busy else ("stop",))


@contextlib.contextmanager
def workers(*names: str) -> Iterator[list[Worker]]:
    """Start one Worker per name; all are stopped however the block ends."""
    started: list[Worker] = []
    try:
        for name in names:
            started.append(Worker(name))
        yield started
    finally:
        for worker in started:
            worker.stop()
