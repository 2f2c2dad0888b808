"""The body of a fabric bench message: a 20-byte header, then random padding.

Layout (big-endian, ``struct`` format ``>2sBxIIQ``)::

    offset  size  field
    0       2     magic b"FB"
    2       1     kind: 1 measured, 2 warm-up (consumers ignore warm-up messages)
    3       1     padding (zero)
    4       4     run id (random per run: consumers ignore other runs' messages)
    8       4     producer index within the run
    12      8     sequence number within that producer (0, 1, 2, ...)
    20      ...   random bytes up to the body size

Random padding does not compress, and fabric bench sends bodies uncompressed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Final

__all__ = ["HEADER", "KIND_MEASURED", "KIND_WARMUP", "body_maker", "parse_header"]

HEADER: Final = struct.Struct(">2sBxIIQ")
assert HEADER.size == 20
_MAGIC: Final = b"FB"
KIND_MEASURED: Final = 1
KIND_WARMUP: Final = 2


def body_maker(size: int, run_id: int, producer: int) -> Callable[..., bytes]:
    """A function ``(seq, kind=KIND_MEASURED) -> body`` of ``size`` bytes."""
    pad = os.urandom(max(0, size - HEADER.size))
    pack = HEADER.pack

    def make(seq: int, kind: int = KIND_MEASURED) -> bytes:
        return pack(_MAGIC, kind, run_id, producer, seq) + pad

    return make


def parse_header(body: bytes) -> tuple[int, int, int, int] | None:
    """(kind, run id, producer, seq) of a fabric bench body, or None for any other body."""
    if len(body) < HEADER.size or body[:2] != _MAGIC:
        return None
    _, kind, run_id, producer, seq = HEADER.unpack_from(body)
    return kind, run_id, producer, seq
