"""The timer store (timer_wheel.py, timer_log.py): order, rolling, persistence, crashes, rebuild.

Time is simulated: every store gets a fake clock and the tests pass the seconds to
``due``; nothing waits. Crash images are taken two ways: a writer subprocess killed with
SIGKILL, and a copy of an open store's directory (what a kill would leave: the page
cache is the file content).
"""

from __future__ import annotations

import os
import random
import re
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.store import (
    ConfigError,
    StoreClosedError,
    StoreLockedError,
    TimerConfig,
    TimerEntry,
    TimerStore,
    due_second,
)
from broker.store import timer_log as tl
from broker.store import timer_wheel as tw

from ._timer_writer import BASE, BATCH, entry_of
from ._timer_writer import CONFIG as WRITER_CONFIG
from .conftest import StoreLog

WRITER = Path(__file__).with_name("_timer_writer.py")
DEADLINE_S = 30.0
#: A small wheel and small TimerLog files, so that entries roll and segments roll.
SMALL = TimerConfig(wheel_seconds=60, log_entries_per_file=16)

Entry = tuple[int, int, int]  # (due second, CommitLog offset, size)


class Clock:
    """Seconds since the epoch, moved only by the test."""

    def __init__(self, now: int = BASE) -> None:
        self.now = now

    def __call__(self) -> float:
        return float(self.now)


