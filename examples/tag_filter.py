"""Filter by tag on the broker: only messages tagged TagA or TagB reach the consumer (SPEC M18).

Usage:
    python examples/tag_filter.py [--nameserver tcp://127.0.0.1:9876] [--topic TagExample]
        [--group example-tags] [--timeout 30]

Sends messages tagged TagA, TagB and TagC, then consumes with the tag expression
``TagA || TagB``: the broker never pushes the TagC ones. Exits 0 when exactly the TagA
and TagB messages of this run arrived.
"""

from __future__ import annotations

import argparse
import threading
import uuid
from collections import Counter

from fabric import ConsumeStatus, Message, MessageExt, Producer, PushConsumer

TAGS = ("TagA", "TagB", "TagC")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="TagExample")
    parser.add_argument("--group", default="example-tags")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        for i in range(12):
            tag = TAGS[i % 3]
            producer.send(Message(args.topic, f"{run} {i}".encode(), tags=tag))
        producer.send(Message(args.topic, f"{run} last".encode(), tags="TagA"))

    got: Counter[str] = Counter()
    lock = threading.Lock()
    done = threading.Event()

    def listener(msg: MessageExt) -> ConsumeStatus:
        if msg.body.decode().startswith(run):
            with lock:
                got[msg.tags] += 1
                if sum(got.values()) >= 9:  # 4 TagA, 4 TagB, and the last one
                    done.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(args.group, nameservers=args.nameserver, consume_from="earliest")
    consumer.subscribe(args.topic, "TagA || TagB", listener)
    consumer.start()
    try:
        done.wait(args.timeout)
    finally:
        consumer.shutdown()
    print(f"received by tag: {dict(sorted(got.items()))}")
    return 0 if got == Counter({"TagA": 5, "TagB": 4}) else 1


if __name__ == "__main__":
    raise SystemExit(main())
