"""Send messages and wait for each acknowledgement (sync send, SPEC M2).

Usage:
    python examples/send_sync.py [--nameserver tcp://127.0.0.1:9876] [--topic Example] [--count 10]
"""

from __future__ import annotations

import argparse

from fabric import Message, Producer, SendStatus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="Example")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        for i in range(args.count):
            msg = Message(args.topic, f"hello {i}".encode(), tags="A", keys=[f"key-{i}"])
            result = producer.send(msg)
            assert result.status is SendStatus.SEND_OK, result
            print(f"sent {result.msg_id} to queue {result.queue.queue_id} at {result.queue_offset}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
