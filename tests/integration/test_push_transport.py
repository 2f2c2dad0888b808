"""Connection's push hook: frames with Flag.PUSH go to ``on_push``, never to a waiting request."""

from __future__ import annotations

import asyncio

import msgspec
import zmq
import zmq.asyncio

from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.protocol.codes import Flag
from fabric.protocol.frames import encode_reply, parse_request
from fabric.transport import Connection, bind_router

_encoder = msgspec.msgpack.Encoder()


def push_frames(
    code: RequestCode, stream_id: int, body: msgspec.Struct, *extra: bytes
) -> list[bytes]:
    flags = int(Flag.RESPONSE | Flag.PUSH)
    return [_encoder.encode((int(code), 1, stream_id, flags, "", body)), *extra]


def test_pushes_reach_on_push_and_replies_their_waiters() -> None:
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        router, endpoint = bind_router(ctx, "tcp://127.0.0.1:0")
        pushes: list[tuple[int, int, object, list[object]]] = []
        got_push = asyncio.Event()

        def on_push(code: int, stream_id: int, body: msgspec.Raw, frames: list[object]) -> None:
            pushes.append((code, stream_id, msgspec.msgpack.decode(body), frames))
            got_push.set()

        conn = Connection(ctx, endpoint, timeout=5.0, on_push=on_push)
        try:
            body = m.ConsumerGroupBody(consumer_group="g")
            call = asyncio.ensure_future(
                conn.call(RequestCode.GET_CONSUMER_LIST_BY_GROUP, body, m.ConsumerListReply)
            )
            identity, *frames = await asyncio.wait_for(router.recv_multipart(), 5.0)
            request, _ = parse_request(frames)
            # A push that reuses the request's id as its stream id must not answer it.
            push = push_frames(
                RequestCode.PUSH_MESSAGES,
                request.request_id,
                m.PushBody(next_offset=3, max_offset=3),
                b"record-1",
                b"record-2",
            )
            await router.send_multipart([identity, *push])
            await asyncio.wait_for(got_push.wait(), 5.0)
            assert not call.done()
            reply = encode_reply(
                request.request_id, ResponseCode.SUCCESS, m.ConsumerListReply(client_ids=["a"])
            )
            await router.send_multipart([identity, *reply])
            assert (await asyncio.wait_for(call, 5.0)).client_ids == ["a"]
            code, stream_id, decoded, extra = pushes[0]
            assert (code, stream_id) == (RequestCode.PUSH_MESSAGES, request.request_id)
            assert decoded == {"next_offset": 3, "max_offset": 3}
            assert extra == [b"record-1", b"record-2"]
        finally:
            await conn.close()
            router.close(linger=0)
            ctx.term()

    asyncio.run(main())


def test_pushes_without_a_hook_are_dropped() -> None:
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        router, endpoint = bind_router(ctx, "tcp://127.0.0.1:0")
        conn = Connection(ctx, endpoint, timeout=5.0)
        try:
            call = asyncio.ensure_future(conn.request(RequestCode.LIST_TOPICS, m.Empty()))
            identity, *frames = await asyncio.wait_for(router.recv_multipart(), 5.0)
            request, _ = parse_request(frames)
            notify = push_frames(
                RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, 0, m.ConsumerGroupBody(consumer_group="g")
            )
            await router.send_multipart([identity, *notify])
            reply = encode_reply(
                request.request_id, ResponseCode.SUCCESS, m.TopicConfigList(topics=[])
            )
            await router.send_multipart([identity, *reply])
            assert (await asyncio.wait_for(call, 5.0)).ok
        finally:
            await conn.close()
            router.close(linger=0)
            ctx.term()

    asyncio.run(main())
