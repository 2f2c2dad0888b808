"""A writer process killed with SIGKILL mid-stream (S4, S5), then the store reopened.

Under SYNC_FLUSH every acknowledged put must come back intact; under both modes
everything readable must be intact, and the queues must have no holes. (SIGKILL does
not lose the page cache, so ASYNC_FLUSH usually keeps everything too, but only what
is guaranteed is asserted.)
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.store import FlushMode, PutStatus, decode_message
from broker.store.record import verify

from ._support import read_queue
from ._writer import QUEUES, TOPIC, check_message, crash_config, message_of
from .conftest import Stores

WRITER = Path(__file__).with_name("_writer.py")
DEADLINE_S = 30.0


class Writer:
    """The writer subprocess, its stdout read line by line against a deadline."""

    def __init__(self, root: Path, mode: FlushMode, threads: int, stderr_path: Path) -> None:
        self._stderr_path = stderr_path
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WRITER), str(root), mode.value, "--threads", str(threads)],
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self._selector = selectors.DefaultSelector()
        self._pending = b""
        self.eof = False
        try:
            assert self.proc.stdout is not None
            self._fd = self.proc.stdout.fileno()
            os.set_blocking(self._fd, False)
            self._selector.register(self._fd, selectors.EVENT_READ)
        except BaseException:
            self.close()
            raise

    def lines(self, deadline: float) -> list[str]:
        """Complete lines available before ``deadline`` (at least one, unless at EOF)."""
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"writer timed out; stderr: {self.stderr()}")
            if not self._selector.select(remaining):
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                self.eof = True
            self._pending += chunk
            if b"\n" in self._pending:
                break
        *done, self._pending = self._pending.split(b"\n")
        return [line.decode() for line in done]

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def kill(self) -> int:
        """SIGKILL the writer and wait for it; return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def close(self) -> None:
        """Always leaves no process behind and no pipe open."""
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


def _run_and_kill(
    root: Path, tmp_path: Path, mode: FlushMode, threads: int, kill_after: int
) -> list[int]:
    """Run the writer until ``kill_after`` acks, SIGKILL it; return every ack it printed."""
    writer = Writer(root, mode, threads, tmp_path / "writer.stderr")
    try:
        deadline = time.monotonic() + DEADLINE_S
        acked: list[int] = []
        ready = False
        while len(acked) < kill_after:
            lines = writer.lines(deadline)
            if writer.eof and not lines:
                raise AssertionError(f"writer exited early: {writer.stderr()}")
            for line in lines:
                if line == "READY":
                    ready = True
                    continue
                assert ready and line.isdigit(), f"unexpected line {line!r}: {writer.stderr()}"
                acked.append(int(line))
        assert writer.proc.poll() is None, "the writer must still be writing when killed"
        assert writer.kill() == -signal.SIGKILL
        # Acks printed before the kill landed count too.
        while not writer.eof:
            acked.extend(int(line) for line in writer.lines(deadline) if line)
    finally:
        writer.close()
    for t in range(threads):
        mine = [seq for seq in acked if seq % threads == t]
        assert mine == list(range(t, t + threads * len(mine), threads)), "acks in sequence"
    return acked


@pytest.mark.parametrize(
    ("mode", "threads", "kill_after"),
    [
        *[(FlushMode.SYNC_FLUSH, 1, n) for n in (1, 60, 250, 700, 1500, 3000)],
        *[(FlushMode.ASYNC_FLUSH, 1, n) for n in (1, 60, 250, 700, 1500, 3000)],
        (FlushMode.SYNC_FLUSH, 4, 400),
        (FlushMode.SYNC_FLUSH, 4, 2000),
        (FlushMode.ASYNC_FLUSH, 4, 2000),
    ],
    ids=lambda v: v.value if isinstance(v, FlushMode) else str(v),
)
def test_sigkill_mid_stream_then_reopen(
    stores: Stores, root: Path, tmp_path: Path, mode: FlushMode, threads: int, kill_after: int
) -> None:
    acked = _run_and_kill(root, tmp_path, mode, threads, kill_after)
    assert (root / "abort").exists()

    store = stores.open(crash_config(mode))
    assert store.recovery.abnormal is True
    # Everything readable is intact, every queue is 0..n-1 without holes, in put order.
    readable: list[int] = []
    for qid in range(QUEUES):
        records = read_queue(store, TOPIC, qid)
        assert store.min_offset(TOPIC, qid) == 0
        assert store.max_offset(TOPIC, qid) == len(records)
        for k, raw in enumerate(records):
            assert verify(raw) is None
            msg = decode_message(raw)
            seq = check_message(msg)
            assert (msg.queue_id, msg.queue_offset) == (qid, k)
            assert seq == k * QUEUES + qid, "queue holds its messages in put order, no holes"
            assert store.get_record(msg.physical_offset) == raw
            readable.append(seq)
    readable.sort()
    if threads == 1:
        assert readable == list(range(len(readable))), "the readable ones are a prefix"
    if mode is FlushMode.SYNC_FLUSH:
        lost = sorted(set(acked) - set(readable))
        assert not lost, f"{len(lost)} acknowledged puts lost, first {lost[:5]}"
    # The index agrees with the queues: every readable message is found by its id and key.
    for seq in readable:
        [by_id] = store.query_by_uniq_id(TOPIC, f"msg-{seq}")
        assert check_message(by_id) == seq
        if seq % 7 == 0:
            [by_key] = store.query_by_key(TOPIC, f"key-{seq}")
            assert by_key.physical_offset == by_id.physical_offset

    # Each queue goes on where it stopped, and a clean reopen finds it all.
    for qid in range(QUEUES):
        nxt = store.max_offset(TOPIC, qid) * QUEUES + qid
        assert store.query_by_uniq_id(TOPIC, f"msg-{nxt}") == []
        result = store.put(message_of(nxt))
        assert result.status is PutStatus.PUT_OK
        assert result.queue_offset == nxt // QUEUES
    store.close()
    again = stores.open(crash_config(mode))
    assert again.recovery.abnormal is False
    total = sum(again.max_offset(TOPIC, q) for q in range(QUEUES))
    assert total == len(readable) + QUEUES
