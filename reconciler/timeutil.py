"""Timestamps in the shared database's one text form (docs/schema.md §1) and durations
(docs/configuration.md §2)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def utcnow() -> datetime:
    """The real clock; injected everywhere else so tests can fix time."""
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# `2026-01-02T03:04:05` of the seconds formatted lately, by seconds since the epoch: the moments a pass writes
# fall in few seconds. Dict reads and writes are atomic for the threads sharing it.
_SECONDS: dict[int, str] = {}
_SECONDS_MAX = 4096
# The last UTC moment written and its text: a settle writes one moment into several columns and rows in a
# row. One tuple, replaced whole, so the threads sharing it never see a moment with another's text.
_last: tuple[datetime | None, str] = (None, "")


def format_ts(moment: datetime) -> str:
    """`2026-01-02T03:04:05.000000Z`: 27 characters, sorts as text, the only form writers may use."""
    global _last
    if moment.tzinfo is UTC:  # what the clock and the stored form give: the second's text, then the micros
        last = _last
        if last[0] is moment:
            return last[1]
        since = moment - _EPOCH
        second = since.days * 86_400 + since.seconds
        prefix = _SECONDS.get(second)
        if prefix is None:
            if len(_SECONDS) >= _SECONDS_MAX:
                _SECONDS.clear()
            prefix = _SECONDS[second] = moment.isoformat(timespec="seconds")[:19]
        text = f"{prefix}.{moment.microsecond:06d}Z"
        _last = (moment, text)
        return text
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    utc = moment.astimezone(UTC) if moment.utcoffset() else moment
    # isoformat pads the year to 4 digits and, with timespec, always writes the microseconds (and then the
    # offset, +00:00, which the stored form spells Z)
    return utc.isoformat(timespec="microseconds")[:26] + "Z"


def parse_ts(text: str) -> datetime:
    """Read a timestamp written by `format_ts` (or any ISO-8601 form with an offset)."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_duration(text: str) -> timedelta:
    """`"90s"`, `"15m"`, `"72h"`, `"2d"`; anything else is a ValueError naming the accepted form."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: write a whole number and a unit, e.g. 90s, 15m, 72h, 2d"
        )
    try:
        return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None


def format_duration(delta: timedelta) -> str:
    """The shortest exact duration string for `delta` (whole seconds)."""
    seconds = int(delta.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
