"""Broker configuration: one msgspec Struct with sane defaults, read from TOML or JSON.

Precedence, lowest first: the defaults below, then ``--config FILE`` (TOML when the file
name ends in ``.toml``, JSON otherwise; unknown keys are an error, so a typo never passes
silently), then command-line flags. The store's own knobs live in the nested ``store``
table (``broker.store.StoreConfig``); ``flush`` and ``max_message_size`` are set at the top
level and override the store's ``flush_mode`` and ``max_message_size``.

Example ``broker.toml``::

    data_dir = "/var/lib/fabric/broker-a"
    nameservers = ["tcp://10.0.0.1:9876", "tcp://10.0.0.2:9876"]
    bind = "tcp://0.0.0.0:10911"
    advertise = "tcp://10.0.0.5:10911"
    broker_name = "broker-a"
    flush = "sync"

    [store]
    segment_size = 1073741824
"""

from __future__ import annotations

import math
import os
from typing import Final, Literal

import msgspec

from broker.store import FlushMode, StoreConfig
from fabric.protocol.codes import (
    DEFAULT_CLIENT_EXPIRY,
    DEFAULT_DEDUP_WINDOW,
    DEFAULT_LOCK_EXPIRY,
    DEFAULT_MAX_RECONSUME_TIMES,
    DEFAULT_TIMER_MAX_DELAY,
    DELAY_LEVELS,
)
from fabric.protocol.frames import MAX_MESSAGE_BYTES
from fabric.protocol.messages import MAX_QUEUE_NUMS
from fabric.protocol.names import check_name

__all__ = [
    "DEFAULT_BIND",
    "BrokerConfig",
    "BrokerConfigError",
    "load_config",
]

#: RocketMQ's broker port, on loopback: safe on a fresh machine.
DEFAULT_BIND: Final = "tcp://127.0.0.1:10911"


class BrokerConfigError(ValueError):
    """A configuration file that cannot be read, or a value out of range."""


class BrokerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Every knob of a broker. Times in seconds unless the name says ``_ms``; sizes in bytes."""

    #: Directory of the store (``store/``) and of the broker's own files (``config/``).
    data_dir: str = ""
    #: NameServer endpoints to register with (every one of them).
    nameservers: list[str] = []
    #: ROUTER endpoint to bind; port 0 picks a free port.
    bind: str = DEFAULT_BIND
    #: The endpoint registered with the NameServers (what clients connect to); empty: the
    #: bound endpoint, with a wildcard host (0.0.0.0, ::) replaced by the loopback address.
    advertise: str = ""
    cluster_name: str = "DefaultCluster"
    broker_name: str = "broker-a"
    #: 0 for a master (the only kind this release runs).
    broker_id: int = 0
    #: "async": reply once the message is in the page cache; "sync": after an fsync.
    flush: Literal["async", "sync"] = "async"
    #: SEND_MESSAGE to an unknown topic creates it with ``default_queue_nums`` queues.
    auto_create_topics: bool = True
    default_queue_nums: int = 4
    #: Largest message body accepted (at most the protocol's 4 MiB).
    max_message_size: int = MAX_MESSAGE_BYTES
    #: Seconds between two registrations / heartbeats to each NameServer.
    heartbeat_interval: float = 30.0
    #: Expiry asked of the NameServers in REGISTER_BROKER; 0: the NameServer's default.
    heartbeat_timeout_ms: int = 0
    #: Seconds a request to a NameServer may take.
    register_timeout: float = 3.0
    #: Seconds between two writes of the committed consumer offsets (when changed).
    offset_persist_interval: float = 5.0
    #: Most records in one pull reply (a larger max_msgs is clamped to it).
    pull_max_msgs: int = 1024
    #: Pull reply size when the request's max_bytes is 0.
    pull_default_bytes: int = 1024 * 1024
    #: Largest pull reply size a request may ask for (larger is clamped).
    pull_max_bytes: int = 8 * 1024 * 1024
    #: Longest long-poll wait (a larger suspend_timeout_ms is clamped to it).
    max_suspend_ms: int = 60_000
    #: Most pulls parked at once; past it a pull that would wait answers PULL_NOT_FOUND.
    max_parked_pulls: int = 10_000
    #: Seconds without a HEARTBEAT after which a client leaves its consumer groups: its
    #: push streams close, its queue locks are freed, the group is told.
    client_expiry: float = DEFAULT_CLIENT_EXPIRY
    #: Seconds a queue lock (LOCK_BATCH_MQ, exclusive CONSUME_OPEN) lasts unless renewed.
    lock_expiry: float = DEFAULT_LOCK_EXPIRY
    #: Most push streams open at once; past it CONSUME_OPEN answers SYSTEM_BUSY.
    max_push_streams: int = 100_000
    #: The storage engine's knobs (see docs/STORAGE.md).
    store: StoreConfig = StoreConfig()
    #: Deliveries before a sent-back message goes to ``%DLQ%<group>`` when the
    #: CONSUMER_SEND_MSG_BACK says -1 (PROTOCOL.md 14.2).
    max_reconsume_times: int = DEFAULT_MAX_RECONSUME_TIMES
    #: Seconds a half message waits for END_TRANSACTION before it is checked (14.3).
    transaction_timeout: float = 6.0
    #: Seconds between two rounds of transaction checks.
    transaction_check_interval: float = 30.0
    #: Checks of a half message before it is discarded.
    transaction_check_max: int = 15
    #: Seconds of the delay levels 1..18 (PROTOCOL.md 14.1); tests shorten them.
    delay_levels: tuple[float, ...] = DELAY_LEVELS
    #: Furthest due time a send may ask for, in seconds from now (MESSAGE_ILLEGAL past it).
    timer_max_delay: float = DEFAULT_TIMER_MAX_DELAY
    #: Seconds a resend (PROTOCOL.md 14.4) finds an earlier copy of its uniq id.
    dedup_window: float = DEFAULT_DEDUP_WINDOW

    def validate(self) -> BrokerConfig:
        """Raise BrokerConfigError for a missing or out-of-range value; return self."""
        if not self.data_dir:
            raise BrokerConfigError("no data directory: pass --data DIR or set data_dir")
        for value, kind in ((self.cluster_name, "cluster"), (self.broker_name, "broker")):
            problem = check_name(value, kind)
            if problem is not None:
                raise BrokerConfigError(problem)
        if self.broker_id < 0:
            raise BrokerConfigError(f"broker_id must be >= 0, got {self.broker_id}")
        if not 1 <= self.default_queue_nums <= MAX_QUEUE_NUMS:
            raise BrokerConfigError(f"default_queue_nums must be in 1..{MAX_QUEUE_NUMS}")
        if not 0 < self.max_message_size <= MAX_MESSAGE_BYTES:
            raise BrokerConfigError(f"max_message_size must be in 1..{MAX_MESSAGE_BYTES}")
        positive: dict[str, float] = {
            "heartbeat_interval": self.heartbeat_interval,
            "register_timeout": self.register_timeout,
            "offset_persist_interval": self.offset_persist_interval,
            "pull_max_msgs": self.pull_max_msgs,
            "pull_default_bytes": self.pull_default_bytes,
            "pull_max_bytes": self.pull_max_bytes,
            "max_suspend_ms": self.max_suspend_ms,
            "max_parked_pulls": self.max_parked_pulls,
            "client_expiry": self.client_expiry,
            "lock_expiry": self.lock_expiry,
            "max_push_streams": self.max_push_streams,
        }
        for field, number in positive.items():
            if not number > 0:
                raise BrokerConfigError(f"{field} must be > 0, got {number}")
        for field, seconds in (
            ("client_expiry", self.client_expiry),
            ("lock_expiry", self.lock_expiry),
        ):
            if not math.isfinite(seconds):
                raise BrokerConfigError(f"{field} must be finite, got {seconds}")
        if not 0 <= self.max_reconsume_times <= 2**31 - 1:
            raise BrokerConfigError("max_reconsume_times must be in 0..2147483647")
        for field, seconds in (
            ("transaction_timeout", self.transaction_timeout),
            ("transaction_check_interval", self.transaction_check_interval),
        ):
            if not (math.isfinite(seconds) and seconds > 0):
                raise BrokerConfigError(f"{field} must be finite and > 0, got {seconds}")
        if self.transaction_check_max < 1:
            raise BrokerConfigError("transaction_check_max must be >= 1")
        if self.heartbeat_timeout_ms < 0:
            raise BrokerConfigError("heartbeat_timeout_ms must be >= 0")
        if len(self.delay_levels) != len(DELAY_LEVELS) or not all(
            0 < level < math.inf for level in self.delay_levels
        ):
            raise BrokerConfigError(
                f"delay_levels must be {len(DELAY_LEVELS)} positive finite numbers of seconds"
            )
        for field, seconds in (
            ("timer_max_delay", self.timer_max_delay),
            ("dedup_window", self.dedup_window),
        ):
            if not 0 < seconds < math.inf:
                raise BrokerConfigError(f"{field} must be > 0 and finite, got {seconds}")
        for endpoint in self.nameservers:
            if "://" not in endpoint:
                raise BrokerConfigError(f"nameserver endpoint {endpoint!r} has no transport://")
        try:
            self.store_config()
        except Exception as exc:  # the store's ConfigError, or a bad value msgspec let through
            raise BrokerConfigError(f"store: {exc}") from None
        return self

    def store_config(self, store_host: str = "") -> StoreConfig:
        """The StoreConfig the broker opens its store with (validated)."""
        changes: dict[str, object] = {
            "flush_mode": FlushMode.SYNC_FLUSH if self.flush == "sync" else FlushMode.ASYNC_FLUSH,
            "max_message_size": self.max_message_size,
        }
        if store_host:
            changes["store_host"] = store_host
        return msgspec.structs.replace(self.store, **changes).validate()

    @property
    def store_dir(self) -> str:
        """Where the MessageStore lives."""
        return os.path.join(self.data_dir, "store")

    @property
    def config_dir(self) -> str:
        """Where the topic table and the consumer offsets live."""
        return os.path.join(self.data_dir, "config")


def load_config(path: str | None, **overrides: object) -> BrokerConfig:
    """Read ``path`` (TOML or JSON; None: defaults only), apply ``overrides``, validate.

    Overrides whose value is None are ignored (a flag that was not given).

    Raises:
        BrokerConfigError: the file cannot be read or decoded, or a value is out of range.
    """
    config = BrokerConfig()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise BrokerConfigError(f"cannot read {path}: {exc.strerror}") from None
        try:
            if path.endswith(".toml"):
                config = msgspec.toml.decode(data, type=BrokerConfig)
            else:
                config = msgspec.json.decode(data, type=BrokerConfig)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BrokerConfigError(f"{path}: {exc}") from None
    changes = {name: value for name, value in overrides.items() if value is not None}
    if changes:
        try:
            config = msgspec.structs.replace(config, **changes)
        except TypeError as exc:
            raise BrokerConfigError(str(exc)) from None
    return config.validate()
