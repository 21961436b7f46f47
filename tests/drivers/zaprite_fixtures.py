"""Fixtures for the Zaprite driver tests: a running fake, a session, drivers pointed at the fake.

Test modules load them with ``pytest_plugins = ("tests.drivers.zaprite_fixtures",)``. Every fake
started here has everything it served validated against the OpenAPI fixture at teardown when the
fixture is available (the conformance tests require it; see ``test_zaprite_fake.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from reconciler_zaprite import ZapriteDriver, ZapriteSettings

from reconciler import driver_api
from tests.fakes import openapi, zaprite

MakeDriver = Callable[..., ZapriteDriver]


def load_document() -> openapi.OpenAPIDocument:
    """The old Zaprite OpenAPI snapshot, with the plural order path aliased to ``getOrderById``."""
    return openapi.OpenAPIDocument.load(
        openapi.fixtures_dir().joinpath(*zaprite.FIXTURE), aliases=zaprite.ALIASES
    )


@pytest.fixture(scope="session")
def zaprite_document() -> openapi.OpenAPIDocument:
    """The fixture document; skips (fails under CI=true) when the fixtures are missing."""
    openapi.require_fixtures(*zaprite.FIXTURE)
    return load_document()


@pytest.fixture
async def zaprite_fake() -> AsyncIterator[zaprite.FakeZaprite]:
    """A started fake accepting ``zaprite.DEFAULT_API_KEY``."""
    fake = zaprite.FakeZaprite()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
    if openapi.fixtures_dir().joinpath(*zaprite.FIXTURE).exists():
        zaprite.check_conformance(fake.log, load_document())


@pytest.fixture
async def zaprite_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_zaprite_driver(
    zaprite_fake: zaprite.FakeZaprite, zaprite_session: aiohttp.ClientSession
) -> MakeDriver:
    """``make_zaprite_driver(timeout=..., api_key=..., base_url=..., max_response_bytes=...)``: a driver
    aimed at the fake."""

    def make(
        *,
        timeout: float = 5.0,
        api_key: str = zaprite.DEFAULT_API_KEY,
        base_url: str | None = None,
        max_response_bytes: int = 4 * 1024 * 1024,
    ) -> ZapriteDriver:
        settings = ZapriteSettings.model_validate(
            {"base_url": base_url or zaprite_fake.url, "api_key": api_key}
        )
        common = driver_api.CommonSettings(
            driver="zaprite", timeout=timeout, max_response_bytes=max_response_bytes
        )
        return ZapriteDriver("zaprite", settings, common, zaprite_session)

    return make


@pytest.fixture
def zaprite_driver(make_zaprite_driver: MakeDriver) -> ZapriteDriver:
    return make_zaprite_driver()
