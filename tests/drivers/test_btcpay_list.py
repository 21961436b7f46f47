"""Issue 12: the fake's invoice list (docs/providers.md §1.8) and the driver's `fetch_page` over it.

The fake serves `GET /api/v1/stores/{storeId}/invoices` as BTCPay does (newest first, an inclusive
creation window, skip/take, repeatable orderId and status with aliases, archived invoices hidden unless
asked for); the driver's request is the operation `Invoices_GetInvoices` of the OpenAPI fixtures, and
each item is parsed exactly as a single GET's body, one hostile item losing nothing else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from reconciler_btcpay import BTCPayDriver

from reconciler import driver_api
from tests.fakes import btcpay, openapi
from tests.fakes.btcpay import Payment, make_invoice
from tests.fakes.raw import RawAnswer

AUTH = {"Authorization": f"token {btcpay.API_KEY}"}
LIST = f"/api/v1/stores/{btcpay.STORE_ID}/invoices"
T = 1_790_000_000


async def get(session: aiohttp.ClientSession, fake: btcpay.FakeBTCPay, query: str) -> tuple[int, Any]:
    async with session.get(f"{fake.base_url}{LIST}?{query}", headers=AUTH) as response:
        return response.status, await response.json()


def ids(body: Any) -> list[str]:
    return [item["id"] for item in body]


@pytest.fixture
def five(btcpay_fake: btcpay.FakeBTCPay) -> btcpay.FakeBTCPay:
    """inv0 (oldest, T) to inv4 (T + 40), added out of order; inv2 has an order id and is Settled."""
    for n in (3, 0, 4, 2, 1):
        status = "Settled" if n == 2 else "New"
        btcpay_fake.add(make_invoice(f"inv{n}", status, created=T + 10 * n, order_id=f"o{n}"))
    btcpay_fake.add(make_invoice("elsewhere", created=T + 5, store_id="another-store"))
    return btcpay_fake


async def test_newest_first_within_an_inclusive_window(
    five: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    assert ids((await get(btcpay_session, five, ""))[1]) == ["inv4", "inv3", "inv2", "inv1", "inv0"]
    status, body = await get(btcpay_session, five, f"startDate={T + 10}&endDate={T + 30}")
    assert status == 200 and ids(body) == ["inv3", "inv2", "inv1"]
    assert ids((await get(btcpay_session, five, f"startDate={T + 11}"))[1]) == ["inv4", "inv3", "inv2"]


async def test_skip_and_take_page_it_and_no_take_is_everything(
    five: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    assert ids((await get(btcpay_session, five, "skip=1&take=2"))[1]) == ["inv3", "inv2"]
    assert ids((await get(btcpay_session, five, "skip=4&take=2"))[1]) == ["inv0"]
    assert ids((await get(btcpay_session, five, "skip=2"))[1]) == ["inv2", "inv1", "inv0"]


@pytest.mark.parametrize(
    "query", ["startDate=yesterday", "endDate=1.5", f"startDate={T + 1}&endDate={T}", "take=ten"]
)
async def test_a_bad_window_or_page_is_a_422(
    five: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession, query: str
) -> None:
    status, body = await get(btcpay_session, five, query)
    assert status == 422 and isinstance(body, list) and body[0]["path"]


async def test_order_ids_and_statuses_are_repeatable_and_statuses_have_aliases(
    five: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    assert ids((await get(btcpay_session, five, "orderId=o1&orderId=o3"))[1]) == ["inv3", "inv1"]
    assert ids((await get(btcpay_session, five, "status=COMPLETE"))[1]) == ["inv2"]
    assert ids((await get(btcpay_session, five, "status=confirmed&status=bogus"))[1]) == ["inv2"]
    # every value unknown: no filter at all
    assert len((await get(btcpay_session, five, "status=bogus&status=nope"))[1]) == 5


async def test_archived_invoices_are_hidden_unless_asked_for(
    five: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    five.archive("inv3")
    assert "inv3" not in ids((await get(btcpay_session, five, ""))[1])
    _, body = await get(btcpay_session, five, "includeArchived=true")
    assert "inv3" in ids(body) and body[1]["archived"] is True
    assert "paymentMethods" not in body[0]
    _, body = await get(btcpay_session, five, "includePaymentMethods=true&take=1")
    assert body[0]["paymentMethods"]


async def test_faults_apply_and_the_log_records_list_requests(
    five: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    five.fault("invoices", statuses=[503])
    assert (await get(btcpay_session, five, "take=1"))[0] == 503
    assert (await get(btcpay_session, five, "take=1"))[0] == 200
    assert [e.status for e in five.listed()] == [503, 200]


# --- the driver's fetch_page ------------------------------------------------------------------------------


def window(start: int, end: int, skip: int = 0, take: int = 10) -> driver_api.PageRequest:
    return driver_api.PageRequest(
        datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), skip, take
    )


async def test_fetch_page_sends_the_documented_request(
    five: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, btcpay_document: openapi.OpenAPIDocument
) -> None:
    request = driver_api.PageRequest(
        datetime.fromtimestamp(T, UTC) + timedelta(milliseconds=300),
        datetime.fromtimestamp(T + 20, UTC) + timedelta(milliseconds=300),
        skip=1,
        take=2,
    )
    page = await btcpay_driver.fetch_page(request)

    (exchange,) = five.listed()
    assert exchange.query == {
        "startDate": [str(T)],  # rounded outwards: the window stays inclusive
        "endDate": [str(T + 21)],
        "skip": ["1"],
        "take": ["2"],
        "includePaymentMethods": ["true"],
        "includeArchived": ["true"],
    }
    operation = btcpay_document.operation("get", "/api/v1/stores/{storeId}/invoices")
    documented = {p.get("name") for p in operation["parameters"] if "name" in p}
    # includeArchived: accepted by BTCPay's controller, not in the swagger (docs/providers.md §1.8)
    assert set(exchange.query) - documented == {"includeArchived"}
    assert list(page.answers) == ["inv1", "inv0"] and page.items == 2
    assert all(isinstance(a, driver_api.Snapshot) for a in page.answers.values())


async def test_a_listed_item_reads_exactly_as_its_single_get(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    payments = [Payment("0.0004"), Payment("0.0001", "Processing", "BTC-LN")]
    for n, (status, extra) in enumerate(
        [("Settled", "PaidOver"), ("Expired", "PaidLate"), ("Expired", "PaidPartial"), ("Processing", "None")]
    ):
        btcpay_fake.add(make_invoice(f"inv{n}", status, extra, payments=payments, created=T + n))
    btcpay_fake.add(make_invoice("legacy", "Complete", payments=payments, created=T + 9))
    page = await btcpay_driver.fetch_page(window(T, T + 10))
    for invoice_id, listed in page.answers.items():
        assert listed == await btcpay_driver.fetch(invoice_id)
    assert len(page.answers) == page.items == 5


@pytest.mark.parametrize(
    ("created", "oldest"),
    [
        ([T + 5, T + 2, T + 9], T + 2),
        ([T + 5, None, T + 9], None),  # one item without a creation time: the page cannot say
        ([T + 5, True, T + 9], None),
        ([T + 5, 10**20, T + 9], None),  # no datetime holds it
        ([T + 5, -1, T + 9], None),
        ([T + 5, "1700000000", T + 9], None),
        ([], None),
    ],
)
async def test_a_page_says_how_old_its_oldest_item_is_when_every_item_says(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, created: list[Any], oldest: int | None
) -> None:
    items = [_item(f"inv{n}", createdTime=t) for n, t in enumerate(created)]
    btcpay_fake.fault("invoices", answers=[RawAnswer(200, json.dumps(items).encode(), {})])

    page = await btcpay_driver.fetch_page(window(T, T + 10))

    assert page.oldest_created == (None if oldest is None else datetime.fromtimestamp(oldest, UTC))


def _item(invoice_id: Any, **fields: Any) -> dict[str, Any]:
    body = {k: v for k, v in make_invoice(str(invoice_id), "Settled").items() if k != "paymentMethods"}
    return body | {"id": invoice_id} | fields


async def test_hostile_items_lose_nothing_else_on_the_page(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    items = [
        _item("good"),
        _item("bad-status", status=7),
        _item("other-store", storeId="another-store"),
        _item("controls", status="Settled\x00"),
        _item("twice"),
        _item("twice", status="Expired"),
        _item(None),
        _item(""),
        _item("x" * 201),
        _item(17),
        "not an object",
        _item("good2"),
    ]
    btcpay_fake.fault("invoices", answers=[RawAnswer(200, json.dumps(items).encode(), {})])

    page = await btcpay_driver.fetch_page(window(T, T + 10))

    assert page.items == len(items)
    assert isinstance(page.answers["good"], driver_api.Snapshot)
    assert isinstance(page.answers["good2"], driver_api.Snapshot)
    for bad in ("bad-status", "other-store", "controls", "twice"):
        error = page.answers[bad]
        assert isinstance(error, driver_api.BadProviderResponse), bad
        assert error.provider_id == "btcpay_main" and btcpay.API_KEY not in str(error)
    assert set(page.answers) == {"good", "good2", "bad-status", "other-store", "controls", "twice"}


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (RawAnswer(200, b'{"id": "inv1"}', {}), driver_api.BadProviderResponse),
        (RawAnswer(200, b"<html>", {}), driver_api.BadProviderResponse),
        (RawAnswer(503, b"", {"Retry-After": "3"}), driver_api.ProviderUnavailable),
        (RawAnswer(403, b"", {}), driver_api.ProviderAuthError),
    ],
)
async def test_a_page_that_fails_as_a_whole_raises(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, answer: RawAnswer, error: type[Exception]
) -> None:
    btcpay_fake.fault("invoices", answers=[answer])
    with pytest.raises(error):
        await btcpay_driver.fetch_page(window(T, T + 10))


async def test_a_page_over_the_body_limit_is_a_bad_response(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_make_driver: Any
) -> None:
    driver = btcpay_make_driver(max_response_bytes=4096)
    btcpay_fake.add(*(make_invoice(f"inv{n}", created=T + n) for n in range(5)))
    with pytest.raises(driver_api.BadProviderResponse, match="max_response_bytes"):
        await driver.fetch_page(window(T, T + 10))
