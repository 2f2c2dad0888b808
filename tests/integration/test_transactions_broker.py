"""The broker's side of transactions (docs/PROTOCOL.md 14.3) against real broker processes.

Each test runs its own ``fabric broker`` on 127.0.0.1 port 0 with short transaction
timings (``transaction_timeout``, ``transaction_check_interval``, ``transaction_check_max``
in its config). The producer is a raw DEALER speaking the frames of sections 7 and 13.1:
SEND_MESSAGE with the TRANSACTION_PREPARED sysflag for half messages, HEARTBEAT with
``producer_groups``, END_TRANSACTION, and CHECK_TRANSACTION_STATE pushes told from
replies by the PUSH flag. Every wait polls a socket or the broker's log with a deadline.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.protocol import RequestCode, ResponseCode
from fabric.protocol import messages as m
from fabric.protocol.codes import SysFlag, TransactionState
from fabric.protocol.frames import Reply
from fabric.protocol.records import Record, decode_record
from fabric.testing import ServerProcess, run_broker, write_broker_config
from tests.integration.raw_client import PUSH_FLAGS, RawClient

TIMEOUT = 0.3
INTERVAL = 0.2
CHECK_MAX = 3
GROUP = "txpg"


class Producer(RawClient):
    """A raw producer: transaction requests, their replies, and the pushes that arrive meanwhile."""

    def heartbeat(self, client_id: str = "tx-producer") -> None:
        body = m.ClientHeartbeatBody(client_id=client_id, producer_groups=[GROUP])
        assert self.request(RequestCode.HEARTBEAT, body).ok

    def check(
        self, offset: int, timeout: float, tick: Callable[[], object] | None = None
    ) -> Reply | None:
        """The next CHECK_TRANSACTION_STATE push for the half message at ``offset``."""
        return self.take(
            lambda p: (
                p.code == RequestCode.CHECK_TRANSACTION_STATE
                and p.decode(m.CheckTransactionBody).commitlog_offset == offset
            ),
            timeout,
            tick,
        )

    # -- requests --------------------------------------------------------------------------

    def create_topic(self, topic: str) -> None:
        config = m.TopicConfig(topic=topic, read_queue_nums=1, write_queue_nums=1)
        assert self.request(RequestCode.CREATE_TOPIC, config).ok

    def half(self, topic: str, body: bytes, uniq_id: str, **fields: Any) -> m.SendReply:
        header = m.SendMessageBody(
            producer_group=GROUP,
            topic=topic,
            queue_id=0,
            uniq_id=uniq_id,
            sysflag=int(SysFlag.TRANSACTION_PREPARED),
            **fields,
        )
        reply = self.request(RequestCode.SEND_MESSAGE, header, [body])
        assert reply.code == ResponseCode.SUCCESS, reply
        sent = reply.decode(m.SendReply)
        assert sent.queue_offset == -1 and sent.commitlog_offset >= 0
        return sent

    def end(self, sent: m.SendReply, state: TransactionState, *, from_check: bool = False) -> Reply:
        body = m.EndTransactionBody(
            producer_group=GROUP,
            msg_id=sent.msg_id,
            commitlog_offset=sent.commitlog_offset,
            state=int(state),
            from_check=from_check,
        )
        return self.request(RequestCode.END_TRANSACTION, body)

    def records(self, topic: str) -> list[Record]:
        body = m.PullMessageBody(consumer_group="cg", topic=topic, queue_id=0, queue_offset=0)
        reply = self.request(RequestCode.PULL_MESSAGE, body)
        if reply.code == ResponseCode.PULL_NOT_FOUND:
            return []
        assert reply.code == ResponseCode.SUCCESS, reply
        return [decode_record(frame, verify_crc=True) for frame in reply.frames]


def config_file(tmp: Path, **fields: Any) -> str:
    fields.setdefault("transaction_timeout", TIMEOUT)
    fields.setdefault("transaction_check_interval", INTERVAL)
    fields.setdefault("transaction_check_max", CHECK_MAX)
    return write_broker_config(tmp / "broker.json", **fields)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ServerProcess]:
    server = run_broker(tmp_path / "data", config=config_file(tmp_path))
    try:
        yield server
    finally:
        assert server.stop() == 0
    assert not server.error_lines(), "\n".join(server.log_lines())


@pytest.fixture
def producers() -> Iterator[Callable[[str], Producer]]:
    made: list[Producer] = []

    def make(endpoint: str) -> Producer:
        made.append(Producer(endpoint))
        return made[-1]

    try:
        yield make
    finally:
        for producer in made:
            producer.close()


def wait_for_line(server: ServerProcess, text: str, timeout: float) -> str:
    """The first log line of ``server`` containing ``text``, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        for line in server.log_lines():
            if text in line:
                return line
        assert time.monotonic() < deadline, f"no log line with {text!r} within {timeout}s"
        time.sleep(0.05)  # a bounded poll of another process's output, not a synchronisation


