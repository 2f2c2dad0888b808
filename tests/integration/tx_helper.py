"""A TransactionProducer in its own process that dies before deciding, for SIGKILL tests.

Usage:
    python tests/integration/tx_helper.py --nameserver EP --group G --topic T

Sends one half message whose local transaction prints ``HALF <msg_id>`` (flushed at once)
and then blocks until the process is killed: the half message stays undecided, and only
a check-back (to another producer of the group) can decide it.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from fabric import Message, MessageExt, TransactionProducer, TransactionState


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args()

    def never_answers(msg: MessageExt) -> TransactionState:
        threading.Event().wait()  # this producer cannot tell: another one must
        return TransactionState.UNKNOWN

    def execute(msg: Message, arg: Any) -> TransactionState:
        sys.stdout.write(f"HALF {msg.msg_id}\n")
        sys.stdout.flush()
        threading.Event().wait()  # "crash" before deciding: the test kills us here
        return TransactionState.COMMIT

    producer = TransactionProducer(args.group, nameservers=args.nameserver, checker=never_answers)
    producer.start()
    producer.send_in_transaction(Message(args.topic, b"orphan"), execute)
    return 1  # never reached


if __name__ == "__main__":
    sys.exit(main())
