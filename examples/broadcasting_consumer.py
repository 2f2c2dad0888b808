"""BROADCASTING: every consumer of the group gets every message; offsets kept in local files (M11).

Usage:
    python examples/broadcasting_consumer.py [--nameserver tcp://127.0.0.1:9876]
        [--topic BroadcastExample] [--group example-broadcast] [--count 10]
        [--offset-dir ~/.fabric/offsets] [--timeout 30]

Starts two consumers of one group (instances ``a`` and ``b``), sends ``--count``
messages, and exits 0 once both consumed all of them. Each keeps its offsets in
``<offset-dir>/<group>@<instance>.json``: run it again and each carries on from there.
"""

from __future__ import annotations

import argparse
import threading
import uuid

from fabric import ConsumeStatus, Message, MessageExt, MessageModel, Producer, PushConsumer


class Counter:
    """A listener that counts this run's messages and says when it has them all."""

    def __init__(self, run: str, expected: int) -> None:
        self.run = run
        self.expected = expected
        self.seen: set[str] = set()
        self.older = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self, msg: MessageExt) -> ConsumeStatus:
        tag, _, text = msg.body.decode().partition(" ")
        with self.lock:
            if tag != self.run:
                self.older += 1
            elif text.startswith("news"):
                self.seen.add(text)
                if len(self.seen) >= self.expected:
                    self.done.set()
        return ConsumeStatus.CONSUME_SUCCESS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="BroadcastExample")
    parser.add_argument("--group", default="example-broadcast")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--offset-dir", default="~/.fabric/offsets")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        # Make sure the topic exists before the consumers look for its queues.
        producer.send(Message(args.topic, f"{run} hello".encode()))
        counters = {name: Counter(run, args.count) for name in ("a", "b")}
        consumers = []
        for name, counter in counters.items():
            consumer = PushConsumer(
                args.group,
                nameservers=args.nameserver,
                model=MessageModel.BROADCASTING,
                instance_name=name,
                offset_store_dir=args.offset_dir,
            )
            consumer.subscribe(args.topic, "*", counter)
            consumers.append(consumer.start())
        try:
            for i in range(args.count):
                producer.send(Message(args.topic, f"{run} news {i}".encode()))
            for counter in counters.values():
                counter.done.wait(args.timeout)
        finally:
            for consumer in consumers:
                consumer.shutdown()  # writes its offset file
    for name, counter in counters.items():
        print(
            f"instance {name} consumed {len(counter.seen)} of {args.count} messages "
            f"(and {counter.older} of earlier runs)"
        )
    return 0 if all(c.done.is_set() for c in counters.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
