"""Exceptions of the client library and servers, and the one mapping from response codes to them.

The hierarchy::

    FabricError                       .message .code .address (every error below)
    ├── TransportError                no reply: the request may or may not have been processed
    │   ├── RequestTimeoutError       no reply within the deadline (.timeout)
    │   └── ConnectionClosedError     the connection closed with the request in flight
    ├── ProtocolError                 MALFORMED_REQUEST, or a reply that cannot be parsed
    ├── UnsupportedError              REQUEST_CODE_NOT_SUPPORTED, VERSION_NOT_SUPPORTED
    ├── InvalidNameError              INVALID_TOPIC_NAME, INVALID_GROUP_NAME (.name)
    ├── InvalidFilterError            SUBSCRIPTION_PARSE_FAILED (.expression .column)
    ├── MessageIllegalError           MESSAGE_ILLEGAL
    │   └── MessageTooLargeError      a frame over its limit, found before sending (.size .limit)
    ├── NoPermissionError             NO_PERMISSION
    ├── NotFoundError                 something named in the request does not exist
    │   ├── TopicNotExistError        TOPIC_NOT_EXIST
    │   ├── NoRouteError              NO_ROUTE
    │   ├── OffsetNotFoundError       QUERY_NOT_FOUND
    │   ├── StreamNotFoundError       STREAM_NOT_FOUND
    │   └── BrokerNotRegisteredError  BROKER_NOT_REGISTERED
    ├── TopicExistsError              TOPIC_ALREADY_EXISTS
    ├── QueueLockedError              QUEUE_LOCKED
    ├── ServerError                   SYSTEM_ERROR; the server failed, another may not
    │   ├── ServerBusyError           SYSTEM_BUSY
    │   └── ServiceUnavailableError   SERVICE_NOT_AVAILABLE (disk full, closing)
    └── UnexpectedResponseError       any other code, e.g. a status code the caller did not
                                      handle, or a code from a newer server

``code`` is the ResponseCode (an int when the code is unknown to this version; None for
TransportError); ``address`` is the endpoint of the server that answered or failed, or
None for errors found locally. ``retryable`` (a class attribute) says whether sending the
same request to another broker may succeed (SPEC M2, C6).

:func:`from_response` maps a code and remark to an exception; :func:`to_response` maps an
exception back to the code and remark a server replies with. Both live here and only here.
"""

from __future__ import annotations

from typing import ClassVar, Final

from fabric.protocol.codes import ResponseCode

__all__ = [
    "BrokerNotRegisteredError",
    "ConnectionClosedError",
    "FabricError",
    "InvalidFilterError",
    "InvalidNameError",
    "MessageIllegalError",
    "MessageTooLargeError",
    "NoPermissionError",
    "NoRouteError",
    "NotFoundError",
    "OffsetNotFoundError",
    "ProtocolError",
    "QueueLockedError",
    "RequestTimeoutError",
    "ServerBusyError",
    "ServerError",
    "ServiceUnavailableError",
    "StreamNotFoundError",
    "TopicExistsError",
    "TopicNotExistError",
    "TransportError",
    "UnexpectedResponseError",
    "UnsupportedError",
    "from_response",
    "to_response",
]


