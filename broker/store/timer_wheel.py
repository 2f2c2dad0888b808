"""Persisted timing wheel for timed messages: the TimerStore (wheel of one-second slots + TimerLog).

A timed message lives in the CommitLog (topic ``%TIMER%``); this store only says *when*.
``add(due_s, phys, size)`` files it; ``due(now_s)`` hands back, second by second and in
add order within a second, every entry whose second has come. Both are O(1) per entry: an
add writes one TimerLog record (timer_log.py) and one slot; taking a second reads one slot
and walks that slot's chain (nothing scans the pending entries). Everything here is
derived from the CommitLog and can be rebuilt from it: ``reset()``, then ``add()`` every
``%TIMER%`` record again (entries already delivered are recognised and skipped).

Files in the store's directory (by convention ``<store root>/timer``), big-endian::

    log/<20-digit start>  TimerLog segments (timer_log.py)
    wheel                 4096-byte header, then wheel_seconds slots of 24 bytes
    lock                  flocked while open: one process per directory

Wheel header: two 64-byte state slots at bytes 0 and 512, written alternately (a torn
write leaves the other intact); the valid one with the higher sequence wins. At byte 1024,
``next_s`` (int64): the next second to take, rewritten (8 bytes, one store, not synced)
whenever it moves, so that recovery knows which seconds the dead process had taken::

    off size field             type
      0    8  sequence          int64
      8    8  wheel_seconds     int64   N, the slot count (another N forces a rebuild)
     16    8  delivered_s       int64   every entry due at or before it has been delivered
     24    8  delivered_index   int64   indexed_through when delivered_s was taken
     32    8  indexed_through   int64   CommitLog end of the newest add()
     40    8  log_safe          int64   TimerLog records below it are durable and in the wheel
     48    8  base_s            int64   no entry is filed below it; seconds below it that were
                                        taken are delivered (an empty wheel moved to "now")
     56    4  flags             uint32  STATE_CLEAN: written by close(); STATE_SLOT_CRC:
                                        this format (slots carry a CRC, next_s is kept)
     60    4  crc32             uint32  CRC32 of bytes [0, 60)

Wheel slot ``s``, at byte 4096 + 24 s, holds the chain of the seconds t with t mod N = s::

    off size field    type
      0    8  fire_s   int64   the second its newest records are filed under
      8    8  head     int64   TimerLog position of the newest record of the slot
     16    4  count    uint32  records filed under fire_s; 0: the slot is empty
     20    4  crc32    uint32  CRC32 of bytes [0, 20); an empty slot is 24 zero bytes

A slot is written with one copy of its 24 bytes; the CRC tells a slot that a kill tore in
the middle of that copy, and recovery rebuilds it from its chain (below).

**Rolling.** With ``c`` the next second to take, an entry is filed under ``due_s`` when
``c <= due_s < c + N``, under ``c`` when already due, and otherwise ("rolled") under the
next second >= c of its slot, ``c + (due_s - c) mod N``. When that second is taken the
entry is not due yet, so it is re-added (a new record, FLAG_ROLLED) N seconds later. A
slot's chain links all its generations, newest first (each record's ``prev`` is the head
it found); taking second t walks from the head, skips records filed after t (only seen
after a crash, below), takes those filed under t and stops at the first filed earlier.

**Recovery** (SIGKILL keeps the page cache, so at most the record being written is torn):
a record is written before its slot, and ``flush()`` makes the TimerLog durable, then the
wheel, then the header. Opening scans from ``min(log_safe, start of the last segment)``,
checks magic and CRC32, cuts at the first bad record (a warning with path and offset) and
re-applies the records past ``log_safe`` to their slots (idempotent: a slot whose head is
at or past a record has it already). A slot of such a record whose CRC fails, or that is
empty although the record's ``prev`` says it held a chain, was torn by the kill (a copy
can be cut anywhere, after zeroing included): its head is its newest record and its count
is recounted along the chain.
Seconds taken but not durably ``mark_delivered`` (from ``delivered_s + 1`` to ``next_s -
1``) are taken again at once, before anything new is filed: their chains are still linked
behind the newer generation, so their entries come back, and the next ``due()`` or
``take()`` hands them out first (at-least-once, as docs/PROTOCOL.md 14.1 allows); rolled
entries already re-added are not re-added twice. Taking them at open matters: an entry
filed before they were taken again could land under an older second than its slot's
newest generation, and the walk from that older head would never reach the newer one.
What the TimerLog cannot repair (a cut below ``log_safe``, a slot pointing past the cut,
an unreadable header, another wheel_seconds) or a wheel of an older format sets
``recovery.rebuild_needed``: the owner calls ``reset()`` and re-adds from the CommitLog.

Sizing: N = 7 days by default (TimerConfig): delays up to 7 days are never rolled, the
broker's 30-day maximum rolls an entry at most 4 times, and the wheel file is 14.5 MB.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final

import msgspec
from loguru import logger

from .config import TimerConfig
from .errors import StoreClosedError, StoreLockedError
from .mapped_file import MappedFile
from .timer_log import FLAG_ROLLED, NO_POSITION, TimerLog, TimerRecord

__all__ = [
    "SLOT",
    "SLOT_LEN",
    "STATE",
    "STATE_CLEAN",
    "STATE_LEN",
    "STATE_SLOT_CRC",
    "WHEEL_HEADER_LEN",
    "TimerEntry",
    "TimerRecovery",
    "TimerStore",
    "due_second",
    "pack_slot",
]

SLOT: Final = struct.Struct(">qqII")
SLOT_LEN: Final = 24
assert struct.calcsize(SLOT.format) == SLOT_LEN
_SLOT_BODY: Final = struct.Struct(">qqI")  # the bytes the CRC covers
_EMPTY_SLOT: Final = bytes(SLOT_LEN)
STATE: Final = struct.Struct(">qqqqqqqII")
STATE_LEN: Final = 64
assert struct.calcsize(STATE.format) == STATE_LEN
STATE_CLEAN: Final = 0x1
STATE_SLOT_CRC: Final = 0x2
_STATE_AT: Final = (0, 512)
_NEXT_AT: Final = 1024
WHEEL_HEADER_LEN: Final = 4096
_crc32 = zlib.crc32


def pack_slot(fire: int, head: int, count: int) -> bytes:
    """The 24 bytes of a wheel slot, CRC included (24 zero bytes when ``count`` is 0)."""
    if not count:
        return _EMPTY_SLOT
    body = _SLOT_BODY.pack(fire, head, count)
    return body + _crc32(body).to_bytes(4, "big")


def _unpack_slot(raw: bytes) -> tuple[int, int, int] | None:
    """(fire, head, count) of a slot's 24 bytes; None when they are not a sound slot."""
    if raw == _EMPTY_SLOT:
        return 0, 0, 0
    fire, head, count, crc = SLOT.unpack(raw)
    if _crc32(raw[: SLOT_LEN - 4]) != crc or count == 0:
        return None
    return fire, head, count


