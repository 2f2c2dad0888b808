"""Raw pyzmq ceilings: PUSH→PULL streams and DEALER→ROUTER req/ack, tcp loopback.

No broker and no storage: what Python and libzmq alone reach on this machine, the
ceiling the fabric's numbers are read against. Two codecs:

* ``raw``: the body is the frame; the ROUTER answers each request with a 2-byte frame
  (its reply count modulo 65536, which the DEALER checks).
* ``msgspec``: the frame is ``Msg(topic, body, properties)`` with 4 properties, encoded
  with ``msgspec.msgpack`` and decoded on the far side; the ROUTER answers with an encoded
  ``Ack(seq)``, which the DEALER decodes and checks (the seqs must run on by one).

Rows (peers-bench.md): PUSH→PULL measures end to end only (the PULL binds first, then
the PUSH sends; first send to last receive); DEALER→ROUTER measures a pipelined end to
end (window 1000 requests) and the sync round trip (one request in flight). The
ROUTERs are spawned processes stopped by their own PIDs; each also exits by itself when
the benchmark's end of its pipe closes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import msgspec
import zmq

from bench.peers.common import (
    BenchError,
    Child,
    Group,
    Job,
    Outcome,
    Ready,
    Scenario,
    check_counts,
    payload,
    time_round_trips,
)

MODULE: Final = __name__
#: Requests in flight in the pipelined req/ack run.
WINDOW: Final = 1000
DURABILITY: Final = "none: memory only, no broker, nothing stored"


class Msg(msgspec.Struct):
    topic: str
    body: bytes
    properties: dict[str, str]


class Ack(msgspec.Struct):
    seq: int


PROPERTIES: Final = {"KEYS": "order-42", "TAGS": "TagA", "UNIQ_KEY": "0" * 32, "WAIT": "true"}


def _frame_maker(codec: str, size: int) -> tuple[bytes, Any]:
    """(body, make) where make() builds the frame to send for one message."""
    body = payload(size)
    if codec == "raw":
        return body, lambda: body
    encode = msgspec.msgpack.Encoder().encode
    return body, lambda: encode(Msg("BenchTopic", body, dict(PROPERTIES)))


# ---------------------------------------------------------------------------------------
# The ROUTER servers
# ---------------------------------------------------------------------------------------


def _router_main(conn: Connection, codec: str) -> None:
    """Bind a ROUTER on a free loopback port, send its endpoint, answer requests forever.

    Exits when anything arrives on ``conn`` or it closes (the benchmark is gone).
    """

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            conn.recv()
        os._exit(0)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    # A ROUTER drops a reply it cannot queue (high-water mark reached); the client's window
    # bounds what is in flight, so no limit here: a lost reply would be a lost message.
    sock.sndhwm = sock.rcvhwm = 0
    sock.bind("tcp://127.0.0.1:0")
    conn.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    threading.Thread(target=watch, daemon=True).start()
    recv, send = sock.recv_multipart, sock.send_multipart
    if codec == "raw":
        seq = 0
        while True:  # the reply: a 2-byte frame, the request count modulo 65536
            ident, _ = recv()
            seq = (seq + 1) & 0xFFFF
            send([ident, seq.to_bytes(2, "little")])
    decode = msgspec.msgpack.Decoder(Msg).decode
    encode = msgspec.msgpack.Encoder().encode
    seq = 0
    while True:
        ident, frame = recv()
        decode(frame)
        seq += 1
        send([ident, encode(Ack(seq))])


def router_raw(conn: Connection) -> None:
    _router_main(conn, "raw")


def router_msgspec(conn: Connection) -> None:
    _router_main(conn, "msgspec")


@contextlib.contextmanager
def server(scratch: Path) -> Iterator[Mapping[str, Any]]:
    """One ROUTER process per codec; yields {"raw": endpoint, "msgspec": endpoint}."""
    started: list[Child] = []
    endpoints: dict[str, str] = {}
    try:
        for codec in ("raw", "msgspec"):
            router = Child(f"zmq ROUTER ({codec})", f"{MODULE}:router_{codec}")
            started.append(router)
            if not router.conn.poll(30.0):
                raise BenchError(f"{router.name} did not start within 30s")
            endpoints[codec] = router.conn.recv()
        yield endpoints
    finally:
        for router in started:
            router.stop("stop")


# ---------------------------------------------------------------------------------------
# Worker functions
# ---------------------------------------------------------------------------------------


def push_produce(job: Job, ready: Ready) -> Outcome:
    """PUSH ``job.count`` frames to the PULL that the consumer bound (``job.via``)."""
    assert job.via is not None, "push_produce needs the PULL's endpoint"
    body, make = _frame_maker(job.options["codec"], job.size)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.linger = int(job.timeout_s * 1000)
    sock.sndtimeo = int(job.timeout_s * 1000)
    out = Outcome()
    try:
        sock.connect(job.via["endpoint"])
        send = sock.send
        out.first = time.monotonic()
        for _ in range(job.count):
            send(make(), copy=False)
        out.last = time.monotonic()
    finally:
        sock.close()
        ctx.term()
    out.messages, out.bytes = job.count, job.count * len(body)
    return out


def pull_consume(job: Job, ready: Ready) -> Outcome:
    """Bind a PULL, say ready with its endpoint, receive ``job.count`` frames."""
    codec = job.options["codec"]
    decode = msgspec.msgpack.Decoder(Msg).decode
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.linger = 0
    out = Outcome()
    deadline = job.deadline()
    try:
        sock.bind("tcp://127.0.0.1:0")
        ready({"endpoint": sock.getsockopt_string(zmq.LAST_ENDPOINT)})
        if not sock.poll(int(job.timeout_s * 1000)):
            raise BenchError(f"no message within {job.timeout_s}s")
        sock.rcvtimeo = 1000
        out.first = time.monotonic()
        recv = sock.recv
        messages = nbytes = 0
        while messages < job.count:
            try:
                frame = recv(copy=False).bytes
            except zmq.Again:
                if time.monotonic() > deadline:
                    break
                continue
            nbytes += len(frame) if codec == "raw" else len(decode(frame).body)
            messages += 1
        out.last = time.monotonic()
        # Anything past the expected count is a mismatch too.
        if sock.poll(50):
            messages += 1
    finally:
        sock.close()
        ctx.term()
    out.messages, out.bytes = messages, nbytes
    check_counts("PULL received", messages, nbytes, job.count, job.size)
    return out


class _Client:
    """A DEALER connected to the scenario's ROUTER, sending and checking replies."""

    def __init__(self, job: Job) -> None:
        self.codec = job.options["codec"]
        self.body, self.make = _frame_maker(self.codec, job.size)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvhwm = 0  # the window bounds the replies in flight
        self.sock.rcvtimeo = int(job.timeout_s * 1000)
        self.sock.connect(job.params[self.codec])
        self.decode = msgspec.msgpack.Decoder(Ack).decode
        self.last_seq: int | None = None

    def check(self, reply: bytes) -> None:
        """The ROUTER numbers its replies: they must run on by one (none lost)."""
        if self.codec == "raw":
            seq, wrap = int.from_bytes(reply, "little"), 0xFFFF
        else:
            seq, wrap = self.decode(reply).seq, -1
        last = self.last_seq
        if last is not None and seq != (last + 1) & wrap:
            raise BenchError(f"reply seq {seq} after {last}: a request or reply was lost")
        self.last_seq = seq

    def recv(self) -> bytes:
        try:
            return self.sock.recv()
        except zmq.Again:
            raise BenchError("the ROUTER did not answer in time") from None

    def round_trip(self) -> None:
        self.sock.send(self.make(), copy=False)
        self.check(self.recv())

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def reqack_pipelined(job: Job, ready: Ready) -> Outcome:
    """``job.count`` requests with up to WINDOW in flight; first send to last reply."""
    client = _Client(job)
    out = Outcome()
    try:
        client.round_trip()  # connected, and the ROUTER's seq known
        make, check, recv, send = client.make, client.check, client.recv, client.sock.send
        sent = replies = 0
        out.first = time.monotonic()
        while replies < job.count:
            while sent < job.count and sent - replies < WINDOW:
                send(make(), copy=False)
                sent += 1
            check(recv())
            replies += 1
        out.last = time.monotonic()
    finally:
        client.close()
    out.messages, out.bytes = replies, replies * len(client.body)
    check_counts("req/ack replies", out.messages, out.bytes, job.count, job.size)
    return out


