"""TimerService: timed and delayed messages wait in ``%TIMER%`` until due (PROTOCOL.md 14.1).

A send whose due time lies past the current second is stored in the CommitLog under
``%TIMER%`` queue 0, with the system properties ``REAL_TOPIC``, ``REAL_QID`` and
``DELIVER_AT`` (:func:`timer_message`); the send processor then hands the put to
:meth:`TimerService.on_stored`, which files it in the persisted timing wheel
(``broker.store.TimerStore``, opened in ``<store root>/timer``, docs/STORAGE.md). Nothing
scans the pending messages.

Once a second, on a loop timer set just past each wall-clock second boundary
(``loop.call_at``; no polling), the service takes the seconds that have come
(``TimerStore.take``, whole seconds, about 4096 messages per loop callback: a backlog
after a long downtime is worked off in callbacks run back to back, with requests served
in between), reads each ``%TIMER%`` record, appends the message to its real
topic and queue as an ordinary message (:func:`delivery_message`: same body, tags, keys,
uniq id, user properties, flag, sysflag, born timestamp and host, reconsume times; the
three timer properties dropped, any other system property, such as a retry's
``ORIGIN_TOPIC``, kept), wakes the queue's waiters (broker.arrivals), and records the
second as delivered. A delivery the store refuses (disk full, say) is retried on the next
tick, and no newer second is taken meanwhile. The wheel's progress is made durable by
``TimerStore.flush`` in a worker thread after each tick that changed something; under
SYNC_FLUSH only once the CommitLog is durable past the deliveries, so that no delivery
is marked done before it is on disk.

At start the service catches up: after damage the TimerStore asks for a rebuild
(``reset()``, then every ``%TIMER%`` record is added again, delivered ones skipped);
otherwise the ``%TIMER%`` records at or past ``indexed_through`` (those stored after the
last durable add, e.g. before a SIGKILL) are added again, found by a binary search of the
``%TIMER%`` ConsumeQueue. Seconds that passed while the broker was down are taken at the
first tick, so their messages are delivered at once. A message due around a crash may be
delivered twice (same uniq id); none is lost.

The service also sets the store's ``retention_floor`` to the wheel's
``min_commitlog_offset``: CommitLog retention keeps the segments pending timers point at.

Everything but the flush runs on the broker's loop, which owns the appends.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from typing import Final

import msgspec
from loguru import logger

from broker.arrivals import Arrivals
from broker.store import (
    GetStatus,
    MessageStore,
    PutMessage,
    PutResult,
    PutStatus,
    StoredMessage,
    TimerConfig,
    TimerStore,
    decode_message,
    due_second,
)
from fabric.errors import MessageIllegalError
from fabric.protocol.names import TIMER_TOPIC

__all__ = [
    "DELIVER_AT",
    "PGROUP",
    "REAL_QID",
    "REAL_TOPIC",
    "TimerService",
    "delivery_message",
    "is_timed",
    "resolve_due_ms",
    "timer_message",
]

#: System property keys (docs/STORAGE.md, PROTOCOL.md 14).
REAL_TOPIC: Final = "REAL_TOPIC"
REAL_QID: Final = "REAL_QID"
DELIVER_AT: Final = "DELIVER_AT"
PGROUP: Final = "PGROUP"
_TIMER_KEYS: Final = frozenset((REAL_TOPIC, REAL_QID, DELIVER_AT))

# Seconds past the boundary the tick is set for: loop.time() and time.time() drift apart
# a little, and a tick that woke before its second would find nothing due.
_TICK_SLACK: Final = 0.002
# Messages one tick delivers before it lets the loop serve requests (whole seconds).
_TICK_BUDGET: Final = 4096
# Messages appended per store call when delivering (one lock each).
_DELIVERY_CHUNK: Final = 512
# %TIMER% records read per store call while catching up.
_CATCH_UP_CHUNK: Final = 256


def resolve_due_ms(
    delay_level: int,
    deliver_at: int,
    now_ms: int,
    levels: tuple[float, ...],
    max_delay: float,
) -> int:
    """The due time of a send in ms since the epoch, or 0 when it asks for none.

    Args:
        delay_level: 1..len(levels), 0 for none.
        deliver_at: ms since the epoch, 0 for none.
        now_ms: the broker's clock.
        levels: seconds of each delay level.
        max_delay: the furthest due time allowed, in seconds from now.

    Raises:
        MessageIllegalError: both fields set, a level out of range, a negative
            ``deliver_at``, or one beyond ``now + max_delay``.
    """
    if delay_level and deliver_at:
        raise MessageIllegalError("set delay_level or deliver_at, not both")
    if not 0 <= delay_level <= len(levels):
        raise MessageIllegalError(f"delay_level {delay_level} is outside 0..{len(levels)}")
    if delay_level:
        return now_ms + math.ceil(levels[delay_level - 1] * 1000)
    if deliver_at < 0:
        raise MessageIllegalError(f"deliver_at {deliver_at} is negative")
    if deliver_at > now_ms + max_delay * 1000:
        raise MessageIllegalError(
            f"deliver_at {deliver_at} is more than timer_max_delay ({max_delay:g}s) from now"
        )
    return deliver_at


def is_timed(due_ms: int, now_ms: int) -> bool:
    """True when a message due at ``due_ms`` waits in ``%TIMER%``: its second is still to come.

    A due time that has passed, or lies within the current second, is stored directly.
    """
    return due_ms // 1000 > now_ms // 1000


def timer_message(msg: PutMessage, due_ms: int) -> PutMessage:
    """``msg`` as stored in ``%TIMER%`` queue 0 until ``due_ms`` (its real place in ``sys``)."""
    sys = dict(msg.sys)
    sys[REAL_TOPIC] = msg.topic
    sys[REAL_QID] = str(msg.queue_id)
    sys[DELIVER_AT] = str(due_ms)
    return msgspec.structs.replace(msg, topic=TIMER_TOPIC, queue_id=0, sys=sys)


def delivery_message(stored: StoredMessage) -> PutMessage | None:
    """The ordinary message a ``%TIMER%`` record becomes when due; None when it is not one."""
    sys = stored.sys
    topic = sys.get(REAL_TOPIC)
    qid = sys.get(REAL_QID)
    if stored.topic != TIMER_TOPIC or not topic or qid is None:
        return None
    try:
        queue_id = int(qid)
    except ValueError:
        return None
    return PutMessage(
        topic=topic,
        queue_id=queue_id,
        body=stored.body,
        tags=stored.tags,
        keys=stored.keys,
        uniq_id=stored.uniq_id,
        properties=stored.properties,
        flag=stored.flag,
        sysflag=stored.sysflag,
        born_timestamp=stored.born_timestamp,
        born_host=stored.born_host,
        reconsume_times=stored.reconsume_times,
        sys={k: v for k, v in sys.items() if k not in _TIMER_KEYS},
    )


def _deliver_at(stored: StoredMessage) -> int | None:
    try:
        return int(stored.sys[DELIVER_AT])
    except (KeyError, ValueError):
        return None


class TimerService:
    """The broker's timed messages: files them in the wheel, delivers them when due.

    Args:
        store: the open MessageStore (the timer store is opened beside it).
        arrivals: the broker's arrival notices (deliveries wake pulls and push streams).
        loop: the broker's loop.
        levels: seconds of the delay levels 1..18.
        max_delay: the furthest due time a send may ask for, in seconds from now.
        sync_flush: the broker runs SYNC_FLUSH (the wheel's progress then waits for the
            CommitLog to be durable past the deliveries).
        config: the timer store's knobs.
        clock: seconds since the epoch.
        topic_exists: whether a topic exists now (the broker's topic table). A due
            message whose topic does not (deleted while it waited) is dropped with a
            warning and counted in ``dropped``: appending it would bring back queues of
            a deleted topic. None: every topic exists.

    Raises:
        StoreLockedError: another process has the timer directory open.
    """

    def __init__(
        self,
        store: MessageStore,
        arrivals: Arrivals,
        loop: asyncio.AbstractEventLoop,
        *,
        levels: tuple[float, ...],
        max_delay: float,
        sync_flush: bool = False,
        config: TimerConfig | None = None,
        clock: Callable[[], float] = time.time,
        topic_exists: Callable[[str], bool] | None = None,
    ) -> None:
        self._store = store
        self._topic_exists = topic_exists
        self._arrivals = arrivals
        self._loop = loop
        self.levels = levels
        self.max_delay = max_delay
        self._sync = sync_flush
        self._clock = clock
        self.timers = TimerStore(os.path.join(store.root, "timer"), config, clock=clock)
        self._handle: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Future[bool] | None = None
        self._dirty = False
        self._closed = False
        self._backlog: list[PutMessage] = []  # deliveries the store refused; retried first
        self._delivered_end = 0  # CommitLog end of the newest delivery
        #: Messages delivered to their real topics since the start.
        self.delivered = 0
        #: Due messages dropped since the start because their topic was deleted.
        self.dropped = 0
        #: %TIMER% records re-added at the start (catch-up or rebuild).
        self.caught_up = 0

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Catch up with the ``%TIMER%`` queue, guard retention, start the tick (on the loop)."""
        timers = self.timers
        rebuild = timers.recovery.rebuild_needed
        if rebuild:
            timers.reset()
        self.caught_up = self._catch_up(0 if rebuild else timers.indexed_through)
        if self.caught_up or rebuild:
            self._dirty = True
        self._store.retention_floor = self._retention_floor
        logger.info(
            "timers: {} pending, {} re-added from the CommitLog{}",
            timers.pending(),
            self.caught_up,
            " (rebuilt)" if rebuild else "",
        )
        # The first tick at once: seconds that passed while the broker was down are due.
        self._handle = self._loop.call_at(self._loop.time(), self._tick)

    async def close(self) -> None:
        """Stop the tick, finish the flush in flight, close the timer store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._flushing is not None:
            try:
                await self._flushing
            except Exception:
                pass  # logged by its callback; close() flushes again
        self._store.retention_floor = None
        try:
            self.timers.close()
        except Exception:
            logger.exception("timers: closing the timer store failed")
        if self._backlog:
            logger.warning(
                "timers: {} due messages not delivered yet; delivered after the restart",
                len(self._backlog),
            )

    def _retention_floor(self) -> int | None:
        # The store's housekeeping thread; TimerStore is thread-safe.
        if self._closed:
            return 0  # keep everything: the wheel is not there to ask
        return self.timers.min_commitlog_offset

    # -- filing -------------------------------------------------------------------------

    def due_ms(self, delay_level: int, deliver_at: int, now_ms: int | None = None) -> int:
        """The due time of a send when it must wait in ``%TIMER%``, else 0 (deliver now).

        Raises:
            MessageIllegalError: see :func:`resolve_due_ms`.
        """
        now = int(self._clock() * 1000) if now_ms is None else now_ms
        due = resolve_due_ms(delay_level, deliver_at, now, self.levels, self.max_delay)
        return due if due and is_timed(due, now) else 0

    def on_stored(self, put: PutMessage, result: PutResult) -> None:
        """File a ``%TIMER%`` put (from :func:`timer_message`) the store has just stored.

        Call right after the append, on the loop, so that adds follow the CommitLog order.
        """
        self.timers.add(due_second(int(put.sys[DELIVER_AT])), result.physical_offset, result.size)
        self._dirty = True

    def schedule(self, msg: PutMessage, due_ms: int) -> PutResult:
        """Store ``msg`` for delivery at ``due_ms`` (ms since the epoch); on the loop.

        For the broker's own timed sends (retries, PROTOCOL.md 14.2): a due time in the
        future goes to ``%TIMER%`` (the result's queue offset is then that of ``%TIMER%``),
        else ``msg`` is stored at once in its topic and its waiters are woken.
        """
        if not is_timed(due_ms, int(self._clock() * 1000)):
            result = self._store.append(msg)
            if result.status is PutStatus.PUT_OK:
                self._arrivals.notify(msg.topic, msg.queue_id)
            return result
        put = timer_message(msg, due_ms)
        result = self._store.append(put)
        if result.status is PutStatus.PUT_OK:
            self.on_stored(put, result)
        return result

    def _catch_up(self, from_phys: int) -> int:
        """Add the ``%TIMER%`` records at or past CommitLog offset ``from_phys``, in order."""
        store, timers = self._store, self.timers
        lo, hi = store.min_offset(TIMER_TOPIC, 0), store.max_offset(TIMER_TOPIC, 0)
        while lo < hi:  # the first queue offset whose record is at or past from_phys
            mid = (lo + hi) // 2
            got = store.get_messages(TIMER_TOPIC, 0, mid, max_count=1, max_bytes=1)
            if not got.records:
                lo = mid + 1  # removed: below everything kept
            elif decode_message(got.records[0]).physical_offset < from_phys:
                lo = mid + 1
            else:
                hi = mid
        offset, added, bad = lo, 0, 0
        while True:
            got = store.get_messages(
                TIMER_TOPIC, 0, offset, max_count=_CATCH_UP_CHUNK, max_bytes=1 << 22
            )
            if got.status is not GetStatus.FOUND:
                if got.next_offset > offset and got.status in (
                    GetStatus.MESSAGE_WAS_REMOVING,
                    GetStatus.NO_MATCHED_MESSAGE,
                ):
                    offset = got.next_offset
                    continue
                break
            for raw in got.records:
                stored = decode_message(raw)
                at = _deliver_at(stored)
                if at is None:
                    bad += 1
                elif stored.physical_offset >= from_phys and timers.add(
                    due_second(at), stored.physical_offset, stored.size
                ):
                    added += 1
            offset = got.next_offset
        if bad:
            logger.warning("timers: {} %TIMER% records without a valid DELIVER_AT skipped", bad)
        return added

    # -- the tick -----------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._closed:
            return
        wall = self._clock()
        delay = math.floor(wall) + 1 - wall + _TICK_SLACK
        self._handle = self._loop.call_at(self._loop.time() + delay, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now_s = int(self._clock())
        try:
            self.run_due(now_s)
        except Exception:
            logger.exception("timers: delivering due messages failed; retrying next second")
        if self.behind(now_s):
            # More seconds are due than one callback delivers (a restart after a long
            # downtime, a burst): carry on at once, letting requests in between.
            if not self._closed:
                self._handle = self._loop.call_at(self._loop.time(), self._tick)
            return
        self._schedule()

    def behind(self, now_s: int) -> bool:
        """True when entries filed at or before second ``now_s`` are still to be taken."""
        timers = self.timers
        return not self._backlog and timers.pending() > 0 and timers.next_second <= now_s

    def run_due(self, now_s: int, budget: int = _TICK_BUDGET) -> int:
        """Deliver what is due through second ``now_s``; the number delivered (on the loop).

        Takes whole seconds, oldest first, until about ``budget`` messages are collected
        (a second is never split: its entries leave the wheel together); :meth:`behind`
        then says whether seconds up to ``now_s`` are left for another call.
        """
        if self._closed:
            return 0
        timers = self.timers
        delivered = 0
        if self._backlog:
            delivered, self._backlog = self._deliver(self._backlog)
            if self._backlog:
                return delivered  # the store still refuses: take no newer second
        msgs: list[PutMessage] = []
        lost = 0
        taken = bool(delivered)
        store = self._store
        # Nothing filed: leave the wheel alone (an add moves an empty wheel to "now"), so
        # that an idle broker writes nothing.
        while timers.pending() and timers.next_second <= now_s and len(msgs) < budget:
            taken = True
            for entry in timers.take(timers.next_second):
                raw = store.get_record(entry.phys)
                put = None
                if raw is not None and len(raw) == entry.size:
                    stored = decode_message(raw)
                    if stored.physical_offset == entry.phys:
                        put = delivery_message(stored)
                if put is None:
                    lost += 1
                else:
                    msgs.append(put)
        if lost:
            logger.warning("timers: {} due entries point at no %TIMER% record; skipped", lost)
        count, self._backlog = self._deliver(msgs)
        delivered += count
        if taken and not self._backlog:
            timers.mark_delivered(timers.next_second - 1)
            self._dirty = True
        if self._dirty:
            self._start_flush()
        return delivered

    def _deliver(self, msgs: list[PutMessage]) -> tuple[int, list[PutMessage]]:
        """Append ``msgs`` to their real queues; (how many were stored, the refused ones).

        Messages of topics that no longer exist are dropped (a warning, ``dropped``).
        """
        exists = self._topic_exists
        if exists is not None and msgs:
            alive = [put for put in msgs if exists(put.topic)]
            if len(alive) < len(msgs):
                gone = sorted({put.topic for put in msgs if not exists(put.topic)})
                self.dropped += len(msgs) - len(alive)
                logger.warning(
                    "timers: {} due messages dropped: their topics no longer exist ({})",
                    len(msgs) - len(alive),
                    ", ".join(gone[:10]) + (", ..." if len(gone) > 10 else ""),
                )
                msgs = alive
        refused: list[PutMessage] = []
        stored = 0
        store, notify = self._store, self._arrivals.notify
        woken: set[tuple[str, int]] = set()
        for i in range(0, len(msgs), _DELIVERY_CHUNK):
            chunk = msgs[i : i + _DELIVERY_CHUNK]
            for put, result in zip(chunk, store.append_batch(chunk), strict=True):
                if result.status is PutStatus.PUT_OK:
                    stored += 1
                    self._delivered_end = max(self._delivered_end, result.end_offset)
                    woken.add((put.topic, put.queue_id))
                elif result.status is PutStatus.MESSAGE_ILLEGAL or (
                    result.status is PutStatus.PROPERTIES_SIZE_EXCEEDED
                ):
                    logger.warning("timers: a due message cannot be stored: {}", result.message)
                else:
                    refused.append(put)
        for topic, qid in woken:
            notify(topic, qid)
        if refused:
            logger.warning("timers: {} due messages refused by the store; retrying", len(refused))
        self.delivered += stored
        return stored, refused

    # -- durability ---------------------------------------------------------------------

    def _start_flush(self) -> None:
        if self._flushing is not None or self._closed:
            return  # the next tick flushes what this one changed
        self._dirty = False
        self._flushing = self._loop.run_in_executor(None, self._flush, self._delivered_end)
        self._flushing.add_done_callback(self._flushed)

    def _flush(self, delivered_end: int) -> bool:
        # A worker thread: the disk waits happen off the loop.
        store = self._store
        if self._sync and delivered_end > store.flushed_offset:
            store.request_flush(delivered_end)
            if not store.wait_flushed(delivered_end, store.config.sync_flush_timeout_ms / 1000):
                return False  # deliveries not durable yet: do not record them as done
        self.timers.flush()
        return True

    def _flushed(self, future: asyncio.Future[bool]) -> None:
        self._flushing = None
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None and not self._closed:
            self._dirty = True
            logger.error("timers: flushing the timer store failed: {}", exc)
        elif exc is None and not future.result():
            self._dirty = True
