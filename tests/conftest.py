"""Shared fixtures: a fresh SQLite shop database, a fixed clock, a signing key, the runner."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.driver_api import CommonSettings
from reconciler.runner import Provider, Runner, RunnerSettings
from reconciler.store.sqlite import SqliteStore
from reconciler.testing import FakeDriver
from tests.support.shop import T0, Shop, create_schema

# Timing is not what property tests check: on a loaded CI machine a slow example must not fail the run.
hypothesis.settings.register_profile("reconciler", deadline=None, print_blob=True)
hypothesis.settings.load_profile("reconciler")


class Clock:
    """A settable clock: `clock()` is now, `clock.advance(...)` moves it."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + timedelta(minutes=30))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    create_schema(path)
    return path


@pytest.fixture
def shop(db_path: Path) -> Shop:
    return Shop(db_path)


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(db_path)
    yield s
    await s.close()


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


async def _no_sleep(_: float) -> None:
    return None


RunnerFactory = Callable[..., Runner]


@pytest.fixture
def make_runner(store: SqliteStore, clock: Clock, signing_key: Ed25519PrivateKey) -> RunnerFactory:
    """`make_runner(drivers={"fake": FakeDriver()}, **settings)` → a Runner on the test database."""

    def make(
        drivers: Mapping[str, FakeDriver] | None = None,
        *,
        common: CommonSettings | None = None,
        sleep: Callable[[float], object] | None = None,
        **settings: object,
    ) -> Runner:
        drivers = drivers if drivers is not None else {"fake": FakeDriver("fake")}
        providers = {
            pid: Provider(
                pid, driver, common or CommonSettings(driver="fake", retry_attempts=3, retry_max_delay=1)
            )
            for pid, driver in drivers.items()
        }
        return Runner(
            store,
            providers,
            RunnerSettings(**settings),  # type: ignore[arg-type]
            signing_key=signing_key,
            clock=clock,
            owner="test:1:abc",
            rng=random.Random(7),
            sleep=sleep or _no_sleep,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every loguru message (WARNING and above) emitted during the test, as 'LEVEL message'."""
    from loguru import logger

    lines: list[str] = []
    handle = logger.add(
        lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"), level="WARNING"
    )
    yield lines
    logger.remove(handle)


PG_URL = os.environ.get("RECONCILER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _absent(reason: str) -> None:
    """Skip locally; with CI=true a missing server or fixture fails the test instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


@asynccontextmanager
async def pg_connection() -> AsyncIterator[tuple[Any, str]]:
    """A connection to the test PostgreSQL server inside a fresh schema of its own, dropped afterwards."""
    try:
        import asyncpg
    except ImportError:
        _absent("asyncpg is not installed (pip install 'invoice-reconciler[postgres]')")
    try:
        conn = await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        _absent(f"no PostgreSQL at {PG_URL}: {exc}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(f"SET search_path TO {schema}")
    try:
        yield conn, schema
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[tuple[Any, str]]:
    async with pg_connection() as found:
        yield found
