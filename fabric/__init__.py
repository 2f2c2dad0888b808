"""zmq-fabric: a RocketMQ-class message fabric on ZeroMQ (client library and shared protocol).

The blocking client API is here; ``fabric.aio`` has the same names for asyncio::

    from fabric import ConsumeStatus, Message, Producer, PushConsumer

    with Producer("group", nameservers="tcp://127.0.0.1:9876") as p:
        result = p.send(Message("Topic", b"body", tags="A", keys=["k1"]))

    consumer = PushConsumer("group", nameservers="tcp://127.0.0.1:9876")
    consumer.subscribe("Topic", "A || B", lambda msg: ConsumeStatus.CONSUME_SUCCESS)
    consumer.start()

The library logs through loguru but stays silent unless an entry point enables it
(the loguru library convention): ``logger.enable("fabric")``.
"""

from __future__ import annotations

from loguru import logger

from fabric.consumer import ConsumeStatus, PullConsumer, PushConsumer
from fabric.errors import (
    BrokerNotRegisteredError,
    ConnectionClosedError,
    FabricError,
    InvalidNameError,
    MessageIllegalError,
    MessageTooLargeError,
    NoPermissionError,
    NoRouteError,
    NotFoundError,
    OffsetNotFoundError,
    ProtocolError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
    ServiceUnavailableError,
    TopicExistsError,
    TopicNotExistError,
    TransportError,
    UnexpectedResponseError,
    UnsupportedError,
)
from fabric.message import Message, MessageExt, MessageQueue, PullResult, SendResult
from fabric.producer import Producer
from fabric.protocol.codes import (
    ConsumeFrom,
    MessageModel,
    PullStatus,
    SendStatus,
    TransactionState,
)
from fabric.transaction import TransactionProducer, TransactionSendResult

logger.disable("fabric")

__version__ = "0.1.0"

__all__ = [
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