class Timers:
    """Opens TimerStores and closes every one of them at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clock = Clock()
        self._opened: list[TimerStore] = []

    def open(
        self, config: TimerConfig = SMALL, directory: Path | None = None, **kwargs: Any
    ) -> TimerStore:
        kwargs.setdefault("clock", self.clock)
        store = TimerStore(str(directory or self.directory), config, **kwargs)
        self._opened.append(store)
        return store

    def close_all(self) -> None:
        while self._opened:
            self._opened.pop().close()


@pytest.fixture
def timers(tmp_path: Path, store_log: StoreLog) -> Iterator[Timers]:
    factory = Timers(tmp_path / "timer")
    try:
        yield factory
    finally:
        factory.close_all()


def triples(entries: Iterable[TimerEntry]) -> list[Entry]:
    return [(e.due_s, e.phys, e.size) for e in entries]


def add_all(store: TimerStore, entries: Iterable[Entry]) -> None:
    for entry in entries:
        assert store.add(*entry)


def drain(store: TimerStore, through: int) -> list[Entry]:
    """Everything due through ``through``, marked delivered."""
    out = triples(store.due(through))
    store.mark_delivered(through)
    return out


def crash_image(directory: Path, into: Path) -> Path:
    """What a SIGKILL would leave of an open store: its files as the page cache holds them."""
    shutil.copytree(directory, into)
    return into


# == format ======================================================================================
#: The byte tables of the module docstrings, field by field, against the struct formats.
@pytest.mark.parametrize(
    ("module", "layout", "fields"),
    [
        (tl, tl.ENTRY, ["magic", "flags", "due_s", "fire_s", "phys", "prev", "size", "crc32"]),
        (tw, tw.SLOT, ["fire_s", "head", "count", "crc32"]),
        (
            tw,
            tw.STATE,
            [
                "sequence", "wheel_seconds", "delivered_s", "delivered_index",
                "indexed_through", "log_safe", "base_s", "flags", "crc32",
            ],
        ),
    ],
    ids=["timerlog-record", "wheel-slot", "wheel-state"],
)  # fmt: skip
def test_layouts_match_the_documented_tables(
    module: Any, layout: struct.Struct, fields: list[str]
) -> None:
    assert (tl.ENTRY.size, tw.SLOT.size, tw.STATE.size) == (tl.ENTRY_LEN, tw.SLOT_LEN, 64)
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\w+)\s", module.__doc__ or "", re.MULTILINE)
    # The table of this layout: the run of rows whose names are its fields, in order.
    names = [name for _offset, _size, name in rows]
    at = next(i for i in range(len(rows)) if names[i : i + len(fields)] == fields)
    table = {name: (int(offset), int(size)) for offset, size, name in rows[at : at + len(fields)]}
    codes = re.findall(r"\d*[a-zA-Z]", layout.format.lstrip(">"))
    assert len(codes) == len(fields)
    for i, (code, name) in enumerate(zip(codes, fields, strict=True)):
        offset = struct.calcsize(">" + "".join(codes[:i]))
        assert table[name] == (offset, struct.calcsize(">" + code)), name


def test_due_second_rounds_up() -> None:
    assert due_second(1_700_000_000_000) == 1_700_000_000
    assert due_second(1_700_000_000_001) == 1_700_000_001
    assert due_second(1_700_000_000_999) == 1_700_000_001


def test_config_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        TimerConfig(wheel_seconds=1).validate()
    with pytest.raises(ConfigError):
        TimerStore(str(tmp_path), TimerConfig(log_entries_per_file=3))


# == adding and taking ===========================================================================
def test_take_order_within_and_across_seconds(timers: Timers) -> None:
    store = timers.open()
    t0 = timers.clock.now
    adds = [(t0 + 3, 300, 1), (t0 + 1, 100, 2), (t0 + 3, 301, 3), (t0 + 2, 200, 4)]
    adds += [(t0 + 1, 101, 5), (t0 + 3, 302, 6), (t0, 0, 7)]
    add_all(store, adds)
    assert store.pending() == 7
    assert store.next_second == t0
    assert triples(store.take(t0)) == [(t0, 0, 7)]
    assert triples(store.take(t0 + 1)) == [(t0 + 1, 100, 2), (t0 + 1, 101, 5)]
    assert store.pending() == 4
    with pytest.raises(ValueError, match="in order"):
        store.take(t0 + 3)
    rest = [(t0 + 2, 200, 4), (t0 + 3, 300, 1), (t0 + 3, 301, 3), (t0 + 3, 302, 6)]
    assert triples(store.due(t0 + 5)) == rest
    assert store.pending() == 0 and store.next_second == t0 + 6
    assert triples(store.due(t0 + 5)) == []


def test_late_and_past_entries_come_out_at_the_next_second(timers: Timers) -> None:
    store = timers.open()
    t0 = timers.clock.now
    add_all(store, [(t0 + 5, 1, 1)])
    assert drain(store, t0 + 2) == []
    add_all(store, [(t0 - 100, 2, 1), (t0 + 1, 3, 1), (t0 + 3, 4, 1)])  # added after their time
    assert drain(store, t0 + 3) == [(t0 - 100, 2, 1), (t0 + 1, 3, 1), (t0 + 3, 4, 1)]
    assert drain(store, t0 + 5) == [(t0 + 5, 1, 1)]


def test_an_empty_wheel_starts_at_the_clock_and_jumps_to_now(timers: Timers) -> None:
    timers.clock.now = 2_000_000_000
    store = timers.open()
    assert drain(store, 2_000_000_000) == []
    assert store.next_second == 2_000_000_001
    timers.clock.now = 2_000_100_000
    add_all(store, [(2_000_100_010, 1, 1)])
    assert store.next_second == 2_000_100_000  # not a walk over the 100,000 idle seconds
    assert drain(store, 2_000_100_009) == []
    assert drain(store, 2_000_100_010) == [(2_000_100_010, 1, 1)]
    assert store.take(2_000_200_000) == []  # nothing pending: any later second may be taken
    with pytest.raises(ValueError, match="not taken yet"):
        store.mark_delivered(2_000_200_001)


def test_rolled_entries_come_out_only_at_their_second(timers: Timers) -> None:
    store = timers.open()  # a 60-second wheel
    t0 = timers.clock.now
    far = [(t0 + d, d, 1) for d in (59, 60, 61, 119, 120, 121, 185, 600, 3599)]
    near = [(t0 + 30, 1_000_000, 1)]
    add_all(store, far + near)
    entries_before = _entries_written(store)
    out: dict[int, list[Entry]] = {}
    for second in range(t0, t0 + 3600):
        got = triples(store.take(second))
        if got:
            out[second] = got
    assert out == {due: [(due, phys, size)] for due, phys, size in sorted(far + near)}
    assert store.pending() == 0
    # A roll writes one record: an entry d seconds out is re-added d // 60 times (O(1) each).
    rolls = sum((due - t0) // 60 for due, _phys, _size in far)
    assert _entries_written(store) == entries_before + rolls == len(far + near) + rolls


def _entries_written(store: TimerStore) -> int:
    """TimerLog entries written so far (positions, less one seal per full file)."""
    records = store._log.end // tl.ENTRY_LEN
    return records - records // store.config.log_entries_per_file


def test_thousands_of_entries_over_eight_days(timers: Timers) -> None:
    config = TimerConfig(wheel_seconds=86_400, log_entries_per_file=1024)
    store = timers.open(config)
    rng = random.Random(5)
    t0 = timers.clock.now
    horizon = 8 * 86_400 + 1234
    adds = [(t0 + rng.randrange(0, horizon), i * 100, 100) for i in range(4000)]
    adds += [(t0 + horizon, 10**9, 1), (t0 + 7 * 86_400, 10**9 + 1, 1)]
    add_all(store, adds)
    order = {entry: n for n, entry in enumerate(adds)}
    expected = sorted(adds, key=lambda e: (e[0], order[e]))
    got: list[Entry] = []
    now = t0
    while now < t0 + horizon:
        before, now = now, min(now + rng.choice((1, 7, 60, 3600, 20_000)), t0 + horizon)
        batch = drain(store, now)
        # Nothing comes out early, and everything comes out at the first call past its second.
        assert all(before < due <= now for due, _p, _s in batch)
        got.extend(batch)
    assert got == expected
    assert store.pending() == 0


def test_take_walks_only_the_entries_of_its_second(timers: Timers) -> None:
    store = timers.open(TimerConfig(wheel_seconds=3600, log_entries_per_file=4096))
    t0 = timers.clock.now
    add_all(store, [(t0 + 1 + i % 3000, i, 1) for i in range(9000)])
    add_all(store, [(t0 + 5000, 10**6, 1)])  # rolled once, at t0 + 1400
    reads = 0
    read = store._log.read

    def counting(pos: int) -> tl.TimerRecord | None:
        nonlocal reads
        reads += 1
        return read(pos)

    store._log.read = counting  # type: ignore[method-assign]
    for second in range(t0, t0 + 1500):
        before = reads
        got = store.take(second)
        # The entries of that second and, at most, the record that ends its chain.
        assert reads - before <= len(got) + 2, second
    assert store.pending() == 9000 - 1499 * 3 + 1


# == persistence =================================================================================
def test_entries_and_progress_survive_close_and_reopen(timers: Timers) -> None:
    t0 = timers.clock.now
    adds = [(t0 + (i * 37) % 500, i, 10) for i in range(300)]
    reference = timers.open(directory=timers.directory.with_name("reference"))
    add_all(reference, adds)
    expected = [drain(reference, t0 + s) for s in (100, 250, 499)]

    store = timers.open()
    add_all(store, adds)
    assert drain(store, t0 + 100) == expected[0]
    store.close()
    with pytest.raises(StoreClosedError):
        store.add(t0, 1, 1)
    store = timers.open()
    assert store.recovery.abnormal is False and store.recovery.rebuild_needed is False
    assert store.delivered_through == t0 + 100 and store.next_second == t0 + 101
    assert store.pending() == 300 - len(expected[0])
    assert store.indexed_through == 299 + 10
    assert drain(store, t0 + 250) == expected[1]
    store.close()
    store = timers.open()
    assert drain(store, t0 + 499) == expected[2]
    assert sorted(e for part in expected for e in part) == sorted(adds)


def test_delivered_seconds_are_not_returned_again_after_reopen(timers: Timers) -> None:
    store = timers.open()
    t0 = timers.clock.now
    add_all(store, [(t0 + s, s, 1) for s in range(10)])
    assert len(drain(store, t0 + 4)) == 5
    store.flush()
    image = crash_image(timers.directory, timers.directory.with_name("image"))
    store.close()
    for directory in (timers.directory, image):  # clean close, and a crash after the flush
        again = timers.open(directory=directory)
        assert again.recovery.abnormal is (directory == image)
        assert again.delivered_through == t0 + 4
        assert drain(again, t0 + 20) == [(t0 + s, s, 1) for s in range(5, 10)]


def test_seconds_taken_but_not_durably_delivered_are_taken_again(timers: Timers) -> None:
    store = timers.open()  # 60-second wheel
    t0 = timers.clock.now
    adds = [(t0 + 5, 1, 1), (t0 + 5, 2, 1), (t0 + 6, 3, 1), (t0 + 65, 4, 1), (t0 + 125, 5, 1)]
    add_all(store, adds)
    assert drain(store, t0 + 4) == []
    store.flush()  # durable: delivered through t0 + 4
    assert drain(store, t0 + 6) == [(t0 + 5, 1, 1), (t0 + 5, 2, 1), (t0 + 6, 3, 1)]
    add_all(store, [(t0 + 65, 6, 1)])  # filed after the roll of 4 and 5 into the same slot
    image = crash_image(timers.directory, timers.directory.with_name("image"))
    again = timers.open(directory=image)
    assert again.recovery.abnormal is True and again.recovery.rebuild_needed is False
    assert again.delivered_through == t0 + 4
    # At least once: seconds 5 and 6 come again; the rolled entries are not doubled.
    assert drain(again, t0 + 6) == [(t0 + 5, 1, 1), (t0 + 5, 2, 1), (t0 + 6, 3, 1)]
    assert drain(again, t0 + 200) == [(t0 + 65, 4, 1), (t0 + 65, 6, 1), (t0 + 125, 5, 1)]


def test_delivered_segments_are_deleted(timers: Timers) -> None:
    store = timers.open()  # 16 records per TimerLog file, 15 of them entries
    t0 = timers.clock.now
    add_all(store, [(t0 + 1 + i // 10, 1000 + i, 1) for i in range(100)])
    add_all(store, [(t0 + 50, 5, 1)])
    log_dir = timers.directory / "log"
    assert len(os.listdir(log_dir)) == 7
    assert store.min_commitlog_offset == 5
    drain(store, t0 + 5)
    store.flush()
    # Files whose entries were all due by t0 + 5 (the first 50 entries: 3 whole files) go.
    assert len(os.listdir(log_dir)) == 4
    assert store.min_commitlog_offset == 5
    drain(store, t0 + 50)
    store.flush()
    assert len(os.listdir(log_dir)) == 1  # the file being written stays
    assert store.min_commitlog_offset is not None
    assert store.pending() == 0


# == crashes and damage ==========================================================================
class _Writer:
    """The writer subprocess; its stdout read line by line against a deadline."""

    def __init__(self, directory: Path, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(directory)], stdout=subprocess.PIPE, stderr=err
            )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._pending = b""
        self.eof = False

    def lines(self, deadline: float) -> list[str]:
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"writer timed out: {self.stderr_path.read_text()}")
            if not self._selector.select(remaining):
                continue
            chunk = os.read(self._fd, 1 << 16)
            self.eof = not chunk
            self._pending += chunk
            if b"\n" in self._pending:
                break
        *done, self._pending = self._pending.split(b"\n")
        return [line.decode() for line in done]

    def close(self) -> None:
        """Always leaves no process behind and no pipe open (terminate, wait, then kill)."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            self._selector.close()
            assert self.proc.stdout is not None
            self.proc.stdout.close()


