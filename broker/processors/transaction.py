"""END_TRANSACTION: a producer commits or rolls back a half message (docs/PROTOCOL.md 14.3).

The processor checks the request and finds the half record; broker.transactions applies
the decision (the commit, the op record) and runs the checks of undecided half messages.

Checks, in order: the producer group (INVALID_GROUP_NAME), ``state`` is a
TransactionState (MALFORMED_REQUEST), a sound ``%HALF%`` record starts at
``commitlog_offset`` (QUERY_NOT_FOUND). The reply is ``{}``: for a decision applied, for a
second decision of a half message already decided (ignored), and for UNKNOWN (nothing
changes; the broker asks again later).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from broker.store import decode_message
from broker.transactions import TransactionService
from fabric.errors import NotFoundError, ProtocolError
from fabric.protocol.codes import ResponseCode, TransactionState
from fabric.protocol.frames import Buffer
from fabric.protocol.messages import Empty, EndTransactionRequest
from fabric.protocol.names import HALF_TOPIC

from . import BrokerContext, Outcome
from .query import read_record_at

__all__ = ["TransactionProcessor"]

_STATES: Final = frozenset(int(s) for s in TransactionState)
_EMPTY: Final = Empty()
_SUCCESS: Final = ResponseCode.SUCCESS


class TransactionProcessor:
    """END_TRANSACTION.

    Args:
        ctx: the broker's shared state.
        service: the broker's transaction service (decisions and checks).
    """

    def __init__(self, ctx: BrokerContext, service: TransactionService) -> None:
        self._ctx = ctx
        self._service = service

    def end(
        self, request: EndTransactionRequest, bodies: Sequence[Buffer], identity: bytes
    ) -> Outcome:
        """END_TRANSACTION: commit or roll back the half message at ``commitlog_offset``; ``{}``."""
        b = request.body
        self._ctx.check_group(b.producer_group)
        if b.state not in _STATES:
            raise ProtocolError(
                f"state must be 0 (UNKNOWN), 1 (COMMIT) or 2 (ROLLBACK), got {b.state}"
            )
        raw = read_record_at(self._ctx, b.commitlog_offset)
        half = decode_message(raw) if raw is not None else None
        if half is None or half.topic != HALF_TOPIC:
            raise NotFoundError(f"no half message at CommitLog offset {b.commitlog_offset}")
        self._service.decide(half, b.state)
        return _SUCCESS, _EMPTY, (), ""
