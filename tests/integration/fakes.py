"""A fake NameServer and brokers on real loopback ROUTER sockets, for fault tests.

A plain module (pytest collects only ``test_*.py``): import it as
``tests.integration.fakes``. Real brokers cannot be told to answer SYSTEM_BUSY, to never
answer, or to vanish mid-request, on demand; :class:`FakeCluster` simulates such faults
(STYLE 12: fakes only to simulate faults). One background thread owns every socket.
A test module subclasses it and says in :meth:`FakeCluster.serve_broker` how a broker
answers a request; ``with Subclass() as fake:`` stops it on leaving.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, TypeVar

import zmq

from fabric.protocol import (
    Request,
    RequestCode,
    ResponseCode,
    encode_reply,
    parse_request,
    request_code,
)
from fabric.protocol import messages as m
from fabric.protocol.frames import Buffer

__all__ = ["Crash", "FakeCluster", "Frames"]

#: The frames of one reply (without the identity frame).
Frames = list[Buffer]


class Crash(Exception):
    """Raised by :meth:`FakeCluster.serve_broker`: the broker crashes with the request."""


_F = TypeVar("_F", bound="FakeCluster")


class FakeCluster:
    """A NameServer ("ns") and brokers "a" and "b" serving topic "T", on one thread.

    ``endpoints`` maps "ns", "a" and "b" to their addresses. The NameServer answers
    GET_ROUTE_INFO_BY_TOPIC (every topic is served by both brokers, ``queues`` queues
    each), GET_CLUSTER_INFO when ``cluster_info`` is set, and NO_ROUTE to anything else.
    """

    #: Read and write queues of each broker.
    queues: ClassVar[int] = 2
    #: Whether the NameServer answers GET_CLUSTER_INFO (else NO_ROUTE, as to the rest).
    cluster_info: ClassVar[bool] = False

    def __init__(self) -> None:
        self.endpoints: dict[str, str] = {}
        self._ctx = zmq.Context()
        self._control = f"inproc://stop-{id(self)}"
        # The caller's end of the stop signal belongs to the caller's thread.
        self._stopper = self._ctx.socket(zmq.PAIR)
        self._stopper.linger = 0
        self._stopper.connect(self._control)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-cluster", daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def serve_broker(self, name: str, request: Request, bodies: list[bytes]) -> Frames | None:
        """The reply frames broker ``name`` sends to ``request`` (None: it does not reply).

        Raise :class:`Crash` to crash the broker: its socket is closed, nothing listens any
        more, and its connections drop.
        """
        raise NotImplementedError

    def route(self) -> m.TopicRouteData:
        names = ("a", "b")
        return m.TopicRouteData(
            queue_datas=[
                m.QueueData(
                    broker_name=n, read_queue_nums=self.queues, write_queue_nums=self.queues, perm=6
                )
                for n in names
            ],
            broker_datas=[
                m.BrokerData(cluster_name="c", broker_name=n, broker_addrs={0: self.endpoints[n]})
                for n in names
            ],
        )

    def __enter__(self: _F) -> _F:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopper.send(b"stop")
        self._thread.join(10)
        self._stopper.close(linger=0)
        self._ctx.term()

    def _run(self) -> None:
        # Every socket made here belongs to this thread.
        ctx = self._ctx
        control = ctx.socket(zmq.PAIR)
        control.linger = 0
        control.bind(self._control)
        sockets: dict[zmq.Socket[bytes], str] = {}
        for name in ("ns", "a", "b"):
            s = ctx.socket(zmq.ROUTER)
            s.linger = 0
            port = s.bind_to_random_port("tcp://127.0.0.1")
            self.endpoints[name] = f"tcp://127.0.0.1:{port}"
            sockets[s] = name
        poller = zmq.Poller()
        poller.register(control, zmq.POLLIN)
        for s in sockets:
            poller.register(s, zmq.POLLIN)
        self._ready.set()
        try:
            while True:
                events = dict(poller.poll())
                if control in events:
                    return
                for s, name in list(sockets.items()):
                    if s in events and not self._serve(s, name):
                        # Crashed: the connections drop, and nothing listens any more.
                        poller.unregister(s)
                        del sockets[s]
                        s.close(linger=0)
        finally:
            for s in [*sockets, control]:
                s.close(linger=0)

    def _serve(self, sock: zmq.Socket[bytes], name: str) -> bool:
        """Answer one request on ``sock``; False when the broker crashed."""
        identity, *frames = sock.recv_multipart()
        request, bodies = parse_request(frames)
        if name == "ns":
            reply: Frames | None = self._nameserver_reply(request)
        else:
            try:
                reply = self.serve_broker(name, request, [bytes(b) for b in bodies])
            except Crash:
                return False
        if reply is not None:
            sock.send_multipart([identity, *reply])
        return True

    def _nameserver_reply(self, request: Request) -> Frames:
        rid, code = request.request_id, request_code(request)
        if code is RequestCode.GET_ROUTE_INFO_BY_TOPIC:
            return encode_reply(rid, ResponseCode.SUCCESS, self.route())
        if code is RequestCode.GET_CLUSTER_INFO and self.cluster_info:
            route = self.route()
            info = m.ClusterInfo(
                brokers={b.broker_name: b for b in route.broker_datas},
                clusters={"c": ["a", "b"]},
            )
            return encode_reply(rid, ResponseCode.SUCCESS, info)
        return encode_reply(rid, ResponseCode.NO_ROUTE)
