"""The one way a driver builds its HTTP client (issue 11): ``driver_api.JsonClient.for_provider`` from the
constructor's arguments, with ``driver_api.auth_header`` for the ``Authorization`` value. Over a real socket:
``common.timeout`` and ``common.max_response_bytes`` apply, the header is sent, the key never shows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from reconciler import driver_api
from tests.fakes.raw import RawAnswer, ScriptedServer

KEY = driver_api.SecretStr("k3y-0123456789abcdef")


Build = Callable[..., driver_api.JsonClient]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    await scripted.start()
    yield scripted
    await scripted.close()


@pytest.fixture
async def build(server: ScriptedServer) -> AsyncIterator[Build]:
    """``build(**common)``: the client a driver's constructor would build, aimed at ``server``."""
    async with aiohttp.ClientSession() as session:

        def client(**common: float) -> driver_api.JsonClient:
            return driver_api.JsonClient.for_provider(
                "toy_main",
                driver_api.CommonSettings(driver="toy", **common),
                session,
                service="Toy",
                base_url=server.base_url,
                authorization=driver_api.auth_header("Bearer", KEY),
            )

        yield client


def test_auth_header_keeps_the_value_secret() -> None:
    header = driver_api.auth_header("token", KEY)

    assert header.get_secret_value() == f"token {KEY.get_secret_value()}"
    assert KEY.get_secret_value() not in f"{header} {header!r}"


async def test_the_client_sends_the_header_and_reads_json(server: ScriptedServer, build: Build) -> None:
    server.queue(RawAnswer(200, b'{"state": "paid"}'))

    body = await build().get_json("/v1/invoices/a", invoice_id="a")

    assert body == {"state": "paid"}
    ((path, headers),) = server.requests
    assert path == "/v1/invoices/a"
    assert headers["Authorization"] == f"Bearer {KEY.get_secret_value()}"


async def test_common_timeout_times_each_request(server: ScriptedServer, build: Build) -> None:
    server.queue(RawAnswer(200, b"{}", delay=2.0, chunk=1))

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await build(timeout=0.3).get_json("/x", invoice_id="a")

    assert "timed out: no complete answer within 0.3s" in caught.value.message
    assert caught.value.message.startswith("toy_main: Toy invoice 'a': ")


async def test_common_max_response_bytes_bounds_the_body(server: ScriptedServer, build: Build) -> None:
    server.queue(RawAnswer(200, b'"' + b"x" * 2048 + b'"'))

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await build(max_response_bytes=1024).get_json("/x", invoice_id="a")

    assert "larger than max_response_bytes (1024 bytes)" in caught.value.message


async def test_the_key_is_scrubbed_from_what_the_provider_echoes(
    server: ScriptedServer, build: Build
) -> None:
    echoed = f'{{"code": "bad-key", "message": "Bearer {KEY.get_secret_value()} refused"}}'
    server.queue(RawAnswer(401, echoed.encode()))

    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await build().get_json("/x", invoice_id="a")

    assert KEY.get_secret_value() not in str(caught.value)
    assert "API key refused: HTTP 401 (bad-key: ********** refused)" in caught.value.message
