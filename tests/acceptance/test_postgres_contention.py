"""Issue 10 on PostgreSQL: a storefront that locks in the opposite order, and two instances racing over rows
that are one payment. No pass ends, no lease is left, one license per payment."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler import licenses
from reconciler.driver_api import CommonSettings, Snapshot
from reconciler.runner import Provider, Runner, RunnerSettings
from reconciler.testing import FakeDriver, snapshot
from reconciler.timeutil import format_ts
from tests.conftest import PG_URL, pg_connection
from tests.store.backends import postgres_backend
from tests.support.pg_cluster import reconciler, search_path_url, wait_all

pytestmark = pytest.mark.postgres

SETTLED = snapshot("SETTLED", amount_sats=1000, currency="BTC")


def now_ts() -> str:
    return format_ts(datetime.now(UTC))


async def seed_product(conn: Any) -> str:
    product = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES ($1, 'app', 'App', $2)", product, now_ts()
    )
    return product


async def test_a_storefront_locking_in_the_opposite_order_never_ends_the_pass(tmp_path: Path) -> None:
    """The handler inserts the license first, then flips the status; our settle flips first, then inserts.
    PostgreSQL aborts one of the two as a deadlock: ours is run again, never the end of the pass."""
    async with pg_connection() as (conn, schema):
        backends = cast(AsyncGenerator[Any, None], postgres_backend(conn, schema, PG_URL))
        backend = await anext(backends)
        try:
            await _race_a_storefront(conn, schema, backend)
        finally:
            await backends.aclose()


async def _race_a_storefront(conn: Any, schema: str, backend: Any) -> None:
    product = await seed_product(conn)
    created = format_ts(datetime.now(UTC) - timedelta(minutes=5))
    invoices = [str(uuid.uuid4()) for _ in range(6)]
    for n, invoice_id in enumerate(invoices):
        await conn.execute(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, amount_sats,"
            " created_at) VALUES ($1, 'fake', $2, $3, 1000, $4)",
            invoice_id,
            f"P{n}",
            product,
            created,
        )
    await conn.execute("SET deadlock_timeout = '100ms'")
    handler = await __import__("asyncpg").connect(search_path_url(PG_URL, schema))
    outcomes: list[str] = []

    async def storefront(invoice_id: str, started: asyncio.Event) -> None:
        try:
            async with handler.transaction():
                await handler.execute(
                    "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at)"
                    " VALUES ($1, $2, $3, 'WEBHOOK', $4) ON CONFLICT (invoice_id) DO NOTHING",
                    str(uuid.uuid4()),
                    product,
                    invoice_id,
                    now_ts(),
                )
                started.set()
                await asyncio.sleep(0.3)  # our settle takes the invoice row meanwhile
                await handler.execute(
                    "UPDATE invoices SET status = 'settled', settled_at = $1 WHERE id = $2"
                    " AND status = 'pending'",
                    now_ts(),
                    invoice_id,
                )
            outcomes.append("committed")
        except Exception as exc:  # the storefront's own handler: the deadlock victim, maybe
            outcomes.append(type(exc).__name__)

    handlers: list[asyncio.Task[None]] = []
    by_provider_id = {f"P{n}": invoice_id for n, invoice_id in enumerate(invoices)}

    class WebhookRacing(FakeDriver):
        async def fetch(self, provider_invoice_id: str) -> Snapshot:
            if provider_invoice_id == "P0":
                started = asyncio.Event()
                handlers.append(asyncio.create_task(storefront(by_provider_id["P0"], started)))
                await started.wait()
            return await super().fetch(provider_invoice_id)

    driver = WebhookRacing()
    driver.script_many(by_provider_id, SETTLED)
    runner = Runner(
        backend.store,
        {"fake": Provider("fake", driver, CommonSettings(driver="fake"))},
        RunnerSettings(batch_size=3),
        signing_key=Ed25519PrivateKey.generate(),
    )
    summary = await runner.run_pass()  # must not raise
    await asyncio.gather(*handlers)
    await handler.close()

    assert outcomes  # the race happened
    assert await conn.fetchval("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL") == 0
    per_invoice = await conn.fetch("SELECT invoice_id, count(*) AS n FROM licenses GROUP BY invoice_id")
    assert {r["invoice_id"]: r["n"] for r in per_invoice} == {i: 1 for i in invoices}
    assert await conn.fetchval("SELECT count(*) FROM invoices WHERE status = 'settled'") == 6
    assert summary.counts["settle"] >= 5


@pytest.mark.slow
async def test_two_instances_never_license_one_payment_twice(tmp_path: Path) -> None:
    pairs = 150
    async with pg_connection() as (conn, schema):
        url = search_path_url(PG_URL, schema)
        script = tmp_path / "script.json"
        script.write_text(json.dumps({"*": [{"status": "SETTLED", "raw_status": "Settled"}]}))
        key = tmp_path / "key.pem"
        licenses.write_new_key(key)
        config = tmp_path / "config.toml"
        config.write_text(
            f'default_provider = "fake"\n[database]\nurl = "{url}"\n[license]\nsigning_key_file = "{key}"\n'
            "[reconcile]\nbatch_size = 7\n"
            f'[providers.fake]\ndriver = "fake"\nscript_path = "{script}"\nlatency = 0.005\nmax_concurrency = 4\n'
        )
        init = subprocess.run(
            [sys.executable, "-m", "reconciler", "--config", str(config), "init-db"],
            capture_output=True,
            text=True,
        )
        assert init.returncode == 0, init.stderr
        product = await seed_product(conn)
        base = datetime.now(UTC) - timedelta(minutes=10)
        rng = random.Random(5)
        rows = []
        for n in range(pairs):
            # which of the two rows is older varies, so each instance meets both kinds of winner
            older_is_null = rng.random() < 0.5
            for provider in (None, "fake"):
                offset = 0 if (provider is None) == older_is_null else 1
                rows.append(
                    (
                        str(uuid.uuid4()),
                        provider,
                        f"PAY-{n}",
                        product,
                        format_ts(base + timedelta(seconds=offset)),
                    )
                )
        rng.shuffle(rows)
        await conn.executemany(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, amount_sats,"
            " created_at) VALUES ($1, $2, $3, $4, 1000, $5)",
            rows,
        )
        results = wait_all([reconciler(config, "--once") for _ in range(2)])
        for code, stderr in results:
            assert code == 0, stderr[-3000:]

        per_payment = await conn.fetch(
            "SELECT i.provider_invoice_id, count(l.id) AS n FROM invoices AS i"
            " LEFT JOIN licenses AS l ON l.invoice_id = i.id GROUP BY i.provider_invoice_id"
        )
        assert {r["provider_invoice_id"]: r["n"] for r in per_payment} == {
            f"PAY-{n}": 1 for n in range(pairs)
        }
        # the licensed row is the older one, and the other is audited as its duplicate, once
        duplicates = await conn.fetch(
            "SELECT target_id, details FROM audit_log WHERE action = 'invoice.duplicate'"
        )
        assert len(duplicates) == pairs
        assert len({d["target_id"] for d in duplicates}) == pairs
        created = {r[0]: r[4] for r in rows}
        for d in duplicates:
            winner = json.loads(d["details"])["winner_invoice_id"]
            assert created[winner] < created[d["target_id"]]
            assert await conn.fetchval("SELECT count(*) FROM licenses WHERE invoice_id = $1", winner) == 1
        assert await conn.fetchval("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL") == 0
