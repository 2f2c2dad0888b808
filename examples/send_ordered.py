"""Keep per-key order: every message with the same sharding key goes to one queue (SPEC M6).

Usage:
    python examples/send_ordered.py [--nameserver tcp://127.0.0.1:9876] [--topic Orders]
"""

from __future__ import annotations

import argparse

from fabric import Message, Producer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="Orders")
    args = parser.parse_args()
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        for order in ("order-1", "order-2"):
            queues = set()
            for step in ("created", "paid", "shipped"):
                msg = Message(args.topic, f"{order} {step}".encode(), keys=[order])
                queues.add(producer.send(msg, sharding_key=order).queue.queue_id)
            assert len(queues) == 1, queues
            print(f"{order}: every step in queue {queues.pop()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
