"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from fabric.testing import ServerProcess


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
