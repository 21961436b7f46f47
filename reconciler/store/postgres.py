"""The PostgreSQL store (asyncpg): a connection pool, claims with `FOR UPDATE SKIP LOCKED`, errors mapped.

Imported only when `database.url` is a postgresql:// URL; asyncpg comes with the `postgres` extra.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

from reconciler import errors
from reconciler.store import base, queries
from reconciler.store.sql import Row, SqlStore

_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
# Serialises `init-db` across instances racing on an empty database (an arbitrary constant of ours).
_INIT_LOCK = 0x5EC0_0C11

# Errors after which the next tick may well succeed: the pass ends, nothing is half-written.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,
    # a connection the server closed while idle in the pool can surface as a protocol-state error
    asyncpg.InternalClientError,
)


def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` placeholders → `$n`, with the parameter names in order (a name used twice keeps one n)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAM.sub(number, sql), tuple(names)


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        raise errors.StoreConflict(f"PostgreSQL {what}: {exc}") from exc
    except _UNAVAILABLE as exc:
        raise errors.StoreUnavailable(f"PostgreSQL {what}: {type(exc).__name__}: {exc}") from exc


async def _no_reset(conn: asyncpg.Connection) -> None:
    """We keep no session state (no SET, no LISTEN, no prepared names), so skip the reset round trip."""


class _Query:
    __slots__ = ("names", "sql")

    def __init__(self, text: str) -> None:
        self.sql, self.names = positional(text)

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


class PostgresStore(SqlStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._q = {name: _Query(sql) for name, sql in queries.load("postgres.sql").items()}

    @classmethod
    async def open(cls, url: str, *, max_size: int = 10) -> PostgresStore:
        with _mapped("connect"):
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_size, command_timeout=60, timeout=10
            )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; one that failed in a way that leaves its state unknown is closed, not reused."""
        with _mapped(what):
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except _UNAVAILABLE:
                    # the server may have dropped every connection (restart, failover): start afresh
                    conn.terminate()
                    await self._pool.expire_connections()
                    raise

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_PgTx]:
        async with self._connection("transaction") as conn, conn.transaction():
            yield _PgTx(conn, self._q)

    async def _write_one(self, name: str, params: dict[str, Any]) -> int:
        query = self._q[name]
        async with self._connection(name) as conn:
            return _row_count(await conn.execute(query.sql, *query.args(params)))

    async def _read(self, name: str, params: dict[str, Any]) -> list[Row]:
        query = self._q[name]
        async with self._connection(name) as conn:
            return list(await conn.fetch(query.sql, *query.args(params)))

    # -- schema -------------------------------------------------------------------------------------------
    async def schema_version(self) -> int | None:
        tables = {str(row[0]) for row in await self._read("schema_tables", {})}
        versions: list[Any] = []
        if "schema_meta" in tables:
            try:
                versions = [row[0] for row in await self._read("schema_version", {})]
            except asyncpg.UndefinedColumnError as exc:
                raise errors.SchemaError(
                    f"schema_meta is not ours ({exc}): point database.url at the reconciler's database"
                ) from exc
        return base.check_schema(tables, versions)

    async def schema_shape(self) -> base.SchemaShape:
        return base.SchemaShape.from_rows(
            await self._read("schema_columns", {}), await self._read("schema_indexes", {})
        )

    async def init_schema(self) -> bool:
        async with self._connection("init-db") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK)
            if await self.schema_version() is None:
                await conn.execute(queries.schema_sql())
                return True
        await self.require_schema()
        return False


def _row_count(status: str) -> int:
    """asyncpg's command tag ("UPDATE 3", "INSERT 0 1", "DELETE 0"): the last word is the row count."""
    return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0


class _PgTx:
    def __init__(self, conn: asyncpg.Connection, queries: dict[str, _Query]) -> None:
        self._conn = conn
        self._q = queries

    async def exec(self, name: str, params: dict[str, Any]) -> int:
        query = self._q[name]
        return _row_count(await self._conn.execute(query.sql, *query.args(params)))

    async def returning(self, name: str, params: dict[str, Any]) -> list[Row]:
        query = self._q[name]
        return list(await self._conn.fetch(query.sql, *query.args(params)))

    async def exec_many(self, name: str, params: Sequence[dict[str, Any]]) -> None:
        query = self._q[name]
        await self._conn.executemany(query.sql, [query.args(p) for p in params])
