"""schema.sql is the shared-database contract: it applies unchanged on SQLite and PostgreSQL, and its
CHECKs refuse what would break the reconciler (docs/schema.md §1)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from reconciler import errors
from reconciler.store import base, queries
from reconciler.store.sqlite import SqliteStore
from tests.support.shop import Shop, create_schema

ROOT = Path(__file__).resolve().parents[2]

GOOD_TS = "2026-01-02T03:04:05.000000Z"
BAD_INSERTS = {
    "offset timestamp": (
        "INSERT INTO products (id, slug, name, created_at) VALUES ('p2', 's2', 'n', '2026-01-02T03:04:05+00:00')"
    ),
    "short timestamp": "INSERT INTO products (id, slug, name, created_at) VALUES ('p2', 's2', 'n', '2026-01-02')",
    "status": (
        "INSERT INTO invoices (id, provider_invoice_id, product_id, status, amount_sats, created_at)"
        f" VALUES ('i2', 'x', 'p1', 'paid', 1, '{GOOD_TS}')"
    ),
    "boolean": (
        "INSERT INTO policies (id, product_id, slug, is_trial, created_at) VALUES ('q2', 'p1', 's', 2, '{GOOD_TS}')"
    ).replace("{GOOD_TS}", GOOD_TS),
    "negative used_count": "INSERT INTO discount_codes (id, code, used_count) VALUES ('d2', 'C2', -1)",
}

# What a storefront writes: only the non-bookkeeping columns; everything else must default.
STOREFRONT_ROWS = [
    f"INSERT INTO products (id, slug, name, created_at) VALUES ('p1', 'app', 'App', '{GOOD_TS}')",
    f"INSERT INTO policies (id, product_id, slug, created_at) VALUES ('q1', 'p1', 'default', '{GOOD_TS}')",
    "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, amount_sats, created_at,"
    f" updated_at) VALUES ('i1', 'btcpay', 'B1', 'p1', 2100000000000000, '{GOOD_TS}', '{GOOD_TS}')",
    "INSERT INTO discount_codes (id, code) VALUES ('d1', 'C1')",
    f"INSERT INTO discount_redemptions (id, code_id, invoice_id, created_at, updated_at) VALUES ('r1', 'd1', 'i1',"
    f" '{GOOD_TS}', '{GOOD_TS}')",
]


def test_schema_sql_at_the_root_is_the_packaged_one() -> None:
    assert (ROOT / "schema.sql").read_text() == queries.schema_sql()


def test_sqlite_applies_schema_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    create_schema(path)
    shop = Shop(path)
    for sql in STOREFRONT_ROWS:
        shop.execute(sql)
    row = shop.invoice_row("i1")
    assert row["status"] == "pending" and row["check_attempts"] == 0 and row["lease_token"] is None
    assert row["amount_sats"] == 21_000_000 * 100_000_000  # BIGINT: all bitcoin in sats fits
    policy = shop.rows("SELECT * FROM policies")[0]
    assert (policy["active"], policy["max_machines"], policy["entitlements"]) == (1, 1, "[]")
    assert shop.scalar("SELECT used_count FROM discount_codes") == 0
    assert shop.scalar("SELECT status FROM discount_redemptions") == "pending"
    assert shop.scalar("SELECT version FROM schema_meta") == base.SCHEMA_VERSION


@pytest.mark.parametrize("case", sorted(BAD_INSERTS))
def test_sqlite_checks_refuse_bad_rows(tmp_path: Path, case: str) -> None:
    path = tmp_path / "s.db"
    create_schema(path)
    shop = Shop(path)
    shop.execute(STOREFRONT_ROWS[0])
    with pytest.raises(sqlite3.IntegrityError):
        shop.execute(BAD_INSERTS[case])


async def test_postgres_applies_schema_unchanged(pg_schema: tuple[Any, str]) -> None:
    import asyncpg

    conn, _ = pg_schema
    await conn.execute(queries.schema_sql())
    for sql in STOREFRONT_ROWS:
        await conn.execute(sql)
    row = await conn.fetchrow("SELECT status, check_attempts, amount_sats FROM invoices WHERE id = 'i1'")
    assert tuple(row) == ("pending", 0, 21_000_000 * 100_000_000)
    assert await conn.fetchval("SELECT version FROM schema_meta") == base.SCHEMA_VERSION
    for case, sql in BAD_INSERTS.items():
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(sql)
        assert case


async def test_init_schema_is_idempotent(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "new.db", create=True)
    try:
        assert await store.schema_version() is None
        assert await store.init_schema() is True
        assert await store.init_schema() is False
        assert await store.schema_version() == base.SCHEMA_VERSION
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            "CREATE TABLE schema_meta (version INTEGER); INSERT INTO schema_meta VALUES (1), (1);",
            "exactly one",
        ),
        ("CREATE TABLE schema_meta (version INTEGER); INSERT INTO schema_meta VALUES (99);", "version 99"),
        ("CREATE TABLE schema_meta (name TEXT);", "not ours"),
        ("CREATE TABLE invoices (id TEXT);", "no schema_meta"),
    ],
)
async def test_a_database_that_is_not_ours_is_refused(tmp_path: Path, setup: str, message: str) -> None:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as db:
        db.executescript(setup)
    store = await SqliteStore.open(path)
    try:
        with pytest.raises(errors.SchemaError, match=message):
            await store.init_schema()
        with pytest.raises(errors.SchemaError):
            await store.require_schema()
    finally:
        await store.close()


async def test_missing_database_file_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(errors.SchemaError, match="init-db"):
        await SqliteStore.open(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
