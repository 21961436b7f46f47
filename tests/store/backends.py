"""The store conformance suite's two backends: a SQLite file and a PostgreSQL schema of its own."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reconciler.store import base, queries
from reconciler.store.sql import SqlStore
from reconciler.store.sqlite import SqliteStore


class Raw(Protocol):
    """Plain SQL beside the store, as the storefront or an operator would run it (`:name` parameters)."""

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None: ...

    async def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


@dataclass
class Backend:
    name: str
    store: SqlStore
    raw: Raw

    async def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        rows = await self.raw.rows(sql, params)
        return next(iter(rows[0].values())) if rows else None


class SqliteRaw:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with sqlite3.connect(self.path, timeout=30) as db:
            db.execute(sql, params or {})

    async def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(sql, params or {}).fetchall()]
        finally:
            db.close()


class PostgresRaw:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        from reconciler.store.postgres import positional

        text, names = positional(sql)
        await self.conn.execute(text, *[(params or {})[n] for n in names])

    async def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from reconciler.store.postgres import positional

        text, names = positional(sql)
        return [dict(r) for r in await self.conn.fetch(text, *[(params or {})[n] for n in names])]


async def sqlite_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    path = tmp_path / "conformance.db"
    with sqlite3.connect(path) as db:
        db.executescript(queries.schema_sql())
    store = await SqliteStore.open(path)
    try:
        yield Backend("sqlite", store, SqliteRaw(path))
    finally:
        await store.close()


async def postgres_backend(conn: Any, schema: str, url: str) -> AsyncIterator[Backend]:
    from reconciler.store.postgres import PostgresStore

    sep = "&" if "?" in url else "?"
    # application_name lets a test find (and kill) exactly this store's connections
    store = await PostgresStore.open(f"{url}{sep}search_path={schema}&application_name={schema}", max_size=4)
    try:
        assert await store.init_schema() is True
        assert await store.schema_version() == base.SCHEMA_VERSION
        yield Backend("postgres", store, PostgresRaw(conn))
    finally:
        await store.close()