def test_commit_delivers_once_rollback_never(
    broker: ServerProcess, producers: Callable[[str], Producer]
) -> None:
    p = producers(broker.endpoint)
    p.create_topic("TxT")
    kept = p.half("TxT", b"commit me", "UID-C", tags="t", keys=["k"], properties={"a": "b"})
    dropped = p.half("TxT", b"roll me back", "UID-R")
    assert kept.msg_id == "UID-C"
    assert p.records("TxT") == []  # consumers never see half messages
    assert p.end(kept, TransactionState.UNKNOWN).ok  # changes nothing
    assert p.records("TxT") == []
    assert p.end(kept, TransactionState.COMMIT).ok
    assert p.end(dropped, TransactionState.ROLLBACK).ok
    # A second decision is ignored, whatever it says.
    assert p.end(kept, TransactionState.COMMIT).ok
    assert p.end(kept, TransactionState.ROLLBACK).ok
    assert p.end(dropped, TransactionState.COMMIT).ok
    (record,) = p.records("TxT")
    assert record.body == b"commit me" and record.uniq_id == "UID-C"
    assert record.tags == "t" and record.keys == ["k"] and record.properties == {"a": "b"}
    assert record.sysflag & 0xC == int(SysFlag.TRANSACTION_COMMIT)
    assert record.prepared_tx_offset == kept.commitlog_offset
    assert record.sys == {}
    # Decided half messages are never checked; a later half message still is.
    later = p.half("TxT", b"later", "UID-L")
    p.heartbeat()
    check = p.check(later.commitlog_offset, 5.0, tick=p.heartbeat)
    assert check is not None
    assert p.check(kept.commitlog_offset, 0.0) is None
    assert p.check(dropped.commitlog_offset, 0.0) is None
    assert p.end(later, TransactionState.ROLLBACK, from_check=True).ok
    assert [r.uniq_id for r in p.records("TxT")] == ["UID-C"]


def test_end_transaction_not_found(
    broker: ServerProcess, producers: Callable[[str], Producer]
) -> None:
    p = producers(broker.endpoint)
    p.create_topic("TxNF")
    header = m.SendMessageBody(producer_group=GROUP, topic="TxNF", queue_id=0)
    plain = p.request(RequestCode.SEND_MESSAGE, header, [b"ordinary"]).decode(m.SendReply)
    (record,) = p.records("TxNF")
    half = p.half("TxNF", b"h", "UID-NF")

    def code(offset: int, state: int = 1) -> int:
        body = m.EndTransactionBody(
            producer_group=GROUP, msg_id="x", commitlog_offset=offset, state=state
        )
        return p.request(RequestCode.END_TRANSACTION, body).code

    # Not a half record (an ordinary message), inside a record, past the end.
    assert code(record.physical_offset) == ResponseCode.QUERY_NOT_FOUND
    assert code(half.commitlog_offset + 1) == ResponseCode.QUERY_NOT_FOUND
    assert code(1 << 40) == ResponseCode.QUERY_NOT_FOUND
    assert code(half.commitlog_offset, state=3) == ResponseCode.MALFORMED_REQUEST
    assert plain.queue_offset == 0 and p.records("TxNF") == [record]


