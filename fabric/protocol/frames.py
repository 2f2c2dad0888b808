"""Frame order of requests and replies: encode on one side, parse on the other, limits checked.

A request is a ZeroMQ multipart message (the ROUTER side sees the peer's identity frame
in front of it, and puts it back in front of the reply)::

    frame 0      MessagePack array [code, version, request_id, flags, body]
    frame 1..n   raw message bodies (SEND_MESSAGE: 1; SEND_BATCH_MESSAGE: one per entry,
                 or one holding them all when ``body_sizes`` is set; every other code: none)

A reply::

    frame 0      MessagePack array [code, version, request_id, flags, remark, body]
    frame 1..n   raw data (PULL_MESSAGE: one stored CommitLog record per frame)

``code`` is a RequestCode in a request and a ResponseCode in a reply; ``flags`` has
Flag.RESPONSE set in every reply; ``body`` is a MessagePack map whose schema the
request code fixes (fabric.protocol.messages). docs/PROTOCOL.md is the byte-level
description.

Parsing never raises anything but :class:`FrameError`, which carries the response code
to answer with and, when it could be recovered from the broken header, the request id
and flags (``request_id`` None: nobody to answer, drop the message).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeVar

import msgspec

from .codes import PROTOCOL_VERSION, Flag, RequestCode, ResponseCode
from .messages import Empty, Request, SendBatchBody, SendBatchRequest, SendMessageRequest

__all__ = [
    "MAX_BATCH_MESSAGES",
    "MAX_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "Buffer",
    "FrameError",
    "FrameTooLargeError",
    "Reply",
    "decode_body",
    "encode_reply",
    "encode_request",
    "parse_reply",
    "parse_request",
    "request_code",
]

#: Largest frame 0 (header), in bytes.
MAX_HEADER_BYTES: Final = 4 * 1024 * 1024
#: Largest message body frame, in bytes (RocketMQ ``maxMessageSize``).
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
#: Most messages in one SEND_BATCH_MESSAGE.
MAX_BATCH_MESSAGES: Final = 1024
#: Largest request, all frames together, in bytes (RocketMQ's 16 MiB frame limit).
MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024

#: What a frame may be: bytes, or a view of a zmq.Frame's buffer.
Buffer = bytes | bytearray | memoryview

T = TypeVar("T")

_encoder: Final = msgspec.msgpack.Encoder()
_request_decoder: Final = msgspec.msgpack.Decoder(Request)
# The fallback when a header does not validate: its elements, each left undecoded.
_loose_decoder: Final = msgspec.msgpack.Decoder(list[msgspec.Raw])
_int_decoder: Final = msgspec.msgpack.Decoder(int)
_body_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}
_EMPTY: Final = Empty()
#: Flag.RESPONSE as a plain int: IntFlag arithmetic costs ~1 us per request.
_RESPONSE: Final = int(Flag.RESPONSE)
_REQUEST_CODES: Final = frozenset(int(c) for c in RequestCode)


class FrameError(ValueError):
    """A message that cannot be parsed, or that breaks a limit.

    Attributes:
        code: the ResponseCode a server answers with.
        remark: what is wrong, for humans.
        request_id: the id to answer to, or None when it could not be recovered (or the
            message was itself a reply): then nobody is answered.
        flags: the flags recovered with the request id (0 when unknown).
    """

    def __init__(
        self,
        code: ResponseCode,
        remark: str,
        request_id: int | None = None,
        flags: int = 0,
    ) -> None:
        super().__init__(remark)
        self.code = code
        self.remark = remark
        self.request_id = request_id
        self.flags = flags


class FrameTooLargeError(FrameError):
    """A frame or a whole message over its limit (checked before anything is written)."""

    def __init__(
        self, what: str, size: int, limit: int, request_id: int | None = None, flags: int = 0
    ) -> None:
        super().__init__(
            ResponseCode.MESSAGE_ILLEGAL,
            f"{what} is {size} bytes, the limit is {limit}",
            request_id,
            flags,
        )
        self.size = size
        self.limit = limit


class _ReplyHeader(msgspec.Struct, array_like=True):
    code: int
    version: int
    request_id: int
    flags: int
    remark: str
    body: msgspec.Raw


_reply_decoder: Final = msgspec.msgpack.Decoder(_ReplyHeader)


class Reply:
    """A parsed reply: the header's elements, the body still encoded, the extra frames."""

    __slots__ = ("body", "code", "flags", "frames", "remark", "request_id", "version")

    def __init__(
        self,
        code: int,
        version: int,
        request_id: int,
        flags: int,
        remark: str,
        body: msgspec.Raw,
        frames: list[Buffer],
    ) -> None:
        self.code = code
        self.version = version
        self.request_id = request_id
        self.flags = flags
        self.remark = remark
        self.body = body
        self.frames = frames

    @property
    def ok(self) -> bool:
        """True for ResponseCode.SUCCESS."""
        return self.code == ResponseCode.SUCCESS

    def decode(self, cls: type[T]) -> T:
        """Decode the body as ``cls`` (raises FrameError when it does not fit)."""
        try:
            return decode_body(self.body, cls)
        except FrameError as exc:
            raise FrameError(exc.code, exc.remark, self.request_id, self.flags) from None

    def __repr__(self) -> str:
        try:
            name = ResponseCode(self.code).name
        except ValueError:
            name = str(self.code)
        return f"Reply({name}, request_id={self.request_id}, remark={self.remark!r})"


