"""RabbitMQ (Debian's rabbitmq-server, pika): durable classic queue, persistent messages.

Server: a node of its own (``peers<port>@localhost``) started here with every file in a
temporary directory: config, Mnesia and message store, logs, the Erlang cookie (``HOME``)
and no plugins. AMQP, Erlang distribution and an ``epmd`` of its own (started first, in
the foreground, and passed with ``ERL_EPMD_PORT``; the VM runs with ``-start_epmd
false``) all listen on 127.0.0.1 only, on free ports. The node is started through
RabbitMQ's own ``rabbitmq-server`` script (which turns our SIGTERM into a clean stop of
the VM) and stopped by its PID, then epmd by its.

Workloads (peers-bench.md):

* produce: pika ``SelectConnection``, publisher confirms, at most 2000 unconfirmed
  (window), persistent messages (delivery_mode 2) into a durable classic queue.
* consume: ``basic_qos(prefetch_count=1000)``, manual acks, ``multiple=True`` every 100
  messages and at the last; afterwards the queue must be empty (an unacked message would
  have been requeued when the channel closed).
* sync latency: ``BlockingConnection`` with confirms: each ``basic_publish`` returns once
  the broker confirmed it.

Durability: for a persistent message in a durable queue the confirm comes after the
message store's fsync.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final

import pika
import pika.channel
import pika.spec

from bench.peers.common import (
    BenchError,
    Group,
    Job,
    Outcome,
    Ready,
    check_counts,
    check_equal,
    debian_version,
    free_port,
    missing_binary,
    payload,
    port_open,
    python_version_of,
    serving,
    single_row,
    time_round_trips,
    wait_idle,
)

MODULE: Final = __name__
SERVER_SCRIPT: Final = "/usr/lib/rabbitmq/bin/rabbitmq-server"
WINDOW: Final = 2000
PREFETCH: Final = 1000
ACK_EVERY: Final = 100
PERSISTENT: Final = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _beam_pid(script_pid: int) -> int:
    """The Erlang VM the rabbitmq-server script started (its child), else the script."""
    for child in _children(script_pid):
        try:
            with open(f"/proc/{child}/comm", encoding="ascii") as fh:
                if fh.read().strip().startswith("beam"):
                    return child
        except OSError:
            continue
    return script_pid


@contextlib.contextmanager
def server(scratch: Path) -> Iterator[Mapping[str, Any]]:
    scratch.mkdir(parents=True, exist_ok=True)
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    (scratch / "rabbitmq-env.conf").write_text("", encoding="utf-8")
    (scratch / "enabled_plugins").write_text("[].\n", encoding="utf-8")
    (scratch / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{port}\n"
        "loopback_users.guest = true\n"
        "log.console = false\n"
        f"log.file = {scratch / 'log' / 'rabbit.log'}\n",
        encoding="utf-8",
    )
    env = {
        "HOME": str(scratch),
        "RABBITMQ_CONF_ENV_FILE": str(scratch / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(scratch / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(scratch / "enabled_plugins"),
        "RABBITMQ_NODENAME": f"peers{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(scratch / "mnesia"),
        "RABBITMQ_LOG_BASE": str(scratch / "log"),
        "RABBITMQ_PID_FILE": str(scratch / "rabbit.pid"),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
            "-start_epmd false -kernel inet_dist_use_interface {127,0,0,1}"
        ),
    }
    epmd_args = ["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"]
    epmd = serving(
        "epmd", epmd_args, scratch / "epmd.log", lambda: port_open(epmd_port), idle=False
    )
    with (
        epmd,
        serving(
            "rabbitmq-server",
            [SERVER_SCRIPT],
            scratch / "rabbitmq.log",
            lambda: _blocking(port).close() is None,
            env=env,
            idle=False,  # the script is idle; the VM it started is what must settle
        ) as node,
    ):
        wait_idle(_beam_pid(node.pid), "rabbitmq-server (beam.smp)")
        yield {"host": "127.0.0.1", "port": port}


def _parameters(port: int) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1", port=port, connection_attempts=1, socket_timeout=10
    )


def _blocking(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(_parameters(port))


def _port(job: Job) -> int:
    return int(job.params["port"])


def _queue_depth(job: Job) -> int:
    conn = _blocking(_port(job))
    try:
        ok = conn.channel().queue_declare(job.dest, passive=True)
        return int(ok.method.message_count)
    finally:
        conn.close()


def prepare(job: Job, ready: Ready) -> Outcome:
    conn = _blocking(_port(job))
    try:
        conn.channel().queue_declare(job.dest, durable=True, arguments={"x-queue-type": "classic"})
    finally:
        conn.close()
    return Outcome()


def cleanup(job: Job, ready: Ready) -> Outcome:
    conn = _blocking(_port(job))
    try:
        conn.channel().queue_delete(job.dest)
    finally:
        conn.close()
    return Outcome()


class _Confirms:
    """Publisher confirms: how many tags a confirm covers (``multiple`` or single)."""

    def __init__(self) -> None:
        self.watermark = 0  # every tag up to here is confirmed
        self.singles: set[int] = set()  # confirmed tags above the watermark

    def confirm(self, tag: int, multiple: bool) -> int:
        if not multiple:
            if tag <= self.watermark or tag in self.singles:
                return 0
            self.singles.add(tag)
            return 1
        if tag <= self.watermark:
            return 0
        covered = [t for t in self.singles if t <= tag]
        for t in covered:
            self.singles.discard(t)
        newly = tag - self.watermark - len(covered)
        self.watermark = tag
        return newly


class _Async:
    """One SelectConnection run: open a channel, let ``on_channel`` drive, stop on close."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.error: str | None = None
        self.channel: pika.channel.Channel | None = None
        self.conn = pika.SelectConnection(
            _parameters(_port(job)),
            on_open_callback=self._opened,
            on_open_error_callback=self._open_failed,
            on_close_callback=lambda conn, reason: conn.ioloop.stop(),
        )

    def _opened(self, conn: Any) -> None:
        conn.channel(on_open_callback=self._channel_opened)

    def _open_failed(self, conn: Any, reason: Any) -> None:
        self.error = f"connection failed: {reason!r}"
        conn.ioloop.stop()

    def _channel_opened(self, channel: pika.channel.Channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._channel_closed)
        self.on_channel(channel)

    def _channel_closed(self, channel: Any, reason: Any) -> None:
        if not self.done():
            self.fail(f"channel closed: {reason!r}")
        elif self.conn.is_open:
            self.conn.close()

    def on_channel(self, channel: pika.channel.Channel) -> None:
        raise NotImplementedError

    def done(self) -> bool:
        raise NotImplementedError

    def fail(self, text: str) -> None:
        if self.error is None:
            self.error = text
        if self.conn.is_open:
            self.conn.close()
        else:
            self.conn.ioloop.stop()

    def finish(self) -> None:
        """Close the channel (what was sent on it goes first), then the connection."""
        if self.channel is not None and self.channel.is_open:
            self.channel.close()
        elif self.conn.is_open:
            self.conn.close()

    def run(self) -> None:
        self.conn.ioloop.call_later(
            self.job.timeout_s, lambda: self.fail(f"timed out after {self.job.timeout_s}s")
        )
        self.conn.ioloop.start()
        if self.error is not None:
            raise BenchError(self.error)


