"""``fabric.__all__`` is pinned: a change to the public API is a change to this list (httpx)."""

from __future__ import annotations

import fabric
import fabric.aio

EXPECTED = [
    "BrokerNotRegisteredError",
    "ConnectionClosedError",
    "ConsumeFrom",
    "ConsumeStatus",
    "FabricError",
    "InvalidNameError",
    "Message",
    "MessageExt",
    "MessageIllegalError",
    "MessageModel",
    "MessageQueue",
    "MessageTooLargeError",
    "NoPermissionError",
    "NoRouteError",
    "NotFoundError",
    "OffsetNotFoundError",
    "Producer",
    "ProtocolError",
    "PullConsumer",
    "PullResult",
    "PullStatus",
    "PushConsumer",
    "RequestTimeoutError",
    "SendResult",
    "SendStatus",
    "ServerBusyError",
    "ServerError",
    "ServiceUnavailableError",
    "TopicExistsError",
    "TopicNotExistError",
    "TransactionProducer",
    "TransactionSendResult",
    "TransactionState",
    "TransportError",
    "UnexpectedResponseError",
    "UnsupportedError",
    "__version__",
]


def test_all_is_pinned() -> None:
    assert fabric.__all__ == EXPECTED


def test_every_exported_name_exists_and_is_public() -> None:
    for name in fabric.__all__:
        member = getattr(fabric, name)
        if name != "__version__":
            assert member.__module__.startswith("fabric."), name


def test_the_asyncio_api_has_the_same_client_names() -> None:
    assert fabric.aio.__all__ == ["Producer", "PullConsumer", "PushConsumer", "TransactionProducer"]
    blocking, awaitable = fabric.Producer, fabric.aio.Producer
    for name in ("start", "send", "send_async", "send_oneway", "send_batch", "flush", "shutdown"):
        assert hasattr(blocking, name) and hasattr(awaitable, name), name
    for name in ("start", "send", "send_in_transaction", "shutdown"):
        blocking_tx, awaitable_tx = fabric.TransactionProducer, fabric.aio.TransactionProducer
        assert hasattr(blocking_tx, name) and hasattr(awaitable_tx, name), name
    for name in ("start", "queues", "pull", "commit", "committed", "shutdown"):
        assert hasattr(fabric.PullConsumer, name) and hasattr(fabric.aio.PullConsumer, name), name
    for name in ("start", "subscribe", "assignment", "shutdown"):
        assert hasattr(fabric.PushConsumer, name) and hasattr(fabric.aio.PushConsumer, name), name
