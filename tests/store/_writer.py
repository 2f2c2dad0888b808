"""Writer subprocess of test_crash.py: puts numbered messages and prints each acknowledged one.

Usage:
    python _writer.py ROOT {SYNC_FLUSH,ASYNC_FLUSH} [--threads N]

Prints ``READY`` once the store is open, then, after each put that returns PUT_OK, its
sequence number on a line of its own (flushed at once), until it is killed. With N
threads, thread t puts the numbers t, t + N, t + 2N, ... (N divides QUEUES, so each
queue has one writer and holds its numbers in order). A refused put prints
``REFUSED <seq> <status>`` and exits 1. The message format is defined here and checked
by the test (``check_message``).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import threading
import zlib

from loguru import logger

from broker.store import FlushMode, MessageStore, PutMessage, PutStatus, StoreConfig, StoredMessage

TOPIC = "crash"
QUEUES = 4
_SEQ = struct.Struct(">Q")
_CRC = struct.Struct(">I")


def crash_config(mode: FlushMode) -> StoreConfig:
    """The store configuration the writer uses (small files, so that everything rolls)."""
    return StoreConfig(
        flush_mode=mode,
        segment_size=128 * 1024,
        max_message_size=8 * 1024,
        cq_entries_per_file=64,
        index_slots=64,
        # Index files roll every 32 messages, so that kills often land near a roll.
        index_entries=64,
        flush_interval_ms=20,
        checkpoint_interval_ms=50,
    )


def body_of(seq: int) -> bytes:
    """Sequence number, a payload derived from it (zero bytes included), CRC32 of both."""
    payload = random.Random(seq).randbytes(seq * 7919 % 1400)
    head = _SEQ.pack(seq) + payload
    return head + _CRC.pack(zlib.crc32(head))


def message_of(seq: int) -> PutMessage:
    return PutMessage(
        topic=TOPIC,
        queue_id=seq % QUEUES,
        body=body_of(seq),
        tags="even" if seq % 2 == 0 else "odd",
        keys=[f"key-{seq}"],
        uniq_id=f"msg-{seq}",
        properties={"seq": str(seq)},
        flag=seq & 0x7FFFFFFF,
        born_timestamp=seq,
        born_host="192.0.2.1:4242",
    )


def check_message(msg: StoredMessage) -> int:
    """Assert that a read-back message is intact and self-consistent; return its sequence number."""
    body = msg.body
    assert len(body) >= _SEQ.size + _CRC.size, f"body too short at {msg.physical_offset}"
    assert _CRC.unpack(body[-4:])[0] == zlib.crc32(body[:-4]), f"body CRC at {msg.physical_offset}"
    seq: int = _SEQ.unpack_from(body)[0]
    assert body == body_of(seq), f"body of {seq}"
    expected = message_of(seq)
    assert (msg.topic, msg.queue_id, msg.tags, msg.keys, msg.uniq_id) == (
        expected.topic,
        expected.queue_id,
        expected.tags,
        expected.keys,
        expected.uniq_id,
    ), f"fields of {seq}"
    assert (msg.properties, msg.flag, msg.born_timestamp, msg.born_host) == (
        expected.properties,
        expected.flag,
        expected.born_timestamp,
        expected.born_host,
    ), f"fields of {seq}"
    return seq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("mode", choices=[m.value for m in FlushMode])
    parser.add_argument("--threads", type=int, default=1, choices=[1, 2, 4])
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.enable("broker.store")
    store = MessageStore(args.root, crash_config(FlushMode(args.mode)))
    out = sys.stdout
    out_lock = threading.Lock()
    refused = threading.Event()

    def say(line: str) -> None:
        with out_lock:
            out.write(line + "\n")
            out.flush()

    def put_loop(first: int, step: int) -> None:
        seq = first
        while not refused.is_set():
            result = store.put(message_of(seq))
            if result.status is not PutStatus.PUT_OK:
                say(f"REFUSED {seq} {result.status.name}")
                refused.set()
                return
            say(str(seq))
            seq += step

    say("READY")
    threads = [
        threading.Thread(target=put_loop, args=(t, args.threads), daemon=True)
        for t in range(args.threads)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    store.close()
    return 1


if __name__ == "__main__":
    sys.exit(main())
