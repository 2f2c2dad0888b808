"""SYNC_FLUSH on the broker's loop (broker.server._flush_wanted) with a disk that fails once.

A real MessageStore whose flush fails the first time (the store's ``before_flush`` fault
seam); the server is not started: only its flush step runs, on a loop of this test.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import zmq.asyncio

from broker.config import BrokerConfig
from broker.processors.send import SyncFlushWaiters
from broker.server import BrokerServer
from broker.store import FlushMode, MessageStore, PutMessage, PutStatus, StoreConfig

WAIT_S = 10.0


def test_a_failed_flush_on_the_loop_goes_to_the_flush_thread(tmp_path: Path) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def failing_once() -> None:
        with lock:
            calls.append(threading.current_thread().name)
            if len(calls) == 1:
                raise OSError(5, "simulated I/O error")

    config = StoreConfig(flush_mode=FlushMode.SYNC_FLUSH, warm_ahead_bytes=0)
    store = MessageStore(str(tmp_path / "store"), config, before_flush=failing_once)
    context = zmq.asyncio.Context()  # the server's; never used by a server not started
    server = BrokerServer(BrokerConfig(data_dir=str(tmp_path), flush="sync"), context=context)
    try:
        server.store = store

        async def scenario() -> None:
            server._waiters = SyncFlushWaiters(asyncio.get_running_loop(), server, WAIT_S)
            first = store.append(PutMessage(topic="t", queue_id=0, body=b"one"))
            assert first.status is PutStatus.PUT_OK
            server._waiters.want(first.end_offset)
            server._flush_wanted(inline=True)  # fails on the loop: handed to the thread
            assert calls == ["MainThread"]
            assert store.wait_flushed(first.end_offset, WAIT_S)
            assert calls[1:] == ["store-flush"]  # the thread flushed it
            # For a while the loop does not try again: the next burst goes to the thread.
            second = store.append(PutMessage(topic="t", queue_id=0, body=b"two"))
            server._waiters.want(second.end_offset)
            server._flush_wanted(inline=True)
            assert store.wait_flushed(second.end_offset, WAIT_S)
            assert "MainThread" not in calls[1:]

        asyncio.run(scenario())
    finally:
        store.close()
        context.term()
