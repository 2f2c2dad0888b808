"""Filter with SQL over message properties, evaluated on the broker (SPEC M18).

Usage:
    python examples/sql_filter.py [--nameserver tcp://127.0.0.1:9876] [--topic SqlExample]
        [--group example-sql] [--timeout 30]

Sends messages with ``price`` and ``region`` properties, then consumes with
``price > 10 AND region = 'eu'``: only those are pushed. A bad expression is refused
when subscribing, with the column at fault. Exits 0 when exactly the matching messages
of this run arrived.
"""

from __future__ import annotations

import argparse
import threading
import uuid

from fabric import ConsumeStatus, Message, MessageExt, Producer, PushConsumer
from fabric.errors import InvalidFilterError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="SqlExample")
    parser.add_argument("--group", default="example-sql")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]
    expected: set[str] = set()
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        for i, (price, region) in enumerate(
            [(5, "eu"), (12, "eu"), (30, "us"), (11, "eu"), (99, "asia"), (10, "eu"), (42, "eu")]
        ):
            props = {"run": run, "price": str(price), "region": region}
            producer.send(Message(args.topic, f"item {i}".encode(), properties=props))
            if price > 10 and region == "eu":
                expected.add(f"item {i}")

    got: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()

    def listener(msg: MessageExt) -> ConsumeStatus:
        props = msg.properties
        print(f"{msg.body.decode()}: price {props['price']}, region {props['region']}")
        with lock:
            got.add(msg.body.decode())
            if got >= expected:
                done.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(args.group, nameservers=args.nameserver, consume_from="earliest")
    try:
        consumer.subscribe(args.topic, sql="price > AND region = 'eu'", listener=listener)
    except InvalidFilterError as exc:
        print(f"refused at subscribe time: {exc}")
    # ``run`` keeps earlier runs' messages out; the rest is the filter of interest.
    consumer.subscribe(
        args.topic, sql=f"run = '{run}' AND price > 10 AND region = 'eu'", listener=listener
    )
    consumer.start()
    try:
        done.wait(args.timeout)
    finally:
        consumer.shutdown()
    print(f"received {len(got)} messages, expected {len(expected)}")
    return 0 if got == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
