"""BTCPay driver `fetch` against the fake over real sockets: statuses, flags, amounts, the wire request."""

from __future__ import annotations

import itertools

import pytest
from reconciler_btcpay import BTCPayDriver

from reconciler.driver_api import ProviderStatus
from tests.drivers.conftest import MakeBTCPayDriver
from tests.fakes import btcpay
from tests.fakes.btcpay import Payment, make_invoice

# docs/statuses.md §3, written out independently of the driver's table.
EXPECTED_STATUS = {
    "New": ProviderStatus.PENDING,
    "Processing": ProviderStatus.PENDING,
    "Settled": ProviderStatus.SETTLED,
    "Expired": ProviderStatus.EXPIRED,
    "Invalid": ProviderStatus.INVALID,
}
EXPECTED_FLAG = {
    "PaidLate": "paid_late",
    "PaidPartial": "partially_paid",
    "PaidOver": "overpaid",
    "Marked": "manually_marked",
}
FLAGS = ("paid_late", "partially_paid", "overpaid", "manually_marked")


@pytest.mark.parametrize(
    ("status", "additional"), list(itertools.product(btcpay.STATUSES, btcpay.ADDITIONAL_STATUSES))
)
async def test_every_status_and_additional_status(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, status: str, additional: str
) -> None:
    btcpay_fake.add(make_invoice("inv1", status, additional))

    snapshot = await btcpay_driver.fetch("inv1")

    assert snapshot.status is EXPECTED_STATUS[status]
    assert (snapshot.raw_status, snapshot.raw_additional_status) == (status, additional)
    raised = {flag for flag in FLAGS if getattr(snapshot, flag)}
    assert raised == ({EXPECTED_FLAG[additional]} if additional in EXPECTED_FLAG else set())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Complete", ProviderStatus.SETTLED),
        ("Confirmed", ProviderStatus.SETTLED),
        ("SETTLED", ProviderStatus.SETTLED),
        ("Refunded", ProviderStatus.UNKNOWN),
        ("", ProviderStatus.UNKNOWN),
    ],
)
async def test_statuses_outside_the_enum(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, raw: str, expected: ProviderStatus
) -> None:
    btcpay_fake.add(make_invoice("inv1", raw, "Whatever"))

    snapshot = await btcpay_driver.fetch("inv1")

    assert snapshot.status is expected
    assert (snapshot.raw_status, snapshot.raw_additional_status) == (raw, "Whatever")
    assert not any(getattr(snapshot, flag) for flag in FLAGS)


@pytest.mark.parametrize("generation", ["v1", "v2"])
async def test_paid_sats_from_both_payment_method_generations(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, generation: str
) -> None:
    payments = [
        Payment("0.0006", "Settled", "BTC-CHAIN"),
        Payment("0.00040000999", "Settled", "BTC-LN"),  # msat precision: floored to 40000
        Payment("0.0002", "Processing", "BTC-CHAIN"),  # not settled yet
        Payment("0.5", "Invalid", "BTC-CHAIN"),  # replaced / double spent
        Payment("1.5", "Settled", "LTC-CHAIN"),  # not Bitcoin
    ]
    btcpay_fake.add(make_invoice("inv1", "Settled", "PaidOver", "0.001", "BTC", payments, generation))

    snapshot = await btcpay_driver.fetch("inv1")

    assert snapshot.paid_sats == 60_000 + 40_000
    assert snapshot.amount_sats == 100_000


async def test_unpaid_invoice_has_zero_paid_sats(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "New"))

    assert (await btcpay_driver.fetch("inv1")).paid_sats == 0


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("150000", "SATS", 150_000),
        ("0.00150001", "BTC", 150_001),
        ("0.000000015", "BTC", 2),  # half up
        ("0.000000014", "BTC", 1),
        ("10.5", "SATS", None),  # SATS never has a fraction
        ("0", "BTC", None),  # a top-up paid after expiry: no opinion
        ("25.00", "USD", None),  # fiat: not comparable
        ("25.00", "EUR", None),
    ],
)
async def test_amount_sats(
    btcpay_fake: btcpay.FakeBTCPay,
    btcpay_driver: BTCPayDriver,
    amount: str,
    currency: str,
    expected: int | None,
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled", "None", amount, currency))

    snapshot = await btcpay_driver.fetch("inv1")

    assert snapshot.amount_sats == expected
    assert snapshot.currency == currency


async def test_fiat_invoice_still_reports_bitcoin_paid(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled", "None", "25.00", "USD", [Payment("0.0005")]))

    snapshot = await btcpay_driver.fetch("inv1")

    assert (snapshot.amount_sats, snapshot.paid_sats, snapshot.currency) == (None, 50_000, "USD")


async def test_request_on_the_wire(btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))

    await btcpay_driver.fetch("inv1")

    (exchange,) = btcpay_fake.log
    assert exchange.authorization == f"token {btcpay.API_KEY}"
    assert exchange.method == "GET"
    assert exchange.path == f"/api/v1/stores/{btcpay.STORE_ID}/invoices/inv1"
    assert exchange.query == {"includePaymentMethods": ["true"]}
    assert "Authorization" not in exchange.headers
    assert btcpay.API_KEY not in repr(exchange)


@pytest.mark.parametrize("invoice_id", ["a/b", "a b", "x?y=1", "p#q", "100%", "ünï", "a%2Fb"])
async def test_invoice_id_is_url_quoted(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, invoice_id: str
) -> None:
    btcpay_fake.add(make_invoice(invoice_id, "Expired"))

    snapshot = await btcpay_driver.fetch(invoice_id)

    assert snapshot.status is ProviderStatus.EXPIRED
    assert btcpay_fake.log[0].target == invoice_id


async def test_base_url_with_a_path_prefix_and_trailing_slash(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    driver = btcpay_make_driver(base_url=btcpay_fake.base_url + "/")

    assert (await driver.fetch("inv1")).status is ProviderStatus.SETTLED
    assert btcpay_fake.log[0].path.startswith("/api/v1/")
