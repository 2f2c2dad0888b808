"""Send messages in transactions: commit one, roll back one, and answer check-backs (SPEC M17).

Usage:
    python examples/transaction.py [--nameserver tcp://127.0.0.1:9876] [--topic TxExample]
        [--timeout 30]

Each message is first stored as a *half message* that no consumer sees; then the local
transaction runs (here: a dict standing for a database) and its outcome commits the
message (delivered) or rolls it back (dropped). If the producer cannot tell, or dies
before telling, the broker later asks a producer of the same group with the *checker*,
which looks the outcome up. A push consumer then shows that only the committed message
arrives. Exits 0 when it did, and the rolled-back one did not (within ``--timeout`` s).
"""

from __future__ import annotations

import argparse
import threading
import uuid
from typing import Any

from fabric import (
    ConsumeStatus,
    Message,
    MessageExt,
    PushConsumer,
    TransactionProducer,
    TransactionState,
)

#: The "database" of the local transactions: message id -> outcome.
ORDERS: dict[str, TransactionState] = {}


def execute(msg: Message, order: Any) -> TransactionState:
    """The local transaction: runs once the half message is stored."""
    state = TransactionState.COMMIT if order["paid"] else TransactionState.ROLLBACK
    assert msg.msg_id is not None
    ORDERS[msg.msg_id] = state  # what the checker will find, should the broker ask
    return state


def checker(msg: MessageExt) -> TransactionState:
    """Asked by the broker about a half message left undecided (runs on a worker thread)."""
    state = ORDERS.get(msg.msg_id, TransactionState.UNKNOWN)
    print(f"check-back for {msg.msg_id}: {state.name}")
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nameserver", default="tcp://127.0.0.1:9876")
    parser.add_argument("--topic", default="TxExample")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:8]  # tells this run's messages from earlier runs'
    with TransactionProducer(
        "example-tx-producer", nameservers=args.nameserver, checker=checker
    ) as producer:
        for name, paid in (("paid", True), ("unpaid", False)):
            msg = Message(args.topic, f"{run} {name}".encode(), keys=[name])
            result = producer.send_in_transaction(msg, execute, {"paid": paid})
            print(f"order {name}: {result.msg_id} {result.transaction_state.name}")

    received: list[str] = []
    arrived = threading.Event()

    def listener(msg: MessageExt) -> ConsumeStatus:  # runs on a consumer thread
        tag, _, name = msg.body.decode().partition(" ")
        if tag == run:
            received.append(name)
            arrived.set()
        return ConsumeStatus.CONSUME_SUCCESS

    consumer = PushConsumer(
        "example-tx-consumer", nameservers=args.nameserver, consume_from="earliest"
    )
    consumer.subscribe(args.topic, "*", listener)
    consumer.start()
    try:
        arrived.wait(args.timeout)
        # Both decisions were made before the consumer started: nothing else can come.
    finally:
        consumer.shutdown()
    print(f"received: {received}")
    return 0 if received == ["paid"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
