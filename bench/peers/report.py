"""Medians, target ratios and the Markdown table of a peers run."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any, Final

from bench.peers.runner import RowResult

THROUGHPUT: Final = ("produce", "consume", "e2e")
DASH: Final = "\N{EN DASH}"


def spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "all": list(values),
    }


def summarize_row(row: RowResult) -> dict[str, Any]:
    sc = row.scenario
    cells: dict[str, Any] = {}
    for workload in THROUGHPUT:
        runs = row.runs.get(workload)
        if runs:
            cells[workload] = {**spread([r["msgs_per_s"] for r in runs]), "runs": runs}
    sync = row.runs.get("sync")
    if sync:
        cells["sync_p50_us"] = spread([r["p50_us"] for r in sync])
        cells["sync_p99_us"] = spread([r["p99_us"] for r in sync])
        cells["sync"] = {"runs": sync}
    return {
        "key": sc.key,
        "peer": sc.peer,
        "label": sc.label,
        "durability": sc.durability,
        "count": row.count,
        "sync_samples": row.sync_samples,
        "cells": cells,
    }


@dataclasses.dataclass(frozen=True)
class Target:
    """``fabric / peer`` of two medians, compared with ``goal``."""

    key: str
    text: str
    fabric: tuple[str, str]
    peer: tuple[str, str]
    op: str
    goal: float


#: Issue 7's targets: (row key, cell) of the fabric's figure and of the peer's.
TARGETS: Final = (
    Target(
        "e2e_vs_redis",
        "end to end, fabric ASYNC_FLUSH / Redis Streams",
        ("fabric_async", "e2e"),
        ("redis", "e2e"),
        ">=",
        3.5,
    ),
    Target(
        "e2e_vs_rabbitmq",
        "end to end, fabric ASYNC_FLUSH / RabbitMQ",
        ("fabric_async", "e2e"),
        ("rabbitmq", "e2e"),
        ">=",
        10.0,
    ),
    Target(
        "produce_sync_vs_rabbitmq",
        "produce, acks after fsync: fabric SYNC_FLUSH send_async / RabbitMQ with confirms",
        ("fabric_sync", "produce"),
        ("rabbitmq", "produce"),
        ">=",
        4.0,
    ),
    Target(
        "sync_p50_vs_rabbitmq",
        "sync send p50: fabric SYNC_FLUSH / RabbitMQ confirm",
        ("fabric_sync", "sync_p50_us"),
        ("rabbitmq", "sync_p50_us"),
        "<",
        1.0,
    ),
    Target(
        "sync_p50_vs_zmq",
        "sync send p50: fabric ASYNC_FLUSH / raw DEALER→ROUTER + msgspec round trip",
        ("fabric_async", "sync_p50_us"),
        ("zmq_reqack_msgspec", "sync_p50_us"),
        "<=",
        1.5,
    ),
)


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {r["key"]: r["cells"] for r in rows}
    out = []
    for t in TARGETS:
        fabric = by_key.get(t.fabric[0], {}).get(t.fabric[1])
        peer = by_key.get(t.peer[0], {}).get(t.peer[1])
        entry: dict[str, Any] = {
            "key": t.key,
            "text": t.text,
            "goal": f"{t.op} {t.goal:g}x",
            "fabric": None if fabric is None else fabric["median"],
            "peer": None if peer is None else peer["median"],
            "ratio": None,
            "met": None,
        }
        if fabric is not None and peer is not None and peer["median"] > 0:
            ratio = fabric["median"] / peer["median"]
            entry["ratio"] = round(ratio, 3)
            entry["met"] = {
                ">=": ratio >= t.goal,
                "<=": ratio <= t.goal,
                "<": ratio < t.goal,
            }[t.op]
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------


def rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def micros(value: float) -> str:
    return f"{value:,.0f}"


def cell(entry: dict[str, Any] | None, fmt: Any) -> str:
    if entry is None:
        return DASH
    if len(entry["all"]) == 1:
        return str(fmt(entry["median"]))
    return f"{fmt(entry['median'])} ({fmt(entry['min'])}{DASH}{fmt(entry['max'])})"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    s = meta["settings"]
    sync_rows = [r for r in results["rows"] if "sync_p50_us" in r["cells"]]
    usual = s["sync_samples"]
    pairs = {(r["peer"], r["sync_samples"]) for r in sync_rows}
    fewer = sorted(pair for pair in pairs if pair[1] != usual)
    fewer_text = "".join(f", {n:,} for {peer}" for peer, n in fewer)
    lines = [
        f"Peers benchmark, {meta['date']}: {meta['machine']}.",
        f"Servers: {meta['servers']}. Clients: {meta['clients']}.",
        f"Command: `{meta['command']}` ({meta.get('seconds', 0):.0f} s in all)",
        "",
        f"Each cell is the median (min{DASH}max) of {s['runs']} run(s) in this session; "
        f"{s['size']} B bodies; {s['count']:,} messages per throughput run "
        f"(raw ZeroMQ: {2 * s['count']:,}); sync latency: {s['sync_samples']:,} samples "
        f"per run{fewer_text}, after {s['sync_warmup']} unmeasured, capped at "
        f"{s['sync_cap_s']:g} s per run. Produce: one producer into an empty destination, "
        "first send to last ack. Consume: the consumer drains those messages, acking them. "
        "End to end: the consumer subscribes first, then the producer sends; first send to "
        "the consumer's last ack. Sync latency: one message in flight, send plus its ack. "
        "Producer, consumer and server are separate processes on 127.0.0.1. "
        f"Machine busy just before the start: {meta['busy_before_pct']} % of "
        f"{100 * meta['cpus']} %.",
        "",
        "| System / scenario | Durability: what an ack means | Msg size | Produce msg/s "
        "| Consume msg/s | End-to-end msg/s | Sync latency p50 / p99 (µs) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        c = row["cells"]
        sync = DASH
        if "sync_p50_us" in c:
            sync = f"{cell(c['sync_p50_us'], micros)} / {cell(c['sync_p99_us'], micros)}"
        lines.append(
            f"| {_escape(row['label'])} | {_escape(row['durability'])} | {s['size']} B | "
            f"{cell(c.get('produce'), rate)} | {cell(c.get('consume'), rate)} | "
            f"{cell(c.get('e2e'), rate)} | {sync} |"
        )
    lines += [
        "",
        "| Target (issue 7) | fabric | peer | ratio | goal | result |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results["ratios"]:
        fmt = micros if "p50" in r["key"] else rate
        fabric = DASH if r["fabric"] is None else f"{fmt(r['fabric'])}"
        peer = DASH if r["peer"] is None else f"{fmt(r['peer'])}"
        ratio = DASH if r["ratio"] is None else f"{r['ratio']:.2f}x"
        result = {True: "PASS", False: "MISS", None: "not run"}[r["met"]]
        lines.append(
            f"| {_escape(r['text'])} | {fabric} | {peer} | {ratio} | {r['goal']} | {result} |"
        )
    return "\n".join(lines) + "\n"
