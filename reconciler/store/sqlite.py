"""The SQLite store (aiosqlite): WAL, a busy timeout, foreign keys, `BEGIN IMMEDIATE` for every write.

One connection per store, serialised by a lock: SQLite has one writer at a time anyway, and several processes on
one host (the service and an overlapping `--once`) coordinate through the file's lock and the busy timeout.

aiosqlite runs every statement on the connection's own thread, and cancelling the task that awaits a statement
does not stop the statement: it only stops the task from seeing how it ended. So every statement is awaited to
its end (`_complete`) and a cancellation takes effect afterwards; a transaction once begun is always committed or
rolled back before the cancellation goes on. The busy timeout is spent in short slices, each a statement of its
own, so a cancelled task waiting for another process's lock lets go within a slice.

A use case's transaction (`_atomic`) runs whole on that thread, BEGIN to COMMIT, in one hand-over: its body is
the same coroutine as on PostgreSQL, driven to its end there over a transaction whose statements complete at
once (they never suspend), so a settle costs one trip to the thread instead of one per statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from reconciler import errors
from reconciler.store import queries
from reconciler.store.engine import Row
from reconciler.store.sql import SqlStore
from reconciler.store.sqlite_thread import (
    _BUSY,
    BUSY_SLICE_MS,
    BUSY_TIMEOUT_MS,
    T,
    _busy_retry,
    _code,
    _drive,
    _statements,
    _ThreadTx,
)


class SqliteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, connection: aiosqlite.Connection, path: Path) -> None:
        self._db = connection
        self._path = path
        self._lock = asyncio.Lock()
        self._q = queries.load("sqlite")
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
        with _mapped(path, "open", opening=True):
            connection = aiosqlite.connect(path, isolation_level=None)
            try:
                await connection
            except sqlite3.Error:
                # aiosqlite stops its thread after a failed connect without waiting for it: wait here, so the
                # thread never outlives the event loop (it would die with "Event loop is closed" tracebacks).
                await asyncio.to_thread(connection._thread.join, 5)
                raise
            try:
                connection.row_factory = sqlite3.Row
                # Text a storefront wrote that is not UTF-8 must not fail a whole batch: it decodes to lone
                # surrogates, which the row checks (store/rows.py) turn into that one row's quarantine.
                connection.text_factory = _decode_text
                # Per-connection settings and one read: nothing touches the file until the schema is checked.
                await _complete(_run(connection, f"PRAGMA busy_timeout = {BUSY_SLICE_MS}"))
                await _patiently(lambda: _fetch(connection, "SELECT count(*) FROM sqlite_master"))
                await _complete(_run(connection, "PRAGMA synchronous = NORMAL"))
                await _complete(_run(connection, "PRAGMA foreign_keys = ON"))
            except BaseException:
                await _complete(connection.close())
                raise
        return cls(connection, path)

    async def close(self) -> None:
        await _complete(self._db.close())

    # -- plumbing -----------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, ours alone for the block; the one place its errors become ours."""
        with _mapped(self._path, what):
            async with self._lock:
                yield self._db

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[_SqliteTx]:
        """One `BEGIN IMMEDIATE` transaction; it ends (COMMIT, or ROLLBACK on any exception) whatever happens."""
        async with self._connection(what) as db:
            await self._begin()
            try:
                yield _SqliteTx(db, self._q)
            except BaseException:
                await _complete(self._rollback())
                raise
            try:
                await _patiently(lambda: _run(db, "COMMIT"))
            except BaseException:
                await _complete(self._rollback())  # nothing to do when COMMIT went through before a cancel
                raise

    async def _begin(self) -> None:
        try:
            await _complete(self._rollback())  # a transaction some earlier failure could not end
            await self._use_wal()
            await _patiently(lambda: _run(self._db, "BEGIN IMMEDIATE"))
        except asyncio.CancelledError:
            await _complete(self._rollback())  # the BEGIN may have got the lock just as we were cancelled
            raise

    async def _atomic(self, what: str, body: Callable[[Any], Awaitable[T]]) -> T:
        """`body` in one BEGIN IMMEDIATE ... COMMIT run whole on the connection's thread (see the module)."""
        stop = threading.Event()
        async with self._connection(what):
            await self._use_wal()
            # aiosqlite's own hand-over to its thread (every one of its methods goes through it)
            work = self._db._execute(self._in_thread, body, stop)  # type: ignore[no-untyped-call]
            # cancelled, a BEGIN still waiting for another process's lock gives up within a slice
            return await _complete(work, on_cancel=stop.set)

    def _in_thread(self, body: Callable[[Any], Awaitable[T]], stop: threading.Event) -> T:
        conn: sqlite3.Connection = self._db._conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # a transaction some earlier failure could not end
        _busy_retry(lambda: conn.execute("BEGIN IMMEDIATE"), stop)
        try:
            result = _drive(body(_ThreadTx(conn, self._q)))
            _busy_retry(lambda: conn.execute("COMMIT"), None)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    async def _write_one(self, name: str, params: dict[str, Any]) -> int:
        async with self._connection(f"write {name}") as db:
            await _complete(self._rollback())
            await self._use_wal()
            return await _patiently(lambda: _run(db, self._q[name], params))

    async def _read(self, name: str, params: dict[str, Any]) -> list[Row]:
        async with self._connection(f"query {name}") as db:
            return await _patiently(lambda: _fetch(db, self._q[name], params))

    async def _use_wal(self) -> None:
        """WAL (readers never block the writer) is a property of the file: set before our first write."""
        if not self._wal:
            # the pragma answers with a row: read it, an open statement would block COMMIT
            await _patiently(lambda: _fetch(self._db, "PRAGMA journal_mode = WAL"))
            self._wal = True

    async def _rollback(self) -> None:
        # Some errors (SQLITE_FULL, IOERR, ...) have already rolled the transaction back. Every statement is
        # awaited to its end, so `in_transaction` is not read while one is still running.
        if self._db.in_transaction:
            await _run(self._db, "ROLLBACK")


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# SQLite primary result codes that mean "try again later", not "our SQL is wrong".
_UNAVAILABLE_CODES = frozenset({5, 6, 10, 13, 14, 15})  # BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
_CANTOPEN = 14
_NOT_A_DATABASE_CODES = frozenset({11, 26})  # CORRUPT, NOTADB


