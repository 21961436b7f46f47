"""The BTCPay driver's one error boundary: every HTTP, transport and body failure becomes a DriverError."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest
from reconciler_btcpay import BTCPayDriver, client

from reconciler import driver_api
from tests.drivers.conftest import MakeBTCPayDriver
from tests.fakes import btcpay
from tests.fakes.btcpay import make_invoice

KEY_ROUTE = "api-keys/current"


def assert_context(error: driver_api.DriverError, http_status: int | None, invoice_id: str = "inv1") -> None:
    """Provider id, invoice id and status travel as attributes and in the message; the key never does."""
    assert error.provider_id == "btcpay_main"
    assert error.invoice_id == invoice_id
    assert error.http_status == http_status
    assert "btcpay_main" in str(error)
    assert repr(invoice_id) in str(error)
    if http_status is not None:
        assert f"HTTP {http_status}" in str(error)
    for text in (str(error), repr(error), repr(error.__cause__)):
        assert btcpay.API_KEY not in text


async def test_wrong_key_is_an_auth_error(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    driver = btcpay_make_driver(api_key="not-the-key")

    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await driver.fetch("inv1")

    assert_context(caught.value, 401)
    assert "unauthenticated" in str(caught.value)
    assert "not-the-key" not in str(caught.value)


async def test_404_is_not_found(btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver) -> None:
    with pytest.raises(driver_api.InvoiceNotFound) as caught:
        await btcpay_driver.fetch("inv1")

    assert_context(caught.value, 404)
    assert "invoice-not-found" in str(caught.value)


async def test_403_with_a_good_key_is_not_found_and_the_key_check_is_remembered(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.add(
        make_invoice("inv1", "Settled", store_id="another-store"),
        make_invoice("inv2", "Settled", store_id="another-store"),
    )

    for invoice_id in ("inv1", "inv2", "inv1"):
        with pytest.raises(driver_api.InvoiceNotFound) as caught:
            await btcpay_driver.fetch(invoice_id)
        assert_context(caught.value, 403, invoice_id)

    assert btcpay_fake.served("inv1") == [403, 403]
    assert btcpay_fake.served(KEY_ROUTE) == [200]


async def test_concurrent_403s_share_one_key_check(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    ids = [f"inv{n}" for n in range(8)]
    btcpay_fake.add(*(make_invoice(i, "New", store_id="another-store") for i in ids))
    btcpay_fake.fault(KEY_ROUTE, latency=0.05)

    results = await asyncio.gather(*(btcpay_driver.fetch(i) for i in ids), return_exceptions=True)

    assert all(isinstance(r, driver_api.InvoiceNotFound) for r in results)
    assert btcpay_fake.served(KEY_ROUTE) == [200]


async def test_403_when_the_key_cannot_view_the_store_is_an_auth_error(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.api_keys[btcpay.API_KEY] = ["btcpay.store.canviewinvoices:another-store"]
    btcpay_fake.add(make_invoice("inv1", "Settled"))

    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await btcpay_driver.fetch("inv1")

    assert_context(caught.value, 403)
    assert "canviewinvoices" in str(caught.value)
    assert btcpay_fake.served() == [403, 200]


async def test_403_when_the_key_check_is_refused_is_an_auth_error(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled", store_id="another-store"))
    btcpay_fake.fault(KEY_ROUTE, statuses=[401])

    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await btcpay_driver.fetch("inv1")

    assert_context(caught.value, 403)
    assert "HTTP 401" in str(caught.value)


async def test_a_transient_key_check_failure_is_not_remembered(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled", store_id="another-store"))
    btcpay_fake.fault(KEY_ROUTE, statuses=[503])

    with pytest.raises(driver_api.ProviderUnavailable):
        await btcpay_driver.fetch("inv1")
    with pytest.raises(driver_api.InvoiceNotFound):
        await btcpay_driver.fetch("inv1")

    assert btcpay_fake.served(KEY_ROUTE) == [503, 200]


async def test_the_key_check_expires(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    class ForgetfulDriver(BTCPayDriver):
        key_check_ttl = 0.0

    driver = btcpay_make_driver(driver_class=ForgetfulDriver)
    btcpay_fake.add(make_invoice("inv1", "Settled", store_id="another-store"))

    for _ in range(2):
        with pytest.raises(driver_api.InvoiceNotFound):
            await driver.fetch("inv1")

    assert btcpay_fake.served(KEY_ROUTE) == [200, 200]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_unavailable(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, status: int
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", statuses=[status])

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await btcpay_driver.fetch("inv1")

    assert_context(caught.value, status)
    assert caught.value.retry_after is None


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0", 0.0), ("soon", None)])
async def test_retry_after_is_carried(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, header: str, seconds: float | None
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", statuses=[429], retry_after=header)

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await btcpay_driver.fetch("inv1")

    assert caught.value.retry_after == seconds


async def test_retry_after_as_an_http_date(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", statuses=[503], retry_after="Wed, 21 Oct 2015 07:28:00 GMT")

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await btcpay_driver.fetch("inv1")

    assert caught.value.retry_after == 0.0  # a date in the past: retry now


@pytest.mark.parametrize("status", [302, 400, 410, 418, 422])
async def test_other_statuses_are_bad_responses(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, status: int
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", statuses=[status])

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.fetch("inv1")

    assert_context(caught.value, status)


async def test_non_json_body_is_a_bad_response(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", garbage=True)

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.fetch("inv1")

    assert_context(caught.value, 200)
    assert "not JSON" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        [],
        "Settled",
        42,
        {},
        {"status": None},
        {"status": 3},
        {"status": ["Settled"]},
        {"status": "Settled", "additionalStatus": 1},
        {"id": "someone-else", "status": "Settled"},
    ],
)
async def test_wrongly_shaped_json_is_a_bad_response(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, body: Any
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", wrong_shape=body)

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.fetch("inv1")

    assert_context(caught.value, 200)
    assert isinstance(caught.value.__cause__, ValueError)


async def test_dropped_connection_is_unavailable(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", drop=True)

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await btcpay_driver.fetch("inv1")

    assert_context(caught.value, None)
    # aiohttp itself resends an idempotent request once when the server disconnects (RFC 9112 §9.3.1.1).
    assert btcpay_fake.served("inv1") == [None, None]


async def test_slower_than_the_timeout_is_unavailable(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    btcpay_fake.add(make_invoice("inv1", "Settled"))
    btcpay_fake.fault("inv1", latency=5.0)
    driver = btcpay_make_driver(timeout=0.2)

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await driver.fetch("inv1")

    assert_context(caught.value, None)
    assert "timed out: no complete answer within 0.2s" in str(caught.value)
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_unreachable_server_is_unavailable(btcpay_make_driver: MakeBTCPayDriver) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    driver = btcpay_make_driver(base_url=f"http://127.0.0.1:{port}")

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await driver.fetch("inv1")

    assert_context(caught.value, None)


@pytest.mark.parametrize("invoice_id", ["", ".", ".."])
async def test_ids_that_cannot_name_an_invoice_are_not_found_without_a_request(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, invoice_id: str
) -> None:
    with pytest.raises(driver_api.InvoiceNotFound):
        await btcpay_driver.fetch(invoice_id)

    assert btcpay_fake.log == []


async def test_an_answer_that_is_not_http_is_a_bad_response(btcpay_make_driver: MakeBTCPayDriver) -> None:
    async def answer_nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_nonsense, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(driver_api.BadProviderResponse) as caught:
            await btcpay_make_driver(base_url=f"http://127.0.0.1:{port}").fetch("inv1")
    finally:
        server.close()
        await server.wait_closed()

    assert_context(caught.value, None)
    assert isinstance(caught.value.__cause__, aiohttp.ClientResponseError)


def make_http(session: aiohttp.ClientSession) -> driver_api.JsonClient:
    return client.make_client(
        provider_id="p",
        base_url="http://127.0.0.1:1",
        api_key=driver_api.SecretStr("k3y-k3y-k3y"),
        common=driver_api.CommonSettings(driver="btcpay", timeout=1),
        session=session,
    )


async def test_messages_never_echo_the_key(btcpay_session: aiohttp.ClientSession) -> None:
    error = make_http(btcpay_session).error(
        driver_api.ProviderUnavailable, "upstream said: token k3y-k3y-k3y, key k3y-k3y-k3y", "inv1"
    )

    assert "k3y-k3y-k3y" not in str(error)
    assert "upstream said: **********, key **********" in str(error)


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            {"code": "invoice-not-found", "message": "The invoice was not found"},
            "HTTP 404 (invoice-not-found: The invoice was not found)",
        ),
        ({"code": "invoice-not-found"}, "HTTP 404 (invoice-not-found)"),
        ({"message": "no code"}, "HTTP 404"),
        ([{"path": "x", "message": "y"}], "HTTP 404"),
        (None, "HTTP 404"),
    ],
)
async def test_describe(btcpay_session: aiohttp.ClientSession, body: Any, text: str) -> None:
    raw = b"" if body is None else json.dumps(body).encode()
    assert make_http(btcpay_session).describe(driver_api.Reply(404, raw)) == text