@pytest.mark.parametrize("kill_after", [1, 7, 30, 90])
def test_sigkill_mid_adds_then_reopen(timers: Timers, tmp_path: Path, kill_after: int) -> None:
    writer = _Writer(timers.directory, tmp_path / "writer.stderr")
    taken: dict[int, int] = {}  # phys -> second it was taken (delivered) before the kill
    acked, acked_second, rounds = -1, BASE - 1, 0

    def read(lines: list[str]) -> None:
        nonlocal acked, acked_second, rounds
        for line in filter(None, lines):
            kind, a, b = line.split()
            if kind == "T":
                taken[int(a)] = int(b)
            else:
                assert kind == "A", line
                acked, acked_second, rounds = int(a), int(b), rounds + 1

    try:
        deadline = time.monotonic() + DEADLINE_S
        first, *rest = writer.lines(deadline)
        assert first == "READY", writer.stderr_path.read_text()
        read(rest)
        while rounds < kill_after:
            read(writer.lines(deadline))
        assert writer.proc.poll() is None, "the writer must still be writing when killed"
        writer.proc.send_signal(signal.SIGKILL)
        assert writer.proc.wait(timeout=10) == -signal.SIGKILL
        while not writer.eof:  # lines written before the kill landed count too
            read(writer.lines(deadline))
    finally:
        writer.close()

    timers.clock.now = acked_second + 1
    store = timers.open(WRITER_CONFIG)
    report = store.recovery
    assert report.abnormal is True and report.rebuild_needed is False
    assert report.damage is None or report.cut_bytes <= tl.ENTRY_LEN  # at most a torn record
    durable = store.delivered_through
    assert durable >= acked_second
    assert store.indexed_through >= (acked + 1) * 64
    # The CommitLog holds at least every acknowledged add, and the writer may have added up
    # to one more batch: re-add, from indexed_through on, what the wheel may have missed.
    source = [entry_of(i) for i in range(acked + 1 + BATCH)]
    add_all(store, (e for e in source if e[1] >= store.indexed_through))
    after = drain(store, BASE + 10_000)
    phys_after = [phys for _due, phys, _size in after]
    assert len(phys_after) == len(set(phys_after)), "nothing comes out twice"
    missing = [e for e in source if e[1] not in taken and e[1] not in set(phys_after)]
    assert not missing, f"{len(missing)} acknowledged timers lost, first {missing[:3]}"
    again = [p for p in phys_after if p in taken]  # at-least-once: only undurable seconds
    assert all(taken[p] > durable for p in again), "a durably delivered second came back"
    store.close()
    clean = timers.open(WRITER_CONFIG)
    assert clean.recovery.abnormal is False and clean.recovery.damage is None