@contextmanager
def _mapped(path: Path, what: str, *, opening: bool = False) -> Iterator[None]:
    """The one boundary where sqlite3's errors become ours (PostgreSQL's is `postgres._mapped`).

    Opening, every failure says what the operator must do about the file. Afterwards only "try again later"
    is mapped (StoreUnavailable); anything else (a constraint, our own SQL) is a bug and stays itself.
    """
    try:
        yield
    except sqlite3.Error as exc:
        mapped = _open_error(path, exc) if opening else _operation_error(path, what, exc)
        if mapped is None:
            raise
        raise mapped from exc


def _operation_error(path: Path, what: str, exc: sqlite3.Error) -> errors.ReconcilerError | None:
    if _code(exc) in _UNAVAILABLE_CODES:
        return errors.StoreUnavailable(f"SQLite {what} on {path} failed: {exc}")
    return None


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


async def _patiently(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt` (one statement, or a COMMIT) to its end, again while the database stays busy.

    SQLite says to retry a statement outside a transaction, and a COMMIT, that failed with SQLITE_BUSY:
    nothing of it took effect. Past BUSY_TIMEOUT_MS the error goes on (to `_mapped`: StoreUnavailable).
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return await _complete(attempt())
        except sqlite3.OperationalError as exc:
            if _code(exc) != _BUSY or time.monotonic() >= deadline:
                raise


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


async def _complete(awaitable: Awaitable[T], *, on_cancel: Callable[[], object] | None = None) -> T:
    """Await `awaitable` to its end even when the awaiting task is cancelled meanwhile (`on_cancel` is told at
    once), then re-raise the cancellation (so `asyncio.timeout` and task groups still see it)."""
    inner = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(inner)
        except asyncio.CancelledError:
            if inner.cancelled():  # the work itself was cancelled (the loop is shutting down)
                raise
            if not cancelled and on_cancel is not None:
                on_cancel()
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

    async def script(self, sql: str) -> None:
        # statement by statement: executescript would COMMIT the transaction they belong in
        for statement in _statements(sql):
            await _complete(_run(self._db, statement))
