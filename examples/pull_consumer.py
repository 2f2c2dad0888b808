"""Pull a topic's queues from their committed offsets and commit what was read (SPEC M9, M13).

Usage:
    python examples/pull_consumer.py [--nameserver tcp://127.0.0.1:9876] [--topic Example]
        [--group example-consumer] [--expect N]

Without ``--expect``, reads until every queue says there is nothing new (each pull
waits up to 1 s for a message: long polling). With ``--expect N``, keeps polling until N
messages were read, for up to 30 s, also while the topic does not exist yet.
"""

from __future__ import annotations

import argparse
import time

from fabric import PullConsumer, PullStatus
from fabric.errors import NoRouteError


def drain(consumer: PullConsumer, topic: str) -> int:
    """Read every queue of ``topic`` up to its end, committing as it goes; return the count."""
    read = 0
    for mq in consumer.queues(topic):
        offset = max(consumer.committed(mq), 0)
        while True:
            res = consumer.pull(mq, offset, max_nums=32, timeout=1.0)
            if res.status is not PullStatus.FOUND:
                break
            for msg in res.messages:
                print(f"queue {msg.queue_id} offset {msg.queue_offset}: {msg.body!r}")
            read += len(res.messages)
            offset = res.next_offset
            consumer.commit(mq, offset)
    return read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="Example")
    parser.add_argument("--group", default="example-consumer")
    parser.add_argument("--expect", type=int, default=0, help="wait for this many (0: drain)")
    args = parser.parse_args()
    consumer = PullConsumer(args.group, nameservers=args.nameserver)
    consumer.start()
    read = 0
    deadline = time.monotonic() + 30.0
    try:
        while True:
            try:
                read += drain(consumer, args.topic)
            except NoRouteError:
                if not args.expect:
                    raise
                time.sleep(0.2)  # the topic is not there yet: look again shortly
            if read >= args.expect or time.monotonic() > deadline:
                break
    finally:
        consumer.shutdown()
    print(f"read {read} messages")
    return 0 if read >= args.expect else 1


if __name__ == "__main__":
    raise SystemExit(main())
