"""Naming rules for topics and groups, shared by clients (checked before sending) and servers.

A name is 1 or more characters from ``%``, ``A-Z``, ``a-z``, ``0-9``, ``_`` and ``-``:

* a topic has at most 127 characters;
* a group (producer or consumer) has at most 127 characters;
* a system topic derived from a group, ``%RETRY%<group>`` or ``%DLQ%<group>``, has at most
  255 characters (it is never shorter than its prefix plus one character).

The broker's own topics, ``%TIMER%``, ``%HALF%`` and ``%HALF_OP%`` (:data:`BROKER_TOPICS`,
docs/PROTOCOL.md section 14), are valid names that only brokers write: a client send to
one is refused (NO_PERMISSION), and they are never routed. :func:`is_system_topic`
covers only the topics derived from a group.

Each ``check_*`` function returns None for a good name, or a sentence saying what is
wrong, which servers put in the reply's remark (INVALID_TOPIC_NAME, INVALID_GROUP_NAME).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "BROKER_TOPICS",
    "DLQ_PREFIX",
    "HALF_OP_TOPIC",
    "HALF_TOPIC",
    "MAX_GROUP_LENGTH",
    "MAX_SYSTEM_TOPIC_LENGTH",
    "MAX_TOPIC_LENGTH",
    "RETRY_PREFIX",
    "TIMER_TOPIC",
    "check_group",
    "check_name",
    "check_topic",
    "dlq_topic",
    "is_broker_topic",
    "is_system_topic",
    "retry_topic",
]

MAX_TOPIC_LENGTH: Final = 127
MAX_GROUP_LENGTH: Final = 127
MAX_SYSTEM_TOPIC_LENGTH: Final = 255
RETRY_PREFIX: Final = "%RETRY%"
DLQ_PREFIX: Final = "%DLQ%"
#: Timed and delayed messages waiting for their time (PROTOCOL.md 14.1).
TIMER_TOPIC: Final = "%TIMER%"
#: Half messages of transactions (PROTOCOL.md 14.3).
HALF_TOPIC: Final = "%HALF%"
#: Commit and rollback decisions of half messages (PROTOCOL.md 14.3).
HALF_OP_TOPIC: Final = "%HALF_OP%"
#: Topics every broker has implicitly (1 queue), written only by the broker itself.
BROKER_TOPICS: Final = frozenset((TIMER_TOPIC, HALF_TOPIC, HALF_OP_TOPIC))

_CHARS: Final = re.compile(r"[%A-Za-z0-9_-]+")


def _check(name: object, kind: str, limit: int) -> str | None:
    if not isinstance(name, str):
        return f"{kind} name must be a string, got {type(name).__name__}"
    if not name:
        return f"{kind} name is empty"
    if len(name) > limit:
        return f"{kind} name is {len(name)} characters long, the limit is {limit}"
    if _CHARS.fullmatch(name) is None:
        return f"{kind} name {name!r} has characters outside [%A-Za-z0-9_-]"
    return None


def is_system_topic(topic: str) -> bool:
    """True for the retry and dead-letter topics derived from a group."""
    return topic.startswith((RETRY_PREFIX, DLQ_PREFIX))


def is_broker_topic(topic: str) -> bool:
    """True for ``%TIMER%``, ``%HALF%`` and ``%HALF_OP%``: topics only a broker writes."""
    return topic in BROKER_TOPICS


def check_topic(topic: object) -> str | None:
    """None when ``topic`` is a valid topic name, else why it is not."""
    if isinstance(topic, str) and is_system_topic(topic):
        prefix = RETRY_PREFIX if topic.startswith(RETRY_PREFIX) else DLQ_PREFIX
        if len(topic) == len(prefix):
            return f"topic name {topic!r} names no group after its prefix"
        return _check(topic, "topic", MAX_SYSTEM_TOPIC_LENGTH)
    return _check(topic, "topic", MAX_TOPIC_LENGTH)


def check_group(group: object) -> str | None:
    """None when ``group`` is a valid group name, else why it is not."""
    return _check(group, "group", MAX_GROUP_LENGTH)


def check_name(name: object, kind: str) -> str | None:
    """None when ``name`` (a cluster or broker name, say) follows the group rule, else why."""
    return _check(name, kind, MAX_GROUP_LENGTH)


def retry_topic(group: str) -> str:
    """The retry topic of a consumer group (SPEC M15)."""
    return RETRY_PREFIX + group


def dlq_topic(group: str) -> str:
    """The dead-letter topic of a consumer group (SPEC M15)."""
    return DLQ_PREFIX + group
