"""docs/schema.md §1 stored forms (timestamps, UUIDv7 audit ids) and docs/configuration.md §2 durations."""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import ids, timeutil

STORED_TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

offsets = st.builds(
    timezone, st.timedeltas(-timedelta(hours=23, minutes=59), timedelta(hours=23, minutes=59))
)
moments = st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=offsets)


def in_schema_form(text: str) -> bool:
    """The schema's CHECK: `length(x) = 27 AND substr(x, 11, 1) = 'T' AND substr(x, 27, 1) = 'Z'` (1-based)."""
    return len(text) == 27 and text[10] == "T" and text[26] == "Z"


# --- timestamps --------------------------------------------------------------------------------------


def test_format_ts_writes_the_stored_form_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert timeutil.format_ts(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    moment = datetime(2026, 1, 2, 1, 4, 5, 7, tzinfo=plus_two)
    assert timeutil.format_ts(moment) == "2026-01-01T23:04:05.000007Z"


@given(moments)
def test_format_ts_is_always_the_27_character_form(moment: datetime) -> None:
    text = timeutil.format_ts(moment)
    assert in_schema_form(text)
    assert STORED_TS.match(text)


@given(moments, offsets)
def test_format_ts_writes_each_instant_the_same_whatever_its_offset_and_whatever_came_before(
    moment: datetime, offset: timezone
) -> None:
    """format_ts remembers the seconds it wrote lately; an instant is the same text in UTC and in any offset."""
    expected = moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    assert timeutil.format_ts(moment) == expected
    assert timeutil.format_ts(moment.astimezone(offset)) == expected
    assert timeutil.format_ts(moment.astimezone(UTC)) == expected
    assert timeutil.format_ts(moment.astimezone(UTC)) == expected  # the second's text remembered
    later = (moment + timedelta(microseconds=1)).astimezone(UTC)
    assert timeutil.format_ts(later) != expected


def test_format_ts_pads_short_years() -> None:
    # e.g. a provider's zero timestamp `0001-01-01T00:00:00Z` passed through normalize_timestamp
    assert timeutil.format_ts(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"


@given(moments, moments)
def test_format_ts_sorts_like_time(a: datetime, b: datetime) -> None:
    fa, fb = timeutil.format_ts(a), timeutil.format_ts(b)
    assert (fa < fb) == (a < b)
    assert (fa == fb) == (a == b)


def test_format_ts_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone"):
        timeutil.format_ts(datetime(2026, 1, 2, 3, 4, 5))


@given(moments)
def test_parse_ts_round_trips(moment: datetime) -> None:
    text = timeutil.format_ts(moment)
    back = timeutil.parse_ts(text)
    assert back == moment
    assert back.utcoffset() == timedelta(0)
    assert timeutil.format_ts(back) == text


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("72h", timedelta(hours=72)),
        ("2d", timedelta(days=2)),
        ("0s", timedelta(0)),
        ("007m", timedelta(minutes=7)),
    ],
)
def test_parse_duration_accepts_the_form(text: str, delta: timedelta) -> None:
    assert timeutil.parse_duration(text) == delta


