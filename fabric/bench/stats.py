"""Fixed-memory latency histograms, message-id bitmaps and the per-worker recorder of fabric bench.

A :class:`Histogram` keeps latencies (integers, microseconds) in log-linear buckets, the
HdrHistogram layout: values below 128 each have a bucket of their own; above, every power
of two is split into 64 equal buckets, so a bucket is never wider than 1/64 (1.6 %) of
the values in it. Up to 2**40 us (12 days) that is 2,240 buckets, whatever the number of
samples: percentiles (p50, p90, p99, p99.9) need no list of samples. A percentile is
reported as the highest value of its bucket (HdrHistogram's "highest equivalent
value"), clipped to the exact minimum and maximum, which are kept apart; so
``p50 <= p90 <= p99 <= p999 <= max`` always holds.

An :class:`IdSet` is a growable bitmap of the sequence numbers of one producer (one bit
per message): end-to-end runs find lost and duplicated messages with it.

A :class:`Recorder` is what a worker (a producer or a consumer in fabric.bench.workloads)
counts into from any of its threads (the sending thread, a producer's I/O thread running
async callbacks, a push consumer's listener threads). Every tick the worker takes the
counts since the last tick as a :class:`Report` (a msgspec Struct, so it crosses process
boundaries through a multiprocessing queue) and the runner merges the reports.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import Final

import msgspec

__all__ = [
    "BUCKETS",
    "PERCENTILES",
    "Histogram",
    "IdSet",
    "Recorder",
    "Report",
    "bucket_bounds",
    "bucket_of",
    "first_ids",
]

_SUB_BITS: Final = 7
#: Values below this each have a bucket of their own.
_LINEAR: Final = 1 << _SUB_BITS
#: Buckets per power of two above the linear range.
_HALF: Final = _LINEAR // 2
#: Largest shift kept apart; larger values land in the last bucket (max stays exact).
_MAX_SHIFT: Final = 40 - _SUB_BITS
#: Number of buckets of every Histogram.
BUCKETS: Final = _LINEAR + _MAX_SHIFT * _HALF
#: Percentiles reported, as (name, fraction).
PERCENTILES: Final = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


def bucket_of(value: int) -> int:
    """The index of the bucket holding ``value`` (negative values count as 0)."""
    if value < _LINEAR:
        return value if value > 0 else 0
    shift = value.bit_length() - _SUB_BITS
    if shift > _MAX_SHIFT:
        return BUCKETS - 1
    return _LINEAR + (shift - 1) * _HALF + (value >> shift) - _HALF


def bucket_bounds(index: int) -> tuple[int, int]:
    """The values ``[low, high)`` of bucket ``index``."""
    if index < _LINEAR:
        return index, index + 1
    j = index - _LINEAR
    shift = j // _HALF + 1
    mantissa = j % _HALF + _HALF
    return mantissa << shift, (mantissa + 1) << shift


class Histogram:
    """Latencies in log-linear buckets: fixed memory, percentiles within 1.6 %.

    Attributes:
        count: values recorded.
        total: their sum (for the mean).
        min, max: the exact extremes (0 while empty).
    """

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value: int, n: int = 1) -> None:
        """Add ``value`` (an int, microseconds) ``n`` times."""
        if value < 0:
            value = 0
        self.counts[bucket_of(value)] += n
        if self.count == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += n
        self.total += value * n

    def sparse(self) -> list[tuple[int, int]]:
        """The non-empty buckets as (index, count) pairs."""
        return [(i, c) for i, c in enumerate(self.counts) if c]

    def merge(self, buckets: Iterable[tuple[int, int]], low: int, high: int, total: int) -> None:
        """Add the sparse ``buckets`` of another histogram with its min, max and sum."""
        added = 0
        counts = self.counts
        for index, n in buckets:
            counts[index] += n
            added += n
        if not added:
            return
        if self.count == 0 or low < self.min:
            self.min = low
        if high > self.max:
            self.max = high
        self.count += added
        self.total += total

    def add(self, other: Histogram) -> None:
        """Add every value of ``other``."""
        self.merge(other.sparse(), other.min, other.max, other.total)

    def percentile(self, fraction: float) -> int:
        """The value at ``fraction`` (0..1) of the recorded values; 0 while empty."""
        if self.count == 0:
            return 0
        # Nearest rank; the epsilon keeps 0.99 * 2000 at 1980 despite float rounding.
        rank = max(1, min(self.count, math.ceil(fraction * self.count - 1e-9)))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                high = bucket_bounds(index)[1] - 1
                return max(self.min, min(high, self.max))
        return self.max

    def summary(self) -> dict[str, float]:
        """count, min, mean, p50, p90, p99, p999 and max (microseconds)."""
        out: dict[str, float] = {"count": self.count, "min": self.min}
        out["mean"] = round(self.total / self.count, 1) if self.count else 0.0
        for name, fraction in PERCENTILES:
            out[name] = self.percentile(fraction)
        out["max"] = self.max
        return out


class IdSet:
    """A growable bitmap of sequence numbers (one bit each)."""

    __slots__ = ("bits",)

    def __init__(self, bits: bytes = b"") -> None:
        self.bits = bytearray(bits)

    def add(self, n: int) -> bool:
        """Set bit ``n``; True when it was not set before."""
        byte = n >> 3
        bits = self.bits
        if byte >= len(bits):
            # Grow by doubling: appending one message at a time stays amortised O(1).
            bits.extend(bytes(max(byte + 1 - len(bits), len(bits), 64)))
        mask = 1 << (n & 7)
        if bits[byte] & mask:
            return False
        bits[byte] |= mask
        return True

    def as_int(self) -> int:
        """The bitmap as an int: bit n is sequence number n."""
        return int.from_bytes(self.bits, "little")


def first_ids(bits: int, limit: int) -> list[int]:
    """The first ``limit`` set bit positions of ``bits``, lowest first."""
    out: list[int] = []
    while bits and len(out) < limit:
        low = bits & -bits
        out.append(low.bit_length() - 1)
        bits ^= low
    return out


class Report(msgspec.Struct, kw_only=True):
    """What a worker tells the runner: its counts since its previous report, or an event.

    ``kind`` is ``ready`` (set up, waiting for the go), ``tick`` (counts so far),
    ``final`` (the last counts; the worker is done), or ``error`` (it failed: ``error``).
    Counts are deltas; ``first`` and ``last`` are wall-clock times (``time.time()``, so
    that processes agree) of the worker's first and last message, 0 when none yet.
    """

    kind: str
    role: str
    index: int
    pid: int = 0
    ok: int = 0
    failed: int = 0
    nbytes: int = 0
    #: Consumers: messages of this run seen for the first time (by this worker).
    unique: int = 0
    #: Consumers: messages seen again, and messages of other runs or not from fabric bench.
    duplicates: int = 0
    foreign: int = 0
    buckets: list[tuple[int, int]] = []
    low: int = 0
    high: int = 0
    total: int = 0
    first: float = 0.0
    last: float = 0.0
    #: Failure reason -> count (exception class name or send status).
    reasons: dict[str, int] = {}
    #: Consumers: the queues assigned now ("broker#id").
    queues: list[str] = []
    #: final: producer index -> bitmap of the sequence numbers acknowledged (producers)
    #: or consumed (consumers).
    ids: dict[int, bytes] = {}
    #: final, consumers: message ids of the first duplicates seen.
    duplicate_ids: list[str] = []
    #: Which consumer API the worker uses ("push" or "pull").
    api: str = ""
    error: str = ""


class Recorder:
    """Counts of one worker, fed from any of its threads, taken as Reports every tick.

    Args:
        role: "producer" or "consumer".
        index: the worker's index within its role.
    """

    _MAX_DUPLICATE_IDS: Final = 10

    def __init__(self, role: str, index: int) -> None:
        self.role = role
        self.index = index
        self._lock = threading.Lock()
        self._hist = Histogram()
        self._ok = 0
        self._failed = 0
        self._bytes = 0
        self._unique = 0
        self._duplicates = 0
        self._foreign = 0
        self._reasons: dict[str, int] = {}
        #: Messages acknowledged (or consumed) and failed since the start (never reset).
        self.total_ok = 0
        self.total_failed = 0
        self.first = 0.0
        self.last = 0.0
        #: producer index -> IdSet (acknowledged or consumed sequence numbers).
        self._own = IdSet()
        self.ids: dict[int, IdSet] = {index: self._own} if role == "producer" else {}
        self.duplicate_ids: list[str] = []

    def ack(self, seq: int, nbytes: int, latency_us: int) -> None:
        """One message of this producer acknowledged: :meth:`sent` for one message, inlined.

        This runs once per message (on a producer's I/O thread for async sends), so it
        does its bucket and bit arithmetic before taking the lock and calls nothing.
        """
        if latency_us < _LINEAR:
            if latency_us < 0:
                latency_us = 0
            index = latency_us
        else:
            shift = latency_us.bit_length() - _SUB_BITS
            if shift > _MAX_SHIFT:
                index = BUCKETS - 1
            else:
                index = _LINEAR + (shift - 1) * _HALF + (latency_us >> shift) - _HALF
        byte, mask = seq >> 3, 1 << (seq & 7)
        with self._lock:
            self._ok += 1
            self.total_ok += 1
            self._bytes += nbytes
            hist = self._hist
            hist.counts[index] += 1
            hist.total += latency_us
            if latency_us > hist.max:
                hist.max = latency_us
            if not hist.count or latency_us < hist.min:
                hist.min = latency_us
            hist.count += 1
            bits = self._own.bits
            if byte >= len(bits):
                self._own.add(seq)
            else:
                bits[byte] |= mask

    def sent(
        self, producer: int, seq: int, nbytes: int, latency_us: int | None, n: int = 1
    ) -> None:
        """``n`` messages from ``seq`` on were acknowledged (or handed over: oneway)."""
        with self._lock:
            self._ok += n
            self.total_ok += n
            self._bytes += nbytes * n
            if latency_us is not None:
                self._hist.record(latency_us, n)
            ids = self.ids.get(producer)
            if ids is None:
                ids = self.ids[producer] = IdSet()
            for s in range(seq, seq + n):
                ids.add(s)

    def failed(self, reason: str, n: int = 1) -> None:
        """``n`` messages failed for ``reason``."""
        with self._lock:
            self._failed += n
            self.total_failed += n
            self._reasons[reason] = self._reasons.get(reason, 0) + n

    def consumed(
        self,
        producer: int | None,
        seq: int,
        nbytes: int,
        latency_us: int,
        now: float,
        msg_id: str,
    ) -> None:
        """One message consumed; ``producer`` None for a message of another run."""
        with self._lock:
            if not self.first:
                self.first = now
            self.last = now
            self._ok += 1
            self.total_ok += 1
            self._bytes += nbytes
            self._hist.record(latency_us)
            if producer is None:
                self._foreign += 1
                return
            ids = self.ids.get(producer)
            if ids is None:
                ids = self.ids[producer] = IdSet()
            if ids.add(seq):
                self._unique += 1
            else:
                self._duplicates += 1
                if len(self.duplicate_ids) < self._MAX_DUPLICATE_IDS:
                    self.duplicate_ids.append(f"p{producer}-{seq} ({msg_id})")

    def take(
        self,
        kind: str,
        pid: int,
        *,
        final: bool = False,
        queues: list[str] | None = None,
        api: str = "",
        error: str = "",
    ) -> Report:
        """The counts since the previous take, as a Report (reset here).

        Args:
            kind: the Report kind.
            pid: the worker's process id.
            final: add the id bitmaps and the duplicate ids (the worker is done).
            queues: consumers: the queues assigned now.
            api: consumers: "push" or "pull".
            error: kind "error": what went wrong.
        """
        with self._lock:
            hist, self._hist = self._hist, Histogram()
            report = Report(
                kind=kind,
                role=self.role,
                index=self.index,
                pid=pid,
                ok=self._ok,
                failed=self._failed,
                nbytes=self._bytes,
                unique=self._unique,
                duplicates=self._duplicates,
                foreign=self._foreign,
                buckets=hist.sparse(),
                low=hist.min,
                high=hist.max,
                total=hist.total,
                first=self.first,
                last=self.last,
                reasons=self._reasons,
                queues=queues or [],
                api=api,
                error=error,
            )
            self._ok = self._failed = self._bytes = 0
            self._unique = self._duplicates = self._foreign = 0
            self._reasons = {}
            if final:
                report.ids = {p: bytes(s.bits) for p, s in self.ids.items()}
                report.duplicate_ids = list(self.duplicate_ids)
        return report
