"""The SQLite store (aiosqlite): WAL, a busy timeout, foreign keys, `BEGIN IMMEDIATE` for every write.

One connection per store, serialised by a lock: SQLite has one writer at a time anyway, and several processes on
one host (the service and an overlapping `--once`) coordinate through the file's lock and the busy timeout.

aiosqlite runs every statement on the connection's own thread, and cancelling the task that awaits a statement
does not stop the statement: it only stops the task from seeing how it ended. So every statement is awaited to
its end (`_complete`) and a cancellation takes effect afterwards; a transaction once begun is always committed or
rolled back before the cancellation goes on. The busy timeout is spent in short slices, each a statement of its
own, so a cancelled task waiting for another process's lock lets go within a slice.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from reconciler import errors
from reconciler.store import base, queries
from reconciler.store.sql import Row, SqlStore

#: How long an operation waits for another connection's lock before the pass gives up (StoreUnavailable).
BUSY_TIMEOUT_MS = 30_000
#: The wait of one attempt; between attempts a cancellation takes effect.
BUSY_SLICE_MS = 200

T = TypeVar("T")


class SqliteStore(SqlStore):
    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self._path = path
        self._lock = asyncio.Lock()
        self._q = queries.load("sqlite.sql")
        self._wal = False

    @classmethod
    async def open(cls, path: Path, *, create: bool = False) -> SqliteStore:
        """Open the database file; it must exist unless `create` (only `init-db` creates one).

        The file is read once before anything else touches it, so a path that cannot be opened or a file that
        is not a database is one clear error; the connection and its thread are closed on every failure.
        """
        if not create and not await asyncio.to_thread(path.exists):
            raise errors.SchemaError(
                f"database file {path} does not exist: create it with `reconciler init-db`"
            )
        connection = aiosqlite.connect(path, isolation_level=None)
        try:
            await connection
        except sqlite3.Error as exc:
            # aiosqlite stops its thread after a failed connect without waiting for it: wait here, so the
            # thread never outlives the event loop (it would die with "Event loop is closed" tracebacks).
            await asyncio.to_thread(connection._thread.join, 5)
            raise _open_error(path, exc) from exc
        store = cls(connection, path)
        try:
            connection.row_factory = sqlite3.Row
            # Text a storefront wrote that is not UTF-8 must not fail a whole batch: it decodes to lone
            # surrogates, which the row checks (store/rows.py) turn into that one row's quarantine.
            connection.text_factory = _decode_text
            # Per-connection settings and one read: nothing touches the file until the schema has been checked.
            await _complete(_run(connection, f"PRAGMA busy_timeout = {BUSY_SLICE_MS}"))
            await store._patiently("open", lambda: _fetch(connection, "SELECT count(*) FROM sqlite_master"))
            await _complete(_run(connection, "PRAGMA synchronous = NORMAL"))
            await _complete(_run(connection, "PRAGMA foreign_keys = ON"))
        except BaseException as exc:
            await _complete(connection.close())
            if isinstance(exc, sqlite3.Error):
                raise _open_error(path, exc) from exc
            raise
        return store

    async def close(self) -> None:
        await _complete(self._db.close())

    # -- plumbing -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_SqliteTx]:
        """One `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any exception."""
        async with self._write() as db:
            yield _SqliteTx(db, self._q)

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection inside `BEGIN IMMEDIATE`; the transaction ends (COMMIT or ROLLBACK) whatever happens."""
        async with self._lock:
            await self._begin()
            try:
                yield self._db
            except BaseException as exc:
                await _complete(self._rollback())
                if isinstance(exc, sqlite3.OperationalError) and _unavailable(exc):
                    raise errors.StoreUnavailable(f"SQLite write failed: {exc}") from exc
                raise
            try:
                await self._patiently("commit", lambda: _run(self._db, "COMMIT"))
            except BaseException:
                await _complete(self._rollback())  # nothing to do when COMMIT went through before a cancel
                raise

    async def _begin(self) -> None:
        try:
            await _complete(self._rollback())  # a transaction some earlier failure could not end
            await self._use_wal()
            await self._patiently("BEGIN", lambda: _run(self._db, "BEGIN IMMEDIATE"))
        except asyncio.CancelledError:
            await _complete(self._rollback())  # the BEGIN may have got the lock just as we were cancelled
            raise

    async def _write_one(self, name: str, params: dict[str, Any]) -> int:
        async with self._lock:
            await _complete(self._rollback())
            await self._use_wal()
            return await self._patiently(f"write {name}", lambda: _run(self._db, self._q[name], params))

    async def _use_wal(self) -> None:
        """WAL (readers never block the writer) is a property of the file: set before our first write."""
        if not self._wal:
            # the pragma answers with a row: read it, an open statement would block COMMIT
            await self._patiently("journal_mode", lambda: _fetch(self._db, "PRAGMA journal_mode = WAL"))
            self._wal = True

    async def _rollback(self) -> None:
        # Some errors (SQLITE_FULL, IOERR, ...) have already rolled the transaction back. Every statement is
        # awaited to its end, so `in_transaction` is not read while one is still running.
        if self._db.in_transaction:
            await _run(self._db, "ROLLBACK")

    async def _patiently(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` (one statement, or a COMMIT) to its end, again while the database stays busy.

        SQLite says to retry a statement outside a transaction, and a COMMIT, that failed with SQLITE_BUSY:
        nothing of it took effect. Past BUSY_TIMEOUT_MS the failure is StoreUnavailable.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return await _complete(attempt())
            except sqlite3.OperationalError as exc:
                if _busy(exc) and time.monotonic() < deadline:
                    continue
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite {what} on {self._path} failed: {exc}") from exc

    async def _read(self, name: str, params: dict[str, Any]) -> list[Row]:
        async with self._lock:
            return await self._patiently(f"query {name}", lambda: _fetch(self._db, self._q[name], params))

    # -- schema -------------------------------------------------------------------------------------------
    async def schema_version(self) -> int | None:
        tables = {row[0] for row in await self._read("schema_tables", {})}
        return base.check_schema(tables, await self._meta_versions() if "schema_meta" in tables else [])

    async def _meta_versions(self) -> list[Any]:
        try:
            return [row[0] for row in await self._read("schema_version", {})]
        except sqlite3.OperationalError as exc:
            raise errors.SchemaError(
                f"schema_meta is not ours ({exc}): point database.url at the reconciler's database"
            ) from exc

    async def schema_shape(self) -> base.SchemaShape:
        return base.SchemaShape.from_rows(
            await self._read("schema_columns", {}), await self._read("schema_indexes", {})
        )

    async def init_schema(self) -> bool:
        if await self.schema_version() is None:
            async with self._write() as db:
                # another `init-db` may have created it while we waited for the lock
                tables = {row[0] for row in await _complete(_fetch(db, self._q["schema_tables"]))}
                if not tables & base.OUR_TABLES:
                    for statement in _statements(queries.schema_sql()):
                        await _complete(_run(db, statement))
                    return True
        await self.require_schema()
        return False


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# SQLite primary result codes that mean "try again later", not "our SQL is wrong".
_UNAVAILABLE_CODES = frozenset({5, 6, 10, 13, 14, 15})  # BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
_BUSY = 5
_CANTOPEN = 14
_NOT_A_DATABASE_CODES = frozenset({11, 26})  # CORRUPT, NOTADB


