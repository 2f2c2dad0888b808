"""Writer subprocess of test_timer_wheel.py: adds timers, takes due seconds, flushes, until killed.

Usage:
    python _timer_writer.py DIR

Prints ``READY`` once the store is open. Then, in rounds of BATCH adds (entry ``i`` is
:func:`entry_of`), it takes the due entries of the next simulated second (one line
``T <phys> <second>`` per entry), marks that second delivered, flushes, and prints
``A <last i> <second>``: every add up to ``i`` and that progress are durable. (The
``T`` lines are written before the second is marked delivered, as a broker delivers.) It runs
until it is killed (the test sends SIGKILL) or has made ``--max`` adds.
"""

from __future__ import annotations

import argparse
import sys

from loguru import logger

from broker.store import TimerConfig, TimerStore

BASE = 1_700_000_000
BATCH = 40
SIZE = 64
#: Small files and a small wheel, so that segments roll and entries roll around the wheel.
CONFIG = TimerConfig(wheel_seconds=64, log_entries_per_file=32)


def entry_of(i: int) -> tuple[int, int, int]:
    """(due second, CommitLog offset, size) of entry ``i``: due 0..399 s after it is added."""
    return BASE + i // BATCH + (i * 7919) % 400, i * SIZE, SIZE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--max", type=int, default=10**9)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.enable("broker.store")
    now = BASE
    store = TimerStore(args.dir, CONFIG, clock=lambda: now)
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    i = 0
    while i < args.max:
        store.add(*entry_of(i))
        if i % BATCH == BATCH - 1:
            # Deliver (print) first, then mark delivered, as a broker appends then marks.
            taken = [f"T {e.phys} {now}\n" for e in store.due(now)]
            out.write("".join(taken))
            out.flush()
            store.mark_delivered(now)
            store.flush()
            out.write(f"A {i} {now}\n")
            out.flush()
            now += 1
        i += 1
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