def test_a_torn_tail_is_cut_and_re_added_from_indexed_through(
    timers: Timers, store_log: StoreLog
) -> None:
    store = timers.open()
    t0 = timers.clock.now
    adds = [(t0 + 10 + i % 5, i * 10, 10) for i in range(20)]
    add_all(store, adds[:12])
    store.flush()
    add_all(store, adds[12:])  # not flushed: past log_safe
    image = crash_image(timers.directory, timers.directory.with_name("image"))
    # The kill tore the last record (its second half never reached the file) before its
    # slot was updated: the record is written first, then the slot.
    last_pos = 19 + 19 // 15  # 15 entries and a seal per file
    seg = image / "log" / f"{(last_pos // 16) * 16 * 48:020d}"
    data = bytearray(seg.read_bytes())
    at = (last_pos % 16) * 48
    data[at + 24 : at + 48] = bytes(24)
    seg.write_bytes(bytes(data))
    wheel = bytearray((image / "wheel").read_bytes())
    due = adds[19][0]  # entries 4, 9, 14 and 19 are due then; 14 was the head before 19
    at = tw.WHEEL_HEADER_LEN + (due % 60) * tw.SLOT_LEN
    wheel[at : at + tw.SLOT_LEN] = tw.pack_slot(due, 14 * 48, 3)
    (image / "wheel").write_bytes(bytes(wheel))
    again = timers.open(directory=image)
    report = again.recovery
    assert report.damage == "CRC mismatch" and report.damage_path == str(seg)
    assert report.cut_bytes == 24 and report.rebuild_needed is False
    assert report.reapplied == 0  # the crash image had every sound record in its slot
    warning = next(m for m in store_log.messages() if "timerlog damaged" in m)
    assert str(seg) in warning and f"offset {last_pos * 48} " in warning
    assert again.indexed_through == adds[18][1] + 10
    add_all(again, (e for e in adds if e[1] >= again.indexed_through))
    order = {e: n for n, e in enumerate(adds)}
    assert drain(again, t0 + 20) == sorted(adds, key=lambda e: (e[0], order[e]))


