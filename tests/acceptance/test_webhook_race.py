"""A webhook racing a reconcile pass of another instance and the storefront's own handler on the same invoices
(issue 14), on SQLite and PostgreSQL: each paid invoice ends with exactly one license."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from tests.acceptance.webhook_daemon import Daemon, seed, until, write_config
from tests.conftest import PG_URL, pg_connection
from tests.fakes.btcpay import FakeBTCPay, Payment, make_invoice
from tests.store.backends import Backend, PostgresRaw, postgres_backend, sqlite_backend
from tests.support.pg_cluster import search_path_url

COUNT = 20


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Backend, str]]:
    if request.param == "sqlite":
        async for found in sqlite_backend(tmp_path):
            yield found, f"sqlite://{tmp_path / 'conformance.db'}"
    else:
        async with pg_connection() as (conn, schema):
            async for found in postgres_backend(conn, schema, PG_URL):
                yield found, search_path_url(PG_URL, schema)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sqlite_storefront(path: Path, invoice_id: str, with_license: bool) -> None:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "UPDATE invoices SET status = 'settled', settled_at = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
            (_stamp(), _stamp(), invoice_id),
        )
        if with_license:
            db.execute(
                "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at)"
                " SELECT ?, product_id, id, 'WEBHOOK-KEY', ? FROM invoices WHERE id = ?"
                " ON CONFLICT (invoice_id) DO NOTHING",
                (str(uuid.uuid4()), _stamp(), invoice_id),
            )
        db.execute("COMMIT")
    finally:
        db.close()


async def storefront(b: Backend, db_url: str, invoice_id: str, with_license: bool) -> None:
    """What a storefront's own "paid" handler does, in its own transaction (plain SQL, no reconciler code)."""
    if b.name == "sqlite":
        await asyncio.to_thread(
            _sqlite_storefront, Path(db_url.removeprefix("sqlite://")), invoice_id, with_license
        )
        return
    assert isinstance(b.raw, PostgresRaw)
    async with b.raw.conn.transaction():
        await b.raw.conn.execute(
            "UPDATE invoices SET status = 'settled', settled_at = $1, updated_at = $1"
            " WHERE id = $2 AND status = 'pending'",
            _stamp(),
            invoice_id,
        )
        if with_license:
            await b.raw.conn.execute(
                "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at)"
                " SELECT $1, product_id, id, 'WEBHOOK-KEY', $2 FROM invoices WHERE id = $3"
                " ON CONFLICT (invoice_id) DO NOTHING",
                str(uuid.uuid4()),
                _stamp(),
                invoice_id,
            )


@pytest.mark.slow
async def test_a_webhook_a_pass_of_another_instance_and_the_storefront_license_each_invoice_once(
    tmp_path: Path, db: tuple[Backend, str]
) -> None:
    b, url = db
    rng = random.Random(14)
    refs = [f"INV-{i}" for i in range(COUNT)]
    ids = await seed(b, refs, due=True)
    async with FakeBTCPay() as fake, aiohttp.ClientSession() as session:
        fake.add(*(make_invoice(ref, status="New") for ref in refs))
        fake.fault(None, latency=0.1)  # a pass holds its leases while the payments come
        hooked = write_config(
            tmp_path,
            url,
            fake.base_url,
            webhooks={"listen": "127.0.0.1:0"},
            initial_delay="1h",
            name="a.toml",
        )
        other = write_config(tmp_path, url, fake.base_url, max_concurrency=2, name="b.toml")
        listener = await Daemon.start(hooked)  # only its webhooks work: its first pass is an hour away
        a_pass = await Daemon.start(other, "--once", webhooks=False)

        async def leased() -> bool:
            return bool(await b.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL"))

        await until(leased, "the other instance's pass holding leases")
        answers: list[tuple[int, str | None]] = []
        for n, ref in enumerate(refs):
            fake.add(make_invoice(ref, status="Settled", payments=[Payment("0.001")]))  # paid now
            first, second = (
                (listener.deliver(session, ref, f"d-{n}"), storefront(b, url, ids[ref], n % 2 == 0))
                if rng.random() < 0.5
                else (storefront(b, url, ids[ref], n % 2 == 0), listener.deliver(session, ref, f"d-{n}"))
            )
            results = await asyncio.gather(first, second)
            answers.extend(r for r in results if isinstance(r, tuple))
            await asyncio.sleep(rng.uniform(0, 0.05))
        assert await a_pass.wait() == 0
        assert [status for status, _ in answers] == [200] * COUNT

        async def decided() -> bool:  # the webhook's worker got to each invoice
            return not await b.scalar("SELECT count(*) FROM webhook_deliveries WHERE outcome = 'nudged'")

        await until(decided, "every delivery decided")
        assert await listener.stop() == 0
        # a storefront's status-only write may fence a decision out: a final pass recovers such an invoice
        await b.raw.execute("UPDATE invoices SET next_check_at = NULL")
        final = await Daemon.start(other, "--once", webhooks=False)
        assert await final.wait() == 0

    statuses = {row["id"]: row["status"] for row in await b.raw.rows("SELECT id, status FROM invoices")}
    assert set(statuses.values()) == {"settled"}
    per_invoice = await b.raw.rows("SELECT invoice_id, count(*) AS n FROM licenses GROUP BY invoice_id")
    assert {row["invoice_id"]: row["n"] for row in per_invoice} == {iid: 1 for iid in ids.values()}
    assert await b.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL") == 0
    doubled = await b.raw.rows(
        "SELECT target_id FROM audit_log WHERE action = 'invoice.settled' GROUP BY target_id HAVING count(*) > 1"
    )
    assert doubled == []
    issued = await b.scalar("SELECT count(*) FROM audit_log WHERE action = 'license.issued'")
    by_storefront = await b.scalar("SELECT count(*) FROM licenses WHERE license_key = 'WEBHOOK-KEY'")
    assert issued + by_storefront == COUNT
    outcomes = [row["outcome"] for row in await b.raw.rows("SELECT outcome FROM webhook_deliveries")]
    assert len(outcomes) == COUNT and set(outcomes) <= {"decided", "done_already", "busy"}, outcomes
    assert "decided" in outcomes, outcomes
