"""Send a message that is delivered after a fixed delay level (SPEC M16).

Usage:
    python examples/delayed_message.py [--nameserver tcp://127.0.0.1:9876] [--topic DelayExample]
        [--level 1] [--min-wait SECONDS] [--timeout 30]

Levels 1..18 wait 1 s, 5 s, 10 s, 30 s, 1 min, 2 min, 3 min ... 1 h, 2 h (a broker may be
configured with shorter ones: then pass ``--min-wait``). The broker keeps the message
aside until it is due, so the send's result has queue offset -1; a push consumer then
receives it no earlier than its delay. Exits 0 once the message arrived, not before
``--min-wait`` (default: the level's standard delay), within ``--timeout`` s.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from fabric import ConsumeStatus, Message, MessageExt, Producer, PushConsumer
from fabric.protocol.codes import DELAY_LEVELS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="DelayExample")
    parser.add_argument("--level", type=int, default=1, help="delay level 1..18 (1: 1 s)")
    parser.add_argument("--min-wait", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    min_wait = DELAY_LEVELS[args.level - 1] if args.min_wait is None else args.min_wait
    run = uuid.uuid4().hex[:8]  # tells this run's message from earlier runs'
    with Producer("example-producer", nameservers=args.nameserver) as producer:
        sent_at = time.time()
        result = producer.send(Message(args.topic, run.encode(), delay_level=args.level))
    print(f"sent {result.msg_id} with delay level {args.level}, queue offset {result.queue_offset}")

    arrived = threading.Event()
    waited = 0.0

    def listener(msg: MessageExt) -> ConsumeStatus:  # runs on a consumer thread
        nonlocal waited
        if msg.body == run.encode():
            waited = time.time() - sent_at
            arrived.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(
        "example-delay-consumer", nameservers=args.nameserver, consume_from="earliest"
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
    print(f"received after {waited:.1f} s (level {args.level}: at least {min_wait:g} s)")
    return 0 if waited >= min_wait else 1


if __name__ == "__main__":
    raise SystemExit(main())
