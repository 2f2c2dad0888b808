"""Push consumer options: one frozen Struct with working defaults, and start-position parsing.

:class:`PushConsumerOptions` holds every knob of a push consumer (the fronts in
fabric.consumer.push and fabric.aio pass their keyword arguments through); ``check()``
rejects values out of range before anything starts. :func:`parse_position` turns the
ways an application or the ``fabric admin`` command names a start position
(``"earliest"``, ``"latest"``, a timestamp in ms, an ISO time, a datetime, a
ConsumeFrom) into the (ConsumeFrom, timestamp) pair the wire wants (docs/PROTOCOL.md
sections 13.3 and 13.6).
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Final

import msgspec

from fabric.consumer.rebalance import DEFAULT_STRATEGY, check_strategy
from fabric.protocol.codes import (
    DEFAULT_CLIENT_HEARTBEAT_INTERVAL,
    DEFAULT_LOCK_EXPIRY,
    ConsumeFrom,
    MessageModel,
)
from fabric.routing import DEFAULT_ROUTE_REFRESH
from fabric.transport import DEFAULT_TIMEOUT

__all__ = [
    "DEFAULT_OFFSET_STORE_DIR",
    "DEFAULT_PREFETCH",
    "DEFAULT_PREFETCH_BYTES",
    "DEFAULT_REBALANCE_INTERVAL",
    "MAX_WINDOW_BYTES",
    "MAX_WINDOW_MSGS",
    "Position",
    "PushConsumerOptions",
    "parse_position",
]

#: Messages per queue the broker may push before acks reopen the window (RocketMQ
#: ``pullThresholdForQueue`` is 1000 too).
DEFAULT_PREFETCH: Final = 1000
#: Bytes per queue the broker may push before acks reopen the window.
DEFAULT_PREFETCH_BYTES: Final = 64 * 1024 * 1024
#: Largest window in messages the broker accepts (CONSUME_OPEN ``window_msgs``).
MAX_WINDOW_MSGS: Final = 65536
#: Largest window in bytes the broker accepts (CONSUME_OPEN ``window_bytes``).
MAX_WINDOW_BYTES: Final = 2**31
#: Seconds between two periodic rebalances (docs/PROTOCOL.md 13.5).
DEFAULT_REBALANCE_INTERVAL: Final = 2.0
#: Where BROADCASTING consumers keep their offset files unless told otherwise.
DEFAULT_OFFSET_STORE_DIR: Final = os.path.join("~", ".fabric", "offsets")

_INSTANCE_NAME: Final = re.compile(r"^[A-Za-z0-9_.%-]{1,64}$")
_WORDS: Final[dict[str, ConsumeFrom]] = {
    "earliest": ConsumeFrom.FIRST_OFFSET,
    "first": ConsumeFrom.FIRST_OFFSET,
    "latest": ConsumeFrom.LAST_OFFSET,
    "last": ConsumeFrom.LAST_OFFSET,
}

#: What names a start position: a ConsumeFrom (LAST_OFFSET, FIRST_OFFSET), a word
#: ("earliest", "latest"), a timestamp in ms since the epoch (int, or digits in a str),
#: an ISO 8601 time (str; without a zone it is local time) or a datetime.
Position = ConsumeFrom | str | int | datetime.datetime


def parse_position(value: Position) -> tuple[ConsumeFrom, int]:
    """The (ConsumeFrom, timestamp in ms) pair a start position means.

    Raises:
        ValueError: a value that names no position (ConsumeFrom.TIMESTAMP without a time,
            an unknown word, a negative timestamp, a malformed ISO time).
    """
    if isinstance(value, ConsumeFrom):
        if value is ConsumeFrom.TIMESTAMP:
            raise ValueError("ConsumeFrom.TIMESTAMP needs a time: pass the timestamp instead")
        return value, 0
    if isinstance(value, bool):
        raise ValueError(f"not a start position: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a timestamp must be >= 0 ms, got {value}")
        return ConsumeFrom.TIMESTAMP, value
    if isinstance(value, datetime.datetime):
        return ConsumeFrom.TIMESTAMP, _ms(value)
    if isinstance(value, str):
        text = value.strip()
        word = _WORDS.get(text.lower())
        if word is not None:
            return word, 0
        if text.isdigit():
            return ConsumeFrom.TIMESTAMP, int(text)
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"not a start position: {value!r} (expected earliest, latest, a timestamp "
                "in ms or an ISO time)"
            ) from None
        return ConsumeFrom.TIMESTAMP, _ms(when)
    raise ValueError(f"not a start position: {value!r}")


def _ms(when: datetime.datetime) -> int:
    # A naive datetime is local time (datetime.timestamp's rule).
    ms = round(when.timestamp() * 1000)
    if ms < 0:
        raise ValueError(f"a time before the epoch: {when.isoformat()}")
    return ms


class PushConsumerOptions(msgspec.Struct, kw_only=True, frozen=True):
    """How a push consumer consumes; every field has a working default."""

    #: CLUSTERING (each queue to one member, offsets on the broker) or BROADCASTING.
    model: MessageModel = MessageModel.CLUSTERING
    #: Ordered consumption: one message at a time per queue, in queue order, under a lock.
    orderly: bool = False
    #: Window per queue, in messages and in bytes (stored record sizes).
    prefetch: int = DEFAULT_PREFETCH
    prefetch_bytes: int = DEFAULT_PREFETCH_BYTES
    #: Threads (or, for coroutine listeners, tasks) calling listeners at once.
    consume_threads: int = 8
    #: Where a group with no committed offset starts, and the timestamp for TIMESTAMP.
    consume_from: ConsumeFrom = ConsumeFrom.LAST_OFFSET
    consume_timestamp: int = 0
    #: Allocation strategy: "average" or "consistent_hash".
    allocation: str = DEFAULT_STRATEGY
    #: Seconds between two HEARTBEATs to each broker.
    heartbeat_interval: float = DEFAULT_CLIENT_HEARTBEAT_INTERVAL
    #: Seconds between two periodic rebalances.
    rebalance_interval: float = DEFAULT_REBALANCE_INTERVAL
    #: Seconds a queue lock lasts on the broker; the consumer renews every third of it.
    lock_expiry: float = DEFAULT_LOCK_EXPIRY
    #: Seconds before a message whose listener said RECONSUME_LATER (or raised) is retried
    #: locally: always in BROADCASTING and ordered mode, and in CLUSTERING when sending it
    #: back to the broker failed (docs/PROTOCOL.md 14.2).
    reconsume_delay: float = 1.0
    #: Deliveries a failing message gets before it goes to the group's dead-letter topic.
    #: CLUSTERING: sent with each send-back; -1 is the broker's (16). Ordered mode: local
    #: retries before the send to the DLQ; -1 retries for ever (RocketMQ's orderly rule).
    max_reconsume_times: int = -1
    #: Concurrent mode: seconds a queue being handed over waits for its listeners.
    release_timeout: float = 5.0
    #: Ordered mode: seconds a queue being handed over waits for the message in its
    #: listener. Past it the queue is handed over anyway (with a warning): its next
    #: owner may then run the queue's next messages beside the one still running, and
    #: gets that one again (its offset was never committed).
    orderly_release_timeout: float = 60.0
    #: Seconds shutdown() waits for listeners before it commits and closes.
    shutdown_timeout: float = 10.0
    #: BROADCASTING: the directory of the local offset files, and how often they are written.
    offset_store_dir: str = DEFAULT_OFFSET_STORE_DIR
    offset_persist_interval: float = 5.0
    #: A stable name of this consumer instance (BROADCASTING: names its offset file);
    #: empty: "DEFAULT" for BROADCASTING, none for CLUSTERING.
    instance_name: str = ""
    #: Seconds a broker or NameServer gets to answer a request.
    request_timeout: float = DEFAULT_TIMEOUT
    #: Seconds between two route refreshes.
    route_refresh: float = DEFAULT_ROUTE_REFRESH
    #: Check each record's CRC32 (the broker checked it when storing).
    verify_crc: bool = False
    #: Send a trace event per message consumed or sent back to ``%TRACE%`` (SPEC M21).
    trace: bool = False

    def check(self) -> PushConsumerOptions:
        """Raise ValueError for a value out of range; return self."""
        if not 1 <= self.prefetch <= MAX_WINDOW_MSGS:
            raise ValueError(f"prefetch must be in 1..{MAX_WINDOW_MSGS}, got {self.prefetch}")
        if not 1 <= self.prefetch_bytes <= MAX_WINDOW_BYTES:
            raise ValueError(f"prefetch_bytes must be in 1..{MAX_WINDOW_BYTES}")
        if self.consume_threads < 1:
            raise ValueError(f"consume_threads must be >= 1, got {self.consume_threads}")
        check_strategy(self.allocation)
        positive = {
            "heartbeat_interval": self.heartbeat_interval,
            "rebalance_interval": self.rebalance_interval,
            "lock_expiry": self.lock_expiry,
            "request_timeout": self.request_timeout,
            "offset_persist_interval": self.offset_persist_interval,
            "orderly_release_timeout": self.orderly_release_timeout,
        }
        for name, number in positive.items():
            if not number > 0:
                raise ValueError(f"{name} must be > 0, got {number}")
        for name, number in (
            ("reconsume_delay", self.reconsume_delay),
            ("release_timeout", self.release_timeout),
            ("shutdown_timeout", self.shutdown_timeout),
        ):
            if not number >= 0:
                raise ValueError(f"{name} must be >= 0, got {number}")
        if not isinstance(self.max_reconsume_times, int) or self.max_reconsume_times < -1:
            raise ValueError(
                f"max_reconsume_times must be -1 or >= 0, got {self.max_reconsume_times!r}"
            )
        if self.instance_name and not _INSTANCE_NAME.match(self.instance_name):
            raise ValueError(
                f"instance_name must be 1..64 of A-Z a-z 0-9 _ . % -, got {self.instance_name!r}"
            )
        return self

    @property
    def broadcasting(self) -> bool:
        """True for MessageModel.BROADCASTING."""
        return self.model == MessageModel.BROADCASTING