class _Producer(_Async):
    def __init__(self, job: Job) -> None:
        super().__init__(job)
        self.body = payload(job.size)
        self.out = Outcome()
        self.confirms = _Confirms()
        self.published = self.acked = self.nacked = 0

    def done(self) -> bool:
        return self.acked + self.nacked >= self.job.count

    def on_channel(self, channel: pika.channel.Channel) -> None:
        channel.confirm_delivery(ack_nack_callback=self._confirmed, callback=self._start)

    def _start(self, frame: Any) -> None:
        self.out.first = time.monotonic()
        self._pump()

    def _pump(self) -> None:
        channel = self.channel
        assert channel is not None
        publish, dest, body, count = channel.basic_publish, self.job.dest, self.body, self.job.count
        confirmed = self.acked + self.nacked
        while self.published < count and self.published - confirmed < WINDOW:
            publish("", dest, body, PERSISTENT)
            self.published += 1

    def _confirmed(self, frame: Any) -> None:
        method = frame.method
        n = self.confirms.confirm(method.delivery_tag, method.multiple)
        if isinstance(method, pika.spec.Basic.Nack):
            self.nacked += n
        else:
            self.acked += n
        if self.done():
            self.out.last = time.monotonic()
            self.finish()
        else:
            self._pump()


def produce(job: Job, ready: Ready) -> Outcome:
    """Publish ``job.count`` persistent messages, confirms window WINDOW."""
    p = _Producer(job)
    p.run()
    check_equal("messages nacked by the broker", p.nacked, 0)
    check_equal("messages confirmed", p.acked, job.count)
    out = p.out
    out.messages, out.bytes = p.acked, p.acked * len(p.body)
    if not job.e2e:  # with a consumer draining the queue, the consume side checks
        depth = _queue_depth(job)
        check_counts("queue depth after publishing", depth, depth * job.size, job.count, job.size)
    return out


