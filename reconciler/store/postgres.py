"""The PostgreSQL store (asyncpg): a connection pool, claims with `FOR UPDATE SKIP LOCKED`, errors mapped.

Imported only when `database.url` is a postgresql:// URL; asyncpg comes with the `postgres` extra.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from reconciler import errors
from reconciler.store import queries
from reconciler.store.engine import Row
from reconciler.store.sql import SqlStore

_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
#: Seconds a new connection may take (TCP, TLS, authentication) before the attempt is StoreUnavailable.
CONNECT_TIMEOUT = 10.0

# The server aborted the transaction to resolve contention: re-running the whole transaction may succeed.
_CONTENTION: tuple[type[BaseException], ...] = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# SQLSTATE classes that, while connecting, mean database.url (or the server's grants) must change:
# 22 invalid parameter value, 28 authorization (role, password, pg_hba), 3D no such database,
# 3F no such schema, 42 access rule or unknown setting.
_OPERATOR_CLASSES = frozenset({"22", "28", "3D", "3F", "42"})

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
    except _CONTENTION as exc:
        raise errors.StoreContention(f"PostgreSQL {what}: {type(exc).__name__}: {_first_line(exc)}") from exc
    except _UNAVAILABLE as exc:
        raise errors.StoreUnavailable(f"PostgreSQL {what}: {type(exc).__name__}: {exc}") from exc


class _Query:
    __slots__ = ("names", "sql")

    def __init__(self, text: str) -> None:
        self.sql, self.names = positional(text)

    def args(self, params: dict[str, Any]) -> list[Any]:
        return [params[name] for name in self.names]


class PostgresStore(SqlStore):
    dialect = "postgres"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._q = {name: _Query(sql) for name, sql in queries.load(self.dialect).items()}

    @classmethod
    async def open(
        cls, url: str, *, max_size: int = 10, connect_timeout: float = CONNECT_TIMEOUT
    ) -> PostgresStore:
        """Connect (one connection now, so a refusal is known at once): our errors, never the password."""
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_size, command_timeout=60, timeout=connect_timeout
            )
        except _SERVER_SAID as exc:  # what the server, the network or TLS said: no password in it
            raise _connect_error(exc, f"PostgreSQL connect to {_masked(url)}", connect_timeout) from exc
        except _CLIENT_SAID as exc:
            failure = exc
        else:
            return cls(pool)
        # asyncpg's own complaint about the URL may quote it: scrub the password, and raise outside the
        # except block so the original does not even travel on as the implicit context
        message = _first_line(failure)
        password = _password(url)
        if password:
            message = message.replace(password, _MASK)
        if isinstance(failure, ValueError):  # asyncpg's ClientConfigurationError is one too
            raise errors.ConfigError(
                f"PostgreSQL connect to {_masked(url)}: database.url is not usable: {message}"
            )
        raise errors.StoreUnavailable(
            f"PostgreSQL connect to {_masked(url)}: {type(failure).__name__}: {message}"
        )

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; one that failed in a way that leaves its state unknown is closed, not reused."""
        with _mapped(what):
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except _CONTENTION:
                    raise  # the transaction was rolled back; the connection is as good as before
                except _UNAVAILABLE:
                    # the server may have dropped every connection (restart, failover): start afresh
                    conn.terminate()
                    await self._pool.expire_connections()
                    raise

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[_PgTx]:
        async with self._connection(what) as conn, conn.transaction():
            yield _PgTx(conn, self._q)

    async def _write_one(self, name: str, params: dict[str, Any]) -> int:
        query = self._q[name]
        async with self._connection(name) as conn:
            return _row_count(await conn.execute(query.sql, *query.args(params)))

    async def _read(self, name: str, params: dict[str, Any]) -> list[Row]:
        query = self._q[name]
        async with self._connection(name) as conn:
            return list(await conn.fetch(query.sql, *query.args(params)))


def _first_line(exc: BaseException) -> str:
    """asyncpg adds DETAIL and HINT lines to a server error; our messages are one line."""
    lines = str(exc).splitlines()
    return lines[0] if lines else ""


def _password(url: str) -> str | None:
    """The password a URL carries, in its user part or as a `password=` parameter."""
    try:
        parts = urlsplit(url)
        return parts.password or next(iter(parse_qs(parts.query).get("password", [])), None)
    except ValueError:
        return None


def _masked(url: str) -> str:
    """The URL with its password (user part or `password=` parameter) masked, to name the server."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user_info, _, host = netloc.rpartition("@")
            netloc = f"{user_info.partition(':')[0]}:{_MASK}@{host}"
    except ValueError:
        return "database.url"
    query = "&".join(
        f"password={_MASK}" if item.partition("=")[0] == "password" else item
        for item in parts.query.split("&")
    )
    return parts._replace(netloc=netloc, query=query if parts.query else "").geturl()


_MASK = "**********"  # as `check-config` and the logs show a secret

#: What a failed connect raises, by who said it: the server, the network or TLS (no password in it) ...
_SERVER_SAID: tuple[type[Exception], ...] = (OSError, asyncpg.PostgresError)
#: ... or asyncpg itself, about the URL or its own state.
_CLIENT_SAID: tuple[type[Exception], ...] = (ValueError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _connect_error(exc: Exception, where: str, timeout: float) -> errors.ReconcilerError:
    """What a failed connect means: ConfigError for what the operator must fix, StoreUnavailable for what
    may pass by itself."""
    if isinstance(exc, TimeoutError):
        return errors.StoreUnavailable(f"{where}: no answer within {timeout:g}s; is the host reachable?")
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        if sqlstate[:2] in _OPERATOR_CLASSES:
            return errors.ConfigError(
                f"{where}: {_first_line(exc)}; fix database.url (or the server's roles and pg_hba.conf)"
            )
        return errors.StoreUnavailable(f"{where}: {_first_line(exc)} ({type(exc).__name__})")
    if isinstance(exc, ssl.SSLError):
        return errors.ConfigError(f"{where}: SSL failed: {_first_line(exc)}; check sslmode in database.url")
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return errors.ConfigError(
            f"{where}: the server does not offer SSL but database.url requires it (sslmode); "
            "enable SSL on the server or change sslmode"
        )
    if isinstance(exc, ConnectionRefusedError):
        return errors.StoreUnavailable(f"{where}: connection refused; is the server running on that port?")
    return errors.StoreUnavailable(f"{where}: cannot connect: {_first_line(exc)}")


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

    async def script(self, sql: str) -> None:
        await self._conn.execute(sql)
