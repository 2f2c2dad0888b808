"""Send a message that is delivered at a chosen time (SPEC M16).

Usage:
    python examples/timed_message.py [--nameserver tcp://127.0.0.1:9876] [--topic TimedExample]
        [--after 2] [--timeout 30]

``deliver_at`` is a time in seconds since the epoch, as ``time.time()`` gives it; the
broker delivers the message within about a second after it. Until then the message
waits aside (the send's result has queue offset -1) and no consumer sees it. Exits 0
once the message arrived, not before its time (at most ``--timeout`` s).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from fabric import ConsumeStatus, Message, MessageExt, Producer, PushConsumer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="TimedExample")
    parser.add_argument("--after", type=float, default=2.0, help="seconds from now")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]  # tells this run's message from earlier runs'
    due = time.time() + args.after
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        result = producer.send(Message(args.topic, run.encode(), deliver_at=due))
    print(f"sent {result.msg_id} for {time.strftime('%H:%M:%S', time.localtime(due))}")

    arrived = threading.Event()
    early = 0.0

    def listener(msg: MessageExt) -> ConsumeStatus:  # runs on a consumer thread
        nonlocal early
        if msg.body == run.encode():
            early = due - time.time()
            arrived.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(
        "example-timed-consumer", nameservers=args.nameserver, consume_from="earliest"
    )
    consumer.subscribe(args.topic, "*", listener)
    consumer.start()
    try:
        arrived.wait(args.timeout)
    finally:
        consumer.shutdown()
    if not arrived.is_set():
        print("the message did not arrive")
        return 1
    if early > 0:
        print(f"the message arrived {early:.3f} s early")
        return 1
    print(f"received {-early:.1f} s after its time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
