"""Ordered messages: one queue per order on the producer side, queue order on the consumer side.

Usage:
    python examples/ordered_consumer.py [--nameserver tcp://127.0.0.1:9876]
        [--topic OrderedExample] [--group example-ordered] [--orders 4] [--timeout 30]

The producer sends the steps of each order with the order id as sharding key (one queue
per order, SPEC M6); the consumer, with ``orderly=True``, hands a queue's messages to the
listener one at a time, in queue order, under a broker-side lock (SPEC M14). Exits 0 when
every order arrived complete and in order.
"""

from __future__ import annotations

import argparse
import threading
import uuid
from collections import defaultdict

from fabric import ConsumeStatus, Message, MessageExt, Producer, PushConsumer

STEPS = ("created", "paid", "shipped", "delivered")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="OrderedExample")
    parser.add_argument("--group", default="example-ordered")
    parser.add_argument("--orders", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    orders = [f"order-{n}" for n in range(1, args.orders + 1)]
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        for step in STEPS:
            for order in orders:
                msg = Message(args.topic, f"{run} {order} {step}".encode(), keys=[order])
                producer.send(msg, sharding_key=order)

    steps: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()
    done = threading.Event()

    def listener(msg: MessageExt) -> ConsumeStatus:
        tag, order, step = msg.body.decode().split()
        if tag == run:
            with lock:
                steps[order].append(step)
                if sum(len(s) for s in steps.values()) >= len(orders) * len(STEPS):
                    done.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(
        args.group, nameservers=args.nameserver, orderly=True, consume_from="earliest"
    )
    consumer.subscribe(args.topic, "*", listener)
    consumer.start()
    try:
        done.wait(args.timeout)
    finally:
        consumer.shutdown()
    in_order = True
    for order in orders:
        print(f"{order}: {' -> '.join(steps[order])}")
        in_order = in_order and tuple(steps[order]) == STEPS
    return 0 if in_order else 1


if __name__ == "__main__":
    raise SystemExit(main())
