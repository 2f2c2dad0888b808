"""The wire protocol: codes, message Structs, frame layout and naming rules (stdlib + msgspec only).

Submodules, bottom up: ``codes`` (every number on the wire), ``names`` (topic and group
naming rules), ``messages`` (the msgspec Structs of headers and bodies) and ``frames``
(the order of the frames, encode and parse, size limits). docs/PROTOCOL.md describes the
same protocol byte by byte for clients in other languages.
"""

from __future__ import annotations

from .codes import (
    DEFAULT_BROKER_EXPIRY,
    DEFAULT_BROKER_HEARTBEAT_INTERVAL,
    PROTOCOL_VERSION,
    Flag,
    Perm,
    PullStatus,
    RequestCode,
    ResponseCode,
    SendStatus,
    SysFlag,
    pull_status_for,
    send_status_for,
)
from .frames import (
    MAX_BATCH_MESSAGES,
    MAX_HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    FrameError,
    FrameTooLargeError,
    Reply,
    decode_body,
    encode_reply,
    encode_request,
    parse_reply,
    parse_request,
    request_code,
)
from .messages import BODY_CODES, BODY_TYPES, REPLY_TYPES, REQUEST_TYPES, Request
from .names import check_group, check_topic, dlq_topic, is_system_topic, retry_topic

__all__ = [
    "BODY_CODES",
    "BODY_TYPES",
    "DEFAULT_BROKER_EXPIRY",
    "DEFAULT_BROKER_HEARTBEAT_INTERVAL",
    "MAX_BATCH_MESSAGES",
    "MAX_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "Flag",
    "FrameError",
    "FrameTooLargeError",
    "Perm",
    "PullStatus",
    "Reply",
    "Request",
    "RequestCode",
    "ResponseCode",
    "SendStatus",
    "SysFlag",
    "check_group",
    "check_topic",
    "decode_body",
    "dlq_topic",
    "encode_reply",
    "encode_request",
    "is_system_topic",
    "parse_reply",
    "parse_request",
    "pull_status_for",
    "request_code",
    "retry_topic",
    "send_status_for",
]
