"""Transactions: decisions on half messages and the check-back service (PROTOCOL.md 14.3).

A half message is a record of ``%HALF%`` queue 0 (the send path puts it there, with
``REAL_TOPIC``, ``REAL_QID`` and ``PGROUP`` system properties). Its fate is written to
``%HALF_OP%`` queue 0 as an **op record** whose body is the half record's CommitLog
offset (8 bytes, big-endian) and whose tags say which: ``COMMIT``, ``ROLLBACK`` or
``DISCARD``. The CommitLog stays the only truth: at start the set of decided half
offsets is rebuilt by reading ``%HALF_OP%`` (so decisions survive a restart, a SIGKILL
included), and everything kept beside it can be lost without harm.

**Decisions** (:meth:`TransactionService.decide`, END_TRANSACTION): COMMIT appends the
message to its real topic and queue (same body, tags, keys, uniq id, properties, flag,
born timestamp; sysflag TRANSACTION_COMMIT in place of TRANSACTION_PREPARED;
``prepared_tx_offset`` = the half offset; no system properties), wakes that queue's
waiters, then appends the op record; ROLLBACK appends the op record only. A half message
already decided (or discarded) ignores further decisions. The commit goes before its
op record: a crash between the two leaves the half message undecided, the check asks
the producer again and a second COMMIT stores the message again (same uniq id; the
at-least-once of 13.7), where the other order could lose a committed message.

**Checks** (:class:`TransactionService`): every ``transaction_check_interval`` seconds
a pass reads ``%HALF%`` from its **progress** offset (the first half message not known
to be decided) until the first half message younger than ``transaction_timeout``
(store times never decrease, so the rest are younger still). Each undecided one is
checked: CHECK_TRANSACTION_STATE goes to one live producer of its ``PGROUP`` group
(broker.consumers), with ``check_times`` counting the rounds it was due, a producer
reachable or not; once that count reaches ``transaction_check_max`` it is discarded
instead (a ``DISCARD`` op record, one WARNING line). A pass works in chunks of
:data:`CHUNK` records, one loop callback each, so requests are served between chunks.
Progress moves over decided half messages while they are contiguous; the decided set
keeps only offsets at or past it.

**State file** ``<config>/transactions.json``, written atomically (broker.persist) after a
pass that changed something: the progress (queue offset and the CommitLog offset it
covers) and the check counts of undecided half messages (``TRAN_CHECKS``). The counts
cannot be re-derived from the log without writing a half message again per check (as
RocketMQ does); a count lost in a crash only means a few more checks. A missing or stale
file is safe: an older progress is re-scanned, and the op records say what was decided.

Everything runs on the broker's loop, the state file's write included (a small file, at
most once per pass). Nothing is logged per message but the discards.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from typing import TYPE_CHECKING, Final

import msgspec
from loguru import logger

from broker.store import GetStatus, PutMessage, PutResult, PutStatus, StoredMessage, decode_message
from broker.store.record import (
    SYSFLAG_TRANSACTION_COMMIT,
    SYSFLAG_TRANSACTION_ROLLBACK,
)
from fabric.errors import (
    FabricError,
    MessageIllegalError,
    ServerBusyError,
    ServiceUnavailableError,
)
from fabric.protocol.codes import RequestCode, TransactionState
from fabric.protocol.messages import CheckTransactionBody
from fabric.protocol.names import HALF_OP_TOPIC, HALF_TOPIC

from .persist import read_file, write_atomic
from .push import encode_push
from .timers import PGROUP, REAL_QID, REAL_TOPIC

if TYPE_CHECKING:
    from .processors import BrokerContext

__all__ = [
    "CHUNK",
    "OP_COMMIT",
    "OP_DISCARD",
    "OP_ROLLBACK",
    "TransactionService",
    "put_refused",
    "state_path",
]

#: Tags of the op records.
OP_COMMIT: Final = "COMMIT"
OP_ROLLBACK: Final = "ROLLBACK"
OP_DISCARD: Final = "DISCARD"
#: Half records one callback of a check pass handles at most.
CHUNK: Final = 256
_CHUNK_BYTES: Final = 8 * 1024 * 1024
_OFFSET: Final = struct.Struct(">q")
_TX_BITS: Final = SYSFLAG_TRANSACTION_ROLLBACK  # 0xC: both transaction bits

#: How a refused append is answered (nothing was stored).
_REFUSALS: Final[dict[PutStatus, type[FabricError]]] = {
    PutStatus.SYSTEM_BUSY: ServerBusyError,
    PutStatus.MESSAGE_ILLEGAL: MessageIllegalError,
    PutStatus.PROPERTIES_SIZE_EXCEEDED: MessageIllegalError,
}


class _State(msgspec.Struct, kw_only=True):
    """The content of ``transactions.json``."""

    #: Queue offset in ``%HALF%`` of the first half message not known to be decided.
    progress: int = 0
    #: Every half record below this CommitLog offset is decided or discarded.
    resolved_below: int = 0
    #: Half CommitLog offset -> checks made so far (undecided half messages only).
    checks: dict[int, int] = {}


_state_decoder: Final = msgspec.json.Decoder(_State)
_state_encoder: Final = msgspec.json.Encoder()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def put_refused(result: PutResult, what: str) -> FabricError:
    """The error answering a refused append (the store's reason in the remark).

    SYSTEM_BUSY for a busy append lock, MESSAGE_ILLEGAL for a message the store refuses
    (its properties grew past the limit with the broker's own), else SERVICE_NOT_AVAILABLE.
    """
    cls = _REFUSALS.get(result.status, ServiceUnavailableError)
    return cls(f"{what} not stored: {result.message or result.status.name}")


class TransactionService:
    """Decided half messages, END_TRANSACTION decisions and the periodic check passes.

    Args:
        ctx: the broker's shared state (store, topics, arrivals, consumers, config).
        path: the state file; None keeps the state in memory only (tests).
    """

    def __init__(self, ctx: BrokerContext, path: str | None) -> None:
        self._ctx = ctx
        self._store = ctx.store
        self._loop = ctx.loop
        self.path = path
        config = ctx.config
        self.interval = config.transaction_check_interval
        self.timeout_ms = int(config.transaction_timeout * 1000)
        self.check_max = config.transaction_check_max
        self._sync = config.flush == "sync"
        state = self._load()
        self._progress = state.progress
        self._resolved_below = state.resolved_below
        self._checks: dict[int, int] = dict(state.checks)
        self._decided: set[int] = set()
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None
        self._step_handle: asyncio.Handle | None = None
        self._cursor = 0
        self._producers: dict[str, bytes | None] = {}
        self._closed = False
        #: Checks pushed to a producer, and half messages discarded, since the start.
        self.checks_sent = 0
        self.discarded = 0
        self._rebuild()

    # -- state ------------------------------------------------------------------------------

    def _load(self) -> _State:
        data = read_file(self.path) if self.path is not None else None
        if data is None:
            return _State()
        try:
            return _state_decoder.decode(data)
        except msgspec.DecodeError as exc:
            # Derived state: start over from the op records rather than refuse to start.
            logger.warning("transactions: {} is unreadable ({}); rescanning", self.path, exc)
            return _State()

    def _rebuild(self) -> None:
        """Read every op record of ``%HALF_OP%``: the decided half offsets past the progress."""
        store = self._store
        if self._progress > store.max_offset(HALF_TOPIC, 0):
            # A state file newer than the store (the store was replaced): start over.
            logger.warning("transactions: progress {} is past %HALF%; rescanning", self._progress)
            self._progress = self._resolved_below = 0
            self._checks.clear()
        offset = store.min_offset(HALF_OP_TOPIC, 0)
        end = store.max_offset(HALF_OP_TOPIC, 0)
        ops = 0
        while offset < end:
            result = store.get_messages(HALF_OP_TOPIC, 0, offset, 1024, _CHUNK_BYTES)
            for raw in result.records:
                half = _op_target(raw)
                if half is not None and half >= self._resolved_below:
                    self._decided.add(half)
                ops += 1
            if result.next_offset <= offset:
                break
            offset = result.next_offset
        for half in self._decided:
            self._checks.pop(half, None)
        if ops or self._progress:
            logger.info(
                "transactions: {} op records read, {} half messages decided past progress {}",
                ops,
                len(self._decided),
                self._progress,
            )

    def persist(self) -> None:
        """Write the state file now (atomically) when something changed since the last write."""
        if not self._dirty or self.path is None:
            return
        state = _State(
            progress=self._progress, resolved_below=self._resolved_below, checks=self._checks
        )
        write_atomic(self.path, _state_encoder.encode(state))
        self._dirty = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the check passes (the first one an interval from now)."""
        if self._timer is None and not self._closed:
            self._timer = self._loop.call_later(self.interval, self._on_timer)

    def close(self) -> None:
        """Stop the passes and write the state (broker shutdown, before the store closes)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._step_handle is not None:
            self._step_handle.cancel()
            self._step_handle = None
        try:
            self.persist()
        except Exception:
            logger.exception("transactions: cannot write {}", self.path)

    # -- decisions --------------------------------------------------------------------------

    def is_decided(self, half_offset: int) -> bool:
        """True when the half message at ``half_offset`` was committed, rolled back or discarded."""
        return half_offset < self._resolved_below or half_offset in self._decided

    def decide(self, half: StoredMessage, state: int) -> bool:
        """Apply END_TRANSACTION's ``state`` to a half message; False when it was ignored.

        Raises:
            TopicNotExistError: COMMIT of a message whose real topic is gone.
            FabricError: the store refused an append (nothing decided).
        """
        phys = half.physical_offset
        if state == TransactionState.UNKNOWN or self._closed or self.is_decided(phys):
            return False
        if state == TransactionState.COMMIT:
            self._commit(half)
            self._append_op(phys, OP_COMMIT)
        else:
            self._append_op(phys, OP_ROLLBACK)
        return True

    def _commit(self, half: StoredMessage) -> None:
        ctx = self._ctx
        topic = half.sys.get(REAL_TOPIC, "")
        try:
            queue_id = int(half.sys.get(REAL_QID, ""))
        except ValueError:
            queue_id = -1
        if not topic or queue_id < 0:
            raise ServiceUnavailableError(
                f"half message at {half.physical_offset} names no real topic and queue"
            )
        ctx.require_topic(topic)
        result = self._store.append(
            PutMessage(
                topic=topic,
                queue_id=queue_id,
                body=half.body,
                tags=half.tags,
                keys=half.keys,
                uniq_id=half.uniq_id,
                properties=half.properties,
                flag=half.flag,
                sysflag=(half.sysflag & ~_TX_BITS) | SYSFLAG_TRANSACTION_COMMIT,
                born_timestamp=half.born_timestamp,
                born_host=half.born_host,
                reconsume_times=half.reconsume_times,
                prepared_tx_offset=half.physical_offset,
            )
        )
        if not result.ok:
            raise put_refused(result, "the committed message was")
        self._flushed(result)
        ctx.arrivals.notify(topic, queue_id)

    def _append_op(self, half_offset: int, kind: str) -> None:
        result = self._store.append(
            PutMessage(topic=HALF_OP_TOPIC, queue_id=0, body=_OFFSET.pack(half_offset), tags=kind)
        )
        # Decided in memory even when the op record could not be written: this run never
        # decides it twice; after a restart it would be checked again.
        self._decided.add(half_offset)
        self._checks.pop(half_offset, None)
        if not result.ok:
            raise put_refused(result, f"the {kind} op record was")
        self._flushed(result)

    def _flushed(self, result: PutResult) -> None:
        # Under SYNC_FLUSH the flush thread flushes only what it is asked to.
        if self._sync:
            self._store.request_flush(result.end_offset)

    # -- check passes -----------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        self.begin_pass()
        self._step()

    def begin_pass(self) -> None:
        """Start a pass at the progress offset (then :meth:`scan_chunk` until it says done)."""
        self._cursor = self._progress
        self._producers = {}

    def run_pass(self, now_ms: int) -> None:
        """A whole pass at once, as if the clock said ``now_ms`` (tests and tools)."""
        self.begin_pass()
        while not self.scan_chunk(now_ms):
            pass

    def _step(self) -> None:
        """One chunk of a pass; schedules the next chunk, or the next pass."""
        self._step_handle = None
        if self._closed:
            return
        try:
            done = self.scan_chunk(_now_ms())
        except Exception:
            logger.exception("transactions: a check pass failed; the next one starts over")
            done = True
        if not done:
            self._step_handle = self._loop.call_soon(self._step)
            return
        try:
            self.persist()
        except Exception:
            logger.exception("transactions: cannot write {}", self.path)
        self.start()

    def scan_chunk(self, now_ms: int) -> bool:
        """Handle up to :data:`CHUNK` half records from the cursor; True when the pass is over."""
        store = self._store
        cursor = self._cursor
        result = store.get_messages(HALF_TOPIC, 0, cursor, CHUNK, _CHUNK_BYTES)
        status = result.status
        if status is GetStatus.OFFSET_TOO_SMALL or status is GetStatus.MESSAGE_WAS_REMOVING:
            # Retention removed half messages: nothing is left to decide about them.
            if self._progress < result.next_offset and self._progress == cursor:
                self._advance(result.next_offset, None)
            self._cursor = result.next_offset
            return result.next_offset <= cursor
        if status is not GetStatus.FOUND:
            return True
        cutoff = now_ms - self.timeout_ms
        for raw in result.records:
            half = decode_message(raw)
            phys = half.physical_offset
            offset = half.queue_offset
            if not self.is_decided(phys):
                if half.store_timestamp > cutoff:
                    return True  # too young, and so is everything after it
                self._check(half, raw)
            if offset == self._progress and self.is_decided(phys):
                self._advance(offset + 1, phys + half.size)
            self._cursor = offset + 1
        return self._cursor >= result.max_offset

    def _advance(self, progress: int, resolved_below: int | None) -> None:
        self._progress = progress
        if resolved_below is not None and resolved_below > self._resolved_below:
            self._resolved_below = resolved_below
            below = [p for p in self._decided if p < resolved_below] if self._decided else []
            for p in below:
                self._decided.discard(p)
            for p in [p for p in self._checks if p < resolved_below]:
                del self._checks[p]
        self._dirty = True

    def _check(self, half: StoredMessage, raw: bytes) -> None:
        """Check an undecided half message old enough, or discard it after the last check."""
        phys = half.physical_offset
        group = half.sys.get(PGROUP, "")
        done = self._checks.get(phys, 0)
        self._dirty = True
        msg_id = half.uniq_id or f"{self._ctx.msg_id_prefix}{phys:016X}"
        if done >= self.check_max:
            self._append_op(phys, OP_DISCARD)
            self.discarded += 1
            logger.warning(
                "transactions: half message {} of producer group {} discarded after {} "
                "checks without a decision",
                msg_id,
                group or "?",
                done,
            )
            return
        done += 1
        self._checks[phys] = done
        if not group:
            return
        if group in self._producers:
            identity = self._producers[group]
        else:
            identity = self._producers[group] = self._ctx.consumers.producer_identity(group)
        if identity is None:
            return  # no live producer: this round counts, the next one may find one
        frames = encode_push(
            RequestCode.CHECK_TRANSACTION_STATE,
            0,
            CheckTransactionBody(
                producer_group=group, msg_id=msg_id, commitlog_offset=phys, check_times=done
            ),
            frames=[raw],
        )
        # Best effort, like every push: a producer that is gone or not reading misses
        # this check and gets the next one.
        self._ctx.consumers.pusher.push(identity, frames)
        self.checks_sent += 1

    @property
    def progress(self) -> int:
        """Queue offset in ``%HALF%`` of the first half message not known to be decided."""
        return self._progress

    @property
    def pending_checks(self) -> dict[int, int]:
        """Half CommitLog offset -> checks made, for undecided half messages."""
        return dict(self._checks)


def _op_target(raw: bytes) -> int | None:
    """The half offset an op record names (its 8-byte body), or None for a malformed one."""
    msg = decode_message(raw)
    if len(msg.body) != _OFFSET.size:
        return None
    value: int = _OFFSET.unpack(msg.body)[0]
    return value


def state_path(config_dir: str) -> str:
    """Where the transaction state of a broker lives (``<config>/transactions.json``)."""
    return os.path.join(config_dir, "transactions.json")
