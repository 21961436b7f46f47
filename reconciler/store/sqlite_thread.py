"""A SQLite transaction run whole on the connection's own thread (see store/sqlite.py), and the busy rule
every SQLite statement follows."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from reconciler.store.engine import Row

#: How long an operation waits for another connection's lock before the pass gives up (StoreUnavailable).
BUSY_TIMEOUT_MS = 30_000

#: The wait of one attempt; between attempts a cancellation takes effect.
BUSY_SLICE_MS = 200

T = TypeVar("T")

_BUSY = 5


def _code(exc: sqlite3.Error) -> int:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF


def _statements(script: str) -> list[str]:
    """A script's statements, one by one."""
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


class _Stopped(sqlite3.OperationalError):
    """The task waiting for the write lock was cancelled: no BEGIN happened."""


def _busy_retry(statement: Callable[[], object], stop: threading.Event | None) -> None:
    """Run `statement` on the connection's thread, again while SQLITE_BUSY, until BUSY_TIMEOUT_MS (each try
    waits one busy slice) or until `stop` is set."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if _code(exc) != _BUSY or time.monotonic() >= deadline:
                raise
            if stop is not None and stop.is_set():
                raise _Stopped("cancelled while waiting for the write lock") from exc


def _drive(coroutine: Awaitable[T]) -> T:
    """Run a transaction body to its end here and now: over `_ThreadTx` it never suspends."""
    step = coroutine.__await__()
    try:
        step.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    step.close()
    raise RuntimeError("a transaction body awaited something other than its transaction's statements")


class _ThreadTx:
    """A transaction's statements on the connection's own thread: each completes before it returns."""

    def __init__(self, conn: sqlite3.Connection, queries: dict[str, str]) -> None:
        self._conn = conn
        self._q = queries

    async def exec(self, name: str, params: dict[str, Any]) -> int:
        return self._conn.execute(self._q[name], params).rowcount

    async def returning(self, name: str, params: dict[str, Any]) -> list[Row]:
        return list(self._conn.execute(self._q[name], params).fetchall())

    async def exec_many(self, name: str, params: Sequence[dict[str, Any]]) -> None:
        self._conn.executemany(self._q[name], params).close()

    async def script(self, sql: str) -> None:
        for statement in _statements(sql):
            self._conn.execute(statement)
