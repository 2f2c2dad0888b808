"""Shared fixtures: real server processes on loopback port 0, clients, and a loguru ERROR guard."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from loguru import logger

from fabric.testing import ServerProcess, run_nameserver
from fabric.transport import BlockingConnection
from tests.servers import started_servers

# Libraries log through loguru but stay disabled until an entry point enables them.
_PACKAGES = ("fabric", "nameserver")


@pytest.fixture(autouse=True)
def _no_error_logs() -> Iterator[None]:
    """Fail a test when in-process fabric or nameserver code logs at ERROR or above.

    The tornado ``ExpectLog`` idea: background loops log instead of raising, so an ERROR
    line is how they report a bug. Other packages' loggers are left alone.
    """
    errors: list[str] = []
    sink = logger.add(
        lambda message: errors.append(str(message)),
        level="ERROR",
        filter=lambda record: (record["name"] or "").split(".")[0] in _PACKAGES,
    )
    for name in _PACKAGES:
        logger.enable(name)
    try:
        yield
    finally:
        for name in _PACKAGES:
            logger.disable(name)
        logger.remove(sink)
    assert not errors, "unexpected ERROR log lines:\n" + "".join(errors)


@pytest.fixture
def nameserver_factory() -> Iterator[Callable[..., ServerProcess]]:
    """Start NameServer processes with custom options; all are stopped after the test.

    Each stopped server must not have logged an ERROR line or a traceback.
    """
    with started_servers(run_nameserver) as start:
        yield start


@pytest.fixture
def nameserver(nameserver_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A fresh ``fabric nameserver`` process on 127.0.0.1, port 0."""
    return nameserver_factory()


@pytest.fixture
def ns_client(nameserver: ServerProcess) -> Iterator[BlockingConnection]:
    """A blocking connection to the ``nameserver`` fixture."""
    with BlockingConnection(nameserver.endpoint, timeout=5.0) as client:
        yield client
