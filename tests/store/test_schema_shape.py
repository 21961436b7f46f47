"""The schema check compares the database with schema.sql itself (issue 10 item 3): every table must have every
column and every index / unique constraint schema.sql declares; what a storefront adds is fine. Both engines."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import errors
from reconciler.store import base, queries
from reconciler.store.sqlite import SqliteStore
from tests.conftest import PG_URL, pg_connection


@pytest.fixture
def template(tmp_path: Path) -> Path:
    path = tmp_path / "template.db"
    db = sqlite3.connect(path)
    try:
        db.executescript(queries.schema_sql())
    finally:
        db.close()
    return path


def _catalogue(path: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(table, column) pairs and CREATE INDEX names of a database, read with plain sqlite3."""
    db = sqlite3.connect(path)
    try:
        tables = [
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        columns = [(t, r[1]) for t in tables for r in db.execute(f"PRAGMA table_info({t})")]
        indexes = [
            r[0]
            for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        ]
    finally:
        db.close()
    return columns, indexes


async def _refusal(path: Path) -> str:
    store = await SqliteStore.open(path)
    try:
        with pytest.raises(errors.SchemaError) as by_require:
            await store.require_schema()
        with pytest.raises(errors.SchemaError) as by_init:
            await store.init_schema()
    finally:
        await store.close()
    assert by_require.value.message == by_init.value.message
    assert "\n" not in by_require.value.message
    return by_require.value.message


async def test_every_droppable_column_of_schema_sql_is_required(tmp_path: Path, template: Path) -> None:
    columns, _ = _catalogue(template)
    assert {t for t, _ in columns} == set(base.OUR_TABLES)
    checked = 0
    for table, column in columns:
        path = tmp_path / f"{table}.{column}.db"
        shutil.copy(template, path)
        db = sqlite3.connect(path)
        try:
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        except sqlite3.OperationalError:
            continue  # a key, indexed or referenced column: SQLite refuses to drop it
        finally:
            db.close()
        message = await _refusal(path)
        assert f"{table}.{column}" in message and "schema.sql" in message, message
        checked += 1
    assert checked > 60


async def test_every_index_of_schema_sql_is_required(tmp_path: Path, template: Path) -> None:
    _, indexes = _catalogue(template)
    assert "invoices_status_next_check" in indexes and len(indexes) >= 5
    for index in indexes:
        path = tmp_path / f"{index}.db"
        shutil.copy(template, path)
        db = sqlite3.connect(path)
        try:
            db.execute(f"DROP INDEX {index}")
        finally:
            db.close()
        assert index in await _refusal(path)


UNIQUES = {
    "licenses (invoice_id)": (
        "invoice_id TEXT UNIQUE REFERENCES invoices (id)",
        "invoice_id TEXT REFERENCES invoices (id)",
    ),
    "invoices (payment_provider_id, provider_invoice_id)": (
        "    UNIQUE (payment_provider_id, provider_invoice_id)\n",
        "    CHECK (1 = 1)\n",
    ),
    "post_settle_tasks (invoice_id, kind)": ("    UNIQUE (invoice_id, kind)\n", "    CHECK (1 = 1)\n"),
    "reconciler_instances (lease_owner)": (
        "lease_owner TEXT PRIMARY KEY,",
        "lease_owner TEXT NOT NULL,",
    ),
}


@pytest.mark.parametrize("needle", sorted(UNIQUES))
async def test_a_missing_unique_constraint_is_refused(tmp_path: Path, needle: str) -> None:
    old, new = UNIQUES[needle]
    schema = queries.schema_sql()
    assert old in schema
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    try:
        db.executescript(schema.replace(old, new))
    finally:
        db.close()

    assert needle in await _refusal(path)


async def test_a_non_unique_index_does_not_stand_in_for_a_unique_one(tmp_path: Path) -> None:
    old, new = UNIQUES["licenses (invoice_id)"]
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    try:
        db.executescript(queries.schema_sql().replace(old, new))
        db.execute("CREATE INDEX licenses_invoice ON licenses (invoice_id)")
    finally:
        db.close()

    assert "licenses (invoice_id)" in await _refusal(path)


async def test_a_whole_index_does_not_stand_in_for_the_partial_one(tmp_path: Path) -> None:
    """`ON CONFLICT (invoice_id, kind) WHERE status = 'open'` needs the partial UNIQUE index itself; a whole
    UNIQUE index on the same columns would refuse a second item once the first is closed."""
    old = "CREATE UNIQUE INDEX review_items_open ON review_items (invoice_id, kind) WHERE status = 'open';"
    schema = queries.schema_sql()
    assert old in schema
    path = tmp_path / "shop.db"
    db = sqlite3.connect(path)
    try:
        db.executescript(
            schema.replace(old, "CREATE UNIQUE INDEX review_items_open ON review_items (invoice_id, kind);")
        )
    finally:
        db.close()

    assert "unique partial index review_items_open on review_items (invoice_id, kind)" in await _refusal(path)


async def test_what_a_storefront_adds_is_fine(template: Path) -> None:
    db = sqlite3.connect(template)
    try:
        db.execute("ALTER TABLE invoices ADD COLUMN shop_note TEXT")
        db.execute("ALTER TABLE licenses ADD COLUMN shop_flag INTEGER")
        db.execute("CREATE INDEX invoices_email ON invoices (buyer_email)")
        db.execute("CREATE UNIQUE INDEX products_name ON products (name)")
        db.execute("CREATE TABLE shop_orders (id INTEGER PRIMARY KEY)")
        db.commit()
    finally:
        db.close()
    store = await SqliteStore.open(template)
    try:
        await store.require_schema()
        assert await store.init_schema() is False
    finally:
        await store.close()


# -- PostgreSQL ------------------------------------------------------------------------------------------------
@pytest.fixture
async def pg() -> AsyncIterator[tuple[Any, str]]:
    async with pg_connection() as (conn, schema):
        await conn.execute(queries.schema_sql())
        yield conn, schema


async def _pg_refusal(schema: str) -> str:
    from reconciler.store.postgres import PostgresStore

    store = await PostgresStore.open(f"{PG_URL}?search_path={schema}", max_size=2)
    try:
        with pytest.raises(errors.SchemaError) as by_require:
            await store.require_schema()
        with pytest.raises(errors.SchemaError) as by_init:
            await store.init_schema()
    finally:
        await store.close()
    assert by_require.value.message == by_init.value.message
    return by_require.value.message


PG_BREAKS = {
    "invoices.last_provider_status": "ALTER TABLE invoices DROP COLUMN last_provider_status",
    "subscriptions.payment_profile_id": "ALTER TABLE subscriptions DROP COLUMN payment_profile_id",
    "audit_log_target": "DROP INDEX audit_log_target",
    "licenses (invoice_id)": "ALTER TABLE licenses DROP CONSTRAINT licenses_invoice_id_key",
    "reconciler_instances (lease_owner)": (
        "ALTER TABLE reconciler_instances DROP CONSTRAINT reconciler_instances_pkey"
    ),
    "post_settle_tasks (invoice_id, kind)": (
        "ALTER TABLE post_settle_tasks DROP CONSTRAINT post_settle_tasks_invoice_id_kind_key;"
        " CREATE INDEX post_settle_tasks_same_columns ON post_settle_tasks (invoice_id, kind)"
    ),
}


@pytest.mark.parametrize("needle", sorted(PG_BREAKS))
async def test_postgres_schema_missing_a_column_or_index_is_refused(pg: tuple[Any, str], needle: str) -> None:
    conn, schema = pg
    await conn.execute(PG_BREAKS[needle])

    message = await _pg_refusal(schema)

    assert needle in message and "schema.sql" in message, message


async def test_postgres_what_a_storefront_adds_is_fine(pg: tuple[Any, str]) -> None:
    from reconciler.store.postgres import PostgresStore

    conn, schema = pg
    await conn.execute("ALTER TABLE invoices ADD COLUMN shop_note TEXT")
    await conn.execute("CREATE INDEX invoices_email ON invoices (buyer_email)")
    await conn.execute("CREATE TABLE shop_orders (id BIGINT PRIMARY KEY)")
    store = await PostgresStore.open(f"{PG_URL}?search_path={schema}", max_size=2)
    try:
        await store.require_schema()
        assert await store.init_schema() is False
    finally:
        await store.close()
