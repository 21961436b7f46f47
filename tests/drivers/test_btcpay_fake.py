"""The fake BTCPay Server itself: routes, auth, fault knobs, the request log and the standalone CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from reconciler_btcpay import BTCPayDriver

from reconciler import driver_api
from tests.drivers.conftest import MakeBTCPayDriver
from tests.fakes import btcpay
from tests.fakes.btcpay import Payment, make_invoice

REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"token {btcpay.API_KEY}"}
INVOICES = f"/api/v1/stores/{btcpay.STORE_ID}/invoices"


async def get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None, **params: Any
) -> tuple[int, Any]:
    async with session.get(url, headers=AUTH if headers is None else headers, params=params) as response:
        return response.status, await response.json()


async def test_a_status_sequence_is_served_in_order(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    """What runner tests build on: one fetch per attempt, the fake answers 503, 503, then the invoice."""
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", statuses=[503, 503, 200], retry_after="1")

    outcomes: list[object] = []
    for _ in range(3):
        try:
            outcomes.append((await btcpay_driver.fetch("inv1")).status)
        except driver_api.ProviderUnavailable as exc:
            outcomes.append(exc.retry_after)

    assert outcomes == [1.0, 1.0, driver_api.ProviderStatus.SETTLED]
    assert btcpay_fake.served("inv1") == [503, 503, 200]
    first, _, last = btcpay_fake.log
    assert first.at <= last.at


async def test_a_global_fault_applies_where_no_target_has_one(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    btcpay_fake.add(make_invoice("inv1"), make_invoice("inv2"))
    btcpay_fake.fault(statuses=[500, 500])
    btcpay_fake.fault("inv2")

    assert (await get(btcpay_session, f"{btcpay_fake.base_url}{INVOICES}/inv1"))[0] == 500
    assert (await get(btcpay_session, f"{btcpay_fake.base_url}{INVOICES}/inv2"))[0] == 200


@pytest.mark.parametrize(
    ("accept_bearer", "header", "status"),
    [
        (True, f"token {btcpay.API_KEY}", 200),
        (True, f"TOKEN  {btcpay.API_KEY}", 200),
        (True, f"Bearer {btcpay.API_KEY}", 200),
        (False, f"Bearer {btcpay.API_KEY}", 401),
        (True, f"Basic {btcpay.API_KEY}", 401),
        (True, "token nope", 401),
        (True, "", 401),
    ],
)
async def test_authorization_schemes(
    btcpay_session: aiohttp.ClientSession, accept_bearer: bool, header: str, status: int
) -> None:
    async with btcpay.FakeBTCPay(accept_bearer=accept_bearer) as fake:
        answer = await get(
            btcpay_session, f"{fake.base_url}/api/v1/api-keys/current", {"Authorization": header}
        )

    assert answer[0] == status
    if status == 401:
        assert answer[1] == {
            "code": "unauthenticated",
            "message": "Authentication is required for accessing this endpoint",
        }


async def test_not_found_and_other_store_answers(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    btcpay_fake.add(make_invoice("theirs", store_id="another-store"))
    base = btcpay_fake.base_url

    assert await get(btcpay_session, f"{base}{INVOICES}/missing") == (
        404,
        {"code": "invoice-not-found", "message": "The invoice was not found"},
    )
    assert (await get(btcpay_session, f"{base}{INVOICES}/theirs"))[0] == 403
    status, body = await get(btcpay_session, f"{base}/api/v1/stores/another-store/invoices/theirs")
    assert (status, body["code"], body["missingPermission"]) == (
        403,
        "missing-permission",
        "btcpay.store.canviewinvoices",
    )


async def test_health_needs_no_key(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    assert await get(btcpay_session, f"{btcpay_fake.base_url}/api/v1/health", {}) == (
        200,
        {"synchronized": True},
    )


async def test_payment_methods_are_only_sent_when_asked(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled", payments=[Payment("0.001")]))
    url = f"{btcpay_fake.base_url}{INVOICES}/inv1"

    assert "paymentMethods" not in (await get(btcpay_session, url))[1]
    assert "paymentMethods" in (await get(btcpay_session, url, includePaymentMethods="true"))[1]


async def test_payment_methods_endpoint_hides_unaccounted_payments_by_default(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled", payments=[Payment("0.001"), Payment("0.001", "Invalid")]))
    url = f"{btcpay_fake.base_url}{INVOICES}/inv1/payment-methods"

    def statuses(methods: list[dict[str, Any]]) -> list[str]:
        return [p["status"] for m in methods for p in m["payments"]]

    assert statuses((await get(btcpay_session, url))[1]) == ["Settled"]
    assert statuses((await get(btcpay_session, url, onlyAccountedPayments="false"))[1]) == [
        "Settled",
        "Invalid",
    ]


def test_v1_invoices_use_pre_2_0_names() -> None:
    invoice = make_invoice("inv1", payments=[Payment("0.001", method="BTC-LN")], generation="v1")

    assert "paidAmount" not in invoice
    assert [(m["paymentMethod"], m["cryptoCode"], "networkFee" in m) for m in invoice["paymentMethods"]] == [
        ("BTC", "BTC", True),
        ("BTC-LightningNetwork", "BTC", True),
    ]
    with pytest.raises(ValueError, match="generation"):
        make_invoice("inv1", generation="v3")


async def test_list_filters_pages_and_orders_newest_first(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> None:
    btcpay_fake.add(
        make_invoice("a", "New", order_id="o1", created=btcpay.CREATED),
        make_invoice("b", "Settled", order_id="o2", created=btcpay.CREATED + 1),
        make_invoice("c", "Processing", order_id="o1", created=btcpay.CREATED + 2),
        make_invoice("d", "Expired", created=btcpay.CREATED + 3),
        make_invoice("x", "New", store_id="another-store"),
    )
    url = f"{btcpay_fake.base_url}{INVOICES}"

    async def ids(query: str) -> list[str]:
        async with btcpay_session.get(f"{url}?{query}", headers=AUTH) as response:
            assert response.status == 200
            return [invoice["id"] for invoice in await response.json()]

    assert await ids("") == ["d", "c", "b", "a"]
    assert await ids("orderId=o1") == ["c", "a"]
    assert await ids("orderId=o1&orderId=o2") == ["c", "b", "a"]
    assert await ids("status=complete&status=paid") == ["c", "b"]
    assert await ids("status=bogus") == ["d", "c", "b", "a"]  # unknown values are dropped, then no filter
    assert await ids("skip=1&take=2") == ["c", "b"]
    assert await ids("take=0") == []


async def test_the_log_keeps_the_key_out_of_headers_and_repr(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    with pytest.raises(driver_api.InvoiceNotFound):
        await btcpay_driver.fetch("missing")

    (exchange,) = btcpay_fake.log
    assert exchange.authorization == f"token {btcpay.API_KEY}"
    assert btcpay.API_KEY not in repr(exchange.headers) + repr(exchange)
    assert exchange.deviations == ("problem-details-bodies",)


async def test_closing_cuts_injected_latency_short() -> None:
    fake = btcpay.FakeBTCPay()
    await fake.start()
    fake.fault("health", latency=30)
    async with aiohttp.ClientSession() as session:
        request = asyncio.create_task(get(session, f"{fake.base_url}/api/v1/health", {}))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await fake.close()
        await asyncio.gather(request, return_exceptions=True)

    assert time.monotonic() - started < 5


async def test_standalone_server_with_state_file_and_control_plane(
    tmp_path: Path, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    state = {
        "store_id": btcpay.STORE_ID,
        "api_keys": {"cli-key": ["btcpay.store.canviewinvoices"]},
        "invoices": [{"id": "inv1", "status": "New", "amount": "1000", "currency": "SATS"}],
        "faults": {"inv2": {"statuses": [503]}},
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.btcpay",
        "--state",
        str(tmp_path / "state.json"),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        announced = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert announced["base_url"] == f"http://127.0.0.1:{announced['port']}"
        driver = btcpay_make_driver(base_url=announced["base_url"], api_key="cli-key")

        snapshot = await driver.fetch("inv1")
        assert (snapshot.status, snapshot.amount_sats) == (driver_api.ProviderStatus.PENDING, 1000)
        with pytest.raises(driver_api.ProviderUnavailable):
            await driver.fetch("inv2")

        async with aiohttp.ClientSession() as session:
            change = {"id": "inv1", "status": "Settled", "amount": "1000", "currency": "SATS"}
            async with session.post(f"{announced['base_url']}/_fake/invoices", json=change) as response:
                assert response.status == 200
            async with session.post(
                f"{announced['base_url']}/_fake/faults", json={"target": "*"}
            ) as response:
                assert response.status == 200
            assert (await driver.fetch("inv1")).status is driver_api.ProviderStatus.SETTLED
            async with session.get(f"{announced['base_url']}/_fake/log") as response:
                log = await response.json()
        assert [entry["status"] for entry in log] == [200, 503, 200]
        assert all("cli-key" not in json.dumps(entry) for entry in log)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
