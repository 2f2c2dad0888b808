"""A PushConsumer in its own process, for tests that SIGKILL a consumer.

Usage:
    python tests/integration/push_helper.py --nameserver EP --group G --topic T [options]

Prints ``READY consumer <client_id>`` once started, then ``MSG <msg_id> <queue_id> <offset>`` for
each message its listener finished (just before it returns CONSUME_SUCCESS), flushed at
once. SIGTERM or SIGINT shut it down cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from types import FrameType

from fabric import ConsumeStatus, MessageExt, MessageModel, PushConsumer

_lock = threading.Lock()


def emit(line: str) -> None:
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--broadcasting", action="store_true")
    parser.add_argument("--orderly", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per message")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--instance", default="")
    parser.add_argument("--offset-dir", default="")
    parser.add_argument("--interval", type=float, default=0.3, help="heartbeat interval")
    args = parser.parse_args()

    def listener(msg: MessageExt) -> ConsumeStatus:
        if args.delay:
            time.sleep(args.delay)
        emit(f"MSG {msg.msg_id} {msg.queue_id} {msg.queue_offset}")
        return ConsumeStatus.CONSUME_SUCCESS

    extra = {"offset_store_dir": args.offset_dir} if args.offset_dir else {}
    consumer = PushConsumer(
        args.group,
        nameservers=args.nameserver,
        model=MessageModel.BROADCASTING if args.broadcasting else MessageModel.CLUSTERING,
        orderly=args.orderly,
        prefetch=args.prefetch,
        consume_from="earliest",
        heartbeat_interval=args.interval,
        rebalance_interval=2 * args.interval,
        lock_expiry=3.0,
        reconsume_delay=0.2,
        instance_name=args.instance,
        **extra,  # type: ignore[arg-type]
    )
    consumer.subscribe(args.topic, "*", listener)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    consumer.start()
    emit(f"READY consumer {consumer.client_id}")
    stop.wait()
    consumer.shutdown(timeout=5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
