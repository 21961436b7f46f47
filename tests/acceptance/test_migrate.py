"""`reconciler migrate` (issue 13) as the operator runs it: on a version-1 database every command that works on
the database exits 2 naming `migrate`; `migrate` upgrades it in place, says so, and a second run says there is
nothing to do; two `migrate` processes at once are safe; a database without our schema is left to `init-db`.
Both engines."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from reconciler.store import base, migrations
from tests.acceptance.conftest import Outcome, Workspace, assert_refused, recent, start
from tests.conftest import PG_URL, pg_connection
from tests.store.catalogue import V1_SQL
from tests.support.pg_cluster import search_path_url

#: The commands that need the database at this release's version, and how each reports a refusal.
GATED: dict[str, tuple[str, ...]] = {
    "once": ("--once",),
    "daemon": ("run",),
    "status": ("status",),
    "explain": ("explain", "00000000-0000-0000-0000-000000000000"),
    "init-db": ("init-db",),
}


def _v1(ws: Workspace) -> Path:
    """The workspace's database replaced by an empty shop at schema version 1."""
    ws.db.unlink()
    db = sqlite3.connect(ws.db)
    try:
        db.executescript(V1_SQL.read_text(encoding="utf-8"))
        db.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()
    return ws.db


def _version(path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return [tuple(r) for r in db.execute("SELECT version FROM schema_meta")]
    finally:
        db.close()


def _applied(said: list[str]) -> list[str]:
    """The migrations the `migrated the schema ... (names)` lines of some processes name, in order."""
    found = re.findall(r"from version \d+ to version \d+ \(([^)]*)\)", "\n".join(said))
    return sorted(name for names in found for name in names.split(", "))


def _migrated_line(outcome: Outcome) -> str:
    assert outcome.returncode == 0, outcome
    assert len(outcome.lines) == 1, outcome
    return outcome.lines[0]


@pytest.mark.parametrize("command", list(GATED.values()), ids=list(GATED))
def test_a_version_1_database_exits_2_naming_migrate(workspace: Workspace, command: tuple[str, ...]) -> None:
    _v1(workspace)
    shop = workspace.shop
    shop.invoice(shop.product(), created_at=recent())
    before = workspace.state()

    outcome = workspace.run(*command)

    assert_refused(outcome, "version 1", f"version {base.SCHEMA_VERSION}", "reconciler migrate")
    assert workspace.state() == before


def test_doctor_reports_the_old_version(workspace: Workspace) -> None:
    _v1(workspace)
    outcome = workspace.run("doctor")
    assert outcome.returncode == 2, outcome
    assert "FAILED  database: the database schema is version 1" in outcome.stdout
    assert "reconciler migrate" in outcome.stdout


def test_migrate_upgrades_then_has_nothing_to_do(workspace: Workspace) -> None:
    _v1(workspace)
    shop = workspace.shop
    invoice = shop.invoice(shop.product(), created_at=recent())

    first = _migrated_line(workspace.run("migrate"))
    every = ", ".join(m.name for m in migrations.load("sqlite"))
    assert f"from version 1 to version {base.SCHEMA_VERSION} ({every})" in first
    assert _version(workspace.db) == [(base.SCHEMA_VERSION,)]
    second = _migrated_line(workspace.run("migrate"))
    assert f"already at version {base.SCHEMA_VERSION}" in second and "nothing to do" in second

    # and the upgraded database is one a pass works on
    once = workspace.run("--once")
    assert once.returncode == 0, once
    assert shop.status(invoice) == "pending" and shop.actions(invoice) == []


def test_two_migrate_processes_at_once_are_safe(workspace: Workspace) -> None:
    _v1(workspace)
    config = workspace.config()
    processes = [start("--config", config, "migrate") for _ in range(2)]
    outcomes = [p.communicate(timeout=60) for p in processes]

    assert [p.returncode for p in processes] == [0, 0], outcomes
    said = [err for _, err in outcomes]
    assert _applied(said) == [m.name for m in migrations.load("sqlite")], said
    assert _version(workspace.db) == [(base.SCHEMA_VERSION,)]


def test_migrate_leaves_a_missing_database_to_init_db(tmp_path: Path, workspace: Workspace) -> None:
    missing = tmp_path / "none.db"
    outcome = workspace.run("migrate", config=workspace.config({"database": {"url": f"sqlite://{missing}"}}))
    assert_refused(outcome, "does not exist", "init-db")
    assert not missing.exists()


def test_migrate_leaves_an_empty_database_to_init_db(tmp_path: Path, workspace: Workspace) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    outcome = workspace.run("migrate", config=workspace.config({"database": {"url": f"sqlite://{empty}"}}))
    assert_refused(outcome, "no reconciler schema", "init-db")


def test_migrate_refuses_a_newer_version(workspace: Workspace) -> None:
    workspace.shop.execute("UPDATE schema_meta SET version = 7")
    outcome = workspace.run("migrate")
    assert_refused(outcome, "version 7", "upgrade the reconciler")


# -- PostgreSQL ------------------------------------------------------------------------------------------------
@pytest.mark.postgres
async def test_postgres_version_1_is_refused_then_migrated_by_two_processes(workspace: Workspace) -> None:
    async with pg_connection() as (conn, schema):
        await conn.execute(V1_SQL.read_text(encoding="utf-8"))
        config = workspace.config({"database": {"url": search_path_url(PG_URL, schema)}})

        refused = workspace.run("--once", config=config)
        assert_refused(refused, "version 1", "reconciler migrate")

        processes = [start("--config", config, "migrate") for _ in range(2)]
        outcomes = [p.communicate(timeout=60) for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outcomes
        applied = _applied([err for _, err in outcomes])
        assert applied == [m.name for m in migrations.load("postgres")], outcomes
        assert await conn.fetchval("SELECT count(*) FROM schema_meta") == 1
        assert await conn.fetchval("SELECT version FROM schema_meta") == base.SCHEMA_VERSION

        again = _migrated_line(workspace.run("migrate", config=config))
        assert "nothing to do" in again
        assert workspace.run("--once", config=config).returncode == 0


@pytest.mark.postgres
async def test_postgres_migrate_leaves_an_empty_schema_to_init_db(workspace: Workspace) -> None:
    async with pg_connection() as (conn, schema):
        config = workspace.config({"database": {"url": search_path_url(PG_URL, schema)}})
        outcome = workspace.run("migrate", config=config)
        assert_refused(outcome, "no reconciler schema", "init-db")
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", schema
            )
            == 0
        )