class _Consumer(_Async):
    def __init__(self, job: Job, ready: Ready) -> None:
        super().__init__(job)
        self.ready = ready
        self.out = Outcome()

    def done(self) -> bool:
        return self.out.messages >= self.job.count

    def on_channel(self, channel: pika.channel.Channel) -> None:
        channel.basic_qos(prefetch_count=PREFETCH, callback=self._qos_set)

    def _qos_set(self, frame: Any) -> None:
        assert self.channel is not None
        self.out.first = time.monotonic()
        self.channel.basic_consume(
            self.job.dest,
            self._message,
            auto_ack=False,
            callback=lambda frame: self.ready(None),
        )

    def _message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        out = self.out
        out.messages += 1
        out.bytes += len(body)
        if out.messages % ACK_EVERY == 0 or out.messages == self.job.count:
            channel.basic_ack(method.delivery_tag, multiple=True)
            if out.messages == self.job.count:
                out.last = time.monotonic()
                self.finish()


def consume(job: Job, ready: Ready) -> Outcome:
    """Consume ``job.count`` messages (prefetch PREFETCH, ack multiple every ACK_EVERY)."""
    c = _Consumer(job, ready)
    c.run()
    out = c.out
    check_counts("consumed", out.messages, out.bytes, job.count, job.size)
    # The channel is closed: an unacked message is back in the queue.
    check_equal("messages left in the queue (unacked or extra)", _queue_depth(job), 0)
    return out


def sync_latency(job: Job, ready: Ready) -> Outcome:
    """Publish with confirms on a BlockingChannel: one message in flight."""
    body = payload(job.size)
    out = Outcome()
    conn = _blocking(_port(job))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        # basic_publish raises if the broker nacks.
        publish = partial(channel.basic_publish, "", job.dest, body, PERSISTENT, mandatory=True)
        time_round_trips(job, out, publish)
    finally:
        conn.close()
    out.messages = _queue_depth(job)
    out.bytes = out.messages * job.size
    sent = job.warmup + len(out.latencies_ns)
    check_counts("queue depth after confirmed publishes", out.messages, out.bytes, sent, job.size)
    return out


def groups() -> list[Group]:
    return single_row(
        "rabbitmq",
        server,
        MODULE,
        label=(
            "RabbitMQ: durable classic queue, persistent, async confirms "
            f"(window {WINDOW}), prefetch {PREFETCH}, ack multiple every {ACK_EVERY}"
        ),
        durability="persistent messages, durable queue: confirm after the message store's fsync",
        sync_factor=0.25,
    )


def missing() -> list[str]:
    out = []
    if not os.access(SERVER_SCRIPT, os.X_OK):
        out.append(f"no {SERVER_SCRIPT} (Debian package rabbitmq-server)")
    return out + missing_binary("epmd", "erlang-base")


def versions() -> dict[str, str | None]:
    return {
        "rabbitmq-server": debian_version("rabbitmq-server"),
        "erlang": debian_version("erlang-base"),
        "pika": python_version_of("pika"),
    }
