"""``ZapriteDriver.fetch`` and ``check`` against the fake Zaprite server: mapping, amounts, and the
one error boundary (docs/providers.md §2.7)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import socket
import time
from collections.abc import Callable

import aiohttp
import pydantic
import pytest
from reconciler_zaprite import CAPTURE_PAYMENT_PROFILE, ZapriteDriver

from reconciler import driver_api
from reconciler.driver_api import ProviderStatus
from tests.fakes.zaprite import (
    DEFAULT_API_KEY,
    FakeZaprite,
    Fault,
    make_contact_ref,
    make_discount,
    make_order,
    make_transaction,
)

pytest_plugins = ("tests.drivers.zaprite_fixtures",)

MakeDriver = Callable[..., ZapriteDriver]


def assert_no_secret(exc: BaseException) -> None:
    assert DEFAULT_API_KEY not in str(exc)
    assert DEFAULT_API_KEY not in repr(exc)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("PENDING", ProviderStatus.PENDING),
        ("PROCESSING", ProviderStatus.PENDING),
        ("UNDERPAID", ProviderStatus.PENDING),
        ("PAID", ProviderStatus.SETTLED),
        ("COMPLETE", ProviderStatus.SETTLED),
        ("OVERPAID", ProviderStatus.SETTLED),
        ("EXPIRED", ProviderStatus.EXPIRED),
        ("ABANDONED", ProviderStatus.EXPIRED),
        ("INVALID", ProviderStatus.INVALID),
        ("CANCELLED", ProviderStatus.INVALID),
        ("CANCELED", ProviderStatus.INVALID),
        ("paid", ProviderStatus.SETTLED),
        ("Expired", ProviderStatus.EXPIRED),
        ("REFUND_PENDING", ProviderStatus.UNKNOWN),
    ],
)
async def test_fetch_maps_every_status_and_keeps_it_verbatim(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, raw: str, expected: ProviderStatus
) -> None:
    order = zaprite_fake.add_order(make_order(status=raw))
    snapshot = await zaprite_driver.fetch(order["id"])
    assert snapshot.status is expected
    assert (snapshot.raw_status, snapshot.raw_additional_status) == (raw, None)
    assert snapshot.partially_paid is (raw == "UNDERPAID")
    assert snapshot.overpaid is (raw == "OVERPAID")


async def test_a_btc_order_reports_its_amount_and_what_confirmed_payments_retained(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    order = zaprite_fake.add_order(
        make_order(
            status="PAID",
            currency="BTC",
            total_amount=100_000,
            transactions=[
                make_transaction(60_000, method="LIGHTNING", discounts=[make_discount(2_000)]),
                make_transaction(38_000),
                make_transaction(5_000, status="PENDING"),
            ],
        )
    )
    snapshot = await zaprite_driver.fetch(order["id"])
    assert (snapshot.currency, snapshot.amount_sats, snapshot.paid_sats) == ("BTC", 100_000, 100_000)


async def test_a_null_amount_in_order_currency_leaves_paid_sats_unknown(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    transactions = [make_transaction(60_000), make_transaction(None, currency="USD")]
    order = zaprite_fake.add_order(make_order(status="PAID", total_amount=60_000, transactions=transactions))
    snapshot = await zaprite_driver.fetch(order["id"])
    assert (snapshot.amount_sats, snapshot.paid_sats) == (60_000, None)


async def test_a_usd_order_has_no_sat_amounts(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    card = make_transaction(1_999, method="CARD", currency="USD", order_currency="USD")
    order = zaprite_fake.add_order(
        make_order(status="PAID", currency="USD", total_amount=1_999, transactions=[card])
    )
    snapshot = await zaprite_driver.fetch(order["id"])
    assert (snapshot.status, snapshot.currency, snapshot.amount_sats, snapshot.paid_sats) == (
        ProviderStatus.SETTLED,
        "USD",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("invoice_id", "path"),
    [
        ("0190f5c2-6f1e-7a51-9c55-2f0e4f3d1a77", "/v1/orders/0190f5c2-6f1e-7a51-9c55-2f0e4f3d1a77"),
        ("inv/1 ?#é", "/v1/orders/inv%2F1%20%3F%23%C3%A9"),
        ("100%41", "/v1/orders/100%2541"),
    ],
)
async def test_fetch_finds_an_order_by_our_invoice_id_and_quotes_it(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, invoice_id: str, path: str
) -> None:
    zaprite_fake.add_order(make_order(status="COMPLETE", external_uniq_id=invoice_id))
    snapshot = await zaprite_driver.fetch(invoice_id)
    assert snapshot.status is ProviderStatus.SETTLED
    assert zaprite_fake.log[-1].path == path


async def test_every_request_carries_exactly_the_bearer_key(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    order = zaprite_fake.add_order(make_order())
    await zaprite_driver.fetch(order["id"])
    await zaprite_driver.check()
    assert [exchange.authorization for exchange in zaprite_fake.log] == [f"Bearer {DEFAULT_API_KEY}"] * 2


async def test_a_refused_key_is_an_auth_error_that_does_not_show_the_key(
    zaprite_fake: FakeZaprite, make_zaprite_driver: MakeDriver
) -> None:
    order = zaprite_fake.add_order(make_order())
    wrong = "zk_live_wrong-key"
    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await make_zaprite_driver(api_key=wrong).fetch(order["id"])
    assert caught.value.http_status == 401
    assert wrong not in str(caught.value)
    assert_no_secret(caught.value)


@pytest.mark.parametrize(
    ("http_status", "error"),
    [
        (401, driver_api.ProviderAuthError),
        (403, driver_api.ProviderAuthError),
        (404, driver_api.InvoiceNotFound),
        (408, driver_api.ProviderUnavailable),
        (429, driver_api.ProviderUnavailable),
        (500, driver_api.ProviderUnavailable),
        (502, driver_api.ProviderUnavailable),
        (503, driver_api.ProviderUnavailable),
        (400, driver_api.BadProviderResponse),
        (422, driver_api.BadProviderResponse),
    ],
)
async def test_http_errors_become_driver_errors(
    zaprite_fake: FakeZaprite,
    zaprite_driver: ZapriteDriver,
    http_status: int,
    error: type[driver_api.DriverError],
) -> None:
    order = zaprite_fake.add_order(make_order())
    zaprite_fake.inject(http_status)
    with pytest.raises(error) as caught:
        await zaprite_driver.fetch(order["id"])
    assert type(caught.value) is error
    assert (caught.value.http_status, caught.value.provider_id, caught.value.invoice_id) == (
        http_status,
        "zaprite",
        order["id"],
    )
    assert_no_secret(caught.value)


async def test_an_unknown_order_is_not_found(zaprite_driver: ZapriteDriver) -> None:
    with pytest.raises(driver_api.InvoiceNotFound) as caught:
        await zaprite_driver.fetch("od_nobody")
    assert caught.value.invoice_id == "od_nobody"


@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), (None, None), ("soon", None)])
async def test_429_carries_retry_after(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, header: str | None, expected: float | None
) -> None:
    order = zaprite_fake.add_order(make_order())
    zaprite_fake.inject(Fault(status=429, retry_after=header))
    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await zaprite_driver.fetch(order["id"])
    assert caught.value.retry_after == expected


async def test_retry_after_as_an_http_date(zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver) -> None:
    order = zaprite_fake.add_order(make_order())
    zaprite_fake.inject(Fault(status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await zaprite_driver.fetch(order["id"])
    assert caught.value.retry_after == 0.0


async def test_the_driver_makes_one_attempt_per_call(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    order = zaprite_fake.add_order(make_order(status="PAID"))
    zaprite_fake.inject(503, 503, 200)
    for _ in range(2):
        with pytest.raises(driver_api.ProviderUnavailable):
            await zaprite_driver.fetch(order["id"])
    assert (await zaprite_driver.fetch(order["id"])).status is ProviderStatus.SETTLED
    assert [exchange.status for exchange in zaprite_fake.log] == [503, 503, 200]


@pytest.mark.parametrize("body", [b"<html>Bad Gateway</html>", b"", b'{"status": "PAID"'])
async def test_a_body_that_is_not_json_is_a_bad_response(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, body: bytes
) -> None:
    order = zaprite_fake.add_order(make_order())
    zaprite_fake.inject(Fault(body=body))
    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await zaprite_driver.fetch(order["id"])
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)
    assert caught.value.http_status == 200


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"id": "od_1"},
        {"status": 3},
        {"status": "PAID", "totalAmount": "50000"},
        {"status": "PAID", "transactions": [{"status": "CONFIRMED", "amountInOrderCurrency": 1.5}]},
        {"status": "PAID", "contact": {"email": "ada@example.com"}},
    ],
)
async def test_json_of_the_wrong_shape_is_a_bad_response_that_echoes_no_data(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, body: object
) -> None:
    order = zaprite_fake.add_order(make_order())
    zaprite_fake.inject(Fault(body=body))  # type: ignore[arg-type]
    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await zaprite_driver.fetch(order["id"])
    assert isinstance(caught.value.__cause__, pydantic.ValidationError)
    assert "ada@example.com" not in str(caught.value)
    assert caught.value.invoice_id == order["id"]


async def test_a_dropped_connection_is_unavailable(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    order = zaprite_fake.add_order(make_order())
    # aiohttp itself resends an idempotent request once when the connection drops (RFC 9112 §9.3.1).
    zaprite_fake.inject(Fault(drop=True), Fault(drop=True))
    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await zaprite_driver.fetch(order["id"])
    assert isinstance(caught.value.__cause__, aiohttp.ServerDisconnectedError)
    assert caught.value.retry_after is None
    assert [exchange.status for exchange in zaprite_fake.log] == [None, None]


async def test_an_answer_slower_than_the_timeout_is_unavailable(
    zaprite_fake: FakeZaprite, make_zaprite_driver: MakeDriver
) -> None:
    order = zaprite_fake.add_order(make_order())
    zaprite_fake.inject(Fault(delay=5.0))
    started = time.monotonic()
    with pytest.raises(driver_api.ProviderUnavailable, match=r"within 0\.2s") as caught:
        await make_zaprite_driver(timeout=0.2).fetch(order["id"])
    assert time.monotonic() - started < 2.0
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_latency_within_the_timeout_is_fine(
    zaprite_fake: FakeZaprite, make_zaprite_driver: MakeDriver
) -> None:
    order = zaprite_fake.add_order(make_order(status="PAID"))
    zaprite_fake.latency = 0.05
    assert (await make_zaprite_driver(timeout=2.0).fetch(order["id"])).status is ProviderStatus.SETTLED


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_an_unreachable_provider_is_unavailable(make_zaprite_driver: MakeDriver) -> None:
    driver = make_zaprite_driver(base_url=f"http://127.0.0.1:{unused_port()}")
    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await driver.fetch("od_1")
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectionError)
    assert_no_secret(caught.value)


async def test_check_lists_one_order(zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver) -> None:
    await zaprite_driver.check()
    (exchange,) = zaprite_fake.log
    assert (exchange.path, dict(exchange.query), exchange.status) == ("/v1/orders", {"limit": "1"}, 200)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (401, driver_api.ProviderAuthError),
        (403, driver_api.ProviderAuthError),
        (503, driver_api.ProviderUnavailable),
        (404, driver_api.BadProviderResponse),
        (Fault(drop=True), driver_api.ProviderUnavailable),
    ],
)
async def test_check_fails_on_a_refused_key_or_an_unreachable_provider(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, fault: Fault | int, error: type[Exception]
) -> None:
    zaprite_fake.inject(fault, fault)  # twice: aiohttp resends a GET once after a dropped connection
    with pytest.raises(error) as caught:
        await zaprite_driver.check()
    assert_no_secret(caught.value)


async def test_check_against_nothing_is_unavailable(make_zaprite_driver: MakeDriver) -> None:
    with pytest.raises(driver_api.ProviderUnavailable):
        await make_zaprite_driver(base_url=f"http://127.0.0.1:{unused_port()}").check()


async def test_the_driver_is_registered_and_satisfies_the_protocols(zaprite_driver: ZapriteDriver) -> None:
    (entry_point,) = importlib.metadata.entry_points(group="reconciler.drivers", name="zaprite")
    assert entry_point.load() is ZapriteDriver
    assert isinstance(zaprite_driver, driver_api.Driver)
    assert isinstance(zaprite_driver, driver_api.SupportsPostSettle)
    assert not isinstance(zaprite_driver, driver_api.SupportsFetchMany)
    assert (
        ZapriteDriver.post_settle_kinds == (CAPTURE_PAYMENT_PROFILE,) == ("zaprite.capture_payment_profile",)
    )
    typed: driver_api.Driver = zaprite_driver
    assert typed is zaprite_driver


async def test_concurrent_fetches_share_the_session(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    orders = [
        zaprite_fake.add_order(make_order(status="PAID", contact=make_contact_ref("ct"))) for _ in range(20)
    ]
    snapshots = await asyncio.gather(*(zaprite_driver.fetch(order["id"]) for order in orders))
    assert {snapshot.status for snapshot in snapshots} == {ProviderStatus.SETTLED}
