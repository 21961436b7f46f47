"""The Zaprite driver's pure parts: docs/statuses.md §4's status table, sat amounts, profile matching,
settings."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from reconciler_zaprite import ZapriteSettings, client, driver, status

from reconciler.driver_api import ProviderStatus
from tests.fakes import zaprite as fake

TABLE = [
    ("PENDING", ProviderStatus.PENDING, False, False),
    ("PROCESSING", ProviderStatus.PENDING, False, False),
    ("UNDERPAID", ProviderStatus.PENDING, True, False),
    ("PAID", ProviderStatus.SETTLED, False, False),
    ("COMPLETE", ProviderStatus.SETTLED, False, False),
    ("OVERPAID", ProviderStatus.SETTLED, False, True),
    ("EXPIRED", ProviderStatus.EXPIRED, False, False),
    ("ABANDONED", ProviderStatus.EXPIRED, False, False),
    ("INVALID", ProviderStatus.INVALID, False, False),
    ("CANCELLED", ProviderStatus.INVALID, False, False),
    ("CANCELED", ProviderStatus.INVALID, False, False),
]


@pytest.mark.parametrize(("raw", "expected", "partially_paid", "overpaid"), TABLE)
def test_every_zaprite_status_maps_as_spec_section_5_says(
    raw: str, expected: ProviderStatus, partially_paid: bool, overpaid: bool
) -> None:
    assert status.map_status(raw) == status.Mapped(expected, partially_paid, overpaid)


@pytest.mark.parametrize("raw", ["REFUNDED", "DRAFT", "", " PAID", "PAID ", "paıd", "ＰＡＩＤ"])
def test_anything_else_is_unknown(raw: str) -> None:
    assert status.map_status(raw) == status.UNKNOWN


@pytest.mark.parametrize(
    ("raw", "expected"), [("paid", "PAID"), ("Overpaid", "OVERPAID"), ("cAnCeLlEd", "CANCELLED")]
)
def test_matching_ignores_case(raw: str, expected: str) -> None:
    assert status.map_status(raw) == status.TABLE[expected]


@st.composite
def recased_table_keys(draw: st.DrawFn) -> tuple[str, str]:
    key = draw(st.sampled_from(sorted(status.TABLE)))
    flips = draw(st.lists(st.booleans(), min_size=len(key), max_size=len(key)))
    return key, "".join(c.lower() if flip else c for c, flip in zip(key, flips, strict=True))


@given(recased_table_keys())
def test_any_casing_of_a_known_status_maps_like_the_status(case: tuple[str, str]) -> None:
    key, recased = case
    assert status.map_status(recased) == status.TABLE[key]


@given(st.text())
def test_the_mapper_is_total_and_ascii_case_insensitive(raw: str) -> None:
    mapped = status.map_status(raw)
    assert isinstance(mapped.status, ProviderStatus)
    if raw.isascii():
        assert mapped == status.map_status(raw.lower()) == status.map_status(raw.upper())
        assert (mapped == status.UNKNOWN) == (raw.upper() not in status.TABLE)
    else:
        assert mapped == status.UNKNOWN


def order(**fields: Any) -> client.Order:
    return client.Order.model_validate(fake.make_order(**fields))


def test_btc_amounts_are_sats_and_paid_sats_add_discounts_of_confirmed_transactions() -> None:
    paid = order(
        currency="BTC",
        total_amount=50_000,
        transactions=[
            fake.make_transaction(30_000, discounts=[fake.make_discount(1_000), fake.make_discount(500)]),
            fake.make_transaction(18_500, method="LIGHTNING"),
            fake.make_transaction(99_999, status="PENDING"),
            fake.make_transaction(77_777, status="CANCELED"),
        ],
    )
    assert status.amount_sats(paid) == 50_000
    assert status.paid_sats(paid) == 30_000 + 1_000 + 500 + 18_500


def test_an_order_without_confirmed_transactions_has_paid_nothing() -> None:
    assert status.paid_sats(order(transactions=[fake.make_transaction(10, status="PENDING")])) == 0


def test_a_null_amount_in_a_confirmed_transaction_means_no_opinion() -> None:
    assert (
        status.paid_sats(order(transactions=[fake.make_transaction(10), fake.make_transaction(None)])) is None
    )


def test_a_null_amount_in_a_pending_transaction_does_not_matter() -> None:
    pending = fake.make_transaction(None, status="PENDING")
    assert status.paid_sats(order(transactions=[fake.make_transaction(10), pending])) == 10


def test_a_null_discount_means_no_opinion() -> None:
    transaction = fake.make_transaction(10, discounts=[{**fake.make_discount(5), "amountOff": None}])
    assert status.paid_sats(order(transactions=[transaction])) is None


def test_fiat_orders_have_no_sat_amounts() -> None:
    usd = order(
        currency="USD", total_amount=1999, transactions=[fake.make_transaction(1999, order_currency="USD")]
    )
    assert (status.amount_sats(usd), status.paid_sats(usd)) == (None, None)


@pytest.mark.parametrize("total", [0, -5])
def test_a_non_positive_total_is_no_opinion(total: int) -> None:
    assert status.amount_sats(order(total_amount=total)) is None


def test_the_snapshot_keeps_the_raw_status_verbatim() -> None:
    snapshot = status.snapshot(order(status="Underpaid", currency="BTC", total_amount=7))
    assert snapshot.status is ProviderStatus.PENDING
    assert (snapshot.raw_status, snapshot.raw_additional_status, snapshot.observation) == (
        "Underpaid",
        None,
        "Underpaid",
    )
    assert snapshot.partially_paid and not snapshot.overpaid
    assert (snapshot.currency, snapshot.amount_sats, snapshot.paid_sats) == ("BTC", 7, 0)


@pytest.mark.parametrize(
    ("method", "tx_status", "expected"),
    [
        ("CARD", "CONFIRMED", True),
        ("APPLEPAY", "CONFIRMED", True),
        ("googlepay", "confirmed", True),
        ("CARD", "PENDING", False),
        ("CARD", "CANCELED", False),
        ("BITCOIN", "CONFIRMED", False),
        ("LIGHTNING", "CONFIRMED", False),
        ("CASHAPP_PAY", "CONFIRMED", False),
    ],
)
def test_only_a_confirmed_card_like_payment_can_leave_a_profile(
    method: str, tx_status: str, expected: bool
) -> None:
    paid = order(transactions=[fake.make_transaction(10, method=method, status=tx_status)])
    assert status.paid_by_card(paid) is expected


def test_the_profile_is_the_one_saved_from_our_invoice() -> None:
    contact = client.Contact.model_validate(
        fake.make_contact(
            "ct_1",
            profiles=[
                {**fake.make_profile("pp_none", source_external_uniq_id=None), "sourceOrder": None},
                fake.make_profile("pp_other", source_external_uniq_id="another-invoice"),
                fake.make_profile("pp_ours", source_external_uniq_id="our-invoice"),
            ],
        )
    )
    found = driver.find_profile(contact, "our-invoice")
    assert found is not None and found.id == "pp_ours"
    assert driver.find_profile(contact, "missing") is None


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        ("2028-01-31T00:00:00.000Z", "2028-01-31T00:00:00.000000Z"),
        ("2028-01-31T02:00:00+02:00", "2028-01-31T00:00:00.000000Z"),
        ("2028-01-31", "2028-01-31T00:00:00.000000Z"),
        (None, None),
    ],
)
def test_expiry_is_normalised_to_the_stored_timestamp_form(
    expires_at: str | None, expected: str | None
) -> None:
    profile = client.Profile.model_validate(
        fake.make_profile("pp", source_external_uniq_id="x", expires_at=expires_at)
    )
    assert driver.expiry(profile) == expected


@pytest.mark.parametrize("expires_at", ["12/28", "soon", 1830297600])
def test_an_unreadable_expiry_is_none(expires_at: object) -> None:
    profile = client.Profile.model_validate({"id": "pp", "expiresAt": expires_at})
    assert driver.expiry(profile) is None


def test_settings_default_to_zaprites_api_and_strip_the_trailing_slash() -> None:
    assert ZapriteSettings.model_validate({"api_key": "k"}).base_url == "https://api.zaprite.com"
    sandbox = ZapriteSettings.model_validate({"api_key": "k", "base_url": "http://127.0.0.1:8080/zaprite/"})
    assert sandbox.base_url == "http://127.0.0.1:8080/zaprite"


@pytest.mark.parametrize(
    "base_url",
    [
        "ftp://api.zaprite.com",
        "api.zaprite.com",
        "https://",
        "https://user:pw@api.zaprite.com",
        "https://h/?x=1",
    ],
)
def test_settings_refuse_a_base_url_that_is_not_a_plain_http_url(base_url: str) -> None:
    with pytest.raises(ValidationError, match="base_url"):
        ZapriteSettings.model_validate({"api_key": "k", "base_url": base_url})


def test_settings_refuse_unknown_keys_and_need_a_key_they_never_show() -> None:
    with pytest.raises(ValidationError):
        ZapriteSettings.model_validate({"api_key": "k", "store_id": "x"})
    with pytest.raises(ValidationError):
        ZapriteSettings.model_validate({})
    assert "sekrit" not in repr(ZapriteSettings.model_validate({"api_key": "sekrit"}))
