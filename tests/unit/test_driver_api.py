"""docs/statuses.md §2, docs/reconcile.md §14, §16, docs/drivers.md §5: the pure helpers and types of the
driver API."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal
from email.utils import format_datetime

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import driver_api
from reconciler.driver_api import (
    RETRY_AFTER_MAX,
    CommonSettings,
    ProviderStatus,
    Snapshot,
    decimal_to_sats,
    floor_sats,
    normalize_timestamp,
    parse_retry_after,
)

# --- decimal_to_sats / floor_sats (docs/reconcile.md §14) --------------------------------------------


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
        ("0.5", 50_000_000),
        ("0", 0),
        ("-0.00000001", -1),  # signed: whether a negative amount means anything is the driver's call
    ],
)
def test_btc_amounts_are_sats_rounded_half_up(text: str, sats: int) -> None:
    assert decimal_to_sats(text) == sats
    assert decimal_to_sats(text, unit="BTC") == sats


@pytest.mark.parametrize(("text", "sats"), [("12345", 12_345), ("0", 0), ("777.000", 777), (2_100, 2_100)])
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
        *(None, True, False, [1], {"amount": 1}, 1.0, 1e3),
        # Only plain ASCII decimals: Decimal() would read every one of these as a number.
        *(
            "1_000",
            "\u0661\u0660",
            "\uff11",
            "1e3",
            "1E-8",
            "+5",
            " 5",
            "5 ",
            "\t5",
            "5\n",
            ".5",
            "5.",
            "-",
            "--5",
        ),
        "1" * 41,  # longer than any real amount: refused before any arithmetic
    ],
)
def test_unparseable_amounts_have_no_opinion(unit: str, text: object) -> None:
    assert decimal_to_sats(text, unit=unit) is None


@pytest.mark.parametrize("unit", ["USD", "EUR", ""])
def test_fiat_amounts_have_no_opinion(unit: str) -> None:
    assert decimal_to_sats("10.00", unit=unit) is None


@given(st.decimals(min_value=0, max_value=21_000_000, places=8, allow_nan=False, allow_infinity=False))
def test_btc_with_eight_places_is_exact(value: Decimal) -> None:
    assert decimal_to_sats(format(value, "f")) == int(value.scaleb(8))


@given(st.decimals(min_value=0, max_value=10**12, places=12, allow_nan=False, allow_infinity=False))
def test_btc_rounds_half_up(value: Decimal) -> None:
    expected = int((value * 10**8).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert decimal_to_sats(format(value, "f")) == expected


def test_btc_rounding_looks_at_the_exact_value() -> None:
    assert decimal_to_sats("0.00000000" + "4" + "9" * 29) == 0  # 40 characters, the longest accepted


@pytest.mark.parametrize("text", ["1e100", "9" * 40, "0." + "1" * 38, 10**60, -(10**60)])
def test_absurd_btc_amounts_do_not_crash(text: str | int) -> None:
    result = decimal_to_sats(text)
    assert result is None or abs(result) > 0


def test_a_long_fraction_is_rounded_once_on_the_exact_value() -> None:
    # 0.000000005 followed by many zeros and a 1 is over half a sat: half up gives 1, whatever a
    # 28-digit intermediate rounding would have made of it.
    assert decimal_to_sats("0.000000004" + "9" * 29) == 0
    assert decimal_to_sats("0.0000000050000000000000000000000000001") == 1
    assert decimal_to_sats("0.0000000149999999999999999999999999999", rounding=ROUND_HALF_UP) == 1


def _decimal_to_sats_by_decimal(text: str, unit: str, rounding: str) -> int | None:
    """The rule as docs/reconcile.md §14 states it, all through Decimal: the oracle of the fast path."""
    if len(text) > 40 or not re.fullmatch(r"-?[0-9]+(?:\.[0-9]+)?", text):
        return None
    value = Decimal(text)
    if unit.upper() == "BTC":
        exact = Context(prec=100)
        return int(value.scaleb(8, context=exact).quantize(Decimal(1), rounding=rounding, context=exact))
    if value != value.to_integral_value():
        return None
    return int(value)


_AMOUNT_TEXT = st.from_regex(r"-?[0-9]{1,12}(\.[0-9]{0,12})?", fullmatch=True) | st.text(
    st.sampled_from("0123456789.-+e \u0661\u00b2"), max_size=14
)


@given(
    _AMOUNT_TEXT,
    st.sampled_from(["BTC", "btc", "SATS", "sats"]),
    st.sampled_from([ROUND_HALF_UP, ROUND_FLOOR]),
)
def test_every_amount_text_gives_what_decimal_arithmetic_gives(text: str, unit: str, rounding: str) -> None:
    assert decimal_to_sats(text, unit=unit, rounding=rounding) == _decimal_to_sats_by_decimal(
        text, unit, rounding
    )


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_python_ints_are_exact(value: int) -> None:
    assert decimal_to_sats(value, unit="SATS") == value
    assert decimal_to_sats(value, unit="BTC") == value * 100_000_000


@given(st.text(max_size=30) | st.from_regex(r"-?[0-9]{0,8}(\.[0-9]{0,12})?([eE]-?[0-9])?", fullmatch=True))
def test_decimal_to_sats_is_total(text: str) -> None:
    plain = re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", text) is not None
    for unit in ("BTC", "SATS", "USD"):
        result = decimal_to_sats(text, unit=unit)
        assert result is None or isinstance(result, int)
        if not plain:
            assert result is None


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


# --- parse_retry_after (docs/reconcile.md §3) --------------------------------------------------------


NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"), [("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("\t7", 7.0), ("007", 7.0)]
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_a_future_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=90)
    seconds = parse_retry_after(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 85 <= seconds <= 90


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 04 Mar 2026 05:08:07 GMT",  # IMF-fixdate
        "Wednesday, 04-Mar-26 05:08:07 GMT",  # obsolete RFC 850 form
        "Wed Mar  4 05:08:07 2026",  # obsolete asctime form
    ],
)
def test_retry_after_reads_the_three_http_date_forms(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == 120.0


def test_retry_after_as_a_past_http_date_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    "value",
    [
        *(None, "", "soon", "-5", "1.5", "12 seconds", "Someday, 99 Foo 2015", "+5", "5s", "1e3", "0x10"),
        # Non-ASCII digits: str.isdigit() accepts them and float() then raised ValueError (issue 10).
        *("\u00b2", "\u0661\u0660", "\uff17", "\u00b9\u00b2"),
        # Dates that are almost HTTP-dates, or impossible ones.
        *("Wed, 31 Feb 2026 00:00:00 GMT", "Wed, 04 Mar 2026 25:00:00 GMT", "Wed, 04 Mar 2026 05:08:07 PST"),
        *("Wed, 04 Mar 2026 05:08:07", "04 Mar 2026 05:08:07 GMT", "Wed, 4 Mar 10000 05:08:07 GMT"),
        "Wed, 04 Mar 2026 05:08:07 +0000",
        # What an HTTP client makes of raw bytes that are not UTF-8 (surrogateescape).
        "\udcff\udcfe",
        "7\x00",
    ],
)
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@pytest.mark.parametrize(
    "value", ["99999999999999999999", "9" * 5000, "86401", "Fri, 31 Dec 9999 23:59:59 GMT"]
)
def test_retry_after_is_clamped_to_a_day(value: str) -> None:
    # Unbounded, 99999999999999999999 seconds overflowed timedelta downstream (issue 10).
    assert parse_retry_after(value, now=NOW) == RETRY_AFTER_MAX == 86_400.0
    timedelta(seconds=RETRY_AFTER_MAX)  # what the runner builds from it


@given(st.text(max_size=40))
def test_retry_after_never_raises_and_stays_in_range(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or 0.0 <= seconds <= RETRY_AFTER_MAX


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


# --- normalize_timestamp (docs/drivers.md §5) --------------------------------------------------------


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


# --- CommonSettings.max_response_bytes (issue 10) ------------------------------------------------------


def test_max_response_bytes_defaults_to_4_mib() -> None:
    assert CommonSettings(driver="x").max_response_bytes == 4 * 1024 * 1024


@pytest.mark.parametrize("value", [0, 1023, -1])
def test_max_response_bytes_has_a_floor(value: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="max_response_bytes"):
        CommonSettings(driver="x", max_response_bytes=value)


# --- check_snapshot (issue 10): what the store cannot write or the core cannot trust is refused --------

GOOD = Snapshot(
    ProviderStatus.SETTLED,
    "Settled",
    "PaidOver",
    currency="BTC",
    amount_sats=1_000,
    paid_sats=2**63 - 1,
    overpaid=True,
    amount_raw=None,
)


def check(snapshot: object) -> Snapshot:
    return driver_api.check_snapshot(snapshot, provider_id="p1", invoice_id="inv1")  # type: ignore[arg-type]


def test_a_good_snapshot_passes_unchanged() -> None:
    assert check(GOOD) is GOOD
    minimal = Snapshot(ProviderStatus.UNKNOWN, "")
    assert check(minimal) is minimal
    unicode = Snapshot(ProviderStatus.PENDING, "Payé ✓ 🎉", "Ünïcødé", currency="€", amount_raw="'NaN'")
    assert check(unicode) is unicode


BAD_FIELDS: list[tuple[str, object]] = [
    ("status", "SETTLED"),  # a str, not the enum
    ("status", None),
    ("raw_status", None),
    ("raw_status", b"Settled"),
    ("raw_status", 3),
    ("raw_status", "\ud800"),  # a lone surrogate: UnicodeEncodeError on SQLite, DataError on PostgreSQL
    ("raw_status", "Settled\udfff"),
    ("raw_status", "Sett\x00led"),  # NUL: PostgreSQL text cannot hold it
    ("raw_status", "Settled\n"),
    ("raw_status", "\x1b[31mSettled"),
    ("raw_status", "Settled\x7f"),
    ("raw_status", "Settled\x85"),  # C1 (NEL)
    ("raw_status", "S" * 201),
    ("raw_additional_status", "\ud800"),
    ("raw_additional_status", "x" * 201),
    ("raw_additional_status", 7),
    ("currency", "BTC\x00"),
    ("currency", 1),
    ("currency", "B" * 201),
    ("amount_raw", "\x00"),
    ("amount_raw", 5),
    ("amount_sats", -1),
    ("amount_sats", 2**63),
    ("amount_sats", True),
    ("amount_sats", 1.0),
    ("amount_sats", "5"),
    ("paid_sats", -5),
    ("paid_sats", 10**40),
    ("paid_sats", False),
    ("paid_late", 1),
    ("partially_paid", None),
    ("overpaid", "yes"),
    ("manually_marked", 0),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_a_snapshot_the_store_cannot_write_is_a_bad_response(field: str, value: object) -> None:
    snapshot = dataclasses.replace(GOOD, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(driver_api.BadProviderResponse) as caught:
        check(snapshot)
    error = caught.value
    assert (error.provider_id, error.invoice_id) == ("p1", "inv1")
    assert field in str(error)
    # The message names the field, never the value (it may be huge, binary or buyer data).
    assert "\x00" not in str(error) and "\ud800" not in str(error) and "S" * 50 not in str(error)


def test_something_that_is_not_a_snapshot_is_a_bad_response() -> None:
    with pytest.raises(driver_api.BadProviderResponse, match="not a Snapshot"):
        check({"status": "SETTLED"})


def test_200_characters_are_fine() -> None:
    snapshot = dataclasses.replace(GOOD, raw_status="S" * 200, currency="C" * 200)
    assert check(snapshot) is snapshot


@given(st.text(max_size=220), st.none() | st.text(max_size=20))
def test_check_snapshot_accepts_exactly_what_sqlite_and_postgresql_can_store(
    raw: str, extra: str | None
) -> None:
    snapshot = dataclasses.replace(GOOD, raw_status=raw, raw_additional_status=extra)
    storable = all(
        text is None
        or (
            len(text) <= 200
            and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in text)
        )
        for text in (raw, extra)
    )
    if storable:
        assert check(snapshot) is snapshot
        for text in (raw, extra):
            (text or "").encode("utf-8")  # what both stores do with it
    else:
        with pytest.raises(driver_api.BadProviderResponse):
            check(snapshot)


def test_amount_raw_defaults_to_none() -> None:
    assert Snapshot(ProviderStatus.PENDING, "New").amount_raw is None


# --- raw_evidence: how a provider's unusable value is shown ------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("NaN", "'NaN'"),
        ("-5", "'-5'"),
        ("1e3", "'1e3'"),
        (-5, "-5"),
        (0, "0"),
        (1.5, "1.5"),
        (None, "None"),
        (True, "True"),
        ("a\nb\x00\ud800", "'a\\nb\\x00\\ud800'"),
        ([1, 2], "<list>"),
        ({"a": 1}, "<dict>"),
    ],
)
def test_raw_evidence_is_a_short_escaped_repr(value: object, shown: str) -> None:
    assert driver_api.raw_evidence(value) == shown


@given(st.one_of(st.text(), st.integers(), st.floats(), st.binary()))
def test_raw_evidence_is_bounded_and_storable(value: object) -> None:
    shown = driver_api.raw_evidence(value)
    assert len(shown) <= driver_api.RAW_EVIDENCE_MAX
    snapshot = dataclasses.replace(GOOD, amount_raw=shown)
    assert check(snapshot) is snapshot


def test_raw_evidence_of_a_huge_value_is_cut() -> None:
    assert driver_api.raw_evidence("9" * 10_000).endswith("...")
    assert len(driver_api.raw_evidence(10**5000)) <= driver_api.RAW_EVIDENCE_MAX


# --- path_segment (issue 10): ids that cannot name one resource never reach the provider --------------


@pytest.mark.parametrize(
    ("invoice_id", "segment"),
    [
        ("inv1", "inv1"),
        ("a/b", "a%2Fb"),
        ("a b?c#d", "a%20b%3Fc%23d"),
        ("100%", "100%25"),
        ("ünï", "%C3%BCn%C3%AF"),
        ("...", "..."),
        ("x" * 200, "x" * 200),
    ],
)
def test_path_segment_quotes_everything(invoice_id: str, segment: str) -> None:
    assert driver_api.path_segment(invoice_id) == segment


@pytest.mark.parametrize(
    "invoice_id", ["", ".", "..", "x" * 201, "a\x00b", "a\nb", "\x7f", "a\x85", "\ud800", "ok\udfff"]
)
def test_path_segment_refuses_what_cannot_name_an_invoice(invoice_id: str) -> None:
    with pytest.raises(driver_api.InvoiceNotFound) as caught:
        driver_api.path_segment(invoice_id, provider_id="p1")
    assert (caught.value.provider_id, caught.value.invoice_id) == ("p1", invoice_id)
    assert "x" * 100 not in str(caught.value)


@given(st.text())
def test_path_segment_is_one_segment_or_not_found(invoice_id: str) -> None:
    try:
        segment = driver_api.path_segment(invoice_id)
    except driver_api.InvoiceNotFound:
        return
    assert segment not in ("", ".", "..")
    assert segment.isascii() and "/" not in segment and "?" not in segment and "#" not in segment
    assert urllib.parse.unquote(segment, errors="strict") == invoice_id


# --- ascii_upper: table matching folds ASCII case only (issue 10: 'ſettled' casefolds to 'settled') --


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Settled", "SETTLED"),
        ("paid", "PAID"),
        ("\u017fettled", "\u017fettled"),
        ("pa\u0131d", "pa\u0131d"),
        ("", ""),
    ],
)
def test_ascii_upper(text: str, folded: str) -> None:
    assert driver_api.ascii_upper(text) == folded


@pytest.mark.parametrize("unit", ["\u017fATS", "\u017fats", "b\u0074c\u0307"])
def test_a_unit_that_only_folds_to_btc_or_sats_is_fiat(unit: str) -> None:
    assert decimal_to_sats("10", unit=unit) is None


# --- check_payment_profile: a saved profile the store cannot write is refused ------------------------

PROFILE = driver_api.PaymentProfile("ct_1", "pp_1", "CARD", "2028-01-31T00:00:00.000000Z")


def test_a_good_payment_profile_passes_unchanged() -> None:
    assert driver_api.check_payment_profile(PROFILE, provider_id="p1", invoice_id="inv1") is PROFILE
    bare = driver_api.PaymentProfile("ct_1", "pp_1", None, None)
    assert driver_api.check_payment_profile(bare, provider_id="p1", invoice_id="inv1") is bare


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("contact_id", ""),
        ("profile_id", ""),
        ("profile_id", "pp\x00"),
        ("profile_id", "\ud800"),
        ("method", "CARD\n"),
        ("method", "M" * 201),
        ("expires_at", 5),
        ("contact_id", None),
    ],
)
def test_a_payment_profile_the_store_cannot_write_is_a_bad_response(field: str, value: object) -> None:
    profile = dataclasses.replace(PROFILE, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(driver_api.BadProviderResponse, match=field) as caught:
        driver_api.check_payment_profile(profile, provider_id="p1", invoice_id="inv1")
    assert (caught.value.provider_id, caught.value.invoice_id) == ("p1", "inv1")


# --- the split into modules keeps every public name (issue 11) ---------------------------------------------

#: driver_api.__all__ before it was split into driver_types, driver_values and the HTTP modules.
BEFORE_THE_SPLIT = [
    "MAX_SATS",
    "RAW_EVIDENCE_MAX",
    "RETRY_AFTER_MAX",
    "TEXT_MAX",
    "BadProviderResponse",
    "CommonSettings",
    "Done",
    "Driver",
    "DriverError",
    "DriverSettings",
    "InvoiceNotFound",
    "JsonClient",
    "NotApplicable",
    "NotYet",
    "PaymentProfile",
    "PostSettleResult",
    "PostSettleTask",
    "ProviderAuthError",
    "ProviderStatus",
    "ProviderUnavailable",
    "Reply",
    "SecretStr",
    "Snapshot",
    "SupportsFetchMany",
    "SupportsPostSettle",
    "ascii_upper",
    "check_payment_profile",
    "check_snapshot",
    "decimal_to_sats",
    "floor_sats",
    "normalize_timestamp",
    "parse_retry_after",
    "path_segment",
    "raw_evidence",
]


def test_every_name_drivers_imported_before_the_split_is_still_there() -> None:
    assert set(BEFORE_THE_SPLIT) <= set(driver_api.__all__)
    missing = [name for name in driver_api.__all__ if not hasattr(driver_api, name)]
    assert missing == []


def test_providers_http_keeps_its_names() -> None:
    from reconciler import providers_http

    for name in [
        "ERROR_BODY_BYTES",
        "MAX_FLOAT_CHARS",
        "MAX_INT_DIGITS",
        "MAX_JSON_DEPTH",
        "RETRY_AFTER_MAX",
        "UNSAFE_TEXT",
        "JsonClient",
        "Reply",
        "UnreadableJson",
        "decode_json",
        "parse_retry_after",
        "printable",
        "short_repr",
    ]:
        assert hasattr(providers_http, name), name
    assert providers_http.JsonClient is driver_api.JsonClient
