"""Retries and dead letters: a message the listener keeps failing ends in the DLQ (SPEC M15).

Usage:
    python examples/retry_dead_letter.py [--nameserver tcp://127.0.0.1:9876]
        [--topic RetryExample] [--group example-retry] [--timeout 40]

A push consumer (its own group each run, ``max_reconsume_times=1``) gets three
messages and fails the one saying ``poison``. The broker delivers it again through the
group's retry topic after 10 s (delay level 3, the first retry's), the listener fails it
once more, and the broker moves it to the dead-letter topic ``%DLQ%<group>``. The
example then lists the dead letter, "fixes the bug", sends the letter again to its
original topic (``Admin.dlq_resend``, the ``fabric admin dlq resend`` command), and the
consumer gets it a last time and succeeds. It exits 0 when all of that happened within
``--timeout`` seconds (about 12 s against ``fabric up``).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from fabric import ConsumeStatus, Message, MessageExt, Producer, PushConsumer
from fabric.admin import Admin
from fabric.admin_messages import describe


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="RetryExample")
    parser.add_argument("--group", default="example-retry")
    parser.add_argument("--timeout", type=float, default=40.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    run = uuid.uuid4().hex[:8]
    group = f"{args.group}-{run}"  # a fresh group, so its DLQ holds this run's letter only
    healed = threading.Event()  # set once the "bug" is fixed
    done = threading.Event()

    def listener(msg: MessageExt) -> ConsumeStatus:  # runs on a consumer thread
        tag, _, text = msg.body.decode().partition(" ")
        if tag != run:
            return ConsumeStatus.CONSUME_SUCCESS  # a message of an earlier run
        failing = text == "poison" and not healed.is_set()
        where = " (from the retry topic)" if msg.retry else ""
        outcome = "fails" if failing else "ok"
        print(f"{msg.topic}: {text!r} delivery {msg.reconsume_times + 1}{where}: {outcome}")
        if failing:
            return ConsumeStatus.RECONSUME_LATER  # raising an exception means the same
        if text == "poison":
            done.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(
        group, nameservers=args.nameserver, consume_from="earliest", max_reconsume_times=1
    )
    consumer.subscribe(args.topic, "*", listener)
    consumer.start()
    try:
        with Producer("example-producer", nameservers=args.nameserver) as producer:
            for text in ("order 1", "poison", "order 3"):
                producer.send(Message(args.topic, f"{run} {text}".encode(), keys=[run]))
        with Admin(args.nameserver) as admin:
            letters = admin.dlq_list(group)
            while not letters and time.monotonic() < deadline:
                time.sleep(0.5)  # the broker moves it after the second failure
                letters = admin.dlq_list(group)
            if not letters:
                print("no dead letter in time")
                return 1
            for letter in letters:
                print("dead letter:", describe(letter.message))
            healed.set()
            for letter_msg, result in admin.dlq_resend(group):
                print(f"sent {letter_msg.msg_id} again to {result.queue}")
        done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        consumer.shutdown()
    print("the dead letter was consumed after its resend" if done.is_set() else "not in time")
    return 0 if done.is_set() else 1


if __name__ == "__main__":
    raise SystemExit(main())
