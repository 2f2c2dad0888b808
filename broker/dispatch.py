"""RequestCode -> processor table of the broker (RocketMQ's ``registerProcessor``).

:func:`build_dispatcher` wires every request family the broker serves to its processor;
a code with no processor (the NameServer's codes, say) is answered
REQUEST_CODE_NOT_SUPPORTED by the server. Lookups are by the parsed envelope's type
(one dict lookup on the hot path); registration is by RequestCode.
"""

from __future__ import annotations

from typing import Any

from fabric.protocol.codes import RequestCode
from fabric.protocol.messages import REQUEST_TYPES

from .processors import BrokerContext, Handler
from .processors.client import ClientProcessor
from .processors.consume import ConsumeProcessor
from .processors.offsets import OffsetProcessor
from .processors.pull import PullProcessor
from .processors.query import QueryProcessor
from .processors.send import SendProcessor, SyncFlushWaiters
from .processors.sendback import SendBackProcessor
from .processors.topics import TopicProcessor
from .processors.transaction import TransactionProcessor
from .transactions import TransactionService, state_path

__all__ = ["Dispatcher", "Processors", "build_dispatcher"]


class Dispatcher:
    """Maps request codes to handlers."""

    def __init__(self) -> None:
        self._by_code: dict[RequestCode, Handler] = {}
        self._by_type: dict[type[Any], Handler] = {}

    def register(self, code: RequestCode, handler: Handler) -> None:
        """Serve ``code`` with ``handler`` (replaces an earlier registration)."""
        self._by_code[code] = handler
        self._by_type[REQUEST_TYPES[code]] = handler

    def handler(self, request: object) -> Handler | None:
        """The handler of a parsed request envelope, or None when the code is not served."""
        return self._by_type.get(type(request))

    def codes(self) -> list[RequestCode]:
        """The codes served, sorted."""
        return sorted(self._by_code)


class Processors:
    """The processor objects of one broker (kept for the server's timers and shutdown)."""

    def __init__(self, ctx: BrokerContext, waiters: SyncFlushWaiters | None) -> None:
        self.ctx = ctx
        self.send = SendProcessor(ctx, waiters)
        self.pull = PullProcessor(ctx)
        self.offsets = OffsetProcessor(ctx)
        self.topics = TopicProcessor(ctx)
        self.client = ClientProcessor(ctx)
        self.consume = ConsumeProcessor(ctx)
        self.sendback = SendBackProcessor(ctx)
        self.query = QueryProcessor(ctx)
        #: Decisions and checks of half messages; its passes start here, on the loop.
        self.transactions = TransactionService(ctx, state_path(ctx.config.config_dir))
        self.transaction = TransactionProcessor(ctx, self.transactions)
        self.transactions.start()

    def close(self) -> None:
        """Shutdown, before the store closes: stop the transaction checks, write their state."""
        self.transactions.close()


def build_dispatcher(processors: Processors) -> Dispatcher:
    """The broker's request table."""
    d = Dispatcher()
    d.register(RequestCode.SEND_MESSAGE, processors.send.send)
    d.register(RequestCode.SEND_BATCH_MESSAGE, processors.send.send_batch)
    d.register(RequestCode.PULL_MESSAGE, processors.pull.pull)
    d.register(RequestCode.QUERY_CONSUMER_OFFSET, processors.offsets.query)
    d.register(RequestCode.COMMIT_CONSUMER_OFFSET, processors.offsets.commit)
    d.register(RequestCode.GET_MAX_OFFSET, processors.offsets.max_offset)
    d.register(RequestCode.GET_MIN_OFFSET, processors.offsets.min_offset)
    d.register(RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, processors.offsets.search)
    d.register(RequestCode.RESET_CONSUMER_OFFSET, processors.offsets.reset)
    d.register(RequestCode.CREATE_TOPIC, processors.topics.create)
    d.register(RequestCode.UPDATE_TOPIC, processors.topics.update)
    d.register(RequestCode.DELETE_TOPIC, processors.topics.delete)
    d.register(RequestCode.LIST_TOPICS, processors.topics.list)
    d.register(RequestCode.HEARTBEAT, processors.client.heartbeat)
    d.register(RequestCode.UNREGISTER_CLIENT, processors.client.unregister)
    d.register(RequestCode.GET_CONSUMER_LIST_BY_GROUP, processors.client.consumer_list)
    d.register(RequestCode.LOCK_BATCH_MQ, processors.client.lock_batch)
    d.register(RequestCode.UNLOCK_BATCH_MQ, processors.client.unlock_batch)
    d.register(RequestCode.CONSUME_OPEN, processors.consume.open)
    d.register(RequestCode.CONSUME_ACK, processors.consume.ack)
    d.register(RequestCode.CONSUME_CLOSE, processors.consume.close)
    d.register(RequestCode.CONSUMER_SEND_MSG_BACK, processors.sendback.send_back)
    d.register(RequestCode.END_TRANSACTION, processors.transaction.end)
    d.register(RequestCode.QUERY_MESSAGE, processors.query.query)
    d.register(RequestCode.VIEW_MESSAGE_BY_ID, processors.query.view)
    return d