def test_check_back_and_decision_from_check(
    broker: ServerProcess, producers: Callable[[str], Producer]
) -> None:
    p = producers(broker.endpoint)
    p.heartbeat()
    p.create_topic("TxCheck")
    sent = p.half("TxCheck", b"undecided", "UID-CHK", keys=["kk"])
    push = p.check(sent.commitlog_offset, 5.0, tick=p.heartbeat)
    assert push is not None, "no CHECK_TRANSACTION_STATE"
    assert push.request_id == 0 and push.flags == PUSH_FLAGS
    body = push.decode(m.CheckTransactionBody)
    assert body.producer_group == GROUP and body.msg_id == "UID-CHK"
    assert body.check_times == 1
    (frame,) = push.frames
    half = decode_record(frame, verify_crc=True)
    assert half.topic == "%HALF%" and half.body == b"undecided" and half.uniq_id == "UID-CHK"
    assert half.sys["REAL_TOPIC"] == "TxCheck" and half.sys["PGROUP"] == GROUP
    # Left unanswered, it is asked again, with the count going up.
    again = p.check(sent.commitlog_offset, 5.0, tick=p.heartbeat)
    assert again is not None and again.decode(m.CheckTransactionBody).check_times == 2
    assert p.end(sent, TransactionState.COMMIT, from_check=True).ok
    (record,) = p.records("TxCheck")
    assert record.uniq_id == "UID-CHK" and record.body == b"undecided"
    # Decided: never checked again.
    assert p.check(sent.commitlog_offset, 4 * INTERVAL, tick=p.heartbeat) is None


def test_discarded_after_max_checks_without_producer(
    broker: ServerProcess, producers: Callable[[str], Producer]
) -> None:
    p = producers(broker.endpoint)
    p.create_topic("TxLost")
    sent = p.half("TxLost", b"orphan", "UID-ORPHAN")
    line = wait_for_line(broker, "UID-ORPHAN", TIMEOUT + (CHECK_MAX + 3) * INTERVAL + 5.0)
    assert "WARNING" in line and GROUP in line and "discarded" in line
    # A decision after the discard is ignored: the message is never delivered.
    assert p.end(sent, TransactionState.COMMIT).ok
    assert p.records("TxLost") == []
    assert sum("UID-ORPHAN" in x for x in broker.log_lines()) == 1


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_decisions_survive_a_restart(
    tmp_path: Path, producers: Callable[[str], Producer], kill: bool
) -> None:
    # Checks only after the restart: a long timeout before it, a short one after.
    data = tmp_path / "data"
    server = run_broker(data, config=config_file(tmp_path, transaction_timeout=60.0))
    try:
        p = producers(server.endpoint)
        p.create_topic("TxR")
        committed = p.half("TxR", b"c", "UID-RC")
        rolled_back = p.half("TxR", b"r", "UID-RR")
        open_one = p.half("TxR", b"o", "UID-RO")
        assert p.end(committed, TransactionState.COMMIT).ok
        assert p.end(rolled_back, TransactionState.ROLLBACK).ok
        if kill:
            server.send_signal(signal.SIGKILL)
            assert server.wait() == -signal.SIGKILL
        else:
            assert server.stop() == 0
            assert not server.error_lines(), "\n".join(server.log_lines())
        server = run_broker(data, config=config_file(tmp_path))
        p = producers(server.endpoint)
        p.heartbeat()
        # The undecided one is checked after the restart; the decided ones never are.
        assert p.check(open_one.commitlog_offset, 5.0, tick=p.heartbeat) is not None
        assert p.check(committed.commitlog_offset, 0.0) is None
        assert p.check(rolled_back.commitlog_offset, 0.0) is None
        # Decisions made before the restart still hold: second decisions are ignored.
        assert p.end(rolled_back, TransactionState.COMMIT).ok
        assert p.end(committed, TransactionState.COMMIT).ok
        assert p.end(open_one, TransactionState.COMMIT, from_check=True).ok
        assert [r.uniq_id for r in p.records("TxR")] == ["UID-RC", "UID-RO"]
    finally:
        server.stop()
    assert not server.error_lines(), "\n".join(server.log_lines())