def decode_body(data: Buffer | msgspec.Raw, cls: type[T]) -> T:
    """Decode a MessagePack body as ``cls`` (cached decoder); FrameError when it does not fit."""
    decoder = _body_decoders.get(cls)
    if decoder is None:
        decoder = _body_decoders[cls] = msgspec.msgpack.Decoder(cls)
    try:
        result: T = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise FrameError(ResponseCode.MALFORMED_REQUEST, f"bad body: {exc}") from None
    return result


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------


def encode_request(
    code: RequestCode,
    request_id: int,
    body: msgspec.Struct,
    bodies: Sequence[Buffer] = (),
    *,
    flags: int = 0,
) -> list[Buffer]:
    """The frames of one request (DEALER side: no identity frame).

    Raises:
        FrameTooLargeError: a frame or the whole request is over its limit; nothing to send.
    """
    header = _encoder.encode((int(code), PROTOCOL_VERSION, request_id, int(flags), body))
    sizes = body.body_sizes if isinstance(body, SendBatchBody) and body.body_sizes else None
    _check_sizes(len(header), bodies, request_id, flags, sizes)
    return [header, *bodies]


def _check_sizes(
    header_len: int,
    bodies: Sequence[Buffer],
    request_id: int,
    flags: int,
    packed: Sequence[int] | None = None,
) -> None:
    """The limits of 2.x: header, message count, each body, the whole request.

    ``packed``: the sizes of the bodies packed in the one body frame (SendBatchBody
    body_sizes); each is checked as a body frame would be.
    """
    total = header_len
    if total > MAX_HEADER_BYTES:
        raise FrameTooLargeError("frame 0", total, MAX_HEADER_BYTES, request_id, flags)
    count = len(bodies) if packed is None else len(packed)
    if count > MAX_BATCH_MESSAGES:
        raise FrameError(
            ResponseCode.MESSAGE_ILLEGAL,
            f"{count} messages in one request, the limit is {MAX_BATCH_MESSAGES}",
            request_id,
            flags,
        )
    what = "frame" if packed is None else "packed body"
    sizes = (len(frame) for frame in bodies) if packed is None else packed
    for i, size in enumerate(sizes, 1):
        if size > MAX_MESSAGE_BYTES:
            raise FrameTooLargeError(f"{what} {i}", size, MAX_MESSAGE_BYTES, request_id, flags)
        total += size
    if total > MAX_REQUEST_BYTES:
        raise FrameTooLargeError("the request", total, MAX_REQUEST_BYTES, request_id, flags)


def _unpack_bodies(
    request: SendBatchRequest, bodies: Sequence[Buffer], header_len: int
) -> list[bytes]:
    """Split the one body frame of a packed SEND_BATCH_MESSAGE into the bodies (7.3)."""
    rid, flags = request.request_id, request.flags
    sizes = request.body.body_sizes
    if len(bodies) != 1:
        raise FrameError(
            ResponseCode.MALFORMED_REQUEST,
            f"a batch with body_sizes takes 1 body frame, got {len(bodies)}",
            rid,
            flags,
        )
    if len(sizes) != len(request.body.messages):
        raise FrameError(
            ResponseCode.MALFORMED_REQUEST,
            f"{len(sizes)} body_sizes for {len(request.body.messages)} messages",
            rid,
            flags,
        )
    if min(sizes) < 0:
        raise FrameError(ResponseCode.MALFORMED_REQUEST, "a negative body size", rid, flags)
    _check_sizes(header_len, bodies, rid, flags, sizes)
    frame = bodies[0]
    if sum(sizes) != len(frame):
        raise FrameError(
            ResponseCode.MALFORMED_REQUEST,
            f"body_sizes add up to {sum(sizes)} bytes, the body frame has {len(frame)}",
            rid,
            flags,
        )
    data = frame if type(frame) is bytes else bytes(frame)
    out: list[bytes] = []
    pos = 0
    for size in sizes:
        end = pos + size
        out.append(data[pos:end])
        pos = end
    return out


