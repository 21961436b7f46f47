"""Schema migrations (issue 13): `schema.sql` is version 1 with every migration applied in order, on both engines;
a version-1 database with data is upgraded in place without losing a row; migrating twice, or from several
processes at once, is safe; every migration only adds, and every column it adds to an older table is nullable or
defaulted (the storefront's contract, docs/schema.md §4)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler import errors
from reconciler.store import base, migrations, queries, schema
from reconciler.store.sqlite import SqliteStore
from reconciler.timeutil import format_ts
from tests.conftest import PG_URL, pg_connection
from tests.store.catalogue import (
    V1_SQL,
    postgres_catalogue,
    sqlite_file_catalogue,
    sqlite_memory_catalogue,
)
from tests.support.pg_cluster import search_path_url


def _v1() -> str:
    return V1_SQL.read_text(encoding="utf-8")


def _scripts(dialect: str) -> list[str]:
    return [m.script for m in migrations.load(dialect)]


def _set_version(version: int) -> str:
    return f"UPDATE schema_meta SET version = {version};"


def _migrated_by_hand(dialect: str) -> list[str]:
    """Version 1, then each migration and the version it reaches, as `migrate` runs them."""
    steps = [_v1()]
    for migration in migrations.load(dialect):
        steps += [migration.script, _set_version(migration.version)]
    return steps


# -- what the migrations are -----------------------------------------------------------------------------------
def test_the_migrations_reach_this_releases_version() -> None:
    loaded = migrations.load("sqlite")
    assert [m.version for m in loaded] == list(range(2, base.SCHEMA_VERSION + 1))
    assert migrations.newest() == base.SCHEMA_VERSION
    assert loaded[0].name == "0002_operator_desk.sql"
    assert set(schema.ADDED) == {m.version for m in loaded}


def test_the_version_1_fixture_is_what_release_0_1_created() -> None:
    """The fixture is version 1 itself: it says so and holds exactly the version-1 tables."""
    catalogue = sqlite_memory_catalogue(_v1())
    assert catalogue["schema_meta"] == [(1,)]
    assert set(catalogue["tables"]) == schema.tables_at(1)
    assert "schema version 1" in _v1().splitlines()[0]


def test_schema_sql_is_version_1_plus_every_migration_on_sqlite() -> None:
    direct = sqlite_memory_catalogue(queries.schema_sql())
    migrated = sqlite_memory_catalogue(*_migrated_by_hand("sqlite"))
    assert direct["schema_meta"] == [(base.SCHEMA_VERSION,)]
    assert set(direct["tables"]) == set(migrated["tables"]) == schema.OUR_TABLES
    for table in sorted(direct["tables"]):
        assert direct["tables"][table] == migrated["tables"][table], table
    assert direct == migrated


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("WHERE status = 'open'", "WHERE status <> 'dismissed'"),  # a partial predicate
        ("paused INTEGER NOT NULL DEFAULT 0", "paused INTEGER NOT NULL DEFAULT 1"),  # a default
        ("'support', 'full-admin'", "'support', 'admin'"),  # a CHECK
        ("label TEXT NOT NULL,", "label TEXT,"),  # NOT NULL
        ("token_hash TEXT NOT NULL UNIQUE", "token_hash TEXT NOT NULL"),  # a constraint
        ("ON review_items (status, opened_at, id)", "ON review_items (status, opened_at)"),  # an index
    ],
)
def test_the_comparison_sees_every_kind_of_difference(old: str, new: str) -> None:
    """The equality above could not pass by accident: each kind of drift in schema.sql shows."""
    assert old in queries.schema_sql()
    drifted = sqlite_memory_catalogue(queries.schema_sql().replace(old, new))
    assert drifted != sqlite_memory_catalogue(*_migrated_by_hand("sqlite"))


async def test_schema_sql_is_version_1_plus_every_migration_on_postgres() -> None:
    async with pg_connection() as (conn, direct), pg_connection() as (other, stepped):
        await conn.execute(queries.schema_sql())
        for step in _migrated_by_hand("postgres"):
            await other.execute(step)
        created, migrated = await postgres_catalogue(conn, direct), await postgres_catalogue(other, stepped)
    assert created["schema_meta"] == [(base.SCHEMA_VERSION,)]
    assert set(created["tables"]) == schema.OUR_TABLES
    for table in sorted(created["tables"]):
        assert created["tables"][table] == migrated["tables"][table], table
    partial = created["tables"]["review_items"]["indexes"]["review_items_open"]
    assert "UNIQUE" in partial and "WHERE (status = 'open'::text)" in partial
    assert created == migrated


def _shape_of(*scripts: str) -> schema.SchemaShape:
    sql = queries.load("sqlite")
    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row
    try:
        for script in scripts:
            db.executescript(script)
        return schema.SchemaShape.from_rows(
            db.execute(sql["schema_columns"]).fetchall(), db.execute(sql["schema_indexes"]).fetchall()
        )
    finally:
        db.close()


def test_the_schema_check_knows_what_each_version_holds() -> None:
    """`schema.ADDED` (what the check expects of an older database) is what the migrations really add."""
    steps = [_v1()]
    assert schema.expected_shape(1) == _shape_of(*steps)
    for migration in migrations.load("sqlite"):
        steps.append(migration.script)
        assert schema.expected_shape(migration.version) == _shape_of(*steps), migration.name
    assert schema.expected_shape(1) != schema.expected_shape()
    open_items = schema.Index("review_items", ("invoice_id", "kind"), unique=True, partial=True)
    assert open_items in schema.expected_shape().indexes


# -- every migration only adds, and what it adds to older tables is nullable or defaulted ------------------------
_CREATE_TABLE = re.compile(r"^CREATE TABLE (\w+) \((.*)\)$", re.DOTALL | re.IGNORECASE)
_CREATE_INDEX = re.compile(r"^CREATE (UNIQUE )?INDEX (\w+) ON (\w+) \(", re.IGNORECASE)
_ADD_COLUMN = re.compile(r"^ALTER TABLE (\w+) ADD COLUMN (\w+) (.*)$", re.DOTALL | re.IGNORECASE)


def _statements(script: str) -> list[str]:
    found, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(re.sub(r"\s+", " ", pending).strip().rstrip(";").strip())
            pending = ""
    assert not pending.strip(), f"a statement without its end: {pending!r}"
    return found


def contract_breaches(script: str, existing: set[str]) -> list[str]:
    """What a migration does beyond the storefront's contract: only new tables, new indexes, and new columns
    that are nullable or defaulted on tables that existed (their INSERTs must keep working)."""
    breaches = []
    for statement in _statements(script):
        if table := _CREATE_TABLE.match(statement):
            if table.group(1) in existing:
                breaches.append(f"table {table.group(1)} exists already")
        elif _CREATE_INDEX.match(statement):
            pass
        elif column := _ADD_COLUMN.match(statement):
            definition = column.group(3).upper()
            if "NOT NULL" in definition and "DEFAULT" not in definition:
                breaches.append(f"column {column.group(1)}.{column.group(2)} is NOT NULL without a default")
            if "PRIMARY KEY" in definition or "UNIQUE" in definition:
                breaches.append(f"column {column.group(1)}.{column.group(2)} is a key")
        else:
            breaches.append(f"not an addition: {statement[:60]}")
    return breaches


@pytest.mark.parametrize("dialect", queries.DIALECTS)
def test_every_migration_only_adds_nullable_or_defaulted_columns(dialect: str) -> None:
    existing = set(schema.tables_at(1))
    for migration in migrations.load(dialect):
        assert contract_breaches(migration.script, existing) == [], migration.name
        existing |= {m.group(1) for s in _statements(migration.script) if (m := _CREATE_TABLE.match(s))}
    assert existing == schema.OUR_TABLES


def test_the_contract_check_finds_what_breaks_the_storefront() -> None:
    tables = {"invoices"}
    assert contract_breaches("ALTER TABLE invoices ADD COLUMN note TEXT;", tables) == []
    assert contract_breaches("ALTER TABLE invoices ADD COLUMN n INTEGER NOT NULL DEFAULT 0;", tables) == []
    assert contract_breaches("ALTER TABLE invoices ADD COLUMN n INTEGER NOT NULL;", tables) == [
        "column invoices.n is NOT NULL without a default"
    ]
    assert contract_breaches("CREATE TABLE invoices (id TEXT);", tables) == ["table invoices exists already"]
    assert contract_breaches("ALTER TABLE invoices DROP COLUMN buyer_email;", tables) != []
    assert contract_breaches("ALTER TABLE invoices RENAME TO bills;", tables) != []
    assert contract_breaches("DROP INDEX invoices_status_created;", tables) != []


# -- upgrading in place, both engines --------------------------------------------------------------------------
Execute = Callable[[str, tuple[Any, ...]], Awaitable[None]]
Dump = Callable[[], Awaitable[dict[str, list[tuple[Any, ...]]]]]


async def seed_v1(execute: Execute, engine: str) -> None:
    """A version-1 database as a working shop leaves it: the storefront's rows of every kind (the mixed
    database's seed, with the rows only a loosely typed engine takes), and a row in every table the
    reconciler writes."""
    from tests.acceptance.test_mixed_database import seed

    good, _ = await seed(execute, engine)
    now = format_ts(datetime.now(UTC))
    invoice = next(iter(good))
    product, license_id, code = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES (?, 'seeded', 'Seeded', ?)", (product, now)
    )
    await execute("UPDATE invoices SET status = 'settled', settled_at = ? WHERE id = ?", (now, invoice))
    await execute(
        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at, metadata)"
        " VALUES (?, ?, ?, 'LIC1-x', ?, '{\"issued_by\": \"reconciler\"}')",
        (license_id, product, invoice, now),
    )
    await execute(
        "INSERT INTO subscriptions (id, license_id, product_id, started_at, period_days, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 30, ?, ?)",
        (str(uuid.uuid4()), license_id, product, now, now, now),
    )
    await execute("INSERT INTO discount_codes (id, code, used_count) VALUES (?, 'SAVE', 1)", (code,))
    await execute(
        "INSERT INTO discount_redemptions (id, code_id, invoice_id, license_id, status, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'redeemed', ?, ?)",
        (str(uuid.uuid4()), code, invoice, license_id, now, now),
    )
    await execute(
        "INSERT INTO audit_log (id, occurred_at, actor, action, target_kind, target_id, details)"
        " VALUES (?, ?, 'reconciler', 'invoice.paid_late', 'invoice', ?, '{\"late_by_seconds\": 60}')",
        (str(uuid.uuid4()), now, invoice),
    )
    await execute(
        "INSERT INTO post_settle_tasks (invoice_id, kind, provider_id, status, attempts, last_error, created_at,"
        " updated_at) VALUES (?, 'zaprite.capture_payment_profile', 'fake', 'failed', 3, 'refused', ?, ?)",
        (invoice, now, now),
    )
    await execute(
        "INSERT INTO reconciler_instances (lease_owner, hostname, pid, started_at, last_summary)"
        " VALUES ('host:1:abc', 'host', 1, ?, '{}')",
        (now,),
    )


async def _upgrade_loses_nothing(store: base.Store, dump: Dump) -> None:
    before = await dump()
    assert all(before[table] for table in schema.tables_at(1) - {"schema_meta"}), before
    assert await store.schema_version() == 1
    with pytest.raises(errors.SchemaOutdated, match="reconciler migrate"):
        await store.require_schema()

    migrated = await store.migrate()

    every = tuple(m.name for m in migrations.load("sqlite"))
    assert every[:3] == ("0002_operator_desk.sql", "0003_claim_indexes.sql", "0004_webhook_deliveries.sql")
    assert migrated == base.Migrated(1, base.SCHEMA_VERSION, every)
    after = await dump()
    assert {t: rows for t, rows in after.items() if t != "schema_meta"} == {
        t: rows for t, rows in before.items() if t != "schema_meta"
    }
    assert after["schema_meta"] == [(base.SCHEMA_VERSION,)]
    await store.require_schema()
    # twice is a no-op
    assert await store.migrate() == base.Migrated(base.SCHEMA_VERSION, base.SCHEMA_VERSION, ())
    assert await dump() == after


@pytest.fixture
def v1_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    try:
        db.executescript(_v1())
    finally:
        db.close()
    return path


def _sqlite_dump(path: Path) -> Dump:
    async def dump() -> dict[str, list[tuple[Any, ...]]]:
        db = sqlite3.connect(path)
        db.text_factory = bytes  # the seed holds text that is not UTF-8: compare it byte for byte
        try:
            return {
                table: sorted(
                    (tuple(r) for r in db.execute(f"SELECT * FROM {table}")), key=lambda row: repr(row)
                )
                for table in sorted(schema.tables_at(1))
            }
        finally:
            db.close()

    return dump


async def test_a_version_1_sqlite_database_is_upgraded_in_place(v1_sqlite: Path) -> None:
    async def execute(sql: str, params: tuple[Any, ...]) -> None:
        db = sqlite3.connect(v1_sqlite)
        try:
            with db:
                db.execute(sql, params)
        finally:
            db.close()

    await seed_v1(execute, "sqlite")
    store = await SqliteStore.open(v1_sqlite)
    try:
        await _upgrade_loses_nothing(store, _sqlite_dump(v1_sqlite))
    finally:
        await store.close()
    assert sqlite_file_catalogue(v1_sqlite)["tables"].keys() == schema.OUR_TABLES


@pytest.fixture
async def v1_postgres() -> AsyncIterator[tuple[Any, str]]:
    async with pg_connection() as (conn, name):
        await conn.execute(_v1())
        yield conn, name


async def _postgres_store(name: str) -> Any:
    from reconciler.store.postgres import PostgresStore

    return await PostgresStore.open(search_path_url(PG_URL, name), max_size=2)


async def test_a_version_1_postgres_database_is_upgraded_in_place(v1_postgres: tuple[Any, str]) -> None:
    conn, name = v1_postgres

    async def execute(sql: str, params: tuple[Any, ...]) -> None:
        numbered = iter(range(1, len(params) + 1))
        await conn.execute(re.sub(r"\?", lambda _: f"${next(numbered)}", sql), *params)

    async def dump() -> dict[str, list[tuple[Any, ...]]]:
        return {
            table: sorted((tuple(r) for r in await conn.fetch(f"SELECT * FROM {table}")), key=repr)
            for table in sorted(schema.tables_at(1))
        }

    await seed_v1(execute, "postgres")
    store = await _postgres_store(name)
    try:
        await _upgrade_loses_nothing(store, dump)
    finally:
        await store.close()


async def test_migrations_racing_on_postgres_apply_once(v1_postgres: tuple[Any, str]) -> None:
    """Four stores migrate at once: the advisory lock lets one apply each migration, the others find it done."""
    _, name = v1_postgres
    stores = [await _postgres_store(name) for _ in range(4)]
    try:
        results = await asyncio.gather(*(store.migrate() for store in stores))
        applied = sorted(name for r in results for name in r.applied)
        assert applied == [m.name for m in migrations.load("postgres")]
        assert {r.to_version for r in results} == {base.SCHEMA_VERSION}
        assert await stores[0].schema_version() == base.SCHEMA_VERSION
    finally:
        for store in stores:
            await store.close()


async def test_migrations_racing_on_sqlite_apply_once(v1_sqlite: Path) -> None:
    stores = [await SqliteStore.open(v1_sqlite) for _ in range(3)]
    try:
        results = await asyncio.gather(*(store.migrate() for store in stores))
        applied = sorted(name for r in results for name in r.applied)
        assert applied == [m.name for m in migrations.load("sqlite")]
    finally:
        for store in stores:
            await store.close()
    assert sqlite_file_catalogue(v1_sqlite)["schema_meta"] == [(base.SCHEMA_VERSION,)]


# -- what migrate refuses --------------------------------------------------------------------------------------
async def test_migrate_refuses_an_empty_database_naming_init_db(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "empty.db", create=True)
    try:
        with pytest.raises(errors.SchemaError, match="init-db"):
            await store.migrate()
        assert await store.schema_version() is None  # nothing was created
    finally:
        await store.close()


async def test_migrate_refuses_a_newer_version(v1_sqlite: Path) -> None:
    db = sqlite3.connect(v1_sqlite)
    with db:
        db.execute("UPDATE schema_meta SET version = 99")
    db.close()
    store = await SqliteStore.open(v1_sqlite)
    try:
        with pytest.raises(errors.SchemaError, match="version 99") as refused:
            await store.migrate()
        assert not isinstance(refused.value, errors.SchemaOutdated)
    finally:
        await store.close()


async def test_a_damaged_version_1_database_is_refused_before_anything_changes(v1_sqlite: Path) -> None:
    db = sqlite3.connect(v1_sqlite)
    with db:
        db.execute("DROP INDEX audit_log_target")
    db.close()
    store = await SqliteStore.open(v1_sqlite)
    try:
        with pytest.raises(errors.SchemaError, match=r"audit_log_target.*schema version 1"):
            await store.migrate()
        assert await store.schema_version() == 1
    finally:
        await store.close()
    assert "review_items" not in sqlite_file_catalogue(v1_sqlite)["tables"]


async def test_a_failing_migration_leaves_the_database_at_its_version(
    v1_sqlite: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each migration is one transaction: a statement that fails takes the tables before it back too."""
    broken = migrations.Migration(2, "0002_broken.sql", "CREATE TABLE review_items (id TEXT);\nSELECT nope;")
    monkeypatch.setattr(migrations, "load", lambda dialect: [broken])
    store = await SqliteStore.open(v1_sqlite)
    try:
        with pytest.raises(sqlite3.OperationalError, match="nope"):
            await store.migrate()
        assert await store.schema_version() == 1
    finally:
        await store.close()
    assert "review_items" not in sqlite_file_catalogue(v1_sqlite)["tables"]
