"""The BTCPay driver against hostile or broken answers (issue 10), each found by the fuzz first.

Every answer either becomes a Snapshot that ``check_snapshot`` accepts or a DriverError; nothing else
escapes, nothing unstorable is returned, no body is read past ``max_response_bytes``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from reconciler_btcpay import BTCPayDriver

from reconciler import driver_api
from reconciler.driver_api import ProviderStatus
from tests.drivers.conftest import MakeBTCPayDriver
from tests.fakes import btcpay
from tests.fakes.btcpay import make_invoice
from tests.fakes.raw import RawAnswer

KEY_ROUTE = "api-keys/current"


def invoice_body(**changes: Any) -> dict[str, Any]:
    body = make_invoice("inv1", "Settled", currency="BTC", amount="0.001")
    body.pop("paymentMethods")
    body.update(changes)
    return body


def answer(body: bytes | dict[str, Any], **fields: Any) -> RawAnswer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawAnswer(fields.pop("status", 200), raw, **fields)


async def test_deep_nesting_is_a_bad_response(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.fault("inv1", answers=[answer(b'{"status": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")])

    # Before: json.loads raised RecursionError, which escaped the driver error tree.
    with pytest.raises(driver_api.BadProviderResponse, match="nested deeper than 64"):
        await btcpay_driver.fetch("inv1")


async def test_an_integer_of_5000_digits_is_a_bad_response(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    body = json.dumps(invoice_body()).replace('"amount": "0.001"', '"amount": ' + "9" * 5000).encode()
    btcpay_fake.fault("inv1", answers=[answer(body)])

    # Before: ValueError (Python's 4300-digit limit for int()) escaped.
    with pytest.raises(driver_api.BadProviderResponse, match="longer than 40 digits"):
        await btcpay_driver.fetch("inv1")


@pytest.mark.parametrize("header", ["\u00b2", "99999999999999999999", "Someday"])
async def test_a_retry_after_on_a_200_never_loses_a_settled_invoice(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, header: str
) -> None:
    btcpay_fake.fault("inv1", answers=[answer(invoice_body(), headers={"Retry-After": header})])

    # Before: '²' made parse_retry_after raise ValueError even on a 200, so a valid Settled was lost.
    snapshot = await btcpay_driver.fetch("inv1")

    assert snapshot.status is ProviderStatus.SETTLED


@pytest.mark.parametrize(("header", "seconds"), [("\u00b2", None), ("99999999999999999999", 86_400.0)])
async def test_retry_after_on_a_503_is_strict_and_clamped(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, header: str, seconds: float | None
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", statuses=[503], retry_after=header)

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await btcpay_driver.fetch("inv1")

    assert caught.value.retry_after == seconds


@pytest.mark.parametrize(
    "changes",
    [
        {"status": "\ud800"},  # UnicodeEncodeError on SQLite, DataError on PostgreSQL
        {"status": "Settled", "additionalStatus": "Paid\udfffOver"},
        {"status": "Settled\u0000"},  # PostgreSQL text cannot hold NUL
        {"status": "Settled", "currency": "BTC\n"},
        {"status": "S" * 201},
    ],
)
async def test_strings_the_store_cannot_write_are_a_bad_response(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, changes: dict[str, Any]
) -> None:
    btcpay_fake.fault("inv1", answers=[answer(invoice_body(**changes))])

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.fetch("inv1")

    assert caught.value.invoice_id == "inv1"


async def test_a_body_over_max_response_bytes_is_not_read(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    driver = btcpay_make_driver(max_response_bytes=64 * 1024)
    padding = b" " * 8192
    btcpay_fake.fault("inv1", answers=[RawAnswer(200, padding, chunk=8192, endless=True)])
    started = time.monotonic()

    # Before: bodies were read whole (one 300 MB answer took peak RSS from 48 MB to 861 MB).
    with pytest.raises(driver_api.BadProviderResponse, match="max_response_bytes"):
        await driver.fetch("inv1")

    assert time.monotonic() - started < 3.0


async def test_a_gzip_bomb_is_not_read(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    driver = btcpay_make_driver(max_response_bytes=1024 * 1024)
    btcpay_fake.fault("inv1", answers=[RawAnswer(200, bytes(1024 * 1024), gzip=True, endless=True)])

    with pytest.raises(driver_api.BadProviderResponse, match="max_response_bytes"):
        await driver.fetch("inv1")


@pytest.mark.parametrize("raw", ["\u017fettled", "SETTLED\u0131", "Settl\u0435d", "\uff33ettled"])
async def test_status_matching_folds_ascii_only(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, raw: str
) -> None:
    btcpay_fake.fault("inv1", answers=[answer(invoice_body(status=raw, additionalStatus="\u017faidOver"))])

    # Before: casefold() mapped 'ſettled' (long s) to SETTLED.
    snapshot = await btcpay_driver.fetch("inv1")

    assert snapshot.status is ProviderStatus.UNKNOWN
    assert not snapshot.overpaid
    assert snapshot.raw_status == raw


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        ("NaN", "SATS", "'NaN'"),
        ("-5", "SATS", "'-5'"),
        ("0", "BTC", "'0'"),
        ("1e3", "SATS", "'1e3'"),
        ("1_000", "SATS", "'1_000'"),
        ("\u0661\u0660", "SATS", "'\u0661\u0660'"),  # Arabic-Indic digits: Decimal() reads them as 10
        ("+5", "BTC", "'+5'"),
        (" 5", "BTC", "' 5'"),
        ("Infinity", "BTC", "'Infinity'"),
        ("10.5", "SATS", "'10.5'"),
        ("9" * 41, "BTC", "'" + "9" * 41 + "'"),
        (1.5, "BTC", "1.5"),  # a JSON float where Greenfield sends a decimal string
        (-7, "SATS", "-7"),
        ("0.001\n", "BTC", "'0.001\\n'"),
    ],
)
async def test_an_unusable_amount_is_no_opinion_with_its_evidence(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, amount: object, currency: str, shown: str
) -> None:
    btcpay_fake.fault("inv1", answers=[answer(invoice_body(amount=amount, currency=currency))])

    # Before: 1_000, non-ASCII digits and 1e3 were read as numbers; NaN and -5 left no trace.
    snapshot = await btcpay_driver.fetch("inv1")

    assert snapshot.amount_sats is None
    assert snapshot.amount_raw == shown
    assert driver_api.check_snapshot(snapshot, provider_id="btcpay_main", invoice_id="inv1") is snapshot


@pytest.mark.parametrize(("amount", "currency"), [("25.00", "USD"), (None, "BTC"), ("0.001", "BTC")])
async def test_a_usable_or_fiat_amount_leaves_no_raw_evidence(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, amount: str | None, currency: str
) -> None:
    body = invoice_body(amount=amount, currency=currency)
    if amount is None:
        del body["amount"]
    btcpay_fake.fault("inv1", answers=[answer(body)])

    assert (await btcpay_driver.fetch("inv1")).amount_raw is None


@pytest.mark.parametrize(
    "value",
    ["-0.001", "1" * 30, "NaN"],  # a negative payment, one over 2**63-1 sats, an unreadable one
)
async def test_paid_sats_outside_what_the_store_holds_are_no_opinion(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, value: str
) -> None:
    body = invoice_body(
        paymentMethods=[{"currency": "BTC", "payments": [{"value": value, "status": "Settled"}]}]
    )
    btcpay_fake.fault("inv1", answers=[answer(body)])

    snapshot = await btcpay_driver.fetch("inv1")

    assert snapshot.paid_sats is None
    assert snapshot.status is ProviderStatus.SETTLED


@pytest.mark.parametrize("invoice_id", ["", ".", "..", "a\x00b", "a\nb", "x" * 201, "\ud800"])
async def test_ids_that_are_not_a_path_segment_are_not_found_without_a_request(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, invoice_id: str
) -> None:
    with pytest.raises(driver_api.InvoiceNotFound) as caught:
        await btcpay_driver.fetch(invoice_id)

    assert caught.value.provider_id == "btcpay_main"
    assert btcpay_fake.log == []


@pytest.mark.parametrize("status", [201, 203, 206])
async def test_only_200_is_an_answer(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, status: int
) -> None:
    btcpay_fake.fault("inv1", answers=[answer(invoice_body(), status=status)])

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.fetch("inv1")

    assert caught.value.http_status == status


async def test_a_key_check_answer_with_hostile_json_is_a_bad_response(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.fault(KEY_ROUTE, answers=[answer(b"[" * 10_000)])

    with pytest.raises(driver_api.BadProviderResponse):
        await btcpay_driver.check()