def parse_request(frames: Sequence[Buffer]) -> tuple[Request, Sequence[Buffer]]:
    """Parse the frames of one request (identity frame already removed).

    Returns:
        The envelope (one of the ``*Request`` types; match on it) and the bodies: the
        body frames, or for a packed SEND_BATCH_MESSAGE (``body_sizes``) the bodies cut
        out of its one body frame, one per entry either way.

    Raises:
        FrameError: the message is malformed, of another version, of an unknown code, has
            the wrong number of body frames, or breaks a limit.
    """
    if not frames:
        raise FrameError(ResponseCode.MALFORMED_REQUEST, "empty message")
    header = frames[0]
    try:
        request = _request_decoder.decode(header)
    except msgspec.DecodeError as exc:
        raise _diagnose(header, exc) from None
    rid, flags = request.request_id, request.flags
    if flags & _RESPONSE:
        # A reply where a request belongs: never answer it (two servers would ping-pong).
        raise FrameError(ResponseCode.MALFORMED_REQUEST, "got a reply, expected a request")
    if request.version != PROTOCOL_VERSION:
        raise FrameError(
            ResponseCode.VERSION_NOT_SUPPORTED,
            f"protocol version {request.version} is not supported (this is {PROTOCOL_VERSION})",
            rid,
            flags,
        )
    bodies = frames[1:]
    if isinstance(request, SendBatchRequest):
        if not request.body.messages:
            raise FrameError(ResponseCode.MALFORMED_REQUEST, "a batch with no messages", rid, flags)
        if request.body.body_sizes:
            return request, _unpack_bodies(request, bodies, len(header))
    expected = _expected_bodies(request)
    if len(bodies) != expected:
        raise FrameError(
            ResponseCode.MALFORMED_REQUEST,
            f"{request_code(request).name} takes {expected} body frame(s), got {len(bodies)}",
            rid,
            flags,
        )
    _check_sizes(len(header), bodies, rid, flags)
    return request, bodies


def request_code(request: Request) -> RequestCode:
    """The RequestCode of a parsed request (its envelope's tag)."""
    tag = type(request).__struct_config__.tag
    assert isinstance(tag, int)
    return RequestCode(tag)


def _expected_bodies(request: Request) -> int:
    match request:
        case SendMessageRequest():
            return 1
        case SendBatchRequest(body=body):
            return len(body.messages)
        case _:
            return 0


def _diagnose(header: Buffer, exc: msgspec.DecodeError) -> FrameError:
    """Why a header did not validate, with the request id when it can be recovered."""
    try:
        items = _loose_decoder.decode(header)
    except msgspec.DecodeError:
        return FrameError(ResponseCode.MALFORMED_REQUEST, f"frame 0 is not an array: {exc}")
    ints = [_as_int(item) for item in items[:4]]
    ints += [None] * (4 - len(ints))
    code, version, rid, flags = ints
    if rid is None or flags is None or rid < 0 or flags < 0 or flags & _RESPONSE:
        return FrameError(ResponseCode.MALFORMED_REQUEST, f"bad header: {exc}")
    if version != PROTOCOL_VERSION:
        return FrameError(
            ResponseCode.VERSION_NOT_SUPPORTED,
            f"protocol version {version} is not supported (this is {PROTOCOL_VERSION})",
            rid,
            flags,
        )
    if code is not None and code not in _REQUEST_CODES:
        return FrameError(
            ResponseCode.REQUEST_CODE_NOT_SUPPORTED, f"unknown request code {code}", rid, flags
        )
    return FrameError(ResponseCode.MALFORMED_REQUEST, f"bad request: {exc}", rid, flags)


def _as_int(item: msgspec.Raw) -> int | None:
    try:
        value: int = _int_decoder.decode(item)
    except msgspec.DecodeError:
        return None
    return value


# ---------------------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------------------


def encode_reply(
    request_id: int,
    code: ResponseCode,
    body: msgspec.Struct | None = None,
    *,
    remark: str = "",
    frames: Sequence[Buffer] = (),
) -> list[Buffer]:
    """The frames of one reply (the ROUTER side puts the identity frame in front)."""
    header = _encoder.encode(
        (
            int(code),
            PROTOCOL_VERSION,
            request_id,
            int(Flag.RESPONSE),
            remark,
            _EMPTY if body is None else body,
        )
    )
    return [header, *frames]


def parse_reply(frames: Sequence[Buffer]) -> Reply:
    """Parse the frames of one reply (DEALER side).

    Raises:
        FrameError: frame 0 is not a reply header; ``request_id`` is set when it could
            be recovered, so the waiting request can fail at once.
    """
    if not frames:
        raise FrameError(ResponseCode.MALFORMED_REQUEST, "empty reply")
    try:
        h = _reply_decoder.decode(frames[0])
    except msgspec.DecodeError as exc:
        rid = None
        try:
            items = _loose_decoder.decode(frames[0])
            rid = _as_int(items[2]) if len(items) > 2 else None
        except msgspec.DecodeError:
            pass
        raise FrameError(ResponseCode.MALFORMED_REQUEST, f"bad reply: {exc}", rid) from None
    return Reply(h.code, h.version, h.request_id, h.flags, h.remark, h.body, list(frames[1:]))
