"""The final output of fabric bench: a table on stdout, or one JSON object with ``--json``.

:func:`render_table` turns the result dict of fabric.bench.runner into lines: a header
(workload, fabric, topic, machine), one row per role (producer, consumer, e2e) with
messages, seconds, msg/s, MB/s, latency percentiles in ms and failures, then what the
latencies measure, the e2e check (lost, duplicates) and any errors. :func:`render_json`
is the same dict as one line of JSON.
"""

from __future__ import annotations

import json
from typing import Any

from fabric.bench.progress import format_ms

__all__ = ["render_json", "render_table"]

_COLUMNS = (
    ("role", 9, "<"),
    ("messages", 10, ">"),
    ("seconds", 8, ">"),
    ("msg/s", 10, ">"),
    ("MB/s", 8, ">"),
    ("p50 ms", 9, ">"),
    ("p90 ms", 9, ">"),
    ("p99 ms", 9, ">"),
    ("p99.9 ms", 9, ">"),
    ("max ms", 9, ">"),
    ("failures", 9, ">"),
)


def render_json(result: dict[str, Any]) -> str:
    """The result as one line of JSON."""
    return json.dumps(result, sort_keys=False)


def _row(cells: list[str]) -> str:
    pairs = zip(cells, _COLUMNS, strict=True)
    return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in pairs)


def _role_row(name: str, r: dict[str, Any], failures: str) -> str:
    lat = r.get("latency_us")
    if lat:
        figures = [format_ms(lat[k]) for k in ("p50", "p90", "p99", "p999", "max")]
    else:
        figures = ["-"] * 5
    return _row(
        [
            name,
            f"{r['messages']:,}",
            f"{r['seconds']:.2f}",
            f"{r['msgs_per_s']:,.0f}",
            f"{r['mb_per_s']:,.1f}",
            *figures,
            failures,
        ]
    )


def render_table(result: dict[str, Any]) -> list[str]:
    """The result as the lines of a plain-text table with a short header and notes."""
    config = result["config"]
    lines = [f"fabric bench {result['workload']}  {result['date']}"]
    local = result.get("local")
    where = f"local fabric (flush {local['flush']})" if local else "fabric"
    lines.append(f"  {where} at {result['nameserver']}")
    topic = result.get("topic")
    results = result.get("results", {})
    if topic:
        what = f"  topic {topic['name']} ({topic['queues']} queues), {config['size']:,} B bodies"
        producer = results.get("producer")
        if producer:
            what += f", {producer['workers']} producer(s), mode {producer['mode']}"
            if producer["mode"] == "batch":
                what += f" of {config['batch_size']}"
        consumer = results.get("consumer")
        if consumer:
            what += f", {consumer['workers']} consumer(s) ({consumer['api']})"
        lines.append(what)
    m = result["machine"]
    lines.append(
        f"  machine: {m['cpus']} CPUs, {m['implementation']} {m['python']}, "
        f"pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), msgspec {m['msgspec']}"
    )
    if results:
        lines.append("")
        lines.append(_row([name for name, _, _ in _COLUMNS]))
        for name in ("producer", "consumer"):
            r = results.get(name)
            if r:
                lines.append(_role_row(name, r, f"{r['failures']:,}"))
        e2e = results.get("e2e")
        if e2e:
            lines.append(_role_row("e2e", e2e, f"{e2e['lost']:,} lost"))
        lines.append("")
        for name in ("producer", "consumer"):
            r = results.get(name)
            if r:
                lines.append(f"{name} latency: {r['latency']}")
        producer = results.get("producer")
        if producer and "stored" in producer:
            lines.append(f"oneway: {producer['stored']:,} stored, {producer['lost']:,} lost")
        if e2e:
            lines.append(
                f"e2e: first send to last consumed; {e2e['expected']:,} acknowledged, "
                f"{e2e['consumed_unique']:,} consumed, {e2e['lost']:,} lost, "
                f"{e2e['duplicates']:,} duplicates, {e2e['unexpected']:,} unexpected"
            )
            if e2e["lost_ids"]:
                lines.append("  lost (producer-seq): " + ", ".join(e2e["lost_ids"]))
            if e2e["duplicate_ids"]:
                lines.append("  duplicates: " + ", ".join(e2e["duplicate_ids"]))
        consumer = results.get("consumer")
        if consumer and consumer.get("missing"):
            lines.append(f"consumer: {consumer['missing']:,} of {consumer['expected']:,} missing")
        for name in ("producer", "consumer"):
            r = results.get(name)
            if r and r["failure_reasons"]:
                reasons = ", ".join(f"{k} x{v:,}" for k, v in r["failure_reasons"].items())
                lines.append(f"{name} failures: {reasons}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    for error in result.get("errors", []):
        lines.append(f"error: {error}")
    for line in result.get("server_errors", []):
        lines.append(f"server: {line}")
    if result.get("interrupted"):
        lines.append("interrupted: partial results")
    lines.append(
        f"result: {'OK' if result['ok'] else 'FAILED'} (exit status {result['exit_status']})"
    )
    return lines