@pytest.mark.parametrize("tear", ["zeroed", "fire-and-head-only"])
def test_a_slot_torn_by_the_kill_is_rebuilt_from_its_chain(timers: Timers, tear: str) -> None:
    store = timers.open()
    t0 = timers.clock.now
    add_all(store, [(t0 + 3, 1, 1), (t0 + 3, 2, 1), (t0 + 9, 3, 1)])
    store.flush()
    add_all(store, [(t0 + 3, 4, 1)])  # past log_safe: its slot write is the one torn
    image = crash_image(timers.directory, timers.directory.with_name("image"))
    wheel = bytearray((image / "wheel").read_bytes())
    at = tw.WHEEL_HEADER_LEN + ((t0 + 3) % 60) * tw.SLOT_LEN
    if tear == "zeroed":  # the kill came after the copy cleared the slot, before it wrote it
        wheel[at : at + tw.SLOT_LEN] = bytes(tw.SLOT_LEN)
    else:  # fire and head of the new value, count and CRC of the old one
        old = tw.pack_slot(t0 + 3, 48, 2)
        wheel[at + 16 : at + tw.SLOT_LEN] = old[16:]
    (image / "wheel").write_bytes(bytes(wheel))
    again = timers.open(directory=image)
    report = again.recovery
    assert report.torn_slots == 1 and report.rebuild_needed is False
    assert again.pending() == 4
    assert drain(again, t0 + 20) == [(t0 + 3, 1, 1), (t0 + 3, 2, 1), (t0 + 3, 4, 1), (t0 + 9, 3, 1)]


