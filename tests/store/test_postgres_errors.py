"""PostgreSQL failures become our errors where they enter (issue 10 items 3 and 9): what the operator must fix
(no such database or role, a refused password, SSL refused) is a ConfigError; what may pass by itself (nobody
listening, no answer within the connect bound) is StoreUnavailable; deadlocks and serialization failures are
StoreContention. Never a bare asyncpg exception, never the password."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from reconciler import errors
from reconciler.store import base, queries
from tests.conftest import PG_URL, pg_connection
from tests.store.pg_fake import FakePostgres

asyncpg = pytest.importorskip("asyncpg")


async def _open(url: str, **kwargs: Any) -> Any:
    from reconciler.store.postgres import PostgresStore

    return await PostgresStore.open(url, max_size=2, **kwargs)


@pytest.fixture
async def server() -> None:
    async with pg_connection():
        pass  # skips (fails under CI) when the test server is not there


def _with(url: str, *, user: str | None = None, database: str | None = None, query: str = "") -> str:
    head, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    if user is not None:
        netloc = f"{user}@{netloc.rpartition('@')[2]}"
    return f"{head}://{netloc}/{database if database is not None else path.partition('?')[0]}{query}"


REFUSED = {
    "missing-database": ({"database": "no_such_database"}, 'database "no_such_database" does not exist'),
    "missing-role": ({"user": "no_such_role"}, 'role "no_such_role" does not exist'),
    "ssl-refused": ({"query": "?sslmode=require"}, "SSL"),
    "bad-sslmode": ({"query": "?sslmode=sometimes"}, "sslmode"),
    "unknown-setting": ({"query": "?no_such_setting=1"}, "no_such_setting"),
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
async def test_what_the_operator_must_fix_is_a_config_error(server: None, kind: str) -> None:
    change, needle = REFUSED[kind]

    with pytest.raises(errors.ConfigError) as caught:
        await _open(_with(PG_URL, **change))

    assert needle in caught.value.message and "database.url" in caught.value.message
    assert "\n" not in caught.value.message


async def test_a_refused_password_is_a_config_error_without_the_password() -> None:
    secret = "Pg-Secret-77aa01"
    with FakePostgres("refuse-password") as fake:
        port = fake.port
        with pytest.raises(errors.ConfigError) as caught:
            await _open(f"postgresql://shop:{secret}@127.0.0.1:{port}/shop")

    assert fake.passwords == [secret]
    assert 'password authentication failed for user "shop"' in caught.value.message
    chain: BaseException | None = caught.value
    while chain is not None:  # neither the message nor anything it was raised from carries the secret
        assert secret not in str(chain) and secret not in repr(chain.args)
        chain = chain.__cause__ or chain.__context__
    assert f"postgresql://shop:**********@127.0.0.1:{port}/shop" in caught.value.message


async def test_nobody_listening_is_unavailable_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    started = time.monotonic()
    with pytest.raises(errors.StoreUnavailable) as caught:
        await _open(f"postgresql://shop@127.0.0.1:{port}/shop")

    assert not isinstance(caught.value, errors.StoreContention)
    assert f"127.0.0.1:{port}" in caught.value.message and "refused" in caught.value.message
    assert time.monotonic() - started < 5


async def test_a_server_that_never_answers_is_unavailable_after_the_connect_bound() -> None:
    with FakePostgres("silent") as fake:
        started = time.monotonic()
        with pytest.raises(errors.StoreUnavailable) as caught:
            await _open(f"postgresql://shop@127.0.0.1:{fake.port}/shop", connect_timeout=1.0)
        elapsed = time.monotonic() - started

    assert "no answer within 1s" in caught.value.message
    assert 0.9 < elapsed < 5


# -- contention ----------------------------------------------------------------------------------------------
@pytest.fixture
async def pg_store() -> Any:
    async with pg_connection() as (conn, schema):
        await conn.execute(queries.schema_sql())
        await conn.execute("CREATE TABLE pair (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        await conn.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
        store = await _open(f"{PG_URL}?search_path={schema}")
        try:
            yield conn, store
        finally:
            await store.close()


async def test_a_deadlock_is_store_contention(pg_store: tuple[Any, Any]) -> None:
    other, store = pg_store
    await other.execute("SET deadlock_timeout = '10s'")  # the store's session detects it first: the victim
    holding = asyncio.Event()

    async def ours() -> None:
        async with store._connection("deadlock test") as conn, conn.transaction():
            await conn.execute("SET LOCAL deadlock_timeout = '200ms'")
            await conn.execute("UPDATE pair SET n = n + 1 WHERE id = 1")
            holding.set()
            await asyncio.sleep(0.2)  # `theirs` now holds row 2
            await conn.execute("UPDATE pair SET n = n + 1 WHERE id = 2")

    async def theirs() -> None:
        await holding.wait()
        async with other.transaction():
            await other.execute("UPDATE pair SET n = n + 1 WHERE id = 2")
            await other.execute("UPDATE pair SET n = n + 1 WHERE id = 1")

    results = await asyncio.gather(ours(), theirs(), return_exceptions=True)

    assert isinstance(results[0], errors.StoreContention), results
    assert "DeadlockDetectedError" in results[0].message
    assert results[1] is None
    assert await store.schema_version() == base.SCHEMA_VERSION  # the store goes on working


async def test_a_serialization_failure_is_store_contention(pg_store: tuple[Any, Any]) -> None:
    other, store = pg_store
    with pytest.raises(errors.StoreContention, match="SerializationError"):
        async with (
            store._connection("serialization test") as conn,
            conn.transaction(isolation="repeatable_read"),
        ):
            assert await conn.fetchval("SELECT n FROM pair WHERE id = 1") == 0  # the snapshot is taken
            await other.execute("UPDATE pair SET n = 5 WHERE id = 1")
            await conn.execute("UPDATE pair SET n = n + 1 WHERE id = 1")
    assert await other.fetchval("SELECT n FROM pair WHERE id = 1") == 5
    assert await store.schema_version() == base.SCHEMA_VERSION


def _chain(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://shop:{secret}@127.0.0.1:notaport/shop",
        "postgresql://shop@127.0.0.1:5432/shop?password={secret}&sslmode=sometimes",
    ],
    ids=["bad-port", "bad-sslmode-with-password-parameter"],
)
async def test_a_url_asyncpg_cannot_use_is_a_config_error_that_never_quotes_the_password(url: str) -> None:
    secret = "Pg-Secret-0c4f9e"

    with pytest.raises(errors.ConfigError, match=r"database\.url is not usable") as caught:
        await _open(url.format(secret=secret))

    assert "**********" in caught.value.message
    for exc in _chain(caught.value):
        assert secret not in str(exc) and secret not in repr(exc.args), exc
