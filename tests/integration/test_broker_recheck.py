"""The broker reads its socket now and then even when no FD edge says so (BrokerServer._recheck)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import zmq.asyncio

from broker.config import BrokerConfig
from broker.server import BrokerServer
from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.transport import Connection


def test_a_broker_that_lost_its_fd_edges_still_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        context = zmq.asyncio.Context()
        server = BrokerServer(
            BrokerConfig(data_dir=str(tmp_path), bind="tcp://127.0.0.1:0"), context=context
        )
        endpoint = await server.start()
        conn: Connection | None = None
        try:
            # Every edge lost: the reader of the broker's socket is gone.
            assert server._fd is not None
            loop.remove_reader(server._fd)
            conn = Connection(context, endpoint, timeout=5.0)
            started = loop.time()
            body = m.SendMessageBody(producer_group="pg", topic="Recheck", queue_id=0)
            reply = await conn.request(RequestCode.SEND_MESSAGE, body, [b"still answered"])
            assert reply.code == ResponseCode.SUCCESS, reply
            assert loop.time() - started < 2.0  # a few rechecks, not the 5 s timeout
        finally:
            if conn is not None:
                await conn.close()
            await server.close()
            context.term()

    asyncio.run(scenario())
