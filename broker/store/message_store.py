"""MessageStore: the storage engine's facade (open and recover, put, read, query, close).

Threading: ``put``/``append``/``put_batch`` may be called from any thread; appends are
serialised by one lock, under which the record is written into the CommitLog and
dispatched to its ConsumeQueue and the Index in the same step (so a message is readable
as soon as its put returns). Reads take no lock. Two background threads run beside the
callers: the flush thread (flush.py) and the housekeeping thread, which flushes the
derived files, writes the checkpoint, watches the disk and applies retention.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Container, Iterable, Sequence

import msgspec
from loguru import logger

from .checkpoint import CheckpointFile
from .commitlog import CommitLog
from .config import FlushMode, StoreConfig
from .consume_queue import ConsumeQueue
from .errors import StoreClosedError, StoreLockedError
from .flush import FlushService
from .index import IndexService, key_of, uniq_key_of
from .mapped_file import MappedFile
from .messages import (
    DroppedRange,
    GetResult,
    GetStatus,
    PutMessage,
    PutResult,
    PutStatus,
    StoredMessage,
    decode_message,
)
from .record import (
    END_MARKER_LEN,
    HEADER,
    HEADER_LEN,
    HEADER_TAIL,
    MESSAGE_MAGIC,
    PREFIX,
    RecordProperties,
    decode_properties,
    encode_host,
)
from .retention import DiskUsage, disk_usage_ratio, segments_to_delete
from .warmer import PageWarmer

__all__ = ["MessageStore", "RecoveryReport", "StoreStats"]

_crc32 = zlib.crc32
_join = b"".join
_pack_tail = HEADER_TAIL.pack
_pack_prefix = PREFIX.pack_into
_NO_HOST = (bytes(16), 0)
_encode_props = msgspec.msgpack.Encoder().encode


class RecoveryReport(msgspec.Struct, frozen=True):
    """What opening the store found and did."""

    abnormal: bool
    end_offset: int
    scanned_from: int
    records_scanned: int
    redispatched_queue: int
    redispatched_index: int
    cut_bytes: int
    cq_entries_truncated: int
    damage: str | None = None
    damage_path: str = ""


class StoreStats(msgspec.Struct, frozen=True):
    """A snapshot for metrics and admin."""

    min_offset: int
    max_offset: int
    flushed_offset: int
    segments: int
    queues: int
    index_files: int
    disk_ratio: float
    disk_full: bool
    flushes: int
    last_flush_seconds: float


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class MessageStore:
    """The store rooted at a directory. Open with the constructor; close with ``close()``.

    Args:
        root: the store directory (created if missing).
        config: the knobs; ``StoreConfig()`` gives the production defaults.
        clock: milliseconds since the epoch, for store timestamps and retention ages.
        disk_usage: the used fraction of the disk holding a path (tests simulate a full disk).
        before_flush: called by the flush thread before each CommitLog flush (tests
            simulate a slow disk with it).
    """

    def __init__(
        self,
        root: str,
        config: StoreConfig | None = None,
        *,
        clock: Callable[[], int] = _now_ms,
        disk_usage: DiskUsage = disk_usage_ratio,
        before_flush: Callable[[], None] | None = None,
    ) -> None:
        self.config = cfg = (config or StoreConfig()).validate()
        self.root = root
        self._clock = clock
        self._disk_usage = disk_usage
        os.makedirs(root, exist_ok=True)
        self._lock_fd = _lock_directory(root)
        self._closed = False
        self._lock = threading.Lock()
        self._lock_timeout = cfg.put_lock_timeout_ms / 1000
        self._max_body = cfg.max_message_size
        self._max_props = cfg.max_properties_size
        self._sync = cfg.flush_mode is FlushMode.SYNC_FLUSH
        self._store_host = encode_host(cfg.store_host)
        self._last_store_ts = 0
        self._topic_bytes: dict[str, bytes] = {}
        self._tag_hashes: dict[str, int] = {}
        self._cq_root = os.path.join(root, "consumequeue")
        self._cqs: dict[tuple[str, int], ConsumeQueue] = {}
        self._log = CommitLog(os.path.join(root, "commitlog"), cfg.segment_size)
        self._index = IndexService(os.path.join(root, "index"), cfg.index_slots, cfg.index_entries)
        self._checkpoint = CheckpointFile(os.path.join(root, "checkpoint"))
        self._warmer: PageWarmer | None = None
        self.disk_ratio = 0.0
        self.disk_full = False
        #: Queue ranges removed by retention, newest last (bounded).
        self.dropped: list[DroppedRange] = []
        self._drop_listeners: list[Callable[[list[DroppedRange]], None]] = []
        #: Retention never deletes a segment holding bytes at or past the offset this
        #: returns (None: no floor). The broker gives the timer store's
        #: ``min_commitlog_offset``, so pending timed messages outlive ``retention_ms``.
        #: Called from the housekeeping thread.
        self.retention_floor: Callable[[], int | None] | None = None
        try:
            self.recovery = self._recover()
            self.check_disk()
        except BaseException:
            self._release_files()
            raise
        self._flush = FlushService(self._log, cfg.flush_mode, cfg.flush_interval_ms, before_flush)
        self._stop = threading.Event()
        self._last_clean = 0.0
        self._housekeeper = threading.Thread(
            target=self._housekeeping_loop, name="store-housekeeping", daemon=True
        )
        with open(os.path.join(root, "abort"), "wb") as fh:
            fh.write(b"running\n")
        if cfg.warm_ahead_bytes:
            self._warmer = PageWarmer(self._log, cfg.warm_ahead_bytes)
            self._index.on_new_file = self._on_new_file
        self._flush.start()
        self._housekeeper.start()
        if self._warmer is not None:
            self._warmer.start()
        logger.info(
            "store open at {}: end offset {}, {} queues, {}",
            root,
            self._log.wrote,
            len(self._cqs),
            cfg.flush_mode.value,
        )

    # == recovery ================================================================================
    def _recover(self) -> RecoveryReport:
        cfg = self.config
        abnormal = os.path.exists(os.path.join(self.root, "abort"))
        cq_dir_existed = os.path.isdir(self._cq_root)
        self._log.load()
        self._load_queues()
        self._index.load()
        log = self._log
        log_min = log.min_offset
        log_end = log.wrote  # the end of the last segment, until the scan finds the real end
        cp = self._checkpoint.read()
        if cp is None:
            cq_from = index_from = log_min
        else:
            cq_from, index_from = cp.cq_safe, cp.index_safe
        if not cq_dir_existed:
            cq_from = log_min
        if not self._index.files:
            index_from = log_min
        cq_from = min(max(cq_from, log_min), log_end)
        index_from = min(max(index_from, log_min), log_end)
        files = log.segments.files
        tail_start = (
            files[-cfg.recover_segments].start if len(files) >= cfg.recover_segments else log_min
        )
        scan_from = min(cq_from, index_from, tail_start)
        if index_from < self._index.covered or (abnormal and self._index.files):
            self._index.truncate_from(index_from)

        counts = [0, 0]
        last_ts = [0]
        cqs = self._cqs

        def visit(offset: int, record: bytes) -> None:
            fields = HEADER.unpack_from(record, 0)
            last_ts[0] = fields[9]
            if offset < cq_from and offset < index_from:
                return
            t_len, p_len = fields[16], fields[17]
            topic = record[HEADER_LEN : HEADER_LEN + t_len].decode()
            props = decode_properties(record[HEADER_LEN + t_len : HEADER_LEN + t_len + p_len])
            if offset >= cq_from:
                qkey = (topic, fields[3])
                cq = cqs.get(qkey) or self._new_queue(topic, fields[3])
                cq.put(fields[5], offset, fields[0], self._tag_hash(props.tags))
                counts[0] += 1
            if offset >= index_from and (props.keys or props.uniq_id):
                self._index.put(topic, props.keys, props.uniq_id, offset, fields[9])
                counts[1] += 1

        outcome = log.scan(scan_from, visit)
        end = outcome.end
        cut = 0
        if outcome.damage is not None:
            logger.warning(
                "commitlog damaged at offset {} in {}: {}; cutting the log there",
                end,
                outcome.damage_path,
                outcome.damage,
            )
        if outcome.damage is not None or abnormal or end < log_end:
            cut = log.cut(end, os.path.join(self.root, "cut") if cfg.keep_cut_bytes else None)
            if cut:
                logger.warning(
                    "recovery cut {} bytes past offset {} (kept in {})",
                    cut,
                    end,
                    os.path.join(self.root, "cut") if cfg.keep_cut_bytes else "nowhere",
                )
        log.wrote = log.flushed = end
        truncated = 0
        for cq in list(cqs.values()):
            truncated += cq.truncate_past(end)
            cq.delete_below(log_min)  # a minimum raised by retention before a restart
        if end < index_from or cut:
            # Records past the end are gone: so are their index entries (a producer that
            # resends them must not find each one twice).
            self._index.truncate_from(end)
        self._index.mark_covered(end)
        self._last_store_ts = last_ts[0]
        # Make what recovery found and wrote durable, then say so in the checkpoint.
        if log.segments.last is not None:
            log.segments.last.flush()
        for cq in cqs.values():
            cq.flush()
        self._index.flush()
        self._checkpoint.write(end, end, end, end)
        report = RecoveryReport(
            abnormal=abnormal,
            end_offset=end,
            scanned_from=scan_from,
            records_scanned=outcome.records,
            redispatched_queue=counts[0],
            redispatched_index=counts[1],
            cut_bytes=cut,
            cq_entries_truncated=truncated,
            damage=outcome.damage,
            damage_path=outcome.damage_path,
        )
        if abnormal or outcome.damage or cut or truncated:
            logger.warning("store recovery: {}", report)
        return report

    def _load_queues(self) -> None:
        if not os.path.isdir(self._cq_root):
            return
        entries = self.config.cq_entries_per_file
        for topic in os.listdir(self._cq_root):
            tdir = os.path.join(self._cq_root, topic)
            if not os.path.isdir(tdir):
                continue
            for qid in os.listdir(tdir):
                if not qid.isdigit():
                    continue
                cq = ConsumeQueue(self._cq_root, topic, int(qid), entries, self._on_new_file)
                cq.load()
                self._cqs[(topic, int(qid))] = cq

    def _new_queue(self, topic: str, queue_id: int) -> ConsumeQueue:
        cq = ConsumeQueue(
            self._cq_root, topic, queue_id, self.config.cq_entries_per_file, self._on_new_file
        )
        self._cqs[(topic, queue_id)] = cq
        return cq

    def _on_new_file(self, mf: MappedFile) -> None:
        # New ConsumeQueue and Index files are faulted in by the warmer, off the put path.
        warmer = self._warmer
        if warmer is not None:
            warmer.populate_later(mf)

    def _tag_hash(self, tags: str) -> int:
        h = self._tag_hashes.get(tags)
        if h is None:
            h = _crc32(tags.encode()) if tags else 0
            if len(self._tag_hashes) < 65536:
                self._tag_hashes[tags] = h
        return h

    # == writing =================================================================================
    def put(self, msg: PutMessage) -> PutResult:
        """Append one message; under SYNC_FLUSH, return only once it is durable.

        Returns PUT_OK, FLUSH_DISK_TIMEOUT (stored, fsync late), or a refusal status with
        nothing stored.
        """
        result = self.append(msg)
        if self._sync and result.status is PutStatus.PUT_OK:
            return self._await_flush(result)
        return result

    def put_batch(self, msgs: Iterable[PutMessage]) -> list[PutResult]:
        """Append several messages under one lock; under SYNC_FLUSH one flush covers them all.

        Messages are checked first; a refused one does not stop the others.
        """
        results = self.append_batch(msgs)
        if self._sync:
            end = max((r.end_offset for r in results if r.status is PutStatus.PUT_OK), default=0)
            if end and not self._flush.wait_flushed(end, self.config.sync_flush_timeout_ms / 1000):
                return [
                    msgspec.structs.replace(r, status=PutStatus.FLUSH_DISK_TIMEOUT)
                    if r.status is PutStatus.PUT_OK
                    else r
                    for r in results
                ]
        return results

    def _await_flush(self, result: PutResult) -> PutResult:
        if self._flush.wait_flushed(result.end_offset, self.config.sync_flush_timeout_ms / 1000):
            return result
        return msgspec.structs.replace(result, status=PutStatus.FLUSH_DISK_TIMEOUT)

    def append(self, msg: PutMessage) -> PutResult:
        """Append one message without waiting for a flush (see ``wait_flushed``)."""
        return self._append((msg,))[0]

    def append_batch(self, msgs: Iterable[PutMessage]) -> list[PutResult]:
        """Append several messages under one lock, without waiting for a flush.

        Each message is checked on its own; a refused one does not stop the others.
        """
        return self._append(list(msgs))

    def _refuse_all(self, msgs: Sequence[PutMessage]) -> list[PutResult]:
        if self._closed:
            return [PutResult(PutStatus.STORE_CLOSED, message="store is closed")] * len(msgs)
        if self.disk_full:
            refusal = PutResult(
                PutStatus.SERVICE_NOT_AVAILABLE,
                message=f"disk full: {self.disk_ratio:.1%} used, limit "
                f"{self.config.disk_full_ratio:.0%}; nothing stored",
            )
            return [refusal] * len(msgs)
        return []

    def _roll_back(
        self, cq: ConsumeQueue, qoff: int, mf: MappedFile, pos: int, size: int, exc: OSError
    ) -> PutResult:
        """Undo a record whose dispatch failed: the put is refused and nothing is left behind."""
        logger.error("cannot create a queue or index file: {}; put refused", exc)
        if cq.max_offset > qoff:
            cq.truncate_to(qoff)
        mf.mm[pos : pos + size] = bytes(size)
        self._log.wrote = mf.start + pos
        return PutResult(
            PutStatus.SERVICE_NOT_AVAILABLE, message=f"cannot allocate queue or index space: {exc}"
        )

    def _refuse_one(self, msg: PutMessage, props_len: int) -> PutResult:
        if len(msg.body) > self._max_body:
            return PutResult(
                PutStatus.MESSAGE_ILLEGAL,
                message=f"body of {len(msg.body)} bytes exceeds max_message_size {self._max_body}",
            )
        if props_len > self._max_props:
            return PutResult(
                PutStatus.PROPERTIES_SIZE_EXCEEDED,
                message=f"properties of {props_len} bytes exceed {self._max_props}",
            )
        return PutResult(PutStatus.MESSAGE_ILLEGAL, message="topic must be 1..65535 UTF-8 bytes")

    def _append(self, msgs: Sequence[PutMessage]) -> list[PutResult]:
        # The hot path: for each message, one record into the log, its queue entry and its
        # index entries, all in one loop under the put lock. It is written out flat on
        # purpose: every Python call here costs as much as packing a field.
        if self._closed or self.disk_full:
            return self._refuse_all(msgs)
        lock = self._lock
        if not lock.acquire(False) and not lock.acquire(timeout=self._lock_timeout):
            busy = PutResult(PutStatus.SYSTEM_BUSY, message="store busy: append lock timed out")
            return [busy] * len(msgs)
        try:
            if self._closed:  # closed while we waited for the lock
                return self._refuse_all(msgs)
            results: list[PutResult] = []
            log = self._log
            cqs = self._cqs
            topic_cache = self._topic_bytes
            tag_cache = self._tag_hashes
            max_body = self._max_body
            max_props = self._max_props
            sh, sp = self._store_host
            # One store timestamp per call (ms resolution; never decreasing along the log).
            now = self._clock()
            if now < self._last_store_ts:
                now = self._last_store_ts
            self._last_store_ts = now
            for msg in msgs:
                body = msg.body
                topic = msg.topic
                topic_b = topic_cache.get(topic)
                if topic_b is None:
                    topic_b = topic.encode()
                    if not 0 < len(topic_b) <= 0xFFFF:
                        results.append(self._refuse_one(msg, 0))
                        continue
                    if len(topic_cache) < 65536:
                        topic_cache[topic] = topic_b
                tags = msg.tags
                keys = msg.keys
                uniq = msg.uniq_id
                props = msg.properties
                sys_props = msg.sys
                props_b = (
                    _encode_props(RecordProperties(tags, keys, uniq, props, sys_props))
                    if tags or keys or uniq or props or sys_props
                    else b""
                )
                if len(body) > max_body or len(props_b) > max_props:
                    results.append(self._refuse_one(msg, len(props_b)))
                    continue
                qid = msg.queue_id
                size = HEADER_LEN + len(topic_b) + len(props_b) + len(body)
                cq = cqs.get((topic, qid))
                if cq is None:
                    cq = self._new_queue(topic, qid)
                qoff = cq.max_offset
                mf = log.current
                pos = log.wrote - mf.start if mf is not None else 0
                if mf is None or pos + size + END_MARKER_LEN > mf.size or log.wrote > log.warm_mark:
                    try:
                        mf, pos = log.reserve(size)
                    except OSError as exc:
                        logger.error("cannot create a commitlog segment: {}", exc)
                        results.append(
                            PutResult(
                                PutStatus.SERVICE_NOT_AVAILABLE,
                                message=f"cannot allocate log space: {exc}",
                            )
                        )
                        continue
                phys = mf.start + pos
                born = msg.born_host
                try:
                    bh, bp = encode_host(born) if born else _NO_HOST
                    tail = _pack_tail(
                        qid, msg.flag, qoff, phys, msg.sysflag, msg.born_timestamp, now, bh, bp,
                        sh, sp, msg.reconsume_times, msg.prepared_tx_offset, len(topic_b),
                        len(props_b), len(body),
                    )  # fmt: skip
                except (struct.error, ValueError) as exc:  # a field out of range: refuse it
                    results.append(
                        PutResult(PutStatus.MESSAGE_ILLEGAL, message=f"bad field value: {exc}")
                    )
                    continue
                rec = _join((tail, topic_b, props_b, body))
                mm = mf.mm
                _pack_prefix(mm, pos, size, MESSAGE_MAGIC, _crc32(rec))
                mm[pos + 12 : pos + size] = rec
                end = phys + size
                log.wrote = end
                try:
                    cq.append(
                        phys, size, (tag_cache.get(tags) or self._tag_hash(tags)) if tags else 0
                    )
                    if keys or uniq:
                        self._index.put(topic, keys, uniq, phys, now)
                except OSError as exc:  # no room for a new queue or index file
                    results.append(self._roll_back(cq, qoff, mf, pos, size, exc))
                    continue
                results.append(PutResult(PutStatus.PUT_OK, phys, size, qoff, now, end))
            return results
        finally:
            lock.release()

    # == durability ==============================================================================
    @property
    def flushed_offset(self) -> int:
        """CommitLog offset known durable."""
        return self._flush.flushed

    @property
    def max_physical_offset(self) -> int:
        """The CommitLog's end."""
        return self._log.wrote

    @property
    def min_physical_offset(self) -> int:
        """The lowest CommitLog offset still stored."""
        return self._log.min_offset

    def wait_flushed(self, offset: int, timeout: float) -> bool:
        """Block until the log is durable up to ``offset``; False after ``timeout`` seconds."""
        return self._flush.wait_flushed(offset, timeout)

    def request_flush(self, offset: int) -> None:
        """Ask the flush thread to make the log durable up to ``offset`` (does not wait)."""
        self._flush.request(offset)

    def flush_inline(self, offset: int, max_bytes: int) -> int | None:
        """Flush up to ``offset`` on the calling thread if that is quick; the new flushed offset.

        None when the flush thread is busy or more than ``max_bytes`` are unflushed (then
        nothing was done: ask the thread with ``request_flush``). See broker.store.flush.
        """
        return self._flush.flush_inline(offset, max_bytes)

    def add_flush_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(flushed_offset)`` from the flush thread after every flush."""
        self._flush.add_listener(listener)

    # == reading =================================================================================
    def get_messages(
        self,
        topic: str,
        queue_id: int,
        offset: int,
        max_count: int = 32,
        max_bytes: int = 256 * 1024,
        tag_hashes: Container[int] | None = None,
        max_scan: int = 16_384,
    ) -> GetResult:
        """Read up to ``max_count`` records (and about ``max_bytes``) from a queue at ``offset``.

        ``tag_hashes`` keeps only entries whose tag hash is in it (filtering on the
        ConsumeQueue, without reading skipped records). Records come back raw.
        """
        cq = self._cqs.get((topic, queue_id))
        if cq is None:
            return GetResult(GetStatus.NO_MESSAGE_IN_QUEUE, 0, 0, 0)
        lo, hi = cq.min_offset, cq.max_offset
        if hi == lo:
            return GetResult(GetStatus.NO_MESSAGE_IN_QUEUE, hi if offset >= hi else lo, lo, hi)
        if offset < lo:
            return GetResult(GetStatus.OFFSET_TOO_SMALL, lo, lo, hi)
        if offset == hi:
            return GetResult(GetStatus.OFFSET_OVERFLOW_ONE, hi, lo, hi)
        if offset > hi:
            return GetResult(GetStatus.OFFSET_OVERFLOW_BADLY, hi, lo, hi)
        limit = max_count if tag_hashes is None else max(max_count, max_scan)
        records: list[bytes] = []
        total = 0
        next_offset = offset
        log_min = self._log.min_offset
        removed = False
        read = self._log.read
        for phys, size, tag in cq.entries(offset, limit):
            if phys < log_min:
                removed = True
                next_offset += 1
                continue
            if tag_hashes is not None and tag not in tag_hashes:
                next_offset += 1
                continue
            if records and total + size > max_bytes:
                break
            rec = read(phys, size)
            if rec is None:
                removed = True
                next_offset += 1
                continue
            records.append(rec)
            total += size
            next_offset += 1
            if len(records) >= max_count:
                break
        if records:
            return GetResult(GetStatus.FOUND, next_offset, lo, hi, records)
        status = GetStatus.MESSAGE_WAS_REMOVING if removed else GetStatus.NO_MATCHED_MESSAGE
        return GetResult(status, next_offset, lo, hi)

    def get_record(self, physical_offset: int) -> bytes | None:
        """The raw record at a CommitLog offset, or None."""
        return self._log.read_record(physical_offset)

    def get_message(self, physical_offset: int) -> StoredMessage | None:
        """The decoded record at a CommitLog offset, or None."""
        raw = self._log.read_record(physical_offset)
        return decode_message(raw) if raw is not None else None

    def query_by_key(
        self, topic: str, key: str, max_num: int = 32, begin_ms: int = 0, end_ms: int = 1 << 62
    ) -> list[StoredMessage]:
        """Messages of ``topic`` carrying ``key``, newest first, stored within [begin, end]."""
        out: list[StoredMessage] = []
        for phys in self._index.lookup(key_of(topic, key), max_num * 4, begin_ms, end_ms):
            msg = self.get_message(phys)
            if (
                msg is not None
                and msg.topic == topic
                and key in msg.keys
                and begin_ms <= msg.store_timestamp <= end_ms
            ):
                out.append(msg)
                if len(out) >= max_num:
                    break
        return out

    def query_by_uniq_id(self, topic: str, uniq_id: str, max_num: int = 32) -> list[StoredMessage]:
        """Messages of ``topic`` whose producer-assigned unique id is ``uniq_id``, newest first."""
        out: list[StoredMessage] = []
        for phys in self._index.lookup(uniq_key_of(topic, uniq_id), max_num * 4):
            msg = self.get_message(phys)
            if msg is not None and msg.topic == topic and msg.uniq_id == uniq_id:
                out.append(msg)
                if len(out) >= max_num:
                    break
        return out

    def offset_for_timestamp(self, topic: str, queue_id: int, timestamp_ms: int) -> int:
        """The first queue offset whose store time is at or after ``timestamp_ms``.

        Returns the queue's max offset when every message is older, its min offset when
        every message is newer.
        """
        cq = self._cqs.get((topic, queue_id))
        if cq is None:
            return 0
        lo, hi = cq.min_offset, cq.max_offset
        while lo < hi:
            mid = (lo + hi) // 2
            entry = cq.get(mid)
            ts = self._log.store_timestamp_at(entry[0]) if entry is not None else None
            if ts is None:  # removed under us: everything at or below mid is gone
                lo = mid + 1
            elif ts >= timestamp_ms:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def min_offset(self, topic: str, queue_id: int) -> int:
        """The queue's first readable offset (0 for an unknown queue)."""
        cq = self._cqs.get((topic, queue_id))
        return cq.min_offset if cq is not None else 0

    def max_offset(self, topic: str, queue_id: int) -> int:
        """One past the queue's last offset (0 for an unknown queue)."""
        cq = self._cqs.get((topic, queue_id))
        return cq.max_offset if cq is not None else 0

    def queues(self) -> list[tuple[str, int]]:
        """Every (topic, queue id) with a ConsumeQueue."""
        return sorted(self._cqs)

    def delete_topic(self, topic: str) -> int:
        """Delete a topic's ConsumeQueues (its records age out of the log); return how many."""
        with self._lock:
            gone = [key for key in self._cqs if key[0] == topic]
            queues = [self._cqs.pop(key) for key in gone]
        for cq in queues:
            cq.destroy()
        if queues:
            # Move the checkpoint past the topic's records, so that crash recovery does not
            # re-dispatch them into a revived queue.
            self.checkpoint()
        if queues:
            try:
                os.rmdir(os.path.join(self._cq_root, topic))
            except OSError:
                pass
        return len(queues)

    # == housekeeping ============================================================================
    def check_disk(self) -> float:
        """Re-read the disk use; refuse puts past disk_full_ratio. Returns the ratio."""
        try:
            ratio = self._disk_usage(self.root)
        except OSError as exc:
            logger.error("cannot read disk usage of {}: {}", self.root, exc)
            return self.disk_ratio
        full = ratio >= self.config.disk_full_ratio
        if full != self.disk_full:
            if full:
                logger.error(
                    "disk {:.1%} full: refusing puts until below {:.0%}",
                    ratio,
                    self.config.disk_full_ratio,
                )
            else:
                logger.warning("disk back to {:.1%}: accepting puts", ratio)
        self.disk_ratio, self.disk_full = ratio, full
        return ratio

    def checkpoint(self) -> None:
        """Flush the ConsumeQueues and Index and record how far they are durable."""
        with self._lock:
            end = self._log.wrote
            self._index.mark_covered(end)
        for cq in list(self._cqs.values()):
            if cq.dirty:
                cq.flush()
        self._index.flush()
        self._checkpoint.write(self._flush.flushed, end, end, end)

    def run_retention(self) -> list[DroppedRange]:
        """Delete expired segments (and, under disk pressure, the oldest); trim derived files.

        Returns the queue ranges this removed; they are also logged and kept in ``dropped``.
        """
        cfg = self.config
        ratio = self.check_disk()
        starts = segments_to_delete(
            self._log, self._clock(), cfg.retention_ms, ratio, cfg.disk_clean_ratio
        )
        if not starts:
            return []
        floor: int | None = None
        if self.retention_floor is not None:
            try:
                floor = self.retention_floor()
            except Exception:
                logger.exception("retention floor failed; nothing deleted this round")
                return []
        doomed = []
        with self._lock:
            for start in starts:
                first = self._log.segments.files[0]
                if first.start != start or first.end > self._log.wrote:
                    break  # never the segment being written
                if floor is not None and first.end > floor:
                    break  # still needed (pending timers)
                doomed.append(self._log.segments.drop_first())
            log_min = self._log.min_offset
            before = {key: cq.min_offset for key, cq in self._cqs.items()}
            for cq in self._cqs.values():
                cq.delete_below(log_min)
            self._index.delete_below(log_min)
        for mf in doomed:
            if mf is not None:
                logger.info("retention deleted segment {}", mf.path)
                mf.destroy()
        drops = [
            DroppedRange(key[0], key[1], before[key], cq.min_offset)
            for key, cq in self._cqs.items()
            if key in before and cq.min_offset > before[key]
        ]
        for d in drops:
            logger.warning(
                "retention removed {} queue {} offsets [{}, {})",
                d.topic,
                d.queue_id,
                d.from_offset,
                d.to_offset,
            )
        self.dropped = (self.dropped + drops)[-1000:]
        for listener in self._drop_listeners:
            try:
                listener(drops)
            except Exception:
                logger.exception("retention listener failed")
        return drops

    def add_drop_listener(self, listener: Callable[[list[DroppedRange]], None]) -> None:
        """Call ``listener(ranges)`` from the housekeeping thread when retention drops messages."""
        self._drop_listeners.append(listener)

    def _housekeeping_loop(self) -> None:
        cfg = self.config
        interval = cfg.checkpoint_interval_ms / 1000
        while not self._stop.wait(interval):
            try:
                self.checkpoint()
                if time.monotonic() - self._last_clean >= cfg.clean_interval_ms / 1000:
                    self._last_clean = time.monotonic()
                    self.run_retention()
                else:
                    self.check_disk()
            except Exception:
                logger.exception("store housekeeping failed; will retry")

    def stats(self) -> StoreStats:
        """Counters for metrics and admin."""
        return StoreStats(
            min_offset=self._log.min_offset,
            max_offset=self._log.wrote,
            flushed_offset=self._flush.flushed,
            segments=len(self._log.segments.files),
            queues=len(self._cqs),
            index_files=len(self._index.files),
            disk_ratio=self.disk_ratio,
            disk_full=self.disk_full,
            flushes=self._flush.flush_count,
            last_flush_seconds=self._flush.last_flush_seconds,
        )

    # == closing =================================================================================
    def close(self) -> None:
        """Flush everything, write the checkpoint, remove the abort marker, release the files."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
        self._stop.set()
        if self._warmer is not None:
            self._warmer.stop()
        self._housekeeper.join()
        self._flush.stop()
        self.checkpoint()
        try:
            os.unlink(os.path.join(self.root, "abort"))
        except FileNotFoundError:
            pass
        self._release_files()
        logger.info("store closed at {}: end offset {}", self.root, self._log.wrote)

    def _release_files(self) -> None:
        for cq in self._cqs.values():
            cq.close()
        self._index.close()
        self._log.close()
        self._checkpoint.close()
        os.close(self._lock_fd)

    def __enter__(self) -> MessageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("store is closed")


def _lock_directory(root: str) -> int:
    fd = os.open(os.path.join(root, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(root) from None
    return fd
