"""``python -m bench.peers``: run every peer and the fabric, print the Markdown table.

Usage:
    python -m bench.peers [--quick] [--runs 3] [--count N] [--size 1024]
                          [--only rabbitmq,redis,nats,zmq,fabric] [--out FILE.md] [--json]

Starts each peer's server itself (127.0.0.1, a free port, a temporary data directory),
runs the workloads of bench/peers/common.py against it ``--runs`` times, stops it by its
PID, and goes on to the next. Prints the Markdown table (or, with ``--json``, one JSON
object with every run's figures) on stdout and writes the table to ``--out``; progress
goes to stderr. Exits 1 when a run fails, a count check included; 2 when a selected peer
is not installed (``bash bench/peers/install.sh`` installs them).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Final

from bench.peers.common import (
    SYNC_WARMUP,
    BenchError,
    CountMismatchError,
    Settings,
    busy_pct,
    machine_busy,
    progress,
)
from bench.peers.report import markdown, ratios, summarize_row
from bench.peers.runner import run_group

#: --only name -> module, in the order they run.
PEERS: Final = {
    "zmq": "bench.peers.zmq_raw",
    "redis": "bench.peers.redis_streams",
    "nats": "bench.peers.nats_jetstream",
    "rabbitmq": "bench.peers.rabbitmq",
    "fabric": "bench.peers.fabric_side",
}
#: --quick: messages per throughput run, sync samples, sync cap, runs.
QUICK: Final = {"count": 5_000, "sync_samples": 1_000, "sync_cap_s": 5.0, "runs": 1}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small counts, one run")
    parser.add_argument("--runs", type=int, help="runs of each scenario (default 3; quick 1)")
    parser.add_argument(
        "--count",
        type=int,
        help="messages per broker throughput run (default 100000; quick 5000); raw zmq: 2x",
    )
    parser.add_argument("--size", type=int, default=1024, help="body bytes (default 1024)")
    parser.add_argument(
        "--sync-samples",
        type=int,
        help="sync-latency samples per run (default 20000, RabbitMQ a quarter; quick 1000)",
    )
    parser.add_argument(
        "--sync-cap", type=float, help="seconds per sync-latency run at most (default 20)"
    )
    parser.add_argument(
        "--job-timeout", type=float, default=180.0, help="seconds any one job may take"
    )
    parser.add_argument(
        "--only", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}"
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in only if p not in PEERS]
    if unknown or not only:
        parser.error(f"--only: unknown {unknown}; choose from {','.join(PEERS)}")
    args.only = [p for p in PEERS if p in only]
    defaults = Settings()
    args.runs = args.runs or (QUICK["runs"] if args.quick else defaults.runs)
    args.count = args.count or (QUICK["count"] if args.quick else defaults.count)
    args.sync_samples = args.sync_samples or (
        QUICK["sync_samples"] if args.quick else defaults.sync_samples
    )
    args.sync_cap = args.sync_cap or (QUICK["sync_cap_s"] if args.quick else defaults.sync_cap_s)
    for name in ("runs", "count", "size", "sync_samples", "sync_cap", "job_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    mem = next(
        (
            int(line.split()[1]) / 2**20
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0.0,
    )
    os_name = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in _read("/etc/os-release").splitlines()
            if line.startswith("PRETTY_NAME=")
        ),
        platform.system(),
    )
    return (
        f"{os.cpu_count()} vCPU ({cpu}), {mem:.0f} GiB, {os_name}, kernel {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def filesystem(path: Path) -> str:
    """``fstype on device`` of the mount holding ``path``, from /proc/mounts."""
    best = ("", "?", "?")
    target = str(path.resolve())
    for line in _read("/proc/mounts").splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mount, fstype = fields[0], fields[1], fields[2]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[0]):
            best = (mount, fstype, device)
    return f"{best[1]} on {best[2]}"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    settings = Settings(
        count=args.count,
        size=args.size,
        runs=args.runs,
        sync_samples=args.sync_samples,
        sync_cap_s=args.sync_cap,
        job_timeout_s=args.job_timeout,
    )
    modules: dict[str, ModuleType] = {}
    problems: list[str] = []
    for name in args.only:
        try:
            module = importlib.import_module(PEERS[name])
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
            continue
        modules[name] = module
        problems += [f"{name}: {p}" for p in module.missing()]
    if problems:
        print("missing (bash bench/peers/install.sh installs the peers):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 2

    versions: dict[str, dict[str, str | None]] = {n: m.versions() for n, m in modules.items()}
    before = machine_busy()
    time.sleep(1.0)  # the idle check's measuring window
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "cpus": os.cpu_count(),
        "command": " ".join(["python -m bench.peers", shlex.join(given)]).strip(),
        "settings": {**dataclasses.asdict(settings), "sync_warmup": SYNC_WARMUP},
        "versions": versions,
        "busy_before_pct": busy_pct(before, machine_busy()),
        "servers": _servers(versions),
        "clients": _clients(versions),
    }
    previous = signal.signal(signal.SIGTERM, _terminate)
    scratch = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    meta["machine"] += f"; data in {scratch.parent} ({filesystem(scratch)})"
    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        for module in modules.values():
            for group in module.groups():
                rows += [summarize_row(r) for r in run_group(group, settings, scratch)]
    except CountMismatchError as exc:
        progress(f"COUNT MISMATCH: {exc}")
        return 1
    except BenchError as exc:
        progress(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt as exc:
        progress(f"interrupted ({exc or 'Ctrl-C'}); servers and workers stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(scratch, ignore_errors=True)
    meta["seconds"] = round(time.monotonic() - began, 1)
    results = {"meta": meta, "rows": rows, "ratios": ratios(rows)}
    table = markdown(results)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
        progress(f"table written to {args.out}")
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(table, end="")
    progress(f"all done in {meta['seconds']:.0f} s")
    return 0


def _servers(versions: dict[str, dict[str, str | None]]) -> str:
    names = {
        "rabbitmq-server": "RabbitMQ",
        "erlang": "Erlang",
        "redis-server": "Redis",
        "nats-server": "nats-server",
    }
    parts = [
        f"{label} {v[key]}" for v in versions.values() for key, label in names.items() if v.get(key)
    ]
    return ", ".join(parts) or "none (fabric and raw ZeroMQ only)"


def _clients(versions: dict[str, dict[str, str | None]]) -> str:
    names = ("pika", "redis", "nats-py", "pyzmq", "libzmq", "msgspec", "zmq-fabric")
    parts = [f"{key} {v[key]}" for v in versions.values() for key in names if v.get(key)]
    return ", ".join(parts)
