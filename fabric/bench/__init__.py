"""fabric bench: the benchmark tool (issue 7, SPEC P1): producer, consumer, e2e and latency runs.

``fabric bench producer|consumer|e2e|latency`` (or ``fabric-bench``) measures a running
fabric (``--nameserver``) or a throwaway local one (``--start-local async|sync``):
messages/s, MB/s, latency percentiles and failures, with a live line on stderr and a
table or one JSON object on stdout. See fabric.bench.cli for the options and
docs/BENCHMARKS.md for results.

Modules: ``cli`` (options, output), ``runner`` (the run), ``workloads`` (producer and
consumer workers), ``stats`` (fixed-memory histograms, id bitmaps, reports), ``body``
(the message header), ``progress`` (the live line), ``report`` (table and JSON),
``local`` (the throwaway fabric).
"""

from __future__ import annotations

from fabric.bench.cli import add_arguments, main, run
from fabric.bench.stats import Histogram, IdSet

__all__ = ["Histogram", "IdSet", "add_arguments", "main", "run"]