@given(st.integers(0, 10**8), st.sampled_from([("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]))
def test_parse_duration_property(number: int, unit: tuple[str, int]) -> None:
    assert timeutil.parse_duration(f"{number}{unit[0]}") == timedelta(seconds=number * unit[1])


@given(st.text(alphabet="0123456789smhdSMHDw.-+:_PT", max_size=6))
def test_parse_duration_accepts_exactly_the_regex(text: str) -> None:
    if re.fullmatch(r"[0-9]+[smhd]", text):
        timeutil.parse_duration(text)
    else:
        with pytest.raises(ValueError):
            timeutil.parse_duration(text)


@pytest.mark.parametrize("text", ["1000000000d", "99999999999999999999s"])
def test_parse_duration_out_of_range_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        timeutil.parse_duration(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "15",
        "m",
        "1.5h",
        "-1m",
        "+1m",
        "1 m",
        "1M",
        "1H",
        "1w",
        "1ms",
        "1h30m",
        "PT1M",
        "ten m",
        " 15m",
        "15m\n",
        "\u0663m",  # Arabic-Indic 3
    ],
)
def test_parse_duration_rejects_anything_else_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        timeutil.parse_duration(text)
    message = str(caught.value)
    assert repr(text) in message
    assert all(example in message for example in ("90s", "15m", "72h", "2d"))


# --- ids ---------------------------------------------------------------------------------------------


@contextmanager
def fresh_v7() -> Iterator[None]:
    """Run with the process's UUIDv7 monotonic state cleared, then put it back for the other tests."""
    saved = ids._last_v7
    ids._last_v7 = bytes(16)
    try:
        yield
    finally:
        ids._last_v7 = saved


def millis(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(milliseconds=1)


def assert_canonical_v7(text: str) -> uuid.UUID:
    value = uuid.UUID(text)
    assert CANONICAL_UUID.match(text)
    assert str(value) == text
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    return value


def test_uuid7_layout() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 456_789, tzinfo=UTC)
    with fresh_v7():
        value = assert_canonical_v7(ids.uuid7(moment))
    assert value.int >> 80 == millis(moment)


def test_uuid7_orders_by_time_across_milliseconds() -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    moments = [start + timedelta(milliseconds=n) for n in (0, 1, 2, 1000, 60_000, 86_400_000)]
    with fresh_v7():
        made = [ids.uuid7(m) for m in moments]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert [uuid.UUID(u).int >> 80 for u in made] == [millis(m) for m in moments]


@given(st.lists(moments, min_size=2, max_size=20))
def test_uuid7_never_goes_backwards(made_at: list[datetime]) -> None:
    with fresh_v7():
        made = [ids.uuid7(m) for m in sorted(made_at)]
    assert all(a < b for a, b in itertools.pairwise(made))
    for text in made:
        assert_canonical_v7(text)


def test_uuid7_is_strictly_increasing_within_one_millisecond() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 123_000, tzinfo=UTC)
    with fresh_v7():
        made = [ids.uuid7(moment) for _ in range(5000)]
    assert all(a < b for a, b in itertools.pairwise(made))
    for text in made:
        assert_canonical_v7(text)
    assert uuid.UUID(made[0]).int >> 80 == millis(moment)


def random_bits(text: str) -> int:
    """The 74 random bits of a UUIDv7: rand_a (12) then rand_b (62)."""
    value = uuid.UUID(text).int
    return ((value >> 64) & 0xFFF) << 62 | value & ((1 << 62) - 1)


def test_uuid7_random_bits_never_repeat_across_refills_of_the_pool() -> None:
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with fresh_v7():  # a millisecond apart, so none is its predecessor plus one: every id takes fresh bits
        made = [ids.uuid7(start + timedelta(milliseconds=n)) for n in range(5 * ids._POOL_BYTES // 10)]
    assert len({random_bits(u) for u in made}) == len(made)
    for text in made:
        assert_canonical_v7(text)


def test_a_forked_child_does_not_reuse_its_parents_random_bits() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    later = moment + timedelta(seconds=1)
    with fresh_v7():
        ids.uuid7(moment)  # the pool now holds bits a child would copy
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one id for `later`, to the parent, then out without pytest's cleanup
            try:
                os.write(write, ids.uuid7(later).encode())
            finally:
                os._exit(0)
        os.close(write)
        child = os.read(read, 100).decode()
        os.close(read)
        os.waitpid(pid, 0)
        parent = ids.uuid7(later)
    assert_canonical_v7(child)
    assert random_bits(child) != random_bits(parent)


def test_new_id_is_a_canonical_random_uuid() -> None:
    made = {ids.new_id() for _ in range(100)}
    assert len(made) == 100
    assert all(CANONICAL_UUID.match(u) and uuid.UUID(u).version == 4 for u in made)