def reqack_sync(job: Job, ready: Ready) -> Outcome:
    """One request in flight: ``job.samples`` round trips (capped at ``job.cap_s``)."""
    client = _Client(job)
    out = Outcome()
    try:
        time_round_trips(job, out, client.round_trip, warmup=max(job.warmup, 1))
    finally:
        client.close()
    n = len(out.latencies_ns)
    out.messages, out.bytes = n, n * len(client.body)
    return out


# ---------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------


def _row(kind: str, codec: str, label: str, **fields: Any) -> Scenario:
    """A ``zmq_<kind>_<codec>`` row: no destination to prepare, twice the messages."""
    return Scenario(
        key=f"zmq_{kind}_{codec}",
        peer="zmq",
        label=label,
        durability=DURABILITY,
        module=MODULE,
        prepare=None,
        cleanup=None,
        count_factor=2.0,
        options={"codec": codec},
        **fields,
    )


def _push(codec: str, label: str) -> Scenario:
    return _row(
        "push",
        codec,
        label,
        workloads=("e2e",),
        produce="push_produce",
        consume="pull_consume",
    )


def _reqack(codec: str, label: str) -> Scenario:
    return _row(
        "reqack",
        codec,
        label,
        workloads=("e2e", "sync"),
        e2e_solo="reqack_pipelined",
        sync="reqack_sync",
    )


def groups() -> list[Group]:
    return [
        Group(
            name="zmq",
            server=server,
            scenarios=[
                _push("raw", "ZeroMQ PUSH→PULL, tcp loopback, raw frame"),
                _push("msgspec", "ZeroMQ PUSH→PULL, tcp, msgspec Struct encode/decode"),
                _reqack(
                    "raw",
                    f"ZeroMQ DEALER→ROUTER req/ack, tcp, raw (e2e: pipelined, window {WINDOW})",
                ),
                _reqack("msgspec", "ZeroMQ DEALER→ROUTER req/ack, tcp, msgspec"),
            ],
        )
    ]


def missing() -> list[str]:
    """What this peer lacks on this machine (nothing: pyzmq and msgspec are dependencies)."""
    return []


def versions() -> dict[str, str | None]:
    return {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "msgspec": msgspec.__version__}
