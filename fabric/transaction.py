"""Transactional messages (SPEC M17): half message, local transaction, commit or rollback.

docs/PROTOCOL.md section 14.3 is the contract. :class:`TransactionProducer` (RocketMQ
``TransactionMQProducer``) is a :class:`fabric.Producer` that can also
:meth:`~TransactionProducer.send_in_transaction`:

1. The message goes as a **half message**: SEND_MESSAGE with SysFlag
   TRANSACTION_PREPARED, always alone (never coalesced), with the producer's retries.
   The broker keeps it invisible to consumers; its reply names the half record's CommitLog
   offset. A send that fails raises, and nothing else happens.
2. ``execute(msg, arg)``, the application's **local transaction**, runs in the caller's
   thread and returns a TransactionState. An exception counts as UNKNOWN (and is
   logged). A half message stored without SEND_OK (e.g. FLUSH_DISK_TIMEOUT) is rolled
   back without running ``execute``, as RocketMQ does.
3. **END_TRANSACTION** goes to the broker that stored the half message: COMMIT delivers
   it, ROLLBACK drops it, UNKNOWN leaves it to the check-back. A failure is logged, not
   raised: the broker checks back later.

**Check-back.** The broker asks a live producer of the group about a half message left
undecided (CHECK_TRANSACTION_STATE, a push). To be found, the producer sends HEARTBEAT
(``producer_groups=[group]``, a client id stable for its life) every
``heartbeat_interval`` to every master broker of the cluster (GET_CLUSTER_INFO, asked
again every ``route_refresh``) and to every broker it sent a half message to, and
UNREGISTER_CLIENT at shutdown. A check arrives on the loop; the half record is decoded
into a MessageExt (topic and queue: where it will be delivered) and ``checker(msg)`` runs
on a worker thread (a coroutine function runs on the loop, fabric.aio only), never
blocking the loop; its answer goes back as END_TRANSACTION with ``from_check`` set. A
producer that dies between steps 1 and 3 is thus replaced by any producer of its group.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec
import zmq.asyncio
from loguru import logger

from fabric.client import ClientCore
from fabric.consumer.membership import LogThrottle
from fabric.consumer.push import new_client_id
from fabric.errors import FabricError, MessageIllegalError
from fabric.message import Message, MessageExt, SendResult
from fabric.producer import Producer, ProducerFront
from fabric.protocol.codes import (
    DEFAULT_CLIENT_HEARTBEAT_INTERVAL,
    RequestCode,
    ResponseCode,
    SendStatus,
    TransactionState,
)
from fabric.protocol.frames import Buffer, FrameError, decode_body
from fabric.protocol.messages import (
    CheckTransactionBody,
    ClientHeartbeatBody,
    Empty,
    EndTransactionBody,
    UnregisterClientBody,
)
from fabric.protocol.records import Record, RecordError, decode_record
from fabric.sending import ProducerCore, ProducerOptions
from fabric.trace import COMMIT, ROLLBACK, now_ms
from fabric.transport import Connection

__all__ = [
    "Checker",
    "LocalTransaction",
    "TransactionCore",
    "TransactionFront",
    "TransactionProducer",
    "TransactionSendResult",
]

#: ``execute(msg, arg)``: the local transaction; returns a TransactionState.
LocalTransaction = Callable[[Message, Any], Any]
#: ``checker(msg)``: the state of the local transaction of a half message the broker
#: asks about (CHECK_TRANSACTION_STATE); returns a TransactionState.
Checker = Callable[[MessageExt], Any]

_CHECK: Final = int(RequestCode.CHECK_TRANSACTION_STATE)
_MASTER: Final = 0
# Seconds close() gives the checks running to answer, and UNREGISTER_CLIENT to be
# answered: short, so that a shutdown stays within its timeout plus the front's grace.
_CLOSE_STEP: Final = 0.5


class TransactionSendResult(SendResult, frozen=True, gc=False):
    """The outcome of :meth:`TransactionProducer.send_in_transaction`.

    The SendResult of the half message (``queue_offset`` -1: the message is not in its
    queue before the commit) and the state the local transaction decided, which
    END_TRANSACTION told the broker.
    """

    #: What the local transaction returned (UNKNOWN when it raised).
    transaction_state: TransactionState = TransactionState.UNKNOWN


def _state_of(value: object, throttle: LogThrottle, what: str, group: str) -> TransactionState:
    """``value`` as a TransactionState; anything else is UNKNOWN, with a (throttled) warning."""
    if isinstance(value, TransactionState):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return TransactionState(value)
        except ValueError:
            pass
    throttle.warn(
        ("state", what),
        "transaction producer {}: the {} returned {!r}, not a TransactionState; taken as UNKNOWN",
        group,
        what,
        value,
    )
    return TransactionState.UNKNOWN


class _PushRoutingClient(ClientCore):
    """A ClientCore whose connections tell the push handler which broker pushed.

    The handler gets the broker address first: END_TRANSACTION answering a check goes
    back to the broker that asked.
    """

    push_handler: Callable[..., object] | None = None

    def connection(self, address: str) -> Connection:
        # Only a connection made now takes on_push: one handler per address.
        if self.push_handler is not None:
            self.on_push = functools.partial(self.push_handler, address)
        return super().connection(address)


class TransactionCore(ProducerCore):
    """A ProducerCore that also heartbeats, answers check-backs and ends transactions.

    Create it on its loop, then call :meth:`begin`.

    Args:
        client: routes and broker connections on this loop (a client made by
            :meth:`TransactionFront._make_core`, whose pushes reach this core).
        group: the producer group.
        options: how to send.
        client_id: this producer's id in HEARTBEATs.
        checker: answers check-backs; a coroutine function runs on the loop, a plain
            function on one of ``check_threads`` worker threads.
        check_threads: worker threads for a plain ``checker``.
        heartbeat_interval: seconds between two rounds of HEARTBEATs.
    """

    def __init__(
        self,
        client: ClientCore,
        group: str,
        options: ProducerOptions,
        *,
        client_id: str,
        checker: Checker,
        check_threads: int,
        heartbeat_interval: float,
    ) -> None:
        super().__init__(client, group, options)
        self.client_id = client_id
        self.checker = checker
        self._checker_is_coroutine = inspect.iscoroutinefunction(checker)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            check_threads, thread_name_prefix=f"fabric-check {group}"
        )
        self.heartbeat_interval = heartbeat_interval
        self.throttle = LogThrottle(self.loop.time)
        #: Brokers a half message went to, masters of the cluster, and every broker a
        #: HEARTBEAT went to (UNREGISTER_CLIENT goes to those).
        self._sent_to: set[str] = set()
        self._masters: set[str] = set()
        self._heartbeated: set[str] = set()
        self._cluster_due = 0.0
        self._heartbeats: asyncio.Task[None] | None = None
        #: Checks being answered, by (broker address, CommitLog offset).
        self._checks: dict[tuple[str, int], asyncio.Task[None]] = {}
        if isinstance(client, _PushRoutingClient):
            client.push_handler = self._on_push

    # -- life ---------------------------------------------------------------------------

    def begin(self) -> None:
        """Start heartbeating (the first round at once, in the background)."""
        if self._heartbeats is None:
            self._heartbeats = self.loop.create_task(
                self._heartbeat_loop(), name=f"fabric-tx-heartbeat {self.group}"
            )

    async def close(self, timeout: float) -> None:
        """Stop heartbeats, let running checks answer (briefly), unregister, then close
        as a ProducerCore does."""
        self.closing = True
        task, self._heartbeats = self._heartbeats, None
        if task is not None:
            task.cancel()
            # Bounded: on Python 3.11 asyncio.wait_for (inside a request) can swallow a
            # cancellation; the loop then ends on ``closing`` at its next round.
            await asyncio.wait({task}, timeout=_CLOSE_STEP)
        checks = list(self._checks.values())
        if checks:
            await asyncio.wait(checks, timeout=min(timeout, _CLOSE_STEP))
            for check in checks:
                check.cancel()
            await asyncio.gather(*checks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self._unregister()
        await super().close(timeout)

    # -- heartbeats ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self.closing:
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("transaction producer {}: heartbeat round failed", self.group)
            await asyncio.sleep(self.heartbeat_interval)

    async def heartbeat(self) -> None:
        """One round: HEARTBEAT to the cluster's masters and the brokers sent to."""
        now = self.loop.time()
        if now >= self._cluster_due:
            self._cluster_due = now + self.options.route_refresh
            try:
                info = await self.routes.cluster_info()
            except FabricError as exc:
                self._cluster_due = now + self.heartbeat_interval  # ask again soon
                self.throttle.warn(
                    ("cluster",), "transaction producer {}: no cluster info: {}", self.group, exc
                )
            else:
                self._masters = {
                    b.broker_addrs[_MASTER]
                    for b in info.brokers.values()
                    if _MASTER in b.broker_addrs
                }
                if not self._masters:  # none registered yet: ask again next round
                    self._cluster_due = now + self.heartbeat_interval
        targets = sorted(self._sent_to | self._masters)
        await asyncio.gather(*(self._heartbeat(address) for address in targets))

    async def _heartbeat(self, address: str) -> None:
        body = ClientHeartbeatBody(client_id=self.client_id, producer_groups=[self.group])
        self._heartbeated.add(address)
        try:
            conn = self.client.connection(address)
            await conn.call(RequestCode.HEARTBEAT, body, Empty, timeout=self.options.send_timeout)
        except FabricError as exc:
            self.throttle.warn(
                ("heartbeat", address),
                "transaction producer {}: heartbeat to {} failed: {}",
                self.group,
                address,
                exc,
            )

    def note_broker(self, address: str) -> None:
        """A half message went to ``address``: heartbeat it from now on (at once if new)."""
        if address in self._sent_to:
            return
        self._sent_to.add(address)
        if address not in self._heartbeated and not self.closing:
            task = self.loop.create_task(self._heartbeat(address))
            self._fetches.add(task)  # cancelled at close with the route fetches
            task.add_done_callback(self._fetches.discard)

    async def _unregister(self) -> None:
        body = UnregisterClientBody(client_id=self.client_id, producer_groups=[self.group])

        async def one(address: str) -> None:
            try:
                conn = self.client.connection(address)
                await conn.call(RequestCode.UNREGISTER_CLIENT, body, Empty, timeout=_CLOSE_STEP)
            except FabricError as exc:
                logger.debug(
                    "transaction producer {}: unregister at {}: {}", self.group, address, exc
                )

        await asyncio.gather(*(one(a) for a in sorted(self._heartbeated)))

    # -- ending transactions ------------------------------------------------------------

    async def end_transaction(
        self, half: SendResult, state: TransactionState, timeout: float
    ) -> None:
        """END_TRANSACTION for the half message ``half`` to the broker that stored it.

        Never raises for a broker's failure: that is logged, and the check-back decides.
        """
        broker = half.queue.broker_name
        address = self.routes.master(broker)
        if address is None:
            try:
                address = await self.routes.broker_address(half.queue.topic, broker, master=True)
            except FabricError as exc:
                self.throttle.warn(
                    ("end", broker),
                    "transaction producer {}: END_TRANSACTION of {}: no address of broker {}: "
                    "{}; the broker will check back",
                    self.group,
                    half.msg_id,
                    broker,
                    exc,
                )
                self._trace_end(half.msg_id, half.queue.topic, state, now_ms(), exc, broker)
                return
        self.note_broker(address)
        body = EndTransactionBody(
            producer_group=self.group,
            msg_id=half.msg_id,
            commitlog_offset=half.commitlog_offset,
            state=int(state),
        )
        await self._end(address, body, timeout, half.queue.topic, broker)

    async def _end(
        self,
        address: str,
        body: EndTransactionBody,
        timeout: float,
        topic: str = "",
        broker: str = "",
    ) -> None:
        """END_TRANSACTION to ``address``; a failure is logged (throttled) and traced."""
        started = now_ms() if self.tracer is not None else 0
        try:
            conn = self.client.connection(address)
            await conn.call(RequestCode.END_TRANSACTION, body, Empty, timeout=timeout)
        except FabricError as exc:
            if self.tracer is not None:
                self._trace_end(body.msg_id, topic, body.state, started, exc, broker)
            self.throttle.warn(
                ("end", address),
                "transaction producer {}: END_TRANSACTION of {} to {} failed: {}; "
                "the broker will check back",
                self.group,
                body.msg_id,
                address,
                exc,
            )
        else:
            if self.tracer is not None:
                self._trace_end(body.msg_id, topic, body.state, started, None, broker)

    def _trace_end(
        self,
        msg_id: str,
        topic: str,
        state: int,
        started: int,
        error: BaseException | None,
        broker: str,
    ) -> None:
        """A ``commit`` or ``rollback`` trace event (none for UNKNOWN, which decides nothing)."""
        tracer = self.tracer
        if tracer is None or state == TransactionState.UNKNOWN:
            return
        kind = COMMIT if state == TransactionState.COMMIT else ROLLBACK
        status = "OK" if error is None else type(error).__name__
        tracer.on_event(kind, msg_id, topic, status, started, max(0, now_ms() - started), broker)

    # -- check-backs --------------------------------------------------------------------

    def _on_push(
        self, address: str, code: int, stream_id: int, body: msgspec.Raw, frames: list[Buffer]
    ) -> None:
        """A frame with Flag.PUSH from ``address`` (called by its Connection, on the loop)."""
        if code != _CHECK:
            logger.debug("transaction producer {}: ignored push code {}", self.group, code)
            return
        try:
            check = decode_body(body, CheckTransactionBody)
            if len(frames) != 1:
                raise FrameError(
                    ResponseCode.MALFORMED_REQUEST, f"{len(frames)} record frames, expected 1"
                )
            msg = _half_message(decode_record(frames[0]))
        except (FrameError, RecordError, MessageIllegalError) as exc:
            self.throttle.warn(
                ("push", address),
                "transaction producer {}: bad CHECK_TRANSACTION_STATE from {}: {}",
                self.group,
                address,
                exc,
            )
            return
        key = (address, check.commitlog_offset)
        if self.closing or key in self._checks:
            return  # a check of it is being answered already
        task = self.loop.create_task(self._check(address, check, msg))
        self._checks[key] = task
        task.add_done_callback(lambda _: self._checks.pop(key, None))

    async def _check(self, address: str, check: CheckTransactionBody, msg: MessageExt) -> None:
        try:
            if self._checker_is_coroutine:
                value = await self.checker(msg)
            else:
                value = await self.loop.run_in_executor(self._pool, self.checker, msg)
                if inspect.isawaitable(value):
                    value = await value
            state = _state_of(value, self.throttle, "checker", self.group)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state = TransactionState.UNKNOWN
            self.throttle.warn(
                ("checker", type(exc)),
                "transaction producer {}: the checker raised {!r} for {}; answered UNKNOWN",
                self.group,
                exc,
                check.msg_id,
            )
        body = EndTransactionBody(
            producer_group=self.group,
            msg_id=check.msg_id,
            commitlog_offset=check.commitlog_offset,
            state=int(state),
            from_check=True,
        )
        await self._end(address, body, self.options.send_timeout, msg.topic)


