"""Helpers shared by integration tests that run real NameServer and broker processes.

A plain module (pytest collects only ``test_*.py``): import it as
``tests.integration.cluster``. The waits here are bounded retries: the state they wait
for lives in other processes, with nothing to wait on directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fabric.admin import Admin
from fabric.errors import NoRouteError
from fabric.protocol import RequestCode
from fabric.protocol import messages as m
from fabric.protocol.codes import DELAY_LEVELS
from fabric.testing import ServerProcess, run_broker, run_nameserver, write_broker_config
from fabric.transport import BlockingConnection

__all__ = [
    "OneBrokerCluster",
    "make_topic",
    "start_consumer_broker",
    "wait_for_route",
    "wait_registered",
    "wait_until",
]

_C = TypeVar("_C", bound="OneBrokerCluster")


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    """Call ``check`` until it is true or ``timeout`` passes (state in other processes)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        threading.Event().wait(0.02)


def wait_registered(nameserver: ServerProcess, names: set[str]) -> None:
    """Wait until the NameServer's cluster info lists every broker in ``names``."""
    with BlockingConnection(nameserver.endpoint, timeout=5.0) as ns:

        def registered() -> bool:
            info = ns.call(RequestCode.GET_CLUSTER_INFO, m.Empty(), m.ClusterInfo)
            return names <= set(info.brokers)

        wait_until("broker registered" if len(names) == 1 else "brokers registered", registered)


def wait_for_route(
    nameserver: ServerProcess,
    topic: str,
    accept: Callable[[m.TopicRouteData], bool] = lambda route: True,
    timeout: float = 20.0,
    what: str | None = None,
) -> m.TopicRouteData:
    """Ask the NameServer until it routes ``topic`` and ``accept`` holds for the route."""
    found: list[m.TopicRouteData] = []
    with BlockingConnection(nameserver.endpoint, timeout=5.0) as ns:

        def routed() -> bool:
            try:
                route = ns.call(
                    RequestCode.GET_ROUTE_INFO_BY_TOPIC,
                    m.GetRouteInfoBody(topic=topic),
                    m.TopicRouteData,
                )
            except NoRouteError:
                return False
            found.append(route)
            return accept(route)

        wait_until(what or f"route of {topic}", routed, timeout)
    return found[-1]


def make_topic(
    admin: Admin,
    nameserver: ServerProcess,
    topic: str,
    queues: int,
    accept: Callable[[m.TopicRouteData], bool] = lambda route: True,
) -> None:
    """Create ``topic`` and wait until the NameServer routes it (and ``accept`` holds)."""
    admin.create_topic(topic, queues=queues)
    wait_for_route(nameserver, topic, accept)


def start_consumer_broker(nameserver: ServerProcess, tmp_path: Path) -> ServerProcess:
    """Start broker-a with a 2 s client expiry, a 3 s lock expiry and 0.2 s delay levels (the
    retries of failed messages, docs/PROTOCOL.md 14.2), and wait until it is registered.

    The caller stops it (and checks its log); it is stopped here if registration fails.
    """
    config = write_broker_config(
        tmp_path / "broker.json",
        client_expiry=2.0,
        lock_expiry=3.0,
        delay_levels=[0.2] * len(DELAY_LEVELS),
    )
    server = run_broker(
        tmp_path / "broker-a",
        nameserver.endpoint,
        name="broker-a",
        config=config,
        heartbeat_interval=1.0,
    )
    try:
        wait_registered(nameserver, {"broker-a"})
    except BaseException:
        server.stop()
        raise
    return server


class OneBrokerCluster:
    """A NameServer and one broker (broker-a, with the BrokerConfig fields ``config``), both
    real processes; a context manager that stops them (and checks the broker's log)."""

    def __init__(self, tmp: Path, **config: object) -> None:
        self.ns = run_nameserver()
        self.broker: ServerProcess | None = None
        try:
            path = write_broker_config(tmp / "broker.json", **config)
            self.broker = run_broker(
                tmp / "data", self.ns.endpoint, config=path, heartbeat_interval=1.0
            )
        except BaseException:
            self.stop()
            raise

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return self.ns.endpoint

    @property
    def broker_endpoint(self) -> str:
        assert self.broker is not None
        return self.broker.endpoint

    def create_topic(self, topic: str, queues: int) -> None:
        """CREATE_TOPIC with ``queues`` queues, then wait until the NameServer routes it."""
        with BlockingConnection(self.broker_endpoint, timeout=5.0) as conn:
            conn.call(
                RequestCode.CREATE_TOPIC,
                m.TopicConfig(topic=topic, read_queue_nums=queues, write_queue_nums=queues),
                m.Empty,
            )
        deadline = time.monotonic() + 10.0
        with BlockingConnection(self.endpoint, timeout=5.0) as ns:
            while True:
                try:
                    ns.call(
                        RequestCode.GET_ROUTE_INFO_BY_TOPIC,
                        m.GetRouteInfoBody(topic=topic),
                        m.TopicRouteData,
                    )
                    return
                except NoRouteError:
                    # A bounded retry on a deadline: the broker re-registers on its own.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            assert not self.broker.error_lines(), "\n".join(self.broker.log_lines())
        self.ns.stop()
