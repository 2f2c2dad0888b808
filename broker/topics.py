"""The broker's topic table: the TopicConfig of every topic it serves, persisted atomically.

The table lives in ``<data>/config/topics.json`` (msgspec JSON)::

    {"data_version": 1732400000000000, "topics": [{"topic": "T", "read_queue_nums": 4, ...}]}

Every change (create, update, delete) is written before it is acknowledged, with
temp file + fsync + ``os.replace`` (broker.persist), and raises ``data_version``: the
version the broker registers with (PROTOCOL.md section 6), microseconds since the epoch
at the last change, never lower than the version of a previous run.

System topics (docs/PROTOCOL.md section 14): ``%TIMER%``, ``%HALF%`` and ``%HALF_OP%``
exist implicitly on every broker (queue 0 only, written by the broker itself); they are
never in this table, so they are neither registered nor listed, and nobody may create
them (NO_PERMISSION). ``%RETRY%<group>`` and ``%DLQ%<group>`` are ordinary entries that
the broker creates on first use with :meth:`TopicTable.ensure_system_topic`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import msgspec
from loguru import logger

from fabric.errors import (
    InvalidNameError,
    NoPermissionError,
    ProtocolError,
    TopicExistsError,
    TopicNotExistError,
)
from fabric.protocol.codes import Perm, ResponseCode
from fabric.protocol.messages import MAX_QUEUE_NUMS, TopicConfig
from fabric.protocol.names import check_topic, is_broker_topic, is_system_topic

from .persist import read_file, write_atomic

__all__ = ["TopicTable", "check_topic_name", "validate_topic_config"]

_ALL_PERMS = int(Perm.INHERIT | Perm.READ | Perm.WRITE)
_READ_WRITE = int(Perm.READ | Perm.WRITE)


class _TopicsFile(msgspec.Struct, kw_only=True):
    data_version: int = 0
    topics: list[TopicConfig] = []


_decoder = msgspec.json.Decoder(_TopicsFile)
_encoder = msgspec.json.Encoder()


def check_topic_name(topic: str) -> None:
    """Raise InvalidNameError (INVALID_TOPIC_NAME) for a bad topic name."""
    problem = check_topic(topic)
    if problem is not None:
        raise InvalidNameError(problem, code=ResponseCode.INVALID_TOPIC_NAME, name=topic)


def validate_topic_config(config: TopicConfig) -> None:
    """Raise InvalidNameError or ProtocolError (MALFORMED_REQUEST) for a bad TopicConfig."""
    check_topic_name(config.topic)
    for field, nums in (
        ("read_queue_nums", config.read_queue_nums),
        ("write_queue_nums", config.write_queue_nums),
    ):
        if not 0 <= nums <= MAX_QUEUE_NUMS:
            raise ProtocolError(f"{field} {nums} is outside 0..{MAX_QUEUE_NUMS}")
    if not 0 <= config.perm <= _ALL_PERMS:
        raise ProtocolError(f"perm {config.perm} is outside 0..{_ALL_PERMS}")


def _now_us() -> int:
    return time.time_ns() // 1000


class TopicTable:
    """Topic name -> TopicConfig, saved to ``path`` on every change.

    Args:
        path: the JSON file; None keeps the table in memory only (tests).

    Raises:
        ValueError: the file exists but cannot be decoded (the broker refuses to start
            rather than silently forget its topics).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._topics: dict[str, TopicConfig] = {}
        stored_version = 0
        data = read_file(path) if path is not None else None
        if data is not None:
            try:
                loaded = _decoder.decode(data)
            except msgspec.DecodeError as exc:
                raise ValueError(f"topic table {path} is unreadable: {exc}") from None
            stored_version = loaded.data_version
            for config in loaded.topics:
                self._topics[config.topic] = config
        #: The version the broker registers with; grows with every change and every start.
        self.data_version = max(stored_version + 1, _now_us())
        #: Called after :meth:`ensure_system_topic` created a topic (the server registers
        #: the change with the NameServers, so that consumers find the topic).
        self.on_system_topic_created: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._topics)

    def __contains__(self, topic: object) -> bool:
        return topic in self._topics

    def __iter__(self) -> Iterator[TopicConfig]:
        return iter(self.list())

    def get(self, topic: str) -> TopicConfig | None:
        """The config of ``topic``, or None."""
        return self._topics.get(topic)

    def list(self) -> list[TopicConfig]:
        """Every topic, sorted by name."""
        return [self._topics[name] for name in sorted(self._topics)]

    def create(self, config: TopicConfig) -> TopicConfig:
        """Add a topic; TopicExistsError when it exists. Validates the config.

        Raises:
            NoPermissionError: the name is one of the broker's own topics (``%TIMER%``...).
        """
        validate_topic_config(config)
        if is_broker_topic(config.topic):
            raise NoPermissionError(f"topic {config.topic} is reserved for the broker")
        if config.topic in self._topics:
            raise TopicExistsError(f"topic {config.topic} already exists")
        self._change(config.topic, config)
        logger.info(
            "created topic {} ({} read / {} write queues, perm {})",
            config.topic,
            config.read_queue_nums,
            config.write_queue_nums,
            config.perm,
        )
        return config

    def ensure_system_topic(self, topic: str) -> TopicConfig:
        """The config of ``%RETRY%<group>`` or ``%DLQ%<group>``, created on first use.

        For the broker's retry and dead-letter paths (PROTOCOL.md 14.2): call it before
        appending to such a topic. An existing topic is returned as it is (an operator may
        have changed it); a missing one is created with 1 read and 1 write queue and perm
        READ|WRITE, persisted, and announced through :attr:`on_system_topic_created` (the
        server re-registers, so consumers find its route). Runs on the broker's loop.

        Raises:
            ValueError: ``topic`` is not a retry or dead-letter topic.
            InvalidNameError: the name is invalid (INVALID_TOPIC_NAME).
        """
        config = self._topics.get(topic)
        if config is not None:
            return config
        if not is_system_topic(topic):
            raise ValueError(f"{topic!r} is not a retry or dead-letter topic")
        config = self.create(
            TopicConfig(topic=topic, read_queue_nums=1, write_queue_nums=1, perm=_READ_WRITE)
        )
        if self.on_system_topic_created is not None:
            self.on_system_topic_created()
        return config

    def update(self, config: TopicConfig) -> TopicConfig:
        """Replace a topic's config; TopicNotExistError when it does not exist."""
        validate_topic_config(config)
        if config.topic not in self._topics:
            raise TopicNotExistError(f"topic {config.topic} does not exist")
        self._change(config.topic, config)
        logger.info(
            "updated topic {} ({} read / {} write queues, perm {})",
            config.topic,
            config.read_queue_nums,
            config.write_queue_nums,
            config.perm,
        )
        return config

    def delete(self, topic: str) -> TopicConfig:
        """Remove a topic; TopicNotExistError when it does not exist. Returns its config."""
        check_topic_name(topic)
        config = self._topics.get(topic)
        if config is None:
            raise TopicNotExistError(f"topic {topic} does not exist")
        self._change(topic, None)
        logger.info("deleted topic {}", topic)
        return config

    def _change(self, topic: str, config: TopicConfig | None) -> None:
        # Write first, then change memory: a failed write leaves the table as it was.
        new = dict(self._topics)
        if config is None:
            del new[topic]
        else:
            new[topic] = config
        version = max(self.data_version + 1, _now_us())
        if self.path is not None:
            data = _encoder.encode(
                _TopicsFile(data_version=version, topics=[new[n] for n in sorted(new)])
            )
            write_atomic(self.path, data)
        self._topics = new
        self.data_version = version