def test_a_damaged_slot_outside_the_crash_window_asks_for_a_rebuild(
    timers: Timers, store_log: StoreLog
) -> None:
    store = timers.open()
    t0 = timers.clock.now
    add_all(store, [(t0 + 3, 1, 1), (t0 + 9, 2, 1)])
    store.close()
    wheel = timers.directory / "wheel"
    data = bytearray(wheel.read_bytes())
    data[tw.WHEEL_HEADER_LEN + ((t0 + 9) % 60) * tw.SLOT_LEN + 9] ^= 0x10  # head, one bit
    wheel.write_bytes(bytes(data))
    again = timers.open()
    assert again.recovery.rebuild_needed is True
    assert any("is damaged (CRC mismatch)" in m for m in store_log.messages())


def test_seconds_taken_before_a_crash_are_taken_again_before_new_entries_are_filed(
    timers: Timers,
) -> None:
    store = timers.open()  # 60-second wheel
    t0 = timers.clock.now
    add_all(store, [(t0 + 5, 1, 1), (t0 + 125, 2, 1)])  # 2 is rolled: filed under t0 + 5
    drain(store, t0 + 4)
    store.flush()  # durable: delivered through t0 + 4
    # t0 + 5 is taken (2 is re-added under t0 + 65), never durably marked: then the kill.
    assert triples(store.due(t0 + 5)) == [(t0 + 5, 1, 1)]
    image = crash_image(timers.directory, timers.directory.with_name("image"))
    again = timers.open(directory=image)
    assert again.recovery.replayed == 1 and again.next_second == t0 + 6
    # A %TIMER% record the dead process had stored but not filed, due at t0 + 5: filed now,
    # it must not hide the generation of t0 + 65 in the same slot.
    add_all(again, [(t0 + 5, 3, 1)])
    assert drain(again, t0 + 200) == [(t0 + 5, 1, 1), (t0 + 5, 3, 1), (t0 + 125, 2, 1)]


