"""The C client of examples/clients/c against real ``fabric nameserver`` and broker processes.

The programs are built with ``make`` into a temporary directory, then messages go from C
to Python and from Python to C intact: plain, 1 MiB (raw and zlib-compressed), binary
with zero bytes, UTF-8 in tags, keys and properties, and oneway; a bad topic name prints
the server's error. Without gcc, make or the libraries the tests skip, except under
``CI=true``, where they must run (``.ci/run`` installs the packages).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from fabric import Message, MessageExt, MessageQueue, NoRouteError, Producer, PullConsumer
from fabric.admin import Admin
from fabric.protocol import RequestCode
from fabric.protocol import messages as m
from fabric.testing import ServerProcess, run_broker, run_nameserver, write_broker_config
from fabric.transport import BlockingConnection

C_DIR = Path(__file__).resolve().parents[2] / "examples" / "clients" / "c"
IN_CI = os.environ.get("CI") == "true"
BROKER = "broker-a"
#: Seconds a C program may run; its own requests time out after 3 s.
RUN_TIMEOUT = 30.0
ONE_MIB = 1024 * 1024
SEND_LINE = re.compile(
    r"^(?P<status>SEND_OK) msg_id=(?P<msg_id>[0-9A-F]{32}) broker=(?P<broker>\S+) "
    r"queue=(?P<queue>\d+) offset=(?P<offset>\d+)$"
)
ONEWAY_LINE = re.compile(
    r"^ONEWAY msg_id=(?P<msg_id>[0-9A-F]{32}) broker=(?P<broker>\S+) queue=(?P<queue>\d+)$"
)
#: UTF-8 beyond ASCII: Latin-1, Cyrillic, CJK and an astral-plane emoji.
TAG = "Tåg-ключ-标签-🚀"
KEYS = ["order-42", "ключ 2", "キー=3"]
PROPS = {"région": "Île-de-France", "emoji🚀": "✓ done", "empty": "", "eq": "c=d=e"}


# ---------------------------------------------------------------------------------------
# Building the programs
# ---------------------------------------------------------------------------------------


def _unavailable(reason: str) -> NoReturn:
    """Skip on a dev machine without the toolchain; fail under CI=true."""
    if IN_CI:
        pytest.fail(f"CI=true and the C client cannot be built: {reason}")
    pytest.skip(
        f"C client not built: {reason} (apt-get install gcc make pkg-config "
        "libzmq3-dev libmsgpack-dev zlib1g-dev)"
    )


@dataclass(frozen=True)
class Programs:
    send: str
    pull: str


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    """fabric-send and fabric-pull, built with make into a temporary directory."""
    missing = [tool for tool in ("gcc", "make") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"{', '.join(missing)} not on PATH")
    out = tmp_path_factory.mktemp("c-client")
    proc = subprocess.run(
        ["make", "-C", str(C_DIR), f"O={out}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        headers = re.search(r"(zmq|msgpack|zlib)\.h: No such file", proc.stderr)
        if headers is not None:
            _unavailable(f"{headers.group(1)}.h not found")
        pytest.fail(f"make failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return Programs(send=str(out / "fabric-send"), pull=str(out / "fabric-pull"))


# ---------------------------------------------------------------------------------------
# Servers, topics and helpers
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fabric:
    nameserver: ServerProcess
    broker: ServerProcess

    @property
    def ns(self) -> str:
        return self.nameserver.endpoint


def _retry_until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Call ``check`` until it is true; a bounded retry on a deadline.

    A broker registers with the NameServer after its READY line, and again after a topic
    change: there is nothing to wait on but the NameServer's answer.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        threading.Event().wait(0.02)


def _routed(ns: BlockingConnection, topic: str) -> bool:
    try:
        route = ns.call(
            RequestCode.GET_ROUTE_INFO_BY_TOPIC, m.GetRouteInfoBody(topic=topic), m.TopicRouteData
        )
    except NoRouteError:
        return False
    return any(q.broker_name == BROKER for q in route.queue_datas)


@pytest.fixture(scope="module")
def fabric_servers(
    programs: Programs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fabric]:
    """One NameServer and one broker (4 queues per topic) for the module."""
    data = tmp_path_factory.mktemp("c-client-broker")
    config = write_broker_config(data / "broker.json")
    with run_nameserver() as ns:
        with run_broker(
            data / "store", ns.endpoint, name=BROKER, config=config, heartbeat_interval=1.0
        ) as broker:
            with BlockingConnection(ns.endpoint, timeout=5.0) as conn:

                def registered() -> bool:
                    info = conn.call(RequestCode.GET_CLUSTER_INFO, m.Empty(), m.ClusterInfo)
                    return 0 in getattr(info.brokers.get(BROKER), "broker_addrs", {})

                _retry_until(f"{BROKER} not registered", registered)
            yield Fabric(ns, broker)
            assert broker.alive, "\n".join(broker.log_lines())
        assert not broker.error_lines(), "\n".join(broker.log_lines())
    assert not ns.error_lines(), "\n".join(ns.log_lines())


@pytest.fixture
def topic(fabric_servers: Fabric, request: pytest.FixtureRequest) -> str:
    """A fresh topic with 4 queues on the broker, routed by the NameServer."""
    name = "C" + re.sub(r"[^A-Za-z0-9]", "", request.node.name)[:100]
    with Admin(fabric_servers.ns, timeout=5.0) as admin:
        admin.create_topic(name, queues=4, broker=BROKER)
    with BlockingConnection(fabric_servers.ns, timeout=5.0) as conn:
        _retry_until(f"{name} not routed", lambda: _routed(conn, name))
    return name


@pytest.fixture
def producer(fabric_servers: Fabric) -> Iterator[Producer]:
    with Producer("py-producer", nameservers=fabric_servers.ns) as p:
        yield p


@pytest.fixture
def consumer(fabric_servers: Fabric) -> Iterator[PullConsumer]:
    with PullConsumer("py-consumer", nameservers=fabric_servers.ns) as c:
        yield c


def run_c(
    program: str, *args: str, stdin: bytes = b"", expect_status: int = 0
) -> subprocess.CompletedProcess[bytes]:
    """Run a C program with a timeout; check its exit status."""
    proc = subprocess.run(
        [program, *args], input=stdin, capture_output=True, timeout=RUN_TIMEOUT, check=False
    )
    assert proc.returncode == expect_status, (
        f"{Path(program).name} {' '.join(args)} exited {proc.returncode}, "
        f"expected {expect_status}:\n{proc.stdout[:2000]!r}\n{proc.stderr.decode(errors='replace')}"
    )
    return proc


@dataclass(frozen=True)
class Sent:
    msg_id: str
    queue: MessageQueue
    offset: int


def c_send(
    programs: Programs, fabric: Fabric, topic: str, *args: str, stdin: bytes = b""
) -> list[Sent]:
    """fabric-send through the NameServer; the SEND_OK lines, parsed."""
    proc = run_c(programs.send, "--nameserver", fabric.ns, "--topic", topic, *args, stdin=stdin)
    sent = []
    for line in proc.stdout.decode("utf-8").splitlines():
        match = SEND_LINE.match(line)
        assert match is not None, line
        mq = MessageQueue(topic, match["broker"], int(match["queue"]))
        sent.append(Sent(match["msg_id"], mq, int(match["offset"])))
    return sent


def c_pull(
    programs: Programs, fabric: Fabric, topic: str, queue: int, *args: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """fabric-pull through the NameServer; its message objects and its result object."""
    proc = run_c(
        programs.pull, "--nameserver", fabric.ns, "--topic", topic, "--queue", str(queue), *args
    )
    lines = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert lines and lines[-1]["type"] == "result", lines
    assert all(obj["type"] == "message" for obj in lines[:-1]), lines
    return lines[:-1], lines[-1]


def body_of(obj: dict[str, Any]) -> bytes:
    body = base64.b64decode(obj["body_base64"], validate=True)
    assert len(body) == obj["body_len"]
    return body


def py_pull(consumer: PullConsumer, sent: list[Sent], timeout: float = 10.0) -> list[MessageExt]:
    """The messages ``sent`` listed, pulled from their queues (long polling, bounded)."""
    found: dict[str, MessageExt] = {}
    deadline = time.monotonic() + timeout
    for mq in sorted({s.queue for s in sent}):
        pending = {s.msg_id for s in sent if s.queue == mq}
        offset = min(s.offset for s in sent if s.queue == mq)
        while pending:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(pending)} messages of {mq} did not arrive"
            res = consumer.pull(mq, offset, max_nums=32, timeout=min(remaining, 5.0))
            for msg in res.messages:
                found[msg.msg_id] = msg
                pending.discard(msg.msg_id)
            offset = res.next_offset
    return [found[s.msg_id] for s in sent]


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------------------------------
# C -> Python
# ---------------------------------------------------------------------------------------


def utf8_args() -> list[str]:
    args = ["--tag", TAG]
    for key in KEYS:
        args += ["--key", key]
    for name, value in PROPS.items():
        args += ["--prop", f"{name}={value}"]
    return args


def test_c_send_is_pulled_intact_by_python(
    programs: Programs, fabric_servers: Fabric, topic: str, consumer: PullConsumer
) -> None:
    sent = c_send(programs, fabric_servers, topic, "--count", "8", "hello from C")
    assert len(sent) == 8
    assert len({s.msg_id for s in sent}) == 8
    assert len({s.queue for s in sent}) == 4  # round robin over the 4 write queues
    for msg, s in zip(py_pull(consumer, sent), sent, strict=True):
        assert msg.body == b"hello from C"
        assert (msg.msg_id, msg.queue_id, msg.queue_offset) == (
            s.msg_id,
            s.queue.queue_id,
            s.offset,
        )
        assert (msg.tags, msg.keys, msg.properties) == ("", [], {})


def test_c_send_utf8_tags_keys_properties(
    programs: Programs, fabric_servers: Fabric, topic: str, consumer: PullConsumer
) -> None:
    body = "Grüße, 世界 🚀".encode()
    sent = c_send(programs, fabric_servers, topic, *utf8_args(), "--count", "2", stdin=body)
    for msg in py_pull(consumer, sent):
        assert msg.body == body
        assert msg.tags == TAG
        assert msg.keys == KEYS
        assert msg.properties == PROPS


@pytest.mark.parametrize(
    ("label", "body"),
    [
        ("zeros", b"\0"),
        ("binary", bytes(range(256)) * 4 + b"\0\0\xff\0"),
        ("1MiB-random", random_bytes(ONE_MIB, 1)),
        ("1MiB-compressible", bytes(range(256)) * (ONE_MIB // 256)),
    ],
    ids=["zeros", "binary", "1MiB-random", "1MiB-compressible"],
)
def test_c_send_binary_and_large_bodies(
    programs: Programs,
    fabric_servers: Fabric,
    topic: str,
    consumer: PullConsumer,
    label: str,
    body: bytes,
) -> None:
    sent = c_send(programs, fabric_servers, topic, "--queue", "2", stdin=body)
    (msg,) = py_pull(consumer, sent)
    assert msg.body == body, label
    # C compresses like the Python client (section 11.6): only when that is smaller.
    compressible = len(body) > 4096 and len(zlib.compress(body, 5)) < len(body)
    assert bool(msg.sysflag & 1) == compressible


def test_c_send_oneway_arrives(
    programs: Programs, fabric_servers: Fabric, topic: str, consumer: PullConsumer
) -> None:
    proc = run_c(
        programs.send,
        "--nameserver",
        fabric_servers.ns,
        "--topic",
        topic,
        "--oneway",
        "--count",
        "5",
        "--queue",
        "1",
        *utf8_args(),
        "oneway from C",
    )
    lines = proc.stdout.decode("utf-8").splitlines()
    matches = [ONEWAY_LINE.match(line) for line in lines]
    assert len(matches) == 5 and all(matches), lines
    mq = MessageQueue(topic, BROKER, 1)
    sent = [Sent(match["msg_id"], mq, 0) for match in matches if match is not None]
    for msg in py_pull(consumer, sent):
        assert msg.body == b"oneway from C"
        assert (msg.tags, msg.keys, msg.properties) == (TAG, KEYS, PROPS)


def test_c_send_to_a_new_topic_uses_the_provisional_route(
    programs: Programs, fabric_servers: Fabric, consumer: PullConsumer
) -> None:
    # No route yet: queue 0 of every master (section 11.2), and the broker auto-creates.
    sent = c_send(programs, fabric_servers, "CNewTopic", "--count", "2", "new")
    assert [s.queue for s in sent] == [MessageQueue("CNewTopic", BROKER, 0)] * 2
    assert [msg.body for msg in py_pull(consumer, sent)] == [b"new", b"new"]


# ---------------------------------------------------------------------------------------
# Python -> C
# ---------------------------------------------------------------------------------------


def test_python_send_is_pulled_intact_by_c_and_committed(
    programs: Programs,
    fabric_servers: Fabric,
    topic: str,
    producer: Producer,
    consumer: PullConsumer,
) -> None:
    mq = MessageQueue(topic, BROKER, 3)
    bodies = [f"python {i}".encode() for i in range(5)]
    results = [producer.send(Message(topic, body), queue=mq) for body in bodies]
    messages, result = c_pull(programs, fabric_servers, topic, 3, "--group", "c-group")
    assert [body_of(obj) for obj in messages] == bodies
    assert [obj["msg_id"] for obj in messages] == [r.msg_id for r in results]
    assert [obj["queue_offset"] for obj in messages] == [r.queue_offset for r in results]
    for obj in messages:
        assert (obj["topic"], obj["broker"], obj["queue_id"]) == (topic, BROKER, 3)
        assert (obj["tags"], obj["keys"], obj["properties"]) == ("", [], {})
        assert re.fullmatch(r"[0-9A-F]{32}", obj["offset_msg_id"])
    assert result["status"] == "NO_NEW_MSG"
    assert result["messages"] == 5
    assert result["next_offset"] == result["committed"] == results[-1].queue_offset + 1
    # The commit is the group's: Python sees it, and C resumes from it.
    c_group_queue = MessageQueue(topic, BROKER, 3)
    with PullConsumer("c-group", nameservers=fabric_servers.ns) as same_group:
        assert same_group.committed(c_group_queue) == result["committed"]
    assert consumer.committed(c_group_queue) == -1
    producer.send(Message(topic, b"one more"), queue=mq)
    messages, result = c_pull(programs, fabric_servers, topic, 3, "--group", "c-group")
    assert [body_of(obj) for obj in messages] == [b"one more"]


def test_python_send_utf8_tags_keys_properties_pulled_by_c(
    programs: Programs, fabric_servers: Fabric, topic: str, producer: Producer
) -> None:
    mq = MessageQueue(topic, BROKER, 0)
    body = "Grüße, 世界 🚀".encode()
    r = producer.send(Message(topic, body, tags=TAG, keys=KEYS, properties=PROPS), queue=mq)
    (obj,), _ = c_pull(programs, fabric_servers, topic, 0, "--offset", "0", "--no-commit")
    assert body_of(obj) == body
    assert obj["msg_id"] == r.msg_id
    assert (obj["tags"], obj["keys"], obj["properties"]) == (TAG, KEYS, PROPS)
    # The tag filter, checked by the broker (CRC32) and again by the C client.
    (obj,), _ = c_pull(programs, fabric_servers, topic, 0, "-o", "0", "-s", f"x || {TAG}")
    assert obj["msg_id"] == r.msg_id
    messages, _ = c_pull(programs, fabric_servers, topic, 0, "-o", "0", "-s", "other")
    assert messages == []


@pytest.mark.parametrize(
    ("label", "body"),
    [
        ("zeros", b"\0\0\0"),
        ("binary", bytes(range(256)) * 4 + b"\0"),
        ("1MiB-random", random_bytes(ONE_MIB, 2)),
        ("1MiB-compressible", b"\0" * ONE_MIB),
    ],
    ids=["zeros", "binary", "1MiB-random", "1MiB-compressible"],
)
def test_python_binary_and_large_bodies_pulled_by_c(
    programs: Programs,
    fabric_servers: Fabric,
    topic: str,
    producer: Producer,
    label: str,
    body: bytes,
) -> None:
    mq = MessageQueue(topic, BROKER, 1)
    r = producer.send(Message(topic, body, keys=[label]), queue=mq)
    (obj,), result = c_pull(programs, fabric_servers, topic, 1, "--check-crc", "--max", "1")
    assert body_of(obj) == body, label
    assert obj["msg_id"] == r.msg_id
    # The Python producer compresses large compressible bodies; C inflates them.
    assert bool(obj["sysflag"] & 1) == (label == "1MiB-compressible")
    assert result["status"] == "FOUND" and result["committed"] == r.queue_offset + 1


def test_message_without_uniq_id_gets_the_brokers_offset_id(
    programs: Programs, fabric_servers: Fabric, topic: str
) -> None:
    # A raw SEND_MESSAGE without uniq_id: the broker answers its offset id (7.2), which
    # the C client rebuilds from the record (7.4); the message id itself stays empty.
    body = m.SendMessageBody(producer_group="raw", topic=topic, queue_id=2)
    with BlockingConnection(fabric_servers.broker.endpoint, timeout=5.0) as conn:
        reply = conn.call(RequestCode.SEND_MESSAGE, body, m.SendReply, [b"no id"])
    assert re.fullmatch(r"[0-9A-F]{32}", reply.msg_id)
    (obj,), _ = c_pull(programs, fabric_servers, topic, 2, "--offset", "min")
    assert body_of(obj) == b"no id"
    assert obj["msg_id"] == ""
    assert obj["offset_msg_id"] == reply.msg_id


def test_c_to_c_round_trip_with_long_polling(
    programs: Programs, fabric_servers: Fabric, topic: str
) -> None:
    body = random_bytes(70000, 3) + b"\0"
    sent = c_send(programs, fabric_servers, topic, "--queue", "0", *utf8_args(), stdin=body)
    messages, result = c_pull(programs, fabric_servers, topic, 0, "--wait", "5000", "--max", "1")
    assert [obj["msg_id"] for obj in messages] == [s.msg_id for s in sent]
    assert body_of(messages[0]) == body
    assert (messages[0]["tags"], messages[0]["keys"], messages[0]["properties"]) == (
        TAG,
        KEYS,
        PROPS,
    )
    assert result["committed"] == 1


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_bad_topic_name_prints_the_brokers_error(
    programs: Programs, fabric_servers: Fabric
) -> None:
    broker = fabric_servers.broker.endpoint
    proc = run_c(programs.send, "--broker", broker, "--topic", "bad topic!", "x", expect_status=1)
    assert proc.stdout == b""
    err = proc.stderr.decode()
    assert f"fabric-send: error: INVALID_TOPIC_NAME (52) from {broker}: " in err
    assert "bad topic!" in err  # the broker's remark names the topic
    # Through a NameServer, the route lookup gets the same error from the NameServer.
    proc = run_c(
        programs.send, "--nameserver", fabric_servers.ns, "-t", "bad topic!", "x", expect_status=1
    )
    assert f"INVALID_TOPIC_NAME (52) from {fabric_servers.ns}: " in proc.stderr.decode()


def test_pull_errors_print_code_and_remark(programs: Programs, fabric_servers: Fabric) -> None:
    broker = fabric_servers.broker.endpoint
    args = ["--broker", broker, "--topic", "CNoSuchTopic", "--queue", "0", "--offset", "0"]
    proc = run_c(programs.pull, *args, expect_status=1)
    assert proc.stdout == b""
    assert f"fabric-pull: error: TOPIC_NOT_EXIST (17) from {broker}: " in proc.stderr.decode()
    proc = run_c(programs.pull, *args[:4], "--queue", "0", "--group", "bad group", expect_status=1)
    assert "INVALID_GROUP_NAME (53)" in proc.stderr.decode()


def test_bad_usage_exits_2(programs: Programs, fabric_servers: Fabric) -> None:
    proc = run_c(programs.send, "--nameserver", fabric_servers.ns, "x", expect_status=2)
    assert b"--topic is required" in proc.stderr
    proc = run_c(programs.send, "-n", fabric_servers.ns, "-t", "T", "-c", "0", expect_status=2)
    assert b"--count must be an integer" in proc.stderr
    proc = run_c(
        programs.send, "-n", fabric_servers.ns, "-t", "T", "-p", "novalue", "x", expect_status=2
    )
    assert b"KEY=VALUE" in proc.stderr
    proc = run_c(programs.pull, "-n", fabric_servers.ns, "-t", "T", expect_status=2)
    assert b"--queue are required" in proc.stderr
