"""A database the reconciler cannot use (issue 10 items 3 and 9): every command that opens it ends within
seconds with one line and the right exit code (2 what the operator must fix, 1 what may pass by itself), never a
traceback, never a hang, and writes nothing. `check-config` stays offline and does not care."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.store import queries
from tests.acceptance.conftest import Outcome, Workspace, recent
from tests.conftest import PG_URL, pg_connection
from tests.store.pg_fake import FakePostgres

#: A hang must fail the test quickly; the PostgreSQL connect bound is 10 s.
TIMEOUT = 20.0
COMMANDS: dict[str, tuple[str, ...]] = {
    "once": ("--once",),
    "daemon": ("run",),
    "status": ("status",),
    "init-db": ("init-db",),
    "explain": ("explain", "x"),
}
OPENING = pytest.mark.parametrize("command", list(COMMANDS.values()), ids=list(COMMANDS))


def covering(kinds: list[str]) -> pytest.MarkDecorator:
    """(kind, command) pairs: the first kind with every command, each other kind with `status` and `init-db`
    (every command meets the problem, every problem meets the commands that differ most, in fewer runs)."""
    pairs = [(kinds[0], name) for name in COMMANDS]
    pairs += [(kind, name) for kind in kinds[1:] for name in ("status", "init-db")]
    return pytest.mark.parametrize(
        ("kind", "command"), [pytest.param(k, COMMANDS[n], id=f"{k}-{n}") for k, n in pairs]
    )


def run(ws: Workspace, url: str, *command: str) -> Outcome:
    return ws.run(*command, config=ws.config({"database": {"url": url}}), timeout=TIMEOUT)


def assert_one_line(outcome: Outcome, code: int, *needles: str) -> None:
    assert "Traceback" not in outcome.stderr, outcome
    assert outcome.returncode == code, outcome
    assert len(outcome.lines) == 1, outcome
    for needle in needles:
        assert needle in outcome.lines[0], outcome


# -- SQLite: files that are not databases, paths that cannot be opened -----------------------------------------
@OPENING
def test_a_file_that_is_not_a_database_exits_2_at_once(
    tmp_path: Path, workspace: Workspace, command: tuple[str, ...]
) -> None:
    text = tmp_path / "text.db"
    text.write_text("hello\n")

    started = time.monotonic()
    outcome = run(workspace, f"sqlite://{text}", *command)

    assert_one_line(outcome, 2, str(text), "not a SQLite database")
    assert time.monotonic() - started < 10
    assert text.read_text() == "hello\n"
    assert sorted(p.name for p in tmp_path.glob("text.db*")) == ["text.db"]
    assert run(workspace, f"sqlite://{text}", "check-config").returncode == 0


@OPENING
def test_a_directory_as_database_exits_2(
    tmp_path: Path, workspace: Workspace, command: tuple[str, ...]
) -> None:
    folder = tmp_path / "a-directory.db"
    folder.mkdir()

    outcome = run(workspace, f"sqlite://{folder}", *command)

    assert_one_line(outcome, 2, str(folder), "cannot open SQLite database")
    assert list(folder.iterdir()) == []


def test_init_db_in_a_missing_directory_exits_2_with_one_line(tmp_path: Path, workspace: Workspace) -> None:
    path = tmp_path / "no" / "such" / "shop.db"

    outcome = run(workspace, f"sqlite://{path}", "init-db")

    assert_one_line(outcome, 2, str(path), "cannot open SQLite database", "directory")
    assert not (tmp_path / "no").exists()


# -- a schema missing a column or an index: both engines --------------------------------------------------------
BROKEN: dict[str, tuple[str, str]] = {
    "dropped-column": (
        "ALTER TABLE invoices DROP COLUMN last_provider_status",
        "invoices.last_provider_status",
    ),
    "dropped-index": ("DROP INDEX invoices_status_next_check", "invoices_status_next_check"),
}


def _sqlite_without_unique_invoice_id(path: Path) -> None:
    """schema.sql with `licenses.invoice_id` not UNIQUE (SQLite cannot drop a constraint after the fact)."""
    schema = queries.schema_sql()
    broken = schema.replace(
        "invoice_id TEXT UNIQUE REFERENCES invoices (id)", "invoice_id TEXT REFERENCES invoices (id)"
    )
    assert broken != schema
    db = sqlite3.connect(path)
    try:
        db.executescript(broken)
        db.execute("PRAGMA journal_mode = WAL")
    finally:
        db.close()


def _sqlite_broken(ws: Workspace, kind: str) -> None:
    if kind == "dropped-unique":
        ws.db.unlink()
        _sqlite_without_unique_invoice_id(ws.db)
    else:
        db = sqlite3.connect(ws.db)
        try:
            db.execute(BROKEN[kind][0])
        finally:
            db.close()


NEEDLES = {kind: needle for kind, (_, needle) in BROKEN.items()} | {"dropped-unique": "licenses (invoice_id)"}


@covering(["dropped-column", "dropped-index", "dropped-unique"])
def test_sqlite_schema_missing_a_column_or_index_exits_2_and_writes_nothing(
    workspace: Workspace, kind: str, command: tuple[str, ...]
) -> None:
    _sqlite_broken(workspace, kind)
    shop = workspace.shop
    shop.invoice(shop.product(), created_at=recent())
    before = workspace.state()

    outcome = workspace.run(*command, timeout=TIMEOUT)

    assert_one_line(outcome, 2, NEEDLES[kind], "schema.sql")
    assert workspace.state() == before


def test_extra_storefront_columns_and_indexes_are_fine(workspace: Workspace) -> None:
    db = sqlite3.connect(workspace.db)
    try:
        db.execute("ALTER TABLE invoices ADD COLUMN shop_note TEXT")
        db.execute("CREATE INDEX invoices_by_email ON invoices (buyer_email)")
        db.commit()
    finally:
        db.close()

    for command in (("status",), ("init-db",), ("--once",)):
        outcome = workspace.run(*command, timeout=TIMEOUT)
        assert outcome.returncode == 0, outcome


# -- PostgreSQL --------------------------------------------------------------------------------------------------
def _pg(path: str = "test", user: str = "postgres", host: str = "127.0.0.1:5432", query: str = "") -> str:
    return f"postgresql://{user}@{host}/{path}{query}"


def _pg_server_or_skip() -> None:
    import asyncio

    async def probe() -> None:
        async with pg_connection():
            pass

    asyncio.run(probe())


@pytest.fixture
def postgres() -> None:
    """Skip (or fail under CI) when the test PostgreSQL server is not there."""
    _pg_server_or_skip()


PG_REFUSED: dict[str, tuple[Callable[[], str], str]] = {
    "missing-database": (lambda: _pg(path="no_such_database"), 'database "no_such_database" does not exist'),
    "missing-role": (lambda: _pg(user="no_such_role"), 'role "no_such_role" does not exist'),
    "ssl-refused": (lambda: _pg(query="?sslmode=require"), "SSL"),
    "unknown-server-setting": (lambda: _pg(query="?no_such_setting=1"), "no_such_setting"),
}


@covering(["missing-database", "missing-role", "ssl-refused", "unknown-server-setting"])
def test_postgres_refusals_the_operator_must_fix_exit_2(
    postgres: None, workspace: Workspace, kind: str, command: tuple[str, ...]
) -> None:
    url, needle = PG_REFUSED[kind]

    outcome = run(workspace, url(), *command)

    assert_one_line(outcome, 2, needle, "database.url")


@pytest.mark.parametrize(
    "command", [("--once",), ("status",), ("init-db",)], ids=["once", "status", "init-db"]
)
def test_postgres_refused_password_exits_2_and_never_shows_it(
    workspace: Workspace, command: tuple[str, ...]
) -> None:
    secret = "Pg-Secret-5b9d1e"
    with FakePostgres("refuse-password") as fake:
        outcome = run(workspace, f"postgresql://shop:{secret}@127.0.0.1:{fake.port}/shop", *command)

    assert fake.passwords == [secret]  # it did reach the server ...
    assert_one_line(outcome, 2, 'password authentication failed for user "shop"', "database.url")
    assert secret not in outcome.stdout + outcome.stderr  # ... and nothing else


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@OPENING
def test_postgres_connection_refused_exits_1_at_once(workspace: Workspace, command: tuple[str, ...]) -> None:
    port = _closed_port()

    started = time.monotonic()
    outcome = run(workspace, _pg(host=f"127.0.0.1:{port}"), *command)

    assert_one_line(outcome, 1, f"127.0.0.1:{port}", "refused")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("command", [("--once",), ("status",)], ids=["once", "status"])
def test_postgres_server_that_never_answers_exits_1_within_the_connect_bound(
    workspace: Workspace, command: tuple[str, ...]
) -> None:
    with FakePostgres("silent") as fake:
        started = time.monotonic()
        outcome = run(workspace, _pg(host=f"127.0.0.1:{fake.port}"), *command)
        elapsed = time.monotonic() - started

    assert_one_line(outcome, 1, f"127.0.0.1:{fake.port}", "no answer within 10s")
    assert 9 < elapsed < TIMEOUT


PG_BROKEN: dict[str, tuple[str, str]] = {
    "dropped-column": BROKEN["dropped-column"],
    "dropped-index": BROKEN["dropped-index"],
    "dropped-unique": (
        "ALTER TABLE licenses DROP CONSTRAINT licenses_invoice_id_key",
        "licenses (invoice_id)",
    ),
}


@covering(["dropped-column", "dropped-index", "dropped-unique"])
def test_postgres_schema_missing_a_column_or_index_exits_2(
    workspace: Workspace, kind: str, command: tuple[str, ...]
) -> None:
    import asyncio

    sql, needle = PG_BROKEN[kind]

    async def scenario() -> Outcome:
        async with pg_connection() as (conn, schema):
            await conn.execute(queries.schema_sql())
            await conn.execute(sql)
            before = await _pg_state(conn)
            outcome = run(workspace, f"{PG_URL}?search_path={schema}", *command)
            assert await _pg_state(conn) == before
            return outcome

    outcome = asyncio.run(scenario())

    assert_one_line(outcome, 2, needle, "schema.sql")


async def _pg_state(conn: Any) -> list[Any]:
    tables = ("invoices", "licenses", "audit_log", "reconciler_instances")
    return [list(await conn.fetch(f"SELECT * FROM {t} ORDER BY 1")) for t in tables]