def _half_message(record: Record) -> MessageExt:
    """The MessageExt a checker sees: topic and queue are where it will be delivered."""
    msg = MessageExt.from_record(record)
    sys = record.sys
    topic = sys.get("REAL_TOPIC")
    if not topic:
        return msg
    try:
        queue_id = int(sys.get("REAL_QID", msg.queue_id))
    except ValueError:
        queue_id = msg.queue_id
    return msgspec.structs.replace(msg, topic=topic, queue_id=queue_id, queue_offset=-1)


class TransactionFront(ProducerFront):
    """Arguments and checks shared by the blocking and the asyncio TransactionProducer.

    Subclasses say whether the checker may be a coroutine function (``_allow_async``).
    """

    _allow_async = False

    def __init__(
        self,
        group: str,
        nameservers: str | Sequence[str],
        *,
        checker: Checker,
        check_threads: int = 1,
        heartbeat_interval: float = DEFAULT_CLIENT_HEARTBEAT_INTERVAL,
        **options: Any,
    ) -> None:
        super().__init__(group, nameservers, **options)
        if not callable(checker):
            raise TypeError(f"checker must be callable, got {type(checker).__name__}")
        if inspect.iscoroutinefunction(checker) and not self._allow_async:
            raise TypeError("checker is a coroutine function: use fabric.aio.TransactionProducer")
        if check_threads < 1:
            raise ValueError(f"check_threads must be >= 1, got {check_threads}")
        if not heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be > 0, got {heartbeat_interval}")
        self.checker = checker
        self.check_threads = check_threads
        self.heartbeat_interval = heartbeat_interval
        #: This producer's id in HEARTBEATs (``host@pid@n``), stable for its life.
        self.client_id = new_client_id()
        self._throttle = LogThrottle(time.monotonic)

    async def _make_core(self, context: zmq.asyncio.Context) -> ProducerCore:
        client = _PushRoutingClient(
            context,
            self.nameservers,
            timeout=self.options.send_timeout,
            route_refresh=self.options.route_refresh,
        )
        client.start()
        core = TransactionCore(
            client,
            self.group,
            self.options,
            client_id=self.client_id,
            checker=self.checker,
            check_threads=self.check_threads,
            heartbeat_interval=self.heartbeat_interval,
        )
        self._attach_tracer(core, context)
        core.begin()
        return core

    def _check_execute(self, execute: object) -> None:
        if not callable(execute):
            raise TypeError(f"execute must be callable, got {type(execute).__name__}")

    def _state_after(self, value: object) -> TransactionState:
        return _state_of(value, self._throttle, "local transaction", self.group)

    def _failed(self, exc: Exception, half: SendResult) -> TransactionState:
        self._throttle.warn(
            ("execute", type(exc)),
            "transaction producer {}: the local transaction of {} raised {!r}; state UNKNOWN "
            "(the broker will check back)",
            self.group,
            half.msg_id,
            exc,
        )
        return TransactionState.UNKNOWN

    @staticmethod
    def _with_id(msg: Message, half: SendResult) -> Message:
        """A copy of ``msg`` with ``msg_id`` set: the id a later check-back names."""
        if msg.msg_id == half.msg_id:
            return msg
        named = copy.copy(msg)
        named.msg_id = half.msg_id
        return named

    @staticmethod
    def _result(half: SendResult, state: TransactionState) -> TransactionSendResult:
        return TransactionSendResult(
            half.status,
            half.msg_id,
            half.queue,
            half.queue_offset,
            half.commitlog_offset,
            transaction_state=state,
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} group={self.group!r} client_id={self.client_id!r} "
            f"nameservers={self.nameservers}>"
        )


