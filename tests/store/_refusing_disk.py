"""Subprocess of test_backpressure.py: a disk that refuses to grow one kind of store file.

Usage:
    python _refusing_disk.py ROOT {segment,index,queue}

RLIMIT_FSIZE (the largest file this process may write) is lowered to half the CommitLog
segment size, so that creating a file larger than that fails with EFBIG, as it would
on a full disk. The scenario picks which file is too large:

- ``segment``: the first segment is full; the next one cannot be created.
- ``index``: index files are over the limit; the second one cannot be created.
- ``queue``: ConsumeQueue files are over the limit; a new queue cannot get one.

Each put's outcome (or the exception it raised) is printed as one JSON object; exit 0.
"""

from __future__ import annotations

import json
import resource
import signal
import sys

from broker.store import MessageStore, PutMessage, StoreConfig

SEGMENT = 128 * 1024


def refusing_config(scenario: str) -> StoreConfig:
    """The store configuration of a scenario (the test reopens the store with it)."""
    slots, entries, cq_entries = 64, 256, 64
    if scenario == "index":  # 40 + 41,000 * 4 + 16 * 20 bytes: over the limit
        slots, entries = 41_000, 16
    elif scenario == "queue":  # 8,000 * 20 bytes: over the limit
        cq_entries = 8_000
    return StoreConfig(
        segment_size=SEGMENT,
        max_message_size=8 * 1024,
        cq_entries_per_file=cq_entries,
        index_slots=slots,
        index_entries=entries,
        warm_ahead_bytes=0,
    )


def _try_put(store: MessageStore, msg: PutMessage) -> dict[str, object]:
    try:
        r = store.put(msg)
    except Exception as exc:  # what the test wants to know about
        return {"status": "EXCEPTION", "msg": repr(exc)}
    return {"status": r.status.name, "phys": r.physical_offset, "qoff": r.queue_offset}


def main() -> int:
    root, scenario = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    out: dict[str, object] = {}
    with MessageStore(root, refusing_config(scenario)) as store:
        if scenario == "segment":
            end = 0
            while end + 4_200 <= SEGMENT:
                end = store.put(PutMessage(topic="t", queue_id=0, body=b"a" * 4000)).end_offset
        else:
            for i in range(15):  # fills the first index file in the "index" scenario
                store.put(PutMessage(topic="t", queue_id=0, body=b"a" * 100, uniq_id=f"a{i}"))
        out["end_before"] = store.max_physical_offset
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (SEGMENT // 2, hard))
        refused_queue = 1 if scenario == "queue" else 0
        try:
            out["refused"] = _try_put(
                store,
                PutMessage(topic="t", queue_id=refused_queue, body=b"b" * 4000, uniq_id="b"),
            )
            out["end_refused"] = store.max_physical_offset
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        out["space_back"] = _try_put(
            store, PutMessage(topic="t", queue_id=refused_queue, body=b"d" * 4000, uniq_id="d")
        )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
