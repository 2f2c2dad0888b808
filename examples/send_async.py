"""Send messages without waiting: futures and a callback (async send, SPEC M3).

Usage:
    python examples/send_async.py [--nameserver EP] [--topic Example] [--count 100]
"""

from __future__ import annotations

import argparse
import concurrent.futures

from fabric import Message, Producer, SendStatus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="Example")
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    acked = []
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        futures = [
            producer.send_async(Message(args.topic, f"async {i}".encode()), callback=acked.append)
            for i in range(args.count)
        ]
        done, _ = concurrent.futures.wait(futures, timeout=30)
        assert len(done) == args.count, "some sends did not complete in 30 s"
        statuses = {f.result().status for f in done}
        assert statuses == {SendStatus.SEND_OK}, statuses
    print(f"{args.count} messages acknowledged; {len(acked)} callbacks ran")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