def test_a_wheel_of_an_older_format_asks_for_a_rebuild(timers: Timers, store_log: StoreLog) -> None:
    store = timers.open()
    t0 = timers.clock.now
    add_all(store, [(t0 + 3, 1, 1)])
    store.close()
    wheel = timers.directory / "wheel"
    data = bytearray(wheel.read_bytes())
    for at in (0, 512):  # both header states without STATE_SLOT_CRC, CRCs made right
        fields = list(tw.STATE.unpack_from(data, at))
        fields[7] &= ~tw.STATE_SLOT_CRC
        body = tw.STATE.pack(*fields)[:60]
        data[at : at + 64] = body + zlib.crc32(body).to_bytes(4, "big")
    wheel.write_bytes(bytes(data))
    again = timers.open()
    assert again.recovery.rebuild_needed is True and again.pending() == 0
    assert any("of an older format" in m for m in store_log.messages())


def test_a_record_unlinked_by_a_crash_is_linked_again(timers: Timers) -> None:
    store = timers.open()
    t0 = timers.clock.now
    add_all(store, [(t0 + 3, 1, 1), (t0 + 3, 2, 1)])
    store.flush()
    add_all(store, [(t0 + 3, 3, 1)])
    image = crash_image(timers.directory, timers.directory.with_name("image"))
    # The kill landed between the record and its slot: put the slot back as it was.
    wheel = bytearray((image / "wheel").read_bytes())
    at = tw.WHEEL_HEADER_LEN + ((t0 + 3) % 60) * tw.SLOT_LEN
    wheel[at : at + tw.SLOT_LEN] = tw.pack_slot(t0 + 3, 48, 2)
    (image / "wheel").write_bytes(bytes(wheel))
    again = timers.open(directory=image)
    assert again.recovery.reapplied == 1 and again.pending() == 3
    assert drain(again, t0 + 3) == [(t0 + 3, 1, 1), (t0 + 3, 2, 1), (t0 + 3, 3, 1)]


def test_a_corrupt_record_is_detected_cut_and_rebuilt(timers: Timers, store_log: StoreLog) -> None:
    store = timers.open()
    t0 = timers.clock.now
    adds = [(t0 + 1 + i % 20, i * 10, 10) for i in range(40)]
    add_all(store, adds)
    delivered = drain(store, t0 + 5)
    store.close()
    # Flip one bit of an entry of the last file (recovery verifies the last file).
    seg = timers.directory / "log" / f"{2 * 16 * 48:020d}"
    data = bytearray(seg.read_bytes())
    data[3 * 48 + 17] ^= 0x04
    seg.write_bytes(bytes(data))
    store = timers.open()
    report = store.recovery
    assert report.damage == "CRC mismatch" and report.damage_path == str(seg)
    assert report.cut_bytes > 0
    assert report.rebuild_needed is True  # records below log_safe were lost: rebuild
    assert any(f"offset {(2 * 16 + 3) * 48} in {seg}" in m for m in store_log.messages())
    store.reset()
    assert store.pending() == 0 and store.delivered_through == t0 + 5
    skipped = [e for e in adds if not store.add(*e)]
    assert sorted(skipped) == sorted(delivered), "what was delivered is not filed again"
    order = {e: n for n, e in enumerate(adds)}
    rest = sorted(set(adds) - set(delivered), key=lambda e: (e[0], order[e]))
    assert drain(store, t0 + 30) == rest


def test_damage_below_the_verified_tail_cuts_a_chain_short(
    timers: Timers, store_log: StoreLog
) -> None:
    store = timers.open()
    t0 = timers.clock.now
    add_all(store, [(t0 + 5, i, 1) for i in range(40)])
    store.close()
    first = timers.directory / "log" / f"{0:020d}"
    data = bytearray(first.read_bytes())
    data[10 * 48 + 30] ^= 0xFF  # entry 10, in the first file (not verified at open)
    first.write_bytes(bytes(data))
    store = timers.open()
    assert store.recovery.damage is None
    got = drain(store, t0 + 5)
    assert [phys for _d, phys, _s in got] == list(range(11, 40))
    assert any(f"offset {10 * 48} in {first}" in m for m in store_log.messages())


