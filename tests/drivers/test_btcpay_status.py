"""Pure parts of the BTCPay driver: the status table (docs/statuses.md §3), body reading, sats,
permissions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reconciler_btcpay import driver, status

from reconciler.driver_api import ProviderStatus

KNOWN = {
    "New": ProviderStatus.PENDING,
    "Processing": ProviderStatus.PENDING,
    "Settled": ProviderStatus.SETTLED,
    "Complete": ProviderStatus.SETTLED,
    "Confirmed": ProviderStatus.SETTLED,
    "Expired": ProviderStatus.EXPIRED,
    "Invalid": ProviderStatus.INVALID,
}
FLAGS = {
    "PaidLate": "paid_late",
    "PaidPartial": "partially_paid",
    "PaidOver": "overpaid",
    "Marked": "manually_marked",
}


def mixed_case(word: str) -> st.SearchStrategy[str]:
    return st.tuples(*(st.sampled_from([c.lower(), c.upper()]) for c in word)).map("".join)


@given(st.text(), st.none() | st.text())
def test_every_string_maps_without_crashing(raw: str, additional: str | None) -> None:
    reading = status.read_status(raw, additional)

    assert reading.status in ProviderStatus
    assert reading.status is not ProviderStatus.REFUNDED
    known = raw.isascii() and raw.upper() in {k.upper() for k in KNOWN}  # ASCII case only (issue 10)
    assert (reading.status is ProviderStatus.UNKNOWN) is not known


@pytest.mark.parametrize("raw", ["\u017fettled", "\u017fETTLED", "Settl\u0435d", "N\u0435w", "\u0130nvalid"])
def test_non_ascii_look_alikes_are_unknown(raw: str) -> None:
    # casefold() made 'ſettled' (long s) SETTLED.
    assert status.read_status(raw, "\u017faidover") == status.StatusReading(ProviderStatus.UNKNOWN)


@given(st.sampled_from(sorted(KNOWN)).flatmap(lambda w: st.tuples(st.just(w), mixed_case(w))))
def test_status_matching_ignores_case(pair: tuple[str, str]) -> None:
    word, variant = pair
    assert status.read_status(variant, None).status is KNOWN[word]


@given(st.sampled_from(sorted(FLAGS)).flatmap(lambda w: st.tuples(st.just(w), mixed_case(w))), st.text())
def test_additional_status_sets_its_flag_alone_whatever_the_status(pair: tuple[str, str], raw: str) -> None:
    word, variant = pair
    reading = status.read_status(raw, variant)

    raised = {f for f in FLAGS.values() if getattr(reading, f)}
    assert raised == {FLAGS[word]}
    assert reading.status is status.read_status(raw, None).status  # flags never change the status


@pytest.mark.parametrize("additional", [None, "None", "Invalid", "PaidLater", ""])
def test_other_additional_statuses_set_no_flag(additional: str | None) -> None:
    reading = status.read_status("Settled", additional)

    assert reading == status.StatusReading(ProviderStatus.SETTLED)


def test_snapshot_keeps_raw_strings_verbatim() -> None:
    snapshot = driver.snapshot_from_invoice(
        {"id": "x", "status": "sEtTlEd", "additionalStatus": "PAIDOVER"}, "x"
    )

    assert (snapshot.status, snapshot.overpaid) == (ProviderStatus.SETTLED, True)
    assert (snapshot.raw_status, snapshot.raw_additional_status) == ("sEtTlEd", "PAIDOVER")
    assert snapshot.observation == "sEtTlEd/PAIDOVER"


def test_snapshot_without_payment_methods_or_amount_has_no_opinion() -> None:
    snapshot = driver.snapshot_from_invoice({"status": "Settled"}, "x")

    assert (snapshot.amount_sats, snapshot.paid_sats, snapshot.currency) == (None, None, None)
    assert snapshot.raw_additional_status is None


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("1", "BTC", 100_000_000),
        ("1", "btc", 100_000_000),
        ("0.000000005", "BTC", 1),
        ("21000000", "BTC", 2_100_000_000_000_000),
        ("12", "SATS", 12),
        ("12.0", "SATS", 12),
        ("-1", "BTC", None),
        ("0", "SATS", None),
        ("NaN", "BTC", None),
        ("Infinity", "BTC", None),
        ("", "BTC", None),
        ("abc", "BTC", None),
        (None, "BTC", None),
        (1.5, "BTC", None),  # JSON numbers are not BTCPay decimals
        ("10", "USD", None),
        ("10", None, None),
    ],
)
def test_amount_sats(amount: object, currency: str | None, expected: int | None) -> None:
    assert driver.amount_sats(amount, currency) == expected


@given(st.text(), st.sampled_from(["BTC", "SATS", "USD"]))
def test_amount_sats_never_crashes_and_is_positive(amount: str, currency: str) -> None:
    sats = driver.amount_sats(amount, currency)
    assert sats is None or sats > 0


def method(currency_field: str, code: str, *payments: tuple[str, str]) -> dict[str, Any]:
    return {currency_field: code, "payments": [{"value": v, "status": s} for v, s in payments]}


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        (None, None),
        ("nope", None),
        ([], None),
        ([method("currency", "LTC", ("1", "Settled"))], None),
        ([method("currency", "BTC")], 0),
        (
            [method("currency", "BTC", ("0.1", "Settled"), ("0.2", "Processing"), ("0.3", "Invalid"))],
            10_000_000,
        ),
        ([method("cryptoCode", "BTC", ("0.1", "settled"))], 10_000_000),
        ([method("currency", "BTC", ("0.000000019", "Settled"))], 1),  # floored
        ([method("currency", "BTC", ("bad", "Settled"))], None),
        ([method("currency", "BTC", ("bad", "Processing"))], 0),
        ([{"currency": "BTC", "payments": "nope"}], None),
        ([{"currency": "BTC"}], 0),
        ([{"currency": "BTC", "payments": ["nope"]}], None),
        (["nope"], None),
        (
            [method("currency", "BTC", ("0.1", "Settled")), method("cryptoCode", "BTC", ("0.2", "Settled"))],
            30_000_000,
        ),
    ],
)
def test_paid_sats(methods: object, expected: int | None) -> None:
    assert driver.paid_sats(methods) == expected


@pytest.mark.parametrize(
    ("permissions", "granted"),
    [
        (["btcpay.store.canviewinvoices:S1"], True),
        (["btcpay.store.canviewinvoices"], True),
        (["BTCPay.Store.CanViewInvoices:S1"], True),
        (["btcpay.store.canmodifyinvoices:S1"], True),
        (["btcpay.store.canviewstoresettings:S1"], True),
        (["btcpay.store.canmodifystoresettings"], True),
        (["unrestricted"], True),
        (["btcpay.store.canviewinvoices:S2"], False),
        (["btcpay.store.canviewinvoices:s1"], False),  # store ids are case-sensitive
        (["btcpay.store.cancreateinvoice:S1", "btcpay.user.canviewprofile"], False),
        (["unrestricted:S1"], False),
        ([], False),
    ],
)
def test_grants_view_invoices(permissions: list[str], granted: bool) -> None:
    assert driver.grants_view_invoices(permissions, "S1") is granted
