"""Send many messages of one topic in one request, stored separately (batch send, SPEC M5).

Usage:
    python examples/send_batch.py [--nameserver tcp://127.0.0.1:9876] [--topic Example] [--count 32]
"""

from __future__ import annotations

import argparse

from fabric import Message, Producer, SendStatus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="Example")
    parser.add_argument("--count", type=int, default=32)
    args = parser.parse_args()
    batch = [Message(args.topic, f"batch item {i}".encode()) for i in range(args.count)]
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        results = producer.send_batch(batch)  # one SendResult per message, in order
    assert all(r.status is SendStatus.SEND_OK for r in results), results
    first = results[0]
    print(f"batch of {len(results)} stored in queue {first.queue.queue_id}", end=" ")
    print(f"from offset {first.queue_offset}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