class FabricError(Exception):
    """Base of every error this package raises on purpose.

    Args:
        message: what went wrong, for humans (a reply's remark).
        code: the response code, when there is one.
        address: the server's endpoint, when a server is involved.
    """

    retryable: ClassVar[bool] = False
    #: The code a server replies with when it raises this class without a code.
    default_code: ClassVar[ResponseCode] = ResponseCode.SYSTEM_ERROR

    def __init__(
        self,
        message: str,
        *,
        code: ResponseCode | int | None = None,
        address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.address = address

    def __str__(self) -> str:
        text = self.message
        if self.code is not None:
            name = self.code.name if isinstance(self.code, ResponseCode) else f"code {self.code}"
            text = f"{name}: {text}"
        if self.address is not None:
            text = f"{text} (addr={self.address})"
        return text


class TransportError(FabricError):
    """No reply came: the request may or may not have been processed."""

    retryable = True


class RequestTimeoutError(TransportError):
    """No reply within the deadline."""

    def __init__(self, message: str, *, timeout: float, address: str | None = None) -> None:
        super().__init__(message, address=address)
        self.timeout = timeout


class ConnectionClosedError(TransportError):
    """The connection was closed while the request was in flight."""


class ProtocolError(FabricError):
    """A malformed request (MALFORMED_REQUEST) or a reply that cannot be parsed."""

    default_code = ResponseCode.MALFORMED_REQUEST


class UnsupportedError(FabricError):
    """The server does not handle this request code or protocol version."""

    default_code = ResponseCode.REQUEST_CODE_NOT_SUPPORTED


class InvalidNameError(FabricError):
    """A topic or group name breaks the naming rule (fabric.protocol.names)."""

    default_code = ResponseCode.INVALID_TOPIC_NAME

    def __init__(
        self,
        message: str,
        *,
        code: ResponseCode | int | None = None,
        address: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(message, code=code, address=address)
        self.name = name


class InvalidFilterError(FabricError):
    """A subscription's filter expression (tags or SQL) does not parse (fabric.filters).

    Args:
        message: what is wrong and where, e.g. ``unexpected 'AND' at column 12: expected a value``.
        code: the response code, when a server answered.
        address: the server's endpoint, when a server answered.
        expression: the expression, when it is known.
        column: the 1-based column of the fault, when there is one.
    """

    default_code = ResponseCode.SUBSCRIPTION_PARSE_FAILED

    def __init__(
        self,
        message: str,
        *,
        code: ResponseCode | int | None = None,
        address: str | None = None,
        expression: str | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message, code=code, address=address)
        self.expression = expression
        self.column = column


class MessageIllegalError(FabricError):
    """The message is refused: too large, or fields out of range."""

    default_code = ResponseCode.MESSAGE_ILLEGAL


class MessageTooLargeError(MessageIllegalError):
    """A frame or request over its limit, found before anything was written to the wire."""

    def __init__(self, message: str, *, size: int, limit: int, address: str | None = None) -> None:
        super().__init__(message, code=ResponseCode.MESSAGE_ILLEGAL, address=address)
        self.size = size
        self.limit = limit


class NoPermissionError(FabricError):
    """The topic or the broker does not permit this operation."""

    default_code = ResponseCode.NO_PERMISSION


class NotFoundError(FabricError):
    """Something named in the request does not exist."""

    default_code = ResponseCode.QUERY_NOT_FOUND


class TopicNotExistError(NotFoundError):
    """The topic does not exist on this broker."""

    retryable = True
    default_code = ResponseCode.TOPIC_NOT_EXIST


class NoRouteError(NotFoundError):
    """The NameServer knows no live broker serving the topic."""

    default_code = ResponseCode.NO_ROUTE


class OffsetNotFoundError(NotFoundError):
    """No committed offset for this group and queue."""

    default_code = ResponseCode.QUERY_NOT_FOUND


class BrokerNotRegisteredError(NotFoundError):
    """A broker heartbeat the NameServer cannot match: the broker must register again."""

    default_code = ResponseCode.BROKER_NOT_REGISTERED


class TopicExistsError(FabricError):
    """CREATE_TOPIC for a topic that exists."""

    default_code = ResponseCode.TOPIC_ALREADY_EXISTS


class QueueLockedError(FabricError):
    """Another live consumer of the group holds the queue's lock (ordered consumption)."""

    default_code = ResponseCode.QUEUE_LOCKED


class StreamNotFoundError(NotFoundError):
    """No push stream with this id is open on this connection."""

    default_code = ResponseCode.STREAM_NOT_FOUND


class ServerError(FabricError):
    """The server failed to do it; another server may not."""

    retryable = True


class ServerBusyError(ServerError):
    """The server is overloaded; retry later or elsewhere."""

    default_code = ResponseCode.SYSTEM_BUSY


class ServiceUnavailableError(ServerError):
    """The server cannot take writes now (disk full, store closed, shutting down)."""

    default_code = ResponseCode.SERVICE_NOT_AVAILABLE


class UnexpectedResponseError(FabricError):
    """A response code without a dedicated class (or one this version does not know)."""


_BY_CODE: Final[dict[int, type[FabricError]]] = {
    ResponseCode.SYSTEM_ERROR: ServerError,
    ResponseCode.SYSTEM_BUSY: ServerBusyError,
    ResponseCode.REQUEST_CODE_NOT_SUPPORTED: UnsupportedError,
    ResponseCode.VERSION_NOT_SUPPORTED: UnsupportedError,
    ResponseCode.MALFORMED_REQUEST: ProtocolError,
    ResponseCode.MESSAGE_ILLEGAL: MessageIllegalError,
    ResponseCode.SERVICE_NOT_AVAILABLE: ServiceUnavailableError,
    ResponseCode.NO_PERMISSION: NoPermissionError,
    ResponseCode.TOPIC_NOT_EXIST: TopicNotExistError,
    ResponseCode.TOPIC_ALREADY_EXISTS: TopicExistsError,
    ResponseCode.QUERY_NOT_FOUND: OffsetNotFoundError,
    ResponseCode.SUBSCRIPTION_PARSE_FAILED: InvalidFilterError,
    ResponseCode.INVALID_TOPIC_NAME: InvalidNameError,
    ResponseCode.INVALID_GROUP_NAME: InvalidNameError,
    ResponseCode.NO_ROUTE: NoRouteError,
    ResponseCode.BROKER_NOT_REGISTERED: BrokerNotRegisteredError,
    ResponseCode.QUEUE_LOCKED: QueueLockedError,
    ResponseCode.STREAM_NOT_FOUND: StreamNotFoundError,
}


def from_response(code: int, remark: str, *, address: str | None = None) -> FabricError:
    """The exception for a non-SUCCESS reply (``raise from_response(...)``).

    Args:
        code: the reply's response code (unknown codes are kept as plain ints).
        remark: the reply's remark.
        address: the endpoint of the server that answered.
    """
    try:
        known: ResponseCode | int = ResponseCode(code)
    except ValueError:
        known = code
    cls = _BY_CODE.get(code, UnexpectedResponseError)
    message = remark or f"the server answered {getattr(known, 'name', known)}"
    return cls(message, code=known, address=address)


def to_response(exc: BaseException) -> tuple[ResponseCode, str]:
    """The response code and remark a server replies with for ``exc``.

    A FabricError keeps its code (or its class's default); any other exception is a
    SYSTEM_ERROR whose remark names the exception type (the traceback stays in the log).
    """
    if isinstance(exc, FabricError):
        code = exc.code if isinstance(exc.code, ResponseCode) else exc.default_code
        return code, exc.message
    return ResponseCode.SYSTEM_ERROR, f"internal error: {type(exc).__name__}: {exc}"