def due_second(deliver_at_ms: int) -> int:
    """The wheel second of a ``DELIVER_AT`` time, rounded up so that nothing comes out early."""
    return -(-deliver_at_ms // 1000)


class TimerEntry(msgspec.Struct, frozen=True, gc=False):
    """A due timer: the ``%TIMER%`` record at ``phys`` (``size`` bytes), due at ``due_s``."""

    due_s: int
    phys: int
    size: int


class TimerRecovery(msgspec.Struct, frozen=True):
    """What opening the timer store found and did."""

    #: The last run did not close the store (crash or kill).
    abnormal: bool
    scanned_from: int
    records_scanned: int
    #: Records past log_safe that were missing from their slots and linked in again.
    reapplied: int
    cut_bytes: int
    #: Entries of seconds taken before the crash but not durably delivered, taken again
    #: at open; the next due() or take() hands them out first.
    replayed: int = 0
    #: Slots a kill tore mid-write, rebuilt from their chains.
    torn_slots: int = 0
    damage: str | None = None
    damage_path: str = ""
    #: The wheel could not be repaired from the TimerLog: reset() and re-add from the CommitLog.
    rebuild_needed: bool = False


class _State(msgspec.Struct):
    sequence: int = 0
    wheel_seconds: int = 0
    delivered_s: int = 0
    delivered_index: int = 0
    indexed_through: int = 0
    log_safe: int = 0
    base_s: int = 0
    flags: int = 0


class TimerStore:
    """The wheel and TimerLog in ``directory``. Thread-safe: one lock serialises changes.

    How the broker's timer service uses it, next to its MessageStore::

        timers = TimerStore(os.path.join(store.root, "timer"), TimerConfig())
        if timers.recovery.rebuild_needed:
            timers.reset()              # then add() every %TIMER% record, in CommitLog order
        # catch up: add() the %TIMER% records at or past timers.indexed_through, in order
        timers.add(due_second(deliver_at_ms), put.physical_offset, put.size)  # per %TIMER% put
        for entry in timers.due(now_s):                                       # every second
            ...append the message at entry.phys to its REAL_TOPIC...
        timers.mark_delivered(now_s)    # once those appends are stored
        timers.flush()                  # every second, say: makes that progress durable
        timers.close()

    Args:
        directory: the timer store's directory (created if missing).
        config: wheel size and TimerLog file size.
        clock: seconds since the epoch; only used to start an empty wheel at "now".

    Raises:
        StoreLockedError: another process has the directory open.
    """

    def __init__(
        self,
        directory: str,
        config: TimerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = cfg = (config or TimerConfig()).validate()
        self.directory = directory
        self._n = cfg.wheel_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time; taken before _lock
        self._closed = False
        os.makedirs(directory, exist_ok=True)
        self._lock_fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreLockedError(directory) from None
        self._log = TimerLog(os.path.join(directory, "log"), cfg.log_entries_per_file)
        self._wheel_path = os.path.join(directory, "wheel")
        self._wheel: MappedFile | None = None
        self._state = _State(wheel_seconds=self._n)
        self._written = self._state  # the header as last written
        self._base = 0  # see base_s in the module docstring; never decreases
        self._wheel_dirty = False
        self._pending = 0
        self._next = 0  # the next second to take
        self._takes: deque[tuple[int, int]] = deque()  # (second taken, indexed_through then)
        self._replay: list[TimerEntry] = []  # taken again at open, handed out first
        try:
            self.recovery = self._recover()
        except BaseException:
            self._release()
            raise

    # == opening =================================================================================
    def _recover(self) -> TimerRecovery:
        n, rebuild, log = self._n, False, self._log
        size = WHEEL_HEADER_LEN + n * SLOT_LEN
        log.load()
        exists = os.path.exists(self._wheel_path)
        state = self._read_state() if exists else None
        if (exists or log.files) and (
            state is None
            or state.wheel_seconds != n
            or not state.flags & STATE_SLOT_CRC
            or os.path.getsize(self._wheel_path) != size
        ):
            logger.warning(
                "timer wheel {} missing, unreadable, of an older format or sized for another "
                "wheel_seconds: starting empty (re-add the timers from the CommitLog)",
                self._wheel_path,
            )
            if exists:
                os.unlink(self._wheel_path)
            log.destroy_all()
            exists, rebuild = False, True
        self._wheel = MappedFile(self._wheel_path, 0, size, create=not exists)
        st = self._state
        if state is not None and not rebuild:
            st = self._state = state
        elif state is not None:  # what was delivered stays delivered
            st.delivered_s, st.delivered_index = state.delivered_s, state.delivered_index
            st.base_s = state.base_s
        files = log.files
        safe = min(max(st.log_safe, log.min_offset), files[-1].end if files else 0)
        scan_from = min(safe, files[-1].start) if files else 0
        newest: dict[int, tuple[int, int]] = {}  # slot -> (position, fire) of its newest record
        torn: set[int] = set()
        counts = [0, 0]

        def visit(pos: int, rec: TimerRecord) -> None:
            counts[0] += 1
            if not rec.flags & FLAG_ROLLED and rec.phys + rec.size > st.indexed_through:
                st.indexed_through = rec.phys + rec.size
            s = rec.fire % n
            newest[s] = (pos, rec.fire)
            if pos >= safe and s not in torn:
                slot = self._checked_slot(s)
                # Torn by the kill (rebuilt once the scan is done): a CRC that fails, or a
                # slot left zeroed although the record found it holding a chain (prev).
                if slot is None or (slot[2] == 0 and rec.prev != NO_POSITION):
                    torn.add(s)
                    return
                fire, head, count = slot
                if count == 0 or rec.fire > fire:
                    self._set_slot(s, rec.fire, pos, 1)
                elif rec.fire == fire and pos > head:
                    self._set_slot(s, fire, pos, count + 1)
                else:
                    return
                counts[1] += 1

        end, damage, damage_path = log.scan(scan_from, visit)
        cut = 0
        if damage is not None:
            logger.warning(
                "timerlog damaged at offset {} in {}: {}; cutting it there",
                end,
                damage_path,
                damage,
            )
            cut = log.cut(end)
            rebuild = rebuild or end < safe
        log.open_at(end, safe)
        for s in sorted(torn):
            head, fire = newest[s]
            count = self._count_generation(head, fire)
            self._set_slot(s, fire, head, count)
            logger.warning(
                "timer wheel slot {} was torn by the crash: rebuilt from its chain "
                "(second {}, {} records)",
                s,
                fire,
                count,
            )
        self._base = st.base_s
        self._next = max(st.delivered_s + 1, st.base_s)
        self._takes.append((st.delivered_s, st.delivered_index))
        # One pass over the slots: count what is pending; repair heads that were cut off.
        wheel = self._wheel
        for s, (fire, head, count, crc) in enumerate(SLOT.iter_unpack(wheel.mm[WHEEL_HEADER_LEN:])):
            if (count or crc) and self._checked_slot(s) is None:
                logger.warning("timer wheel slot {} is damaged (CRC mismatch)", s)
                fire, head, count = 0, 0, 0
                self._set_slot(s, fire, head, count)
                rebuild = True
            if count and head >= end:
                pos_fire = newest.get(s)
                fire, head, count = (pos_fire[1], pos_fire[0], 1) if pos_fire else (0, 0, 0)
                self._set_slot(s, fire, head, count)
                rebuild = True
            if count and fire >= self._next:
                self._pending += count
        # The seconds the dead process had taken (next_s) but not durably marked delivered
        # are taken again now, before anything new is filed (see the module docstring).
        taken_next = int.from_bytes(wheel.mm[_NEXT_AT : _NEXT_AT + 8], "big", signed=True)
        if exists and not rebuild and self._next < taken_next <= self._next + n:
            for t in range(self._next, taken_next):
                self._replay.extend(self._take(t))
        self._set_next(self._next)
        self._flush_files()
        report = TimerRecovery(
            abnormal=exists and (state is None or not state.flags & STATE_CLEAN),
            scanned_from=scan_from,
            records_scanned=counts[0],
            reapplied=counts[1],
            cut_bytes=cut,
            damage=damage,
            damage_path=damage_path,
            rebuild_needed=rebuild,
            replayed=len(self._replay),
            torn_slots=len(torn),
        )
        if damage is not None or rebuild or torn:
            logger.warning("timer store recovery: {}", report)
        return report

    def _count_generation(self, head: int, fire: int) -> int:
        """How many records filed under ``fire`` the chain from ``head`` starts with."""
        count, pos, floor = 0, head, self._log.min_offset
        while pos != NO_POSITION and pos >= floor:
            rec = self._log.read(pos)
            if rec is None or rec.fire != fire:
                break
            count += 1
            if rec.prev >= pos:
                break
            pos = rec.prev
        return count

    def _read_state(self) -> _State | None:
        best: _State | None = None
        with open(self._wheel_path, "rb") as fh:
            head = fh.read(WHEEL_HEADER_LEN)
        for at in _STATE_AT:
            raw = head[at : at + STATE_LEN]
            if len(raw) != STATE_LEN:
                continue
            *fields, crc = STATE.unpack(raw)
            valid = _crc32(raw[: STATE_LEN - 4]) == crc and fields[0] > 0
            if valid and (best is None or fields[0] > best.sequence):
                best = _State(*fields)
        return best

    # == the wheel ===============================================================================
    def _slot(self, s: int) -> tuple[int, int, int]:
        """(fire, head, count) of slot ``s``, unchecked (what this process wrote)."""
        assert self._wheel is not None
        fire, head, count, _crc = SLOT.unpack_from(self._wheel.mm, WHEEL_HEADER_LEN + s * SLOT_LEN)
        return fire, head, count

    def _checked_slot(self, s: int) -> tuple[int, int, int] | None:
        """(fire, head, count) of slot ``s``; None when its CRC fails (a torn write)."""
        assert self._wheel is not None
        at = WHEEL_HEADER_LEN + s * SLOT_LEN
        return _unpack_slot(self._wheel.mm[at : at + SLOT_LEN])

    def _set_slot(self, s: int, fire: int, head: int, count: int) -> None:
        """Write slot ``s`` with one copy of its 24 bytes (a kill can only tear that copy)."""
        assert self._wheel is not None
        at = WHEEL_HEADER_LEN + s * SLOT_LEN
        self._wheel.mm[at : at + SLOT_LEN] = pack_slot(fire, head, count)
        self._wheel_dirty = True

    def _set_next(self, second: int) -> None:
        """Move the next second to take, and keep it in the header (one 8-byte store)."""
        self._next = second
        assert self._wheel is not None
        self._wheel.mm[_NEXT_AT : _NEXT_AT + 8] = second.to_bytes(8, "big", signed=True)

    def _file(self, due: int, phys: int, size: int, flags: int) -> None:
        """Append a record for the entry and make it its slot's head (under the lock)."""
        c, n = self._next, self._n
        fire = c if due < c else due if due - c < n else c + (due - c) % n
        s = fire % n
        old_fire, head, count = self._slot(s)
        if count and old_fire > fire:
            # Only when recovery could not tell which seconds were taken before a crash:
            # filing under an older second than the slot's newest generation would hide
            # that generation from the walk. Late (one turn of the wheel) rather than lost.
            logger.warning(
                "timer entry due {} filed under second {}: the wheel was behind", due, old_fire
            )
            fire = old_fire
        pos = self._log.append(flags, due, fire, phys, head if count else NO_POSITION, size)
        self._set_slot(s, fire, pos, count + 1 if count and old_fire == fire else 1)
        self._pending += 1

    def _jump(self, second: int) -> bool:
        """Move an empty wheel's next second forward to ``second``; True when base_s moved.

        Nothing is skipped: no entry is pending. When every second taken so far is marked
        delivered, the move becomes the new base_s, so that a reopened wheel starts there
        instead of walking the idle seconds again.
        """
        if second <= self._next:
            return False
        moved = self._next == max(self._state.delivered_s + 1, self._base)  # none unmarked
        if moved:
            self._base = second
        self._set_next(second)
        self._takes.append((second - 1, self._state.indexed_through))
        return moved

    # == adding and taking =======================================================================
    def add(self, due_s: int, phys: int, size: int) -> bool:
        """File the ``%TIMER%`` record at ``phys`` (``size`` bytes) as due at second ``due_s``.

        Call in CommitLog order: ``indexed_through`` is the end of the newest add. A second
        already past comes out at the next ``due()``. An entry known to be delivered (due
        at or before ``delivered_through`` and below the CommitLog offset indexed when that
        second was taken: a re-add after ``reset()``) is skipped. O(1).

        Returns:
            False when skipped as already delivered, else True.

        Raises:
            StoreClosedError: the store is closed.
            ValueError: a negative offset, or a size outside 1..2**32-1.
        """
        if phys < 0 or not 0 < size < 1 << 32:
            raise ValueError(f"bad timer entry: phys {phys}, size {size}")
        with self._lock:
            self._check_open()
            st = self._state
            if due_s <= st.delivered_s and phys + size <= st.delivered_index:
                return False
            if self._pending == 0 and self._jump(int(self._clock())):
                self._write_state(self._written, clean=False)  # base_s before what it orders
            self._file(due_s, phys, size, 0)
            if phys + size > st.indexed_through:
                st.indexed_through = phys + size
            return True

    def take(self, second: int) -> list[TimerEntry]:
        """Take one second: its due entries in add order; those not due yet are re-added.

        ``second`` must be ``next_second`` (or any later one while nothing is pending).
        O(entries filed under that second). After a crash the first call also returns,
        first, the entries taken again at open (``recovery.replayed``).

        Raises:
            StoreClosedError: the store is closed.
            ValueError: ``second`` is not the next second to take.
        """
        with self._lock:
            self._check_open()
            if self._pending == 0:
                self._jump(second)
            if second != self._next:
                raise ValueError(f"take the seconds in order: next is {self._next}, not {second}")
            entries = self._take(second)
            if self._replay:
                entries, self._replay = self._replay + entries, []
            return entries

    def _take(self, t: int) -> list[TimerEntry]:
        fire, pos, count = self._slot(t % self._n)
        chain: list[TimerRecord] = []
        refiled: set[int] = set()
        if count and fire >= t:
            floor = self._log.min_offset
            while pos != NO_POSITION and pos >= floor:
                rec = self._log.read(pos)
                if rec is None or rec.fire < t:
                    break
                if rec.fire == t:
                    chain.append(rec)
                elif rec.flags & FLAG_ROLLED:  # re-added by an earlier take of t (a crash)
                    refiled.add(rec.phys)
                if rec.prev >= pos:  # chains only point backwards: damage
                    break
                pos = rec.prev
            if fire == t:
                self._pending = max(0, self._pending - len(chain))
        self._set_next(t + 1)
        self._takes.append((t, self._state.indexed_through))
        out: list[TimerEntry] = []
        for rec in reversed(chain):
            if rec.due <= t:
                out.append(TimerEntry(rec.due, rec.phys, rec.size))
            elif rec.phys not in refiled:
                self._file(rec.due, rec.phys, rec.size, FLAG_ROLLED)
        return out

    def due(self, now_s: int) -> Iterator[TimerEntry]:
        """Take every second from ``next_second`` through ``now_s``, yielding the due entries.

        Entries come by second, then in add order. Consume the iterator to its end, then
        call ``mark_delivered(now_s)`` once the deliveries are stored. An empty wheel jumps
        straight to ``now_s``; otherwise each second costs one slot read. After a crash the
        entries taken again at open (``recovery.replayed``) come first.
        """
        with self._lock:
            self._check_open()
            replay, self._replay = self._replay, []
        yield from replay
        while True:
            with self._lock:
                self._check_open()
                if self._pending == 0:
                    self._jump(now_s + 1)
                if self._next > now_s:
                    return
                entries = self._take(self._next)
            yield from entries

    def mark_delivered(self, second: int) -> None:
        """Record that every entry taken through ``second`` has been delivered and stored.

        Made durable by the next ``flush()``; after a crash the seconds past the durable
        value are taken again (their entries delivered again: at-least-once).

        Raises:
            StoreClosedError: the store is closed.
            ValueError: ``second`` has not been taken yet.
        """
        with self._lock:
            self._check_open()
            if second >= self._next:
                raise ValueError(f"second {second} is not taken yet (next is {self._next})")
            takes, st = self._takes, self._state
            while takes and takes[0][0] <= second:
                taken, index = takes.popleft()
                if taken >= st.delivered_s:
                    st.delivered_s, st.delivered_index = taken, index
            st.delivered_s = max(st.delivered_s, second)  # an older index is the safe side
            takes.appendleft((st.delivered_s, st.delivered_index))

    # == state ===================================================================================
    @property
    def next_second(self) -> int:
        """The next second ``take`` or ``due`` takes."""
        return self._next

    @property
    def delivered_through(self) -> int:
        """Every entry due at or before this second has been delivered (``mark_delivered``)."""
        return self._state.delivered_s

    @property
    def indexed_through(self) -> int:
        """CommitLog end of the newest ``add``: after a crash, re-add ``%TIMER%`` from here."""
        return self._state.indexed_through

    def pending(self) -> int:
        """Entries filed and not handed out yet (O(1))."""
        return self._pending + len(self._replay)

    @property
    def min_commitlog_offset(self) -> int | None:
        """No TimerLog record still stored points below this CommitLog offset (None: none).

        A lower bound of what pending timers still need: CommitLog retention must not
        delete the segments at or past it while the timers are pending.
        """
        with self._lock:
            return self._log.min_phys

    # == durability, reset, close ================================================================
    def flush(self) -> None:
        """Make the TimerLog, then the wheel, then the progress durable; drop delivered segments."""
        with self._flush_lock:
            self._check_open()
            self._flush_files()

    def _flush_files(self) -> None:
        with self._lock:
            log = self._log
            end, flushed = log.end, log.flushed
            dirty, self._wheel_dirty = self._wheel_dirty, False
            state = msgspec.structs.replace(self._state, log_safe=end)
        log.flush_range(flushed, end)
        assert self._wheel is not None
        if dirty:
            self._wheel.flush()
        with self._lock:
            log.flushed = max(log.flushed, end)
            self._state.log_safe = end
            self._write_state(state, clean=False)
            log.delete_delivered(self._state.delivered_s)

    def _write_state(self, state: _State, *, clean: bool) -> None:
        """Write ``state`` (with the current base_s) into the older header slot and msync it."""
        self._state.sequence += 1
        seq = self._state.sequence
        self._written = msgspec.structs.replace(state, sequence=seq, base_s=self._base)
        body = STATE.pack(
            seq, self._n, state.delivered_s, state.delivered_index, state.indexed_through,
            state.log_safe, self._base, STATE_SLOT_CRC | (STATE_CLEAN if clean else 0), 0,
        )[: STATE_LEN - 4]  # fmt: skip
        assert self._wheel is not None
        at = _STATE_AT[seq % 2]
        self._wheel.mm[at : at + STATE_LEN] = body + _crc32(body).to_bytes(4, "big")
        self._wheel.flush_range(0, WHEEL_HEADER_LEN)

    def reset(self) -> None:
        """Forget every entry (TimerLog and wheel), keeping what ``delivered_through`` says.

        Then re-add every ``%TIMER%`` record of the CommitLog, in order: the ones already
        delivered are skipped (see ``add``), the others are filed again.
        """
        with self._flush_lock, self._lock:
            self._check_open()
            self._log.destroy_all()
            assert self._wheel is not None
            mm, chunk = self._wheel.mm, 1 << 20
            for at in range(WHEEL_HEADER_LEN, len(mm), chunk):
                mm[at : min(at + chunk, len(mm))] = bytes(min(chunk, len(mm) - at))
            self._wheel.flush()
            self._pending = 0
            st = self._state
            st.indexed_through = st.log_safe = 0
            self._set_next(max(st.delivered_s + 1, self._base))
            self._takes = deque([(st.delivered_s, st.delivered_index)])
            self._replay = []
            self._write_state(st, clean=False)
        logger.info("timer store reset at {}", self.directory)

    def close(self) -> None:
        """Flush everything, mark the state clean and release the files (idempotent)."""
        with self._flush_lock:
            if self._closed:
                return
            self._flush_files()
            with self._lock:
                self._write_state(self._state, clean=True)
                self._closed = True
            self._release()

    def _release(self) -> None:
        self._log.close()
        if self._wheel is not None:
            self._wheel.close()
        os.close(self._lock_fd)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("timer store is closed")

    def __enter__(self) -> TimerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
