"""Identifiers: random UUIDv4 for rows, time-ordered UUIDv7 (RFC 9562) for audit rows."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime

_lock = threading.Lock()
_last_v7 = 0


def new_id() -> str:
    return str(uuid.uuid4())


def uuid7(moment: datetime) -> str:
    """A UUIDv7 for `moment`: 48-bit unix milliseconds, version 7, 74 random bits, variant 10.

    Monotonic within the process (RFC 9562 §6.2, method 2): an id made in the same millisecond as the
    previous one, or for an earlier moment, is the previous one plus one, so audit rows written in one
    transaction keep their order when readers sort by `(occurred_at, id)`.
    """
    global _last_v7
    millis = int(moment.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)  # 62 bits
    value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    with _lock:
        if value <= _last_v7 and (_last_v7 >> 80) >= millis:
            value = _next_v7(_last_v7)
        _last_v7 = value
    digits = f"{value:032x}"  # what str(uuid.UUID(int=value)) writes, without building the UUID
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _next_v7(previous: int) -> int:
    """`previous` + 1 in the random bits, skipping the version and variant fields."""
    rand_b = (previous & ((1 << 62) - 1)) + 1
    rand_a = (previous >> 64) & 0xFFF
    millis = previous >> 80
    if rand_b >> 62:
        rand_b = 0
        rand_a += 1
        if rand_a >> 12:
            rand_a = 0
            millis += 1
    return (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
