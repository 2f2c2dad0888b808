"""Subscriptions of a push consumer: topic, filter checked at subscribe time, and listener.

``PushConsumer.subscribe(topic, expression, listener)`` or ``subscribe(topic, sql=...,
listener=...)`` builds one :class:`Subscription` with :func:`make_subscription`: the
topic name is checked (docs/PROTOCOL.md section 8) and the expression compiled with
fabric.filters (section 12), so a bad one fails in the caller with the column and what
was expected (InvalidFilterError), before anything reaches a broker. The wire form
(SubscriptionData) carries the tag expression normalised, or the SQL text as given.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fabric.errors import InvalidNameError
from fabric.filters import TagFilter, compile_sql, compile_tags
from fabric.message import MessageExt
from fabric.protocol.codes import FilterType, ResponseCode
from fabric.protocol.messages import SubscriptionData
from fabric.protocol.names import check_topic

__all__ = ["Subscription", "is_coroutine_listener", "make_subscription"]


class Subscription:
    """One subscribed topic.

    Attributes:
        topic: the topic.
        data: what HEARTBEAT and CONSUME_OPEN carry (filter type and expression).
        listener: called with each message of the topic.
        is_async: the listener is a coroutine function (awaited on the loop).
        tag_filter: the compiled tag filter (an exact re-check of each record's tag);
            None for SQL.
    """

    __slots__ = ("data", "is_async", "listener", "tag_filter", "topic")

    def __init__(
        self,
        topic: str,
        data: SubscriptionData,
        listener: Callable[[MessageExt], Any],
        *,
        is_async: bool = False,
        tag_filter: TagFilter | None = None,
    ) -> None:
        self.topic = topic
        self.data = data
        self.listener = listener
        self.is_async = is_async
        self.tag_filter = tag_filter

    def __repr__(self) -> str:
        kind = "sql" if self.data.filter_type == FilterType.SQL92 else "tags"
        return f"Subscription({self.topic!r}, {kind}={self.data.expression!r})"


def is_coroutine_listener(listener: object) -> bool:
    """True when calling ``listener`` returns a coroutine (an ``async def`` function or an
    object whose ``__call__`` is one)."""
    if inspect.iscoroutinefunction(listener):
        return True
    call = getattr(listener, "__call__", None)  # noqa: B004 - the method itself is inspected
    return call is not None and inspect.iscoroutinefunction(call)


def make_subscription(
    topic: str,
    expression: str | None,
    listener: Callable[[MessageExt], Any] | None,
    *,
    sql: str | None = None,
    allow_async: bool = False,
) -> Subscription:
    """Check and compile one subscription.

    Args:
        topic: the topic.
        expression: a tag expression (``"TagA || TagB"``, ``"*"``; None means ``"*"``).
        listener: ``listener(msg) -> ConsumeStatus``.
        sql: an SQL92 expression over the message's properties, instead of tags.
        allow_async: accept a coroutine function as listener (fabric.aio).

    Raises:
        InvalidNameError: a bad topic name.
        InvalidFilterError: the expression does not parse (the message says where).
        ValueError: both a tag expression and ``sql``.
        TypeError: no listener, or one that is not callable (or is a coroutine function
            where only plain functions are allowed).
    """
    problem = check_topic(topic) if isinstance(topic, str) else "the topic must be a str"
    if problem is not None:
        raise InvalidNameError(problem, code=ResponseCode.INVALID_TOPIC_NAME, name=str(topic))
    if listener is None or not callable(listener):
        raise TypeError(f"subscribe({topic!r}) needs a callable listener, got {listener!r}")
    is_async = is_coroutine_listener(listener)
    if is_async and not allow_async:
        raise TypeError(
            "a coroutine function cannot be the listener of a blocking PushConsumer: "
            "use fabric.aio.PushConsumer"
        )
    if sql is not None:
        if expression is not None and expression.strip() not in ("", "*"):
            raise ValueError("give either a tag expression or sql, not both")
        compile_sql(sql)
        data = SubscriptionData(topic=topic, filter_type=int(FilterType.SQL92), expression=sql)
        return Subscription(topic, data, listener, is_async=is_async)
    tag_filter = compile_tags(expression)
    data = SubscriptionData(
        topic=topic, filter_type=int(FilterType.TAG), expression=tag_filter.expression
    )
    return Subscription(topic, data, listener, is_async=is_async, tag_filter=tag_filter)
