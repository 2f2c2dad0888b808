"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from fabric import Producer
from fabric.admin import Admin
from fabric.testing import ServerProcess
from tests.integration.cluster import start_consumer_broker


@pytest.fixture(scope="module")
def fuzz_socket(fuzz_target: ServerProcess) -> Iterator[zmq.Socket[bytes]]:
    """A raw DEALER connected to the module's ``fuzz_target`` server (fuzz tests)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = 5000  # every wait has a deadline, even a send
    sock.connect(fuzz_target.endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


# Consumer tests (test_push_consumer.py, test_retry_dlq.py): one registered broker with
# short client and lock expiries and delay levels. A module that needs other brokers
# defines its own ``broker`` (and ``admin``, ``producer``), which take precedence.


@pytest.fixture
def broker(nameserver: ServerProcess, tmp_path: Path) -> Iterator[ServerProcess]:
    """broker-a, registered: see :func:`tests.integration.cluster.start_consumer_broker`."""
    server = start_consumer_broker(nameserver, tmp_path)
    try:
        yield server
    finally:
        server.stop()
    assert not server.error_lines(), "\n".join(server.log_lines())


@pytest.fixture
def admin(nameserver: ServerProcess, broker: ServerProcess) -> Iterator[Admin]:
    with Admin(nameserver.endpoint, timeout=5.0) as a:
        yield a


@pytest.fixture
def producer(nameserver: ServerProcess, broker: ServerProcess) -> Iterator[Producer]:
    with Producer("pg", nameservers=nameserver.endpoint) as p:
        yield p
