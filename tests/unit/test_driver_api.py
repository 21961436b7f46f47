"""SPEC §5, §6, §9, §10: the pure helpers and types of the driver API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.driver_api import (
    CommonSettings,
    ProviderStatus,
    Snapshot,
    decimal_to_sats,
    floor_sats,
    normalize_timestamp,
    parse_retry_after,
)

# --- decimal_to_sats / floor_sats (§6) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sats"),
    [
        ("1", 100_000_000),
        ("0.00012345", 12_345),
        ("21000000", 2_100_000_000_000_000),
        ("0.000000005", 1),  # half a sat rounds up
        ("0.000000025", 3),  # half up, not half even
        ("0.0000000049", 0),
        ("0.00001000999", 1_001),
        (" 0.5 ", 50_000_000),
        ("1E-8", 1),
        ("0", 0),
    ],
)
def test_btc_amounts_are_sats_rounded_half_up(text: str, sats: int) -> None:
    assert decimal_to_sats(text) == sats
    assert decimal_to_sats(text, unit="BTC") == sats


@pytest.mark.parametrize(
    ("text", "sats"), [("12345", 12_345), ("0", 0), (" 777 ", 777), (2_100, 2_100), ("1E+3", 1_000)]
)
def test_sats_amounts_are_whole_numbers(text: str | int, sats: int) -> None:
    assert decimal_to_sats(text, unit="SATS") == sats


@pytest.mark.parametrize("text", ["12345.5", "0.1", "1E-1"])
def test_sats_amounts_with_a_fraction_are_unparseable(text: str) -> None:
    assert decimal_to_sats(text, unit="SATS") is None


@pytest.mark.parametrize("unit", ["BTC", "SATS"])
@pytest.mark.parametrize(
    "text",
    [
        *("NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", "", "   ", "abc", "1,5", "0x10", "1.2.3"),
        *(None, True, False, [1], {"amount": 1}),
    ],
)
def test_unparseable_amounts_have_no_opinion(unit: str, text: object) -> None:
    assert decimal_to_sats(text, unit=unit) is None


@pytest.mark.parametrize("unit", ["USD", "EUR", ""])
def test_fiat_amounts_have_no_opinion(unit: str) -> None:
    assert decimal_to_sats("10.00", unit=unit) is None


@given(st.decimals(min_value=0, max_value=21_000_000, places=8, allow_nan=False, allow_infinity=False))
def test_btc_with_eight_places_is_exact(value: Decimal) -> None:
    assert decimal_to_sats(str(value)) == int(value.scaleb(8))


@given(st.decimals(min_value=0, max_value=10**12, places=12, allow_nan=False, allow_infinity=False))
def test_btc_rounds_half_up(value: Decimal) -> None:
    expected = int((value * 10**8).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert decimal_to_sats(format(value, "f")) == expected


def test_btc_rounding_looks_at_the_exact_value() -> None:
    assert decimal_to_sats("0.00000000" + "4" + "9" * 30) == 0


@pytest.mark.parametrize("text", ["1e100", "9" * 40])
def test_absurd_btc_amounts_do_not_crash(text: str) -> None:
    result = decimal_to_sats(text)
    assert result is None or result > 0


@given(st.text(max_size=30) | st.from_regex(r"-?[0-9]{0,8}(\.[0-9]{0,12})?([eE]-?[0-9])?", fullmatch=True))
def test_decimal_to_sats_is_total(text: str) -> None:
    for unit in ("BTC", "SATS", "USD"):
        result = decimal_to_sats(text, unit=unit)
        assert result is None or isinstance(result, int)


@pytest.mark.parametrize(
    ("text", "sats"),
    [
        ("0.00001000999", 1_000),  # a Lightning payment's msat fraction is floored
        ("0.000000019", 1),
        ("0.00000001", 1),
        ("0.000000009", 0),
        ("1", 100_000_000),
        ("NaN", None),
        ("", None),
        (None, None),
    ],
)
def test_floor_sats_floors_msat_fractions(text: str | None, sats: int | None) -> None:
    assert floor_sats(text) == sats


@given(st.decimals(min_value=0, max_value=21_000_000, places=11, allow_nan=False, allow_infinity=False))
def test_floor_sats_never_exceeds_the_value(value: Decimal) -> None:
    sats = floor_sats(format(value, "f"))
    assert sats is not None
    assert sats <= value * 10**8 < sats + 1


# --- parse_retry_after (§4.3) ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("120", 120.0), ("0", 0.0), (" 7 ", 7.0)])
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_a_future_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=90)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 85 <= seconds <= 90


def test_retry_after_as_a_past_http_date_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "12 seconds", "Someday, 99 Foo 2015"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


# --- Snapshot, CommonSettings, ProviderStatus ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "additional", "observation"),
    [
        ("Expired", "PaidLate", "Expired/PaidLate"),
        ("Settled", None, "Settled"),
        ("PAID", None, "PAID"),
        ("New", "None", "New/None"),
    ],
)
def test_snapshot_observation(raw: str, additional: str | None, observation: str) -> None:
    assert Snapshot(ProviderStatus.PENDING, raw, additional).observation == observation


def test_snapshot_defaults_are_no_opinion() -> None:
    snapshot = Snapshot(ProviderStatus.PENDING, "New")
    assert (snapshot.currency, snapshot.amount_sats, snapshot.paid_sats) == (None, None, None)
    flags = (snapshot.paid_late, snapshot.partially_paid, snapshot.overpaid, snapshot.manually_marked)
    assert flags == (False, False, False, False)


def test_worst_fetch_defaults() -> None:
    # 10 s × 3 attempts + 10 s × 2 pauses
    assert CommonSettings(driver="btcpay").worst_fetch == 50.0


@given(
    timeout=st.floats(0.001, 600),
    attempts=st.integers(1, 20),
    max_delay=st.floats(0, 600),
)
def test_worst_fetch_formula(timeout: float, attempts: int, max_delay: float) -> None:
    common = CommonSettings(driver="x", timeout=timeout, retry_attempts=attempts, retry_max_delay=max_delay)
    assert common.worst_fetch == pytest.approx(timeout * attempts + max_delay * (attempts - 1))


def test_a_single_attempt_is_one_timeout() -> None:
    assert CommonSettings(driver="x", timeout=7, retry_attempts=1, retry_max_delay=99).worst_fetch == 7


def test_provider_status_members() -> None:
    names = ("PENDING", "SETTLED", "EXPIRED", "INVALID", "REFUNDED", "UNKNOWN")
    assert tuple(s.name for s in ProviderStatus) == names
    assert all(s.value == s.name for s in ProviderStatus)


# --- normalize_timestamp (§10) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("2026-03-04T05:06:07Z", "2026-03-04T05:06:07.000000Z"),
        ("2026-03-04T07:06:07.5+02:00", "2026-03-04T05:06:07.500000Z"),
        ("2026-03-04T05:06:07", "2026-03-04T05:06:07.000000Z"),  # no offset: UTC
        ("next tuesday", None),
        ("", None),
    ],
)
def test_normalize_timestamp(text: str, stored: str | None) -> None:
    assert normalize_timestamp(text) == stored


def test_normalize_timestamp_keeps_the_stored_form_for_a_zero_timestamp() -> None:
    stored = normalize_timestamp("0001-01-01T00:00:00Z")  # a zero timestamp some APIs send
    assert stored is None or len(stored) == 27
