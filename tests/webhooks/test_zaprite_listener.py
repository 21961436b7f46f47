"""A Zaprite delivery through the listener, end to end: the real Zaprite driver against the fake Zaprite, a real
SQLite database, the pass's own lease, fetch and settle (docs/webhooks.md §2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.webhooks import WebhookService
from tests.fakes import btcpay, zaprite
from tests.store.backends import Backend, sqlite_backend
from tests.webhooks import two_providers
from tests.webhooks.support import TOKEN, zaprite_body

ORDER_ROUTE = "/v1/orders/{id}"


@dataclass
class Zap:
    backend: Backend
    fake: zaprite.FakeZaprite
    service: WebhookService
    url: str
    session: aiohttp.ClientSession

    async def post(self, body: bytes, token: str | None = TOKEN) -> tuple[int, bytes]:
        path = f"/webhooks/{two_providers.ZAPRITE}" + (f"/{token}" if token is not None else "")
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.url + path, data=body, headers=headers) as response:
            return response.status, await response.read()

    async def settled(self) -> None:
        await asyncio.wait_for(self.service.intake.queue.join(), 10)

    def order_reads(self) -> list[str]:
        return [e.path for e in self.fake.requests_to(ORDER_ROUTE)]

    async def state(self, iid: str) -> tuple[str, int]:
        status = await self.backend.scalar("SELECT status FROM invoices WHERE id = :id", {"id": iid})
        licenses = await self.backend.scalar(
            "SELECT count(*) FROM licenses WHERE invoice_id = :id", {"id": iid}
        )
        return status, licenses


@pytest.fixture
async def zap(tmp_path: Path, signing_key: Ed25519PrivateKey) -> AsyncIterator[Zap]:
    async for backend in sqlite_backend(tmp_path):
        async with zaprite.FakeZaprite() as fake, aiohttp.ClientSession() as session:
            other = btcpay.FakeBTCPay()
            await other.start()
            service = two_providers.service(backend.store, session, other, fake, signing_key)
            port = await service.start()
            try:
                yield Zap(backend, fake, service, f"http://127.0.0.1:{port}", session)
            finally:
                await service.stop()
                await other.close()


def paid_order(order_id: str, external: str | None = None) -> zaprite.JsonObject:
    return zaprite.make_order(
        id=order_id,
        status="PAID",
        total_amount=50_000,
        external_uniq_id=external,
        paid_at="2026-01-02T03:04:05.000Z",
    )


async def test_an_order_change_for_an_invoice_stored_by_order_id_licenses_it(zap: Zap) -> None:
    iid = await two_providers.seed_invoice(zap.backend.raw, two_providers.ZAPRITE, "od_by_id")
    zap.fake.add_order(paid_order("od_by_id"))

    status, body = await zap.post(zaprite_body("od_by_id"))
    await zap.settled()

    assert (status, body) == (200, b'{"outcome": "nudged"}')
    assert await zap.state(iid) == ("settled", 1)
    # found by its own id: the listener read nothing from Zaprite, the worker fetched the order once
    assert zap.order_reads() == ["/v1/orders/od_by_id"]
    row = (await zap.backend.raw.rows("SELECT * FROM webhook_deliveries"))[0]
    assert (row["provider_id"], row["event_type"], row["invoice_id"]) == ("zap", "order.change", iid)
    assert (row["outcome"], row["decision"]) == ("decided", "settle")


async def test_an_invoice_stored_by_external_uniq_id_is_found_after_reading_the_order(zap: Zap) -> None:
    iid = await two_providers.seed_invoice(zap.backend.raw, two_providers.ZAPRITE, "shop-inv-42")
    zap.fake.add_order(paid_order("od_ext", external="shop-inv-42"))

    status, _ = await zap.post(zaprite_body("od_ext"))
    await zap.settled()

    assert status == 200
    assert await zap.state(iid) == ("settled", 1)
    # the listener read the order to learn its externalUniqId; the worker fetched the invoice by its own id
    assert zap.order_reads() == ["/v1/orders/od_ext", "/v1/orders/shop-inv-42"]
    assert await zap.backend.scalar("SELECT invoice_id FROM webhook_deliveries") == iid


async def test_an_order_nobody_stored_is_accepted_and_creates_nothing(zap: Zap) -> None:
    zap.fake.add_order(paid_order("od_stranger", external="not-ours"))

    status, body = await zap.post(zaprite_body("od_stranger"))

    assert (status, body) == (200, b'{"outcome": "unknown_invoice"}')
    assert await zap.backend.scalar("SELECT count(*) FROM invoices") == 0
    assert zap.order_reads() == ["/v1/orders/od_stranger"]


@pytest.mark.parametrize("token", [None, "x" * 32, TOKEN[:-1], TOKEN + "x", TOKEN.upper()])
async def test_a_wrong_or_missing_token_is_401_and_nothing_is_read_or_written(
    zap: Zap, token: str | None
) -> None:
    iid = await two_providers.seed_invoice(zap.backend.raw, two_providers.ZAPRITE, "od_guarded")
    zap.fake.add_order(paid_order("od_guarded"))
    before = await zap.backend.scalar("SELECT next_check_at FROM invoices WHERE id = :id", {"id": iid})

    status, _ = await zap.post(zaprite_body("od_guarded"), token=token)

    assert status == 401
    assert zap.fake.paths == []
    assert await zap.backend.scalar("SELECT count(*) FROM webhook_deliveries") == 0
    assert (
        await zap.backend.scalar("SELECT next_check_at FROM invoices WHERE id = :id", {"id": iid}) == before
    )
    assert await zap.state(iid) == ("pending", 0)


async def test_an_event_that_needs_no_look_reads_nothing(zap: Zap) -> None:
    iid = await two_providers.seed_invoice(zap.backend.raw, two_providers.ZAPRITE, "od_sent")

    status, body = await zap.post(zaprite_body("od_sent", event_type="invoice.sent"))

    assert (status, body) == (200, b'{"outcome": "ignored"}')
    assert zap.fake.paths == []
    assert await zap.state(iid) == ("pending", 0)


async def test_an_unreadable_order_is_503_with_retry_after(zap: Zap) -> None:
    zap.fake.inject(zaprite.Fault(status=503))

    async with zap.session.post(
        f"{zap.url}/webhooks/{two_providers.ZAPRITE}/{TOKEN}", data=zaprite_body("od_down")
    ) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
    assert await zap.backend.scalar("SELECT count(*) FROM webhook_deliveries") == 0
