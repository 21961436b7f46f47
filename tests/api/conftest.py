"""Fixtures of the API tests: a SQLite database with the newest schema (the PostgreSQL runs ask for
`pg_backend`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import PG_URL, pg_connection
from tests.store.backends import Backend, postgres_backend, sqlite_backend


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    async for found in sqlite_backend(tmp_path):
        yield found


@pytest.fixture(params=["sqlite", "postgres"])
async def both(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        async for found in sqlite_backend(tmp_path):
            yield found
    else:
        async with pg_connection() as (conn, schema):
            async for found in postgres_backend(conn, schema, PG_URL):
                yield found
