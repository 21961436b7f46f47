"""A live operator API over a real database, for the API tests: keys of every role, a revoked key, a
seeded invoice with its audit row, review item and license."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from reconciler.api import keys
from reconciler.api.server import ApiServer
from reconciler.config import ApiSettings
from reconciler.driver_api import CommonSettings, ProviderStatus
from reconciler.operator.actions import Operator
from reconciler.passes import RunnerSettings
from reconciler.runner import Provider
from reconciler.testing import FakeDriver, snapshot
from reconciler.timeutil import format_ts
from tests.store.backends import Backend
from tests.support.shop import T0, new_id

MASTER = "master-" + "m" * 40
NOW = T0 + timedelta(hours=2)
PROVIDERS = {"fake": {"driver": "fake", "api_key": "**********", "timeout": "10s"}}
PAID_LATE = snapshot(ProviderStatus.EXPIRED, "Expired", raw_additional_status="PaidLate", paid_late=True)
PENDING = snapshot(ProviderStatus.PENDING, "New")


@dataclass
class Seeded:
    product_id: str
    invoice_id: str
    settled_id: str
    review_id: str
    audit_id: str
    license_id: str


@dataclass
class Live:
    backend: Backend
    server: ApiServer
    client: TestClient[Any, Any]
    seeded: Seeded
    driver: FakeDriver
    tokens: dict[str, str] = field(default_factory=dict)  # role -> token
    key_ids: dict[str, str] = field(default_factory=dict)  # role -> key id
    revoked: str = ""

    def auth(self, token: str | None) -> dict[str, str]:
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def invoice(self, status: str = "pending", answer: Any = PENDING) -> str:
        """A fresh invoice of the `fake` provider, which answers `answer` about it."""
        iid = new_id()
        await self.backend.raw.execute(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, status, amount_sats,"
            " created_at) VALUES (:id, 'fake', :pid, :product, :status, 1000, :t)",
            {
                "id": iid,
                "pid": f"p-{iid}",
                "product": self.seeded.product_id,
                "status": status,
                "t": format_ts(NOW),
            },
        )
        self.driver.script(f"p-{iid}", answer)
        return iid

    async def review_item(self) -> str:
        item = new_id()
        await self.backend.raw.execute(
            "INSERT INTO review_items (id, invoice_id, kind, opened_at, audit_id)"
            " VALUES (:id, :iid, 'invoice.refunded', :t, :audit)",
            {"id": item, "iid": await self.invoice(), "t": format_ts(NOW), "audit": new_id()},
        )
        return item

    async def failed_task(self, kind: str = "capture") -> str:
        iid = await self.invoice("settled")
        await self.backend.raw.execute(
            "INSERT INTO post_settle_tasks (invoice_id, kind, provider_id, status, attempts, created_at, updated_at)"
            " VALUES (:i, :kind, 'fake', 'failed', 8, :t, :t)",
            {"i": iid, "kind": kind, "t": format_ts(NOW)},
        )
        return iid

    async def set_paused(self, paused: bool) -> None:
        await self.backend.raw.execute("DELETE FROM provider_controls", {})
        await self.backend.raw.execute(
            "INSERT INTO provider_controls (provider_id, paused) VALUES ('fake', :p)", {"p": int(paused)}
        )


class FixedClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> Any:
        return self.now


async def seed(b: Backend) -> Seeded:
    product, invoice, settled = new_id(), new_id(), new_id()
    stamp = format_ts(T0)
    await b.raw.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES (:id, :slug, 'App', :t)",
        {"id": product, "slug": f"app-{product[:8]}", "t": stamp},
    )
    for iid, status, created in ((invoice, "expired", T0), (settled, "settled", T0 + timedelta(minutes=1))):
        await b.raw.execute(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, status, amount_sats,"
            " created_at) VALUES (:id, 'fake', :pid, :product, :status, 1000, :t)",
            {"id": iid, "pid": f"p-{iid}", "product": product, "status": status, "t": format_ts(created)},
        )
    audit_id, review_id, license_id = new_id(), new_id(), new_id()
    await b.raw.execute(
        "INSERT INTO audit_log (id, occurred_at, actor, action, target_kind, target_id, details)"
        " VALUES (:id, :t, 'reconciler', 'invoice.paid_late', 'invoice', :iid, '{\"raw_status\": \"Settled\"}')",
        {"id": audit_id, "t": stamp, "iid": invoice},
    )
    await b.raw.execute(
        "INSERT INTO review_items (id, invoice_id, kind, opened_at, audit_id)"
        " VALUES (:id, :iid, 'invoice.paid_late', :t, :audit)",
        {"id": review_id, "iid": invoice, "t": stamp, "audit": audit_id},
    )
    await b.raw.execute(
        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at)"
        " VALUES (:id, :product, :iid, 'key', :t)",
        {"id": license_id, "product": product, "iid": settled, "t": stamp},
    )
    await b.raw.execute(
        "INSERT INTO reconciler_instances (lease_owner, hostname, pid, started_at, last_summary)"
        " VALUES ('host:1:abc', 'host', 1, :t, '{\"claimed\": 0}')",
        {"t": stamp},
    )
    return Seeded(product, invoice, settled, review_id, audit_id, license_id)


async def add_key(b: Backend, role: str, *, revoked: bool = False) -> tuple[str, str]:
    token, key_id = keys.new_token(), new_id()
    await b.store.insert_api_key(
        key_id=key_id, label=f"{role} key", token_hash=keys.token_hash(token), role=role, now=T0
    )
    if revoked:
        assert await b.store.revoke_api_key(key_id, now=T0)
    return key_id, token


@asynccontextmanager
async def live_api(
    b: Backend,
    *,
    actions: bool = True,
    circuits: Callable[[], Mapping[str, str]] = dict,
    **settings: Any,
) -> AsyncIterator[Live]:
    config = ApiSettings(listen="127.0.0.1:0", master_key=SecretStr(MASTER), **settings)
    clock = FixedClock()
    driver = FakeDriver("fake")
    operator = Operator(
        b.store,
        {"fake": Provider("fake", driver, CommonSettings(driver="fake", retry_attempts=1))},
        RunnerSettings(),
        signing_key=Ed25519PrivateKey.generate(),
        clock=clock,
        owner="api:1:abc",
        rng=random.Random(3),
    )
    server = ApiServer(
        b.store,
        config,
        providers=PROVIDERS,
        circuits=circuits,
        operator=operator if actions else None,
        clock=clock,
    )
    seeded = await seed(b)
    client: TestClient[Any, Any] = TestClient(TestServer(server.app))
    await client.start_server()
    try:
        live = Live(b, server, client, seeded, driver)
        for role in keys.Role:
            live.key_ids[role.value], live.tokens[role.value] = await add_key(b, role.value)
        _, live.revoked = await add_key(b, keys.Role.FULL_ADMIN.value, revoked=True)
        yield live
    finally:
        await client.close()
