"""Identifiers: random UUIDv4 for rows, time-ordered UUIDv7 (RFC 9562) for audit rows."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import datetime

_lock = threading.Lock()
_last_v7 = bytes(16)  # the last UUIDv7 made, as its 16 bytes: big-endian, so bytes order as the ids do
# Random bits are fetched from the OS a few thousand bytes at a time rather than ten per id: one getrandom
# call per 408 ids. A forked child starts with an empty pool, so it never repeats its parent's bits.
_POOL_BYTES = 4080
_pool = b""
_pool_at = 0
_MILLIS_MASK = (1 << 48) - 1


def _forget_pool() -> None:
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def new_id() -> str:
    return str(uuid.uuid4())


def uuid7(moment: datetime) -> str:
    """A UUIDv7 for `moment`: 48-bit unix milliseconds, version 7, 74 random bits, variant 10.

    Monotonic within the process (RFC 9562 §6.2, method 2): an id made in the same millisecond as the
    previous one, or for an earlier moment, is the previous one plus one, so audit rows written in one
    transaction keep their order when readers sort by `(occurred_at, id)`.
    """
    global _last_v7, _pool, _pool_at
    millis = (int(moment.timestamp() * 1000) & _MILLIS_MASK).to_bytes(6, "big")
    with _lock:
        at = _pool_at
        if at >= len(_pool):
            _pool, at = os.urandom(_POOL_BYTES), 0
        rand = _pool[at : at + 10]
        _pool_at = at + 10
        # version 7 over the top 4 bits of rand_a (12 bits), variant 10 over the top 2 of rand_b (62 bits)
        value = millis + bytes((0x70 | rand[0] & 0x0F, rand[1], 0x80 | rand[2] & 0x3F)) + rand[3:]
        if value <= _last_v7:  # the same millisecond as the last id, or the clock stepped back
            value = _next_v7(int.from_bytes(_last_v7, "big")).to_bytes(16, "big")
        _last_v7 = value
    digits = value.hex()  # what str(uuid.UUID(bytes=value)) writes, without building the UUID
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
