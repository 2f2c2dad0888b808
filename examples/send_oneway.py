"""Send messages with no reply at all, for logs and metrics (oneway send, SPEC M4).

Usage:
    python examples/send_oneway.py [--nameserver EP] [--topic Example] [--count 10]
"""

from __future__ import annotations

import argparse

from fabric import Message, Producer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="Example")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args()
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        for i in range(args.count):
            producer.send_oneway(Message(args.topic, f"log line {i}".encode()))
    print(f"{args.count} oneway messages sent")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