def _code(exc: sqlite3.Error) -> int:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF


def _unavailable(exc: sqlite3.Error) -> bool:
    return _code(exc) in _UNAVAILABLE_CODES


def _busy(exc: sqlite3.Error) -> bool:
    return _code(exc) == _BUSY


def _open_error(path: Path, exc: sqlite3.Error) -> errors.ReconcilerError:
    """What a failure while opening the file means to the operator."""
    code = _code(exc)
    if code in _NOT_A_DATABASE_CODES:
        return errors.SchemaError(
            f"database file {path} is not a SQLite database ({exc}): point database.url at the reconciler's "
            "database, or restore it from a backup"
        )
    if code == _CANTOPEN:
        return errors.ConfigError(
            f"cannot open SQLite database {path}: {exc}: database.url must name a file in an existing "
            "directory that this user may read and write"
        )
    if code == _BUSY:
        return errors.StoreUnavailable(f"SQLite database {path} is busy: {exc}")
    return errors.StoreUnavailable(f"cannot open SQLite database {path}: {exc}")


def _statements(script: str) -> list[str]:
    """A script's statements, one by one (executescript would COMMIT the transaction they belong in)."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if any(line.strip() and not line.lstrip().startswith("--") for line in pending.splitlines()):
        raise ValueError("the script ends inside a statement")
    return statements


async def _run(db: aiosqlite.Connection, sql: str, params: dict[str, Any] | None = None) -> int:
    """One statement that returns no rows (sqlite3 resets it once done); the number of rows it changed."""
    cursor = await db.execute(sql, params or {})
    return cursor.rowcount


async def _fetch(db: aiosqlite.Connection, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
    """One statement read to its end (a statement left open holds its snapshot and blocks COMMIT)."""
    cursor = await db.execute(sql, params or {})
    try:
        return list(await cursor.fetchall())
    except BaseException:
        await cursor.close()  # read to its end it needs no closing; broken off, it does
        raise


async def _complete(awaitable: Awaitable[T]) -> T:
    """Await `awaitable` to its end even when the awaiting task is cancelled meanwhile, then re-raise the
    cancellation (so `asyncio.timeout` and task groups still see it)."""
    inner = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.cancelled():  # the work itself was cancelled (the loop is shutting down)
                raise
            cancelled = True
            continue
        except BaseException as exc:
            if cancelled:
                raise asyncio.CancelledError from exc
            raise
        if cancelled:
            raise asyncio.CancelledError
        return result


class _SqliteTx:
    def __init__(self, db: aiosqlite.Connection, queries: dict[str, str]) -> None:
        self._db = db
        self._q = queries

    async def exec(self, name: str, params: dict[str, Any]) -> int:
        return await _complete(_run(self._db, self._q[name], params))

    async def returning(self, name: str, params: dict[str, Any]) -> list[Row]:
        return await _complete(_fetch(self._db, self._q[name], params))

    async def exec_many(self, name: str, params: Sequence[dict[str, Any]]) -> None:
        async def run() -> None:
            cursor = await self._db.executemany(self._q[name], params)
            await cursor.close()

        await _complete(run())