class TransactionProducer(TransactionFront, Producer):
    """A blocking producer of transactional messages (RocketMQ ``TransactionMQProducer``).

    Args:
        group: the producer group; check-backs go to any live producer of the group.
        nameservers: NameServer endpoints.
        checker: ``checker(msg: MessageExt) -> TransactionState``, asked by a broker about
            a half message left undecided (its producer died, or said UNKNOWN); runs on
            a worker thread.
        check_threads: worker threads for the checker (1).
        heartbeat_interval: seconds between two HEARTBEATs to each broker.
        **options: every other argument of :class:`fabric.Producer`.

    It is also a Producer: ``send``, ``send_async`` and the rest send ordinary messages.

    Usage::

        def execute(msg, arg):           # the local transaction
            db.insert(arg)
            return TransactionState.COMMIT

        tp = TransactionProducer("group", nameservers=ns, checker=lambda msg: lookup(msg))
        tp.start()
        result = tp.send_in_transaction(Message("Orders", b"..."), execute, order)
        tp.shutdown()
    """

    _noun = "producer"
    _role = "transaction producer"
    _thread_prefix = "fabric-tx-producer"

    def start(self) -> TransactionProducer:
        """Start the I/O thread and the heartbeats. Returns self."""
        super().start()
        return self

    def send_in_transaction(
        self,
        msg: Message,
        execute: LocalTransaction,
        arg: Any = None,
        *,
        timeout: float | None = None,
    ) -> TransactionSendResult:
        """Send ``msg`` as a half message, run ``execute(msg, arg)``, commit or roll back.

        Args:
            msg: the message (no ``delay_level`` or ``deliver_at``).
            execute: the local transaction, run in this thread once the half message is
                stored, with the message (``msg_id`` set to its unique id, the id a
                check-back names) and ``arg``; returns COMMIT, ROLLBACK or UNKNOWN (an
                exception: UNKNOWN).
            arg: passed to ``execute`` as is.
            timeout: seconds for the half send, retries included, and again for
                END_TRANSACTION (default ``send_timeout``).

        Returns:
            The half message's SendResult and the state decided.

        Raises:
            FabricError: the half message was not sent (``execute`` did not run).
            MessageIllegalError: a bad message, or one with a delay.
        """
        self._check_execute(execute)
        core, runner = self._started()
        assert isinstance(core, TransactionCore)
        item = core.prepare(msg, timeout=timeout, transactional=True)
        half = self._send_item(core, runner, item, timeout)
        if half.status is SendStatus.SEND_OK:
            try:
                state = self._state_after(execute(self._with_id(msg, half), arg))
            except Exception as exc:
                state = self._failed(exc, half)
        else:  # stored, durability unknown: RocketMQ rolls back
            state = TransactionState.ROLLBACK
        limit = self._timeout(timeout)
        runner.run(core.end_transaction(half, state, limit), limit)
        return self._result(half, state)
