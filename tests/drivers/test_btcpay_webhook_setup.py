"""The BTCPay driver registers the daemon's webhook (``register_webhook``, docs/cli.md §2.13) against the fake
Greenfield server, whose ``POST /api/v1/stores/{storeId}/webhooks`` checks the request against the
fixture's ``WebhookDataCreate`` and answers like ``WebhookDataCreateResult``."""

from __future__ import annotations

import pytest
from reconciler_btcpay import BTCPayDriver, registration

from reconciler import driver_api
from tests.drivers.conftest import MakeBTCPayDriver
from tests.fakes import btcpay, openapi
from tests.fakes.raw import RawAnswer

URL = "https://shop.example.com/webhooks/btcpay_main"
SECRET = driver_api.SecretStr("whsec-0123456789abcdefghijklmnopqrstuvwxyzABCD")
HOOKS = f"btcpay.store.webhooks.canmodifywebhooks:{btcpay.STORE_ID}"
VIEW = f"btcpay.store.canviewinvoices:{btcpay.STORE_ID}"


@pytest.fixture(autouse=True)
def _fixtures(btcpay_document: openapi.OpenAPIDocument) -> None:
    """The fake validates registrations against the fixtures: skip without them."""


@pytest.fixture
def allowed(btcpay_fake: btcpay.FakeBTCPay) -> btcpay.FakeBTCPay:
    btcpay_fake.api_keys[btcpay.API_KEY] = [VIEW, HOOKS]
    return btcpay_fake


def assert_secret_free(error: driver_api.DriverError) -> None:
    for text in (str(error), repr(error), repr(error.__cause__), repr(error.__context__)):
        assert SECRET.get_secret_value() not in text
        assert btcpay.API_KEY not in text


def test_the_driver_supports_webhook_setup() -> None:
    assert issubclass(BTCPayDriver, driver_api.SupportsWebhookSetup)


async def test_registers_the_invoice_events_at_the_url_with_the_secret(
    allowed: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    webhook_id = await btcpay_driver.register_webhook(URL, SECRET)

    assert list(allowed.webhooks.registered) == [webhook_id]
    webhook = allowed.webhooks.registered[webhook_id]
    assert webhook["url"] == URL
    assert webhook["secret"] == SECRET.get_secret_value()
    assert webhook["enabled"] is True
    assert webhook["automaticRedelivery"] is True
    assert webhook["authorizedEvents"] == {
        "everything": False,
        "specificEvents": [
            "InvoiceCreated",
            "InvoiceReceivedPayment",
            "InvoiceProcessing",
            "InvoicePaymentSettled",
            "InvoiceSettled",
            "InvoiceExpired",
            "InvoiceInvalid",
            "InvoiceExpiredPaidPartial",
            "InvoicePaidAfterExpiration",
        ],
    }
    [exchange] = allowed.log
    assert (exchange.method, exchange.path, exchange.status) == (
        "POST",
        f"/api/v1/stores/{btcpay.STORE_ID}/webhooks",
        200,
    )
    assert exchange.authorization == f"token {btcpay.API_KEY}"
    assert exchange.headers["Content-Type"] == "application/json"


def test_the_request_body_conforms_to_the_fixture(btcpay_document: openapi.OpenAPIDocument) -> None:
    schema = btcpay_document.request_schema("POST", "/api/v1/stores/{storeId}/webhooks")
    assert openapi.schema_errors(schema, registration.request_body(URL, SECRET)) == []
    # the check can fail: the closed schema refuses what BTCPay would not take
    assert openapi.schema_errors(schema, {**registration.request_body(URL, SECRET), "events": []}) != []


async def test_the_fake_refuses_a_request_the_fixture_does_not_allow(allowed: btcpay.FakeBTCPay) -> None:
    status, body, _ = allowed.webhooks.create(
        b'{"url": "https://x.example/h", "enabled": "yes"}',
        lambda value: openapi.schema_errors(
            btcpay.openapi_document(openapi.fixtures_dir()).request_schema(
                "POST", "/api/v1/stores/{storeId}/webhooks"
            ),
            value,
        ),
    )
    assert status == 400
    assert [item["path"] for item in body] == ["enabled"]
    assert allowed.webhooks.registered == {}


async def test_a_key_without_the_permission_is_told_which_to_grant(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await btcpay_driver.register_webhook(URL, SECRET)

    assert "btcpay.store.webhooks.canmodifywebhooks" in caught.value.message
    assert "grant it" in caught.value.message
    assert caught.value.http_status == 403
    assert btcpay_fake.webhooks.registered == {}
    assert_secret_free(caught.value)


async def test_an_invalid_key_is_an_auth_error(
    allowed: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    driver = btcpay_make_driver(api_key="not-the-key-at-all")
    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await driver.register_webhook(URL, SECRET)

    assert "not a valid key" in caught.value.message
    assert caught.value.http_status == 401
    assert "not-the-key-at-all" not in str(caught.value)
    assert_secret_free(caught.value)


async def test_an_unknown_store_names_the_store(
    allowed: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    allowed.api_keys[btcpay.API_KEY] = ["unrestricted"]
    driver = btcpay_make_driver(store_id="NoSuchStore")
    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await driver.register_webhook(URL, SECRET)

    assert "store 'NoSuchStore' not found" in caught.value.message
    assert "store-not-found" in caught.value.message
    assert caught.value.http_status == 404


@pytest.mark.parametrize("status", [500, 503])
async def test_a_server_error_is_unavailable(
    allowed: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver, status: int
) -> None:
    allowed.fault("webhooks", statuses=[status], retry_after="7")
    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await btcpay_driver.register_webhook(URL, SECRET)

    assert caught.value.http_status == status
    assert allowed.webhooks.registered == {}
    assert_secret_free(caught.value)


async def test_a_timeout_is_unavailable(
    allowed: btcpay.FakeBTCPay, btcpay_make_driver: MakeBTCPayDriver
) -> None:
    allowed.fault("webhooks", latency=2.0)
    driver = btcpay_make_driver(timeout=0.2)
    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await driver.register_webhook(URL, SECRET)

    assert "timed out" in caught.value.message
    assert_secret_free(caught.value)


async def test_a_validation_error_is_shown_without_the_secret(
    allowed: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    echo = f'[{{"path": "secret", "message": "bad secret {SECRET.get_secret_value()}"}}]'.encode()
    allowed.fault("webhooks", answers=[RawAnswer(422, echo, {"Content-Type": "application/json"})])
    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.register_webhook(URL, SECRET)

    assert "HTTP 422" in caught.value.message
    assert "secret: bad secret" in caught.value.message
    assert_secret_free(caught.value)


async def test_an_answer_without_an_id_is_a_bad_response(
    allowed: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    allowed.fault("webhooks", wrong_shape={"url": URL})
    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.register_webhook(URL, SECRET)

    assert "no usable webhook 'id'" in caught.value.message


async def test_a_server_that_kept_another_secret_is_a_bad_response(
    allowed: btcpay.FakeBTCPay, btcpay_driver: BTCPayDriver
) -> None:
    allowed.fault("webhooks", wrong_shape={"id": "hook1", "url": URL, "secret": "theirs"})
    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await btcpay_driver.register_webhook(URL, SECRET)

    assert "'hook1'" in caught.value.message and "delete it" in caught.value.message
    assert "theirs" not in caught.value.message
    assert_secret_free(caught.value)
