"""Consume with a PushConsumer: the broker pushes each queue's messages to a listener (SPEC M10).

Usage:
    python examples/push_consumer.py [--nameserver tcp://127.0.0.1:9876] [--topic PushExample]
        [--group example-push-consumer] [--count 20] [--timeout 30]

Sends ``--count`` messages, then a push consumer of the group consumes them: from the
earliest offset the first time the group runs, from its committed offsets afterwards.
It exits 0 once it has consumed every message of this run (at most ``--timeout`` s).
"""

from __future__ import annotations

import argparse
import threading
import uuid

from fabric import ConsumeStatus, Message, MessageExt, Producer, PushConsumer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="PushExample")
    parser.add_argument("--group", default="example-push-consumer")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]  # tells this run's messages from earlier runs'
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        for i in range(args.count):
            producer.send(Message(args.topic, f"{run} hello {i}".encode(), tags="A"))
    print(f"sent {args.count} messages")

    seen: set[str] = set()
    older = 0  # messages of earlier runs the group had not consumed
    lock = threading.Lock()
    done = threading.Event()

    def listener(msg: MessageExt) -> ConsumeStatus:  # runs on a consumer thread
        nonlocal older
        tag, _, text = msg.body.decode().partition(" ")
        with lock:
            if tag != run:
                older += 1
                return ConsumeStatus.CONSUME_SUCCESS
            print(f"queue {msg.queue_id} offset {msg.queue_offset}: {text}")
            seen.add(text)
            if len(seen) >= args.count:
                done.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(args.group, nameservers=args.nameserver, consume_from="earliest")
    consumer.subscribe(args.topic, "*", listener)
    consumer.start()
    try:
        done.wait(args.timeout)
    finally:
        consumer.shutdown()  # finishes what the listeners have, commits, leaves the group
    print(f"consumed {len(seen)} of {args.count} messages (and {older} of earlier runs)")
    return 0 if len(seen) >= args.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
