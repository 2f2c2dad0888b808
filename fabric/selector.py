"""Queue selection for producers: round robin, latency fault avoidance, hash by sharding key.

Pure code, no sockets and no clock of its own (SPEC M6). It follows RocketMQ's
``MQFaultStrategy`` and ``SelectMessageQueueByHash``:

* :class:`LatencyFaultTolerance` remembers, per broker name, until when the broker is
  to be avoided: a failed request isolates its broker for ``failure_isolation`` seconds;
  a slow one for a time that grows with its latency (``LATENCY_STEPS``). When that time
  has passed the broker is available again (its recovery).
* :class:`QueueSelector` walks a topic's writable queues round robin, skipping brokers
  that are isolated and, on a retry, the broker that just failed. When every broker is
  isolated it still returns a queue (avoiding the one that just failed if it can):
  isolation is a preference, never a reason to refuse a send.
* :func:`queue_for_key` maps a sharding key to a queue with CRC32, which is stable across
  processes and languages (Python's ``hash`` is salted per process), so every producer
  sends one key to one queue, and consumers see that key's messages in order.

Both classes may be used from several threads at once (a producer's I/O thread and the
threads making direct sync sends, fabric.direct): each step is a single dict operation,
atomic in CPython, so a race costs at most one round-robin step, never a corrupt table.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar

__all__ = [
    "DEFAULT_FAILURE_ISOLATION",
    "LATENCY_STEPS",
    "LatencyFaultTolerance",
    "QueueSelector",
    "SelectableQueue",
    "queue_for_key",
]

#: (latency at least, seconds to avoid the broker) — RocketMQ 5 ``latencyMax`` and
#: ``notAvailableDuration``: up to 100 ms is normal, then 2 s, 5 s, 6 s, 10 s, 30 s.
LATENCY_STEPS: Final[tuple[tuple[float, float], ...]] = (
    (15.0, 30.0),
    (5.0, 10.0),
    (3.0, 6.0),
    (1.8, 5.0),
    (0.55, 2.0),
)
#: Seconds a broker is avoided after a failed request (RocketMQ 5: 10 s).
DEFAULT_FAILURE_ISOLATION: Final = 10.0


class SelectableQueue(Protocol):
    """What the selector needs of a queue (fabric.message.MessageQueue has it)."""

    @property
    def broker_name(self) -> str: ...


Q = TypeVar("Q", bound=SelectableQueue)


class LatencyFaultTolerance:
    """Which brokers recently failed or were slow, and until when to avoid them.

    Args:
        clock: monotonic seconds (``time.monotonic`` or a loop's ``time``).
        failure_isolation: seconds to avoid a broker after a failure.
        steps: (latency, avoid for) pairs, largest latency first.
        enabled: False turns avoidance off (every broker is always available).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        failure_isolation: float = DEFAULT_FAILURE_ISOLATION,
        steps: Sequence[tuple[float, float]] = LATENCY_STEPS,
        enabled: bool = True,
    ) -> None:
        self._clock = clock
        self.failure_isolation = failure_isolation
        self._steps = tuple(sorted(steps, reverse=True))
        self.enabled = enabled
        #: broker name -> clock time until which it is avoided
        self._until: dict[str, float] = {}

    def update(self, broker: str, latency: float, *, failed: bool = False) -> float:
        """Record a request's outcome; returns the seconds the broker is now avoided (0: none).

        A success that was fast clears an earlier isolation: the broker answered well,
        so it has recovered.
        """
        if failed:
            avoid = self.failure_isolation
        else:
            avoid = next((a for limit, a in self._steps if latency >= limit), 0.0)
        if avoid <= 0:
            self._until.pop(broker, None)
            return 0.0
        self._until[broker] = self._clock() + avoid
        return avoid

    def available(self, broker: str) -> bool:
        """True unless ``broker`` is avoided right now."""
        if not self.enabled:
            return True
        until = self._until.get(broker)
        if until is None:
            return True
        if self._clock() >= until:
            self._until.pop(broker, None)  # pop: another thread may have done it first
            return True
        return False

    def isolated(self) -> dict[str, float]:
        """Broker name -> seconds left to avoid it, for every broker avoided now."""
        now = self._clock()
        return {b: until - now for b, until in self._until.items() if until > now}

    def forget(self, broker: str) -> None:
        """Drop what is known of ``broker``."""
        self._until.pop(broker, None)


class QueueSelector:
    """Round robin over a topic's queues, avoiding isolated brokers.

    Args:
        faults: the fault table to consult.
        rng: where each topic's starting point comes from (random by default, so that
            many producers do not all start on the first queue).
    """

    def __init__(self, faults: LatencyFaultTolerance, rng: random.Random | None = None) -> None:
        self.faults = faults
        self._rng = rng or random.Random()
        self._next: dict[str, int] = {}

    def select(self, topic: str, queues: Sequence[Q], avoid: str | None = None) -> Q:
        """The next queue of ``topic`` in round robin, skipping isolated brokers.

        Args:
            topic: the topic (each has its own round-robin position).
            queues: its writable queues, in a stable order; not empty.
            avoid: a broker name to skip if any other will do (the one that just failed).

        Raises:
            ValueError: ``queues`` is empty.
        """
        n = len(queues)
        if not n:
            raise ValueError(f"topic {topic} has no writable queue")
        start = self._next.get(topic)
        if start is None:
            start = self._rng.randrange(n)
        available = self.faults.available
        chosen = -1
        for i in range(n):
            q = queues[(start + i) % n]
            if q.broker_name != avoid and available(q.broker_name):
                chosen = start + i
                break
        else:
            # Every broker is avoided: take the next one that did not just fail.
            for i in range(n):
                if queues[(start + i) % n].broker_name != avoid:
                    chosen = start + i
                    break
            else:
                chosen = start
        self._next[topic] = (chosen + 1) % n
        return queues[chosen % n]


def queue_for_key(queues: Sequence[Q], key: str) -> Q:
    """The queue of a sharding key: ``crc32(key as UTF-8) % len(queues)``.

    Stable across processes, so one key always lands on one queue while the topic's
    queue count stays the same.

    Raises:
        ValueError: ``queues`` is empty.
    """
    if not queues:
        raise ValueError("no queue to choose from")
    return queues[zlib.crc32(key.encode("utf-8")) % len(queues)]
