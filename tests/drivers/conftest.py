"""BTCPay driver fixtures: a running fake, a client session, drivers aimed at the fake.

Every fake started here has all it served validated against the BTCPay OpenAPI fixtures at teardown
when they are available (the conformance tests require them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from reconciler_btcpay import BTCPayDriver

from reconciler import driver_api
from tests.fakes import btcpay, openapi

MakeBTCPayDriver = Callable[..., BTCPayDriver]


@pytest.fixture(scope="session")
def btcpay_document() -> openapi.OpenAPIDocument:
    """BTCPay's merged swagger templates; skips (fails under CI=true) when the fixtures are missing."""
    return btcpay.openapi_document(openapi.require_fixtures("btcpay-openapi").parent)


@pytest.fixture
async def btcpay_fake() -> AsyncIterator[btcpay.FakeBTCPay]:
    """A started fake serving store ``btcpay.STORE_ID`` to ``btcpay.API_KEY``."""
    fake = btcpay.FakeBTCPay()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
    if openapi.fixtures_dir().joinpath("btcpay-openapi").exists():
        btcpay.validate_exchanges(btcpay.openapi_document(openapi.fixtures_dir()), fake.log)


@pytest.fixture
async def btcpay_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def btcpay_make_driver(
    btcpay_fake: btcpay.FakeBTCPay, btcpay_session: aiohttp.ClientSession
) -> MakeBTCPayDriver:
    """``btcpay_make_driver(timeout=..., api_key=..., store_id=..., base_url=..., max_response_bytes=...)``:
    a driver at the fake."""

    def make(
        *,
        timeout: float = 5.0,
        max_response_bytes: int = 4 * 1024 * 1024,
        api_key: str = btcpay.API_KEY,
        store_id: str = btcpay.STORE_ID,
        base_url: str | None = None,
        provider_id: str = "btcpay_main",
        driver_class: type[BTCPayDriver] = BTCPayDriver,
    ) -> BTCPayDriver:
        settings = BTCPayDriver.Settings.model_validate(
            {"base_url": base_url or btcpay_fake.base_url, "store_id": store_id, "api_key": api_key}
        )
        common = driver_api.CommonSettings(
            driver="btcpay", timeout=timeout, max_response_bytes=max_response_bytes
        )
        return driver_class(provider_id, settings, common, btcpay_session)

    return make


@pytest.fixture
def btcpay_driver(btcpay_make_driver: MakeBTCPayDriver) -> BTCPayDriver:
    return btcpay_make_driver()