def test_another_wheel_size_starts_empty_and_keeps_what_was_delivered(
    timers: Timers, store_log: StoreLog
) -> None:
    store = timers.open()
    t0 = timers.clock.now
    adds = [(t0 + i, i, 1) for i in range(10)]
    add_all(store, adds)
    assert drain(store, t0 + 4) == adds[:5]
    store.close()
    store = timers.open(TimerConfig(wheel_seconds=120, log_entries_per_file=16))
    assert store.recovery.rebuild_needed is True and store.pending() == 0
    assert any("another wheel_seconds" in m for m in store_log.messages())
    assert [store.add(*e) for e in adds] == [False] * 5 + [True] * 5
    assert drain(store, t0 + 10) == adds[5:]


def test_a_lost_wheel_file_asks_for_a_rebuild(timers: Timers, store_log: StoreLog) -> None:
    store = timers.open()
    t0 = timers.clock.now
    adds = [(t0 + i, i, 1) for i in range(30)]
    add_all(store, adds)
    store.close()
    os.unlink(timers.directory / "wheel")
    store = timers.open()
    assert store.recovery.rebuild_needed is True and store.pending() == 0
    assert os.listdir(timers.directory / "log") == []
    assert any("missing, unreadable" in m for m in store_log.messages())
    add_all(store, adds)  # what a broker does: re-add from the CommitLog
    assert drain(store, t0 + 30) == adds


# == rebuild =====================================================================================
def test_reset_and_re_add_gives_the_same_result(timers: Timers) -> None:
    rng = random.Random(11)
    t0 = timers.clock.now
    adds = [(t0 + rng.randrange(0, 400), i * 7, 7) for i in range(600)]
    kept = timers.open()
    rebuilt = timers.open(directory=timers.directory.with_name("rebuilt"))
    for store in (kept, rebuilt):
        add_all(store, adds[:400])
        assert len(drain(store, t0 + 150)) > 0
    rebuilt.reset()
    assert rebuilt.pending() == 0 and rebuilt.indexed_through == 0
    refiled = [rebuilt.add(*e) for e in adds[:400]]
    assert refiled.count(True) == kept.pending()
    for store in (kept, rebuilt):
        add_all(store, adds[400:])
    assert kept.pending() == rebuilt.pending()
    for now in (t0 + 151, t0 + 300, t0 + 299 + 60, t0 + 1000):
        assert drain(kept, now) == drain(rebuilt, now)
    rebuilt.close()
    again = timers.open(directory=timers.directory.with_name("rebuilt"))
    assert again.recovery.rebuild_needed is False and again.pending() == 0


def test_one_process_per_directory(timers: Timers) -> None:
    timers.open()
    with pytest.raises(StoreLockedError):
        TimerStore(str(timers.directory), SMALL)


def test_a_reopened_wheel_starts_where_it_was_not_at_the_epoch(timers: Timers) -> None:
    # Nothing was ever marked delivered (delivered_s 0): the wheel must still not walk
    # every second since 1970 after a crash; it starts at the second it jumped to.
    store = timers.open()
    t0 = timers.clock.now
    add_all(store, [(t0 + 3, 1, 1)])
    image = crash_image(timers.directory, timers.directory.with_name("image"))
    again = timers.open(directory=image)
    assert again.delivered_through == 0 and again.next_second == t0
    assert triples(again.due(t0 + 3)) == [(t0 + 3, 1, 1)]
    again.mark_delivered(t0 + 3)  # not flushed: delivered_s stays 0 on disk
    # Idle for a week: the next add moves the start, durably, before it files anything.
    timers.clock.now = t0 + 7 * 86_400
    add_all(again, [(t0 + 7 * 86_400 + 1, 2, 1)])
    second = crash_image(image, timers.directory.with_name("image2"))
    third = timers.open(directory=second)
    assert third.delivered_through == 0 and third.next_second == t0 + 7 * 86_400
    assert triples(third.due(t0 + 7 * 86_400 + 1)) == [(t0 + 7 * 86_400 + 1, 2, 1)]
