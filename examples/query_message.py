"""Find stored messages by id, by key and by store time (SPEC M19).

Usage:
    python examples/query_message.py [--nameserver tcp://127.0.0.1:9876]
        [--topic QueryExample]

Sends five orders, each with its order number as a key and the customer as a second
key, then finds one by its message id (``Admin.query_by_id``, as ``fabric admin
message id TOPIC MSG_ID``), a customer's orders by key (``query_by_key``, newest
first), and everything stored while it was sending (``query_by_time``, oldest first).
Each message is printed on one line: id, topic, queue, offset, store time, tags, keys,
body. Exits 0 when every query found what was sent.
"""

from __future__ import annotations

import argparse
import time
import uuid

from fabric import Message, Producer
from fabric.admin import Admin
from fabric.admin_messages import describe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="QueryExample")
    args = parser.parse_args()
    customer = f"customer-{uuid.uuid4().hex[:8]}"  # unique per run
    begin = int(time.time() * 1000)
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        sent = [
            producer.send(
                Message(
                    args.topic,
                    f"order {i} of {customer}".encode(),
                    tags="Order",
                    keys=[f"{customer}-order-{i}", customer],
                )
            )
            for i in range(5)
        ]
    end = int(time.time() * 1000) + 1
    print(f"sent {len(sent)} orders of {customer}")

    with Admin(args.nameserver) as admin:
        print("by id:")
        found = admin.query_by_id(args.topic, sent[2].msg_id)
        print(" ", describe(found))
        print(f"by key {customer!r}:")
        by_key = admin.query_by_key(args.topic, customer)
        for msg in by_key:
            print(" ", describe(msg))
        print("by store time:")
        by_time = [
            msg
            for msg in admin.query_by_time(args.topic, begin, end, max_num=100)
            if customer in msg.keys  # other runs may have stored at the same time
        ]
        for msg in by_time:
            print(" ", describe(msg))
    ids = {result.msg_id for result in sent}
    ok = (
        found.msg_id == sent[2].msg_id
        and {m.msg_id for m in by_key} == ids
        and {m.msg_id for m in by_time} == ids
    )
    print("every query found what was sent" if ok else "a query missed messages")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
