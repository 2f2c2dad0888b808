"""Running the scenarios of each group against its server, run after run.

For each group: two worker processes (a producer and a consumer: with the server, the
three busy processes of peers-bench.md) and the group's server, then ``runs`` rounds of
every scenario. One round of a scenario, each workload on a destination of its own that
is created before and deleted after:

1. produce: the producer alone into an empty destination, first send to last ack;
2. consume: the consumer drains what 1. loaded (loaded untimed if 1. is not measured);
3. end to end: the consumer subscribes first (``ready``), then the producer sends; from
   the producer's first send to the consumer's last ack;
4. sync latency: one message in flight.

Every outcome is checked against the count and size asked for, here as well as in the
worker function (CountMismatchError either way).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from bench.peers.common import (
    SYNC_WARMUP,
    BenchError,
    Group,
    Job,
    Outcome,
    Scenario,
    Settings,
    Worker,
    busy_pct,
    check_counts,
    machine_busy,
    percentile,
    progress,
    workers,
)

#: Seconds on top of a job's own timeout before its worker is given up on.
SLACK: Final = 30.0


@dataclasses.dataclass
class RowResult:
    """Per-run figures of one scenario: workload -> one dict per run."""

    scenario: Scenario
    count: int
    sync_samples: int
    runs: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)

    def add(self, workload: str, figures: dict[str, Any]) -> None:
        self.runs.setdefault(workload, []).append(figures)


def throughput(out: Outcome, seconds: float, busy: float | None) -> dict[str, Any]:
    if seconds <= 0:
        raise BenchError(f"a throughput run took {seconds} s")
    return {
        "msgs_per_s": round(out.messages / seconds, 1),
        "mb_per_s": round(out.bytes / seconds / 1e6, 2),
        "seconds": round(seconds, 4),
        "messages": out.messages,
        "bytes": out.bytes,
        "busy_pct": busy,
        **out.extra,
    }


def latency(out: Outcome, busy: float | None) -> dict[str, Any]:
    samples = sorted(out.latencies_ns)
    if not samples:
        raise BenchError("a sync-latency run has no samples")
    return {
        "p50_us": round(percentile(samples, 50) / 1000, 1),
        "p99_us": round(percentile(samples, 99) / 1000, 1),
        "mean_us": round(statistics.fmean(samples) / 1000, 1),
        "max_us": round(samples[-1] / 1000, 1),
        "n": len(samples),
        "seconds": round(out.seconds, 3),
        "messages": out.messages,
        "bytes": out.bytes,
        "busy_pct": busy,
    }


class _Round:
    """One round of one scenario (see the module docstring)."""

    def __init__(
        self,
        scenario: Scenario,
        run: int,
        params: Mapping[str, Any],
        settings: Settings,
        producer: Worker,
        consumer: Worker,
        row: RowResult,
    ) -> None:
        self.sc = scenario
        self.run = run
        self.params = params
        self.settings = settings
        self.producer = producer
        self.consumer = consumer
        self.row = row
        self.timeout = settings.job_timeout_s + SLACK

    def job(self, dest: str, **fields: Any) -> Job:
        return Job(
            params=self.params,
            dest=dest,
            count=self.row.count,
            size=self.settings.size,
            timeout_s=self.settings.job_timeout_s,
            options=self.sc.options,
            **fields,
        )

    def dest(self, workload: str) -> str:
        return f"peers_{self.sc.key}_r{self.run + 1}_{workload}"

    def measure(self) -> tuple[float, float]:
        """Before a timed workload: write back what earlier ones left in the page cache (so
        no fsync pays for another's data), then the machine's busy reading."""
        os.sync()
        return machine_busy()

    def call(self, worker: Worker, function: str | None, job: Job) -> Outcome:
        if function is None:
            return Outcome()
        return worker.call(self.sc.module, function, job, self.timeout)

    def checked(self, what: str, out: Outcome) -> Outcome:
        size = self.settings.size
        check_counts(f"{self.sc.key} {what}", out.messages, out.bytes, self.row.count, size)
        return out

    def go(self) -> None:
        # Each destination is deleted after its workloads succeeded; after a failure the
        # whole server and its data go anyway, and the worker may still be busy.
        sc, wl = self.sc, self.sc.workloads
        if "produce" in wl or "consume" in wl:
            dest = self.dest("p")
            self.call(self.producer, sc.prepare, self.job(dest))
            before = self.measure()
            out = self.checked("produce", self.call(self.producer, sc.produce, self.job(dest)))
            if "produce" in wl:
                busy = busy_pct(before, machine_busy())
                self.row.add("produce", throughput(out, out.seconds, busy))
            if "consume" in wl:
                before = self.measure()
                out = self.checked("consume", self.call(self.consumer, sc.consume, self.job(dest)))
                busy = busy_pct(before, machine_busy())
                self.row.add("consume", throughput(out, out.seconds, busy))
            self.call(self.producer, sc.cleanup, self.job(dest))
        if "e2e" in wl:
            dest = self.dest("e")
            self.call(self.producer, sc.prepare, self.job(dest))
            before = self.measure()
            if sc.e2e_solo is not None:
                out = self.checked("e2e", self.call(self.producer, sc.e2e_solo, self.job(dest)))
                seconds = out.seconds
            else:
                self.consumer.submit(sc.module, sc.consume, self.job(dest))
                via = self.consumer.wait_ready(self.timeout)
                sent = self.checked(
                    "e2e produce",
                    self.call(self.producer, sc.produce, self.job(dest, via=via, e2e=True)),
                )
                out = self.checked("e2e consume", self.consumer.result(self.timeout))
                seconds = out.last - sent.first
            self.row.add("e2e", throughput(out, seconds, busy_pct(before, machine_busy())))
            self.call(self.producer, sc.cleanup, self.job(dest))
        if "sync" in wl:
            dest = self.dest("s")
            self.call(self.producer, sc.prepare, self.job(dest))
            before = self.measure()
            job = self.job(
                dest,
                samples=self.row.sync_samples,
                cap_s=self.settings.sync_cap_s,
                warmup=SYNC_WARMUP,
            )
            out = self.call(self.producer, sc.sync, job)
            self.row.add("sync", latency(out, busy_pct(before, machine_busy())))
            self.call(self.producer, sc.cleanup, self.job(dest))


def new_rows(group: Group, settings: Settings) -> list[RowResult]:
    return [
        RowResult(
            scenario=sc,
            count=max(1, round(settings.count * sc.count_factor)),
            sync_samples=max(1, round(settings.sync_samples * sc.sync_factor)),
        )
        for sc in group.scenarios
    ]


def run_group(group: Group, settings: Settings, scratch: Path) -> list[RowResult]:
    """Start the group's workers and server, run every scenario ``settings.runs`` times."""
    rows = new_rows(group, settings)
    progress(f"{group.name}: starting its server and two worker processes")
    names = (f"{group.name}-producer", f"{group.name}-consumer")
    with workers(*names) as (producer, consumer), group.server(scratch / group.name) as params:
        for run in range(settings.runs):
            for row in rows:
                progress(f"{group.name}: run {run + 1}/{settings.runs}: {row.scenario.label}")
                _Round(row.scenario, run, params, settings, producer, consumer, row).go()
                progress("  " + brief(row))
    progress(f"{group.name}: done, server and workers stopped")
    return rows


def brief(row: RowResult) -> str:
    """The last run's figures in one line."""
    parts = []
    for workload in ("produce", "consume", "e2e"):
        if row.runs.get(workload):
            parts.append(f"{workload} {row.runs[workload][-1]['msgs_per_s']:,.0f}/s")
    if row.runs.get("sync"):
        last = row.runs["sync"][-1]
        parts.append(
            f"sync p50 {last['p50_us']:,.0f} µs p99 {last['p99_us']:,.0f} µs (n={last['n']})"
        )
    return ", ".join(parts)
