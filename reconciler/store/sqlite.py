"""The SQLite store (aiosqlite): WAL, a busy timeout, foreign keys, `BEGIN IMMEDIATE` for every write.

One connection per store, serialised by a lock: SQLite has one writer at a time anyway, and several processes on
one host (the service and an overlapping `--once`) coordinate through the file's lock and the busy timeout.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from reconciler import errors
from reconciler.store import base, queries
from reconciler.store.sql import Row, SqlStore

BUSY_TIMEOUT_MS = 30_000


class SqliteStore(SqlStore):
    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self._path = path
        self._lock = asyncio.Lock()
        self._q = queries.load("sqlite.sql")
        self._wal = False

    @classmethod
    async def open(cls, path: Path, *, create: bool = False) -> SqliteStore:
        """Open the database file; it must exist unless `create` (only `init-db` creates one)."""
        if not create and not await asyncio.to_thread(path.exists):
            raise errors.SchemaError(
                f"database file {path} does not exist: create it with `reconciler init-db`"
            )
        try:
            connection = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise errors.StoreUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
        connection.row_factory = sqlite3.Row
        # Per-connection settings only: nothing touches the file until the schema has been checked.
        await connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await connection.execute("PRAGMA synchronous = NORMAL")
        await connection.execute("PRAGMA foreign_keys = ON")
        return cls(connection, path)

    async def close(self) -> None:
        await self._db.close()

    # -- plumbing -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_SqliteTx]:
        """One `BEGIN IMMEDIATE` transaction: committed on success, rolled back on any exception."""
        async with self._lock:
            await self._use_wal()
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite database {self._path} is busy: {exc}") from exc
            try:
                yield _SqliteTx(self._db, self._q)
            except sqlite3.OperationalError as exc:
                await self._rollback()
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite write failed: {exc}") from exc
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                await self._rollback()
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite commit failed: {exc}") from exc

    async def _write_one(self, name: str, params: dict[str, Any]) -> int:
        async with self._lock:
            await self._use_wal()
            try:
                cursor = await self._db.execute(self._q[name], params)
            except sqlite3.OperationalError as exc:
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite write {name} failed: {exc}") from exc
            return cursor.rowcount

    async def _use_wal(self) -> None:
        """WAL (readers never block the writer) is a property of the file: set before our first write."""
        if not self._wal:
            cursor = await self._db.execute("PRAGMA journal_mode = WAL")
            await cursor.fetchall()  # the pragma answers with a row; an open statement would block COMMIT
            await cursor.close()
            self._wal = True

    async def _rollback(self) -> None:
        # Some errors (SQLITE_FULL, IOERR, ...) have already rolled the transaction back.
        if self._db.in_transaction:
            await self._db.execute("ROLLBACK")

    async def _read(self, name: str, params: dict[str, Any]) -> list[Row]:
        async with self._lock:
            try:
                cursor = await self._db.execute(self._q[name], params)
                rows = await cursor.fetchall()
            except sqlite3.OperationalError as exc:
                if not _unavailable(exc):
                    raise
                raise errors.StoreUnavailable(f"SQLite query {name} failed: {exc}") from exc
        return list(rows)

    # -- schema -------------------------------------------------------------------------------------------
    async def schema_version(self) -> int | None:
        tables = {row[0] for row in await self._read("schema_tables", {})}
        return base.check_schema(tables, await self._meta_versions() if "schema_meta" in tables else [])

    async def _meta_versions(self) -> list[Any]:
        async with self._lock:
            try:
                cursor = await self._db.execute(self._q["schema_version"])
                return [row[0] for row in await cursor.fetchall()]
            except sqlite3.OperationalError as exc:
                if _unavailable(exc):
                    raise errors.StoreUnavailable(f"SQLite database {self._path}: {exc}") from exc
                raise errors.SchemaError(
                    f"schema_meta is not ours ({exc}): point database.url at the reconciler's database"
                ) from exc

    async def schema_shape(self) -> base.SchemaShape:
        return base.SchemaShape.from_rows(
            await self._read("schema_columns", {}), await self._read("schema_indexes", {})
        )

    async def init_schema(self) -> bool:
        if await self.schema_version() is not None:
            await self.require_schema()
            return False
        async with self._lock:
            await self._use_wal()
            # executescript commits on its own; the script is a sequence of CREATEs and one INSERT.
            await self._db.executescript("BEGIN IMMEDIATE;\n" + queries.schema_sql() + "\nCOMMIT;")
        return True


# SQLite primary result codes that mean "try again later", not "our SQL is wrong".
_UNAVAILABLE_CODES = frozenset({5, 6, 10, 13, 14, 15})  # BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL


def _unavailable(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _UNAVAILABLE_CODES


class _SqliteTx:
    def __init__(self, db: aiosqlite.Connection, queries: dict[str, str]) -> None:
        self._db = db
        self._q = queries

    async def exec(self, name: str, params: dict[str, Any]) -> int:
        cursor = await self._db.execute(self._q[name], params)
        return cursor.rowcount

    async def returning(self, name: str, params: dict[str, Any]) -> list[Row]:
        cursor = await self._db.execute(self._q[name], params)
        return list(await cursor.fetchall())

    async def exec_many(self, name: str, params: Sequence[dict[str, Any]]) -> None:
        await self._db.executemany(self._q[name], params)
