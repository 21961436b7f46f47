"""A SQLite transaction once begun always ends, however the task awaiting it is cancelled (issue 10 item 9).

Against a real file while another connection (the storefront) holds the write lock, store operations are
cancelled at many points: before BEGIN, while BEGIN IMMEDIATE waits for the lock, around the moment the lock
frees, mid-transaction. Afterwards our connection is never inside a transaction, the storefront can write, and
the store's next transaction works.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.store import base
from reconciler.store.sqlite import SqliteStore
from tests.support.shop import T0, Shop

NOW = T0 + timedelta(minutes=30)
Operation = Callable[[SqliteStore, str], Coroutine[Any, Any, Any]]


async def _claim(store: SqliteStore, _: str) -> Any:
    return await store.claim(
        owner="test:1:x",
        pass_start=NOW,
        now=NOW,
        lease=timedelta(minutes=5),
        max_age=timedelta(days=3),
        batch_size=10,
    )


async def _release(store: SqliteStore, invoice_id: str) -> Any:
    invoice = await store.get_invoice(invoice_id)
    assert invoice is not None
    return await store.release(invoice, next_check_at=NOW)


async def _upsert_instance(store: SqliteStore, _: str) -> Any:
    await store.upsert_instance(base.InstanceRow("test:1:x", "host", 1, NOW, NOW))


OPERATIONS: dict[str, Operation] = {
    "claim (a transaction)": _claim,
    "upsert_instance (a transaction)": _upsert_instance,
    "release (one statement)": _release,
}
#: Seconds after the start of the operation at which the task is cancelled / the storefront lets go.
DELAYS = (0.0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.015, 0.03, 0.06)


def _storefront_writes(path: Path) -> None:
    """What the storefront does next: it must get the lock within a second, not `database is locked`."""
    db = sqlite3.connect(path, timeout=1, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE products SET name = name || '.'")
        db.execute("COMMIT")
    finally:
        db.close()


async def _settled(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("name", sorted(OPERATIONS))
async def test_cancelled_operations_never_leave_a_transaction_open(
    db_path: Path, shop: Shop, store: SqliteStore, name: str
) -> None:
    operation = OPERATIONS[name]
    invoice_id = shop.invoice(shop.product(), created_at=T0)
    blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    try:
        # cancel_at / unlock_at: when the task is cancelled and when the storefront commits, in either order
        for cancel_at, unlock_at in itertools.product(DELAYS, (0.0, 0.005, 0.02, None)):
            blocker.execute("BEGIN IMMEDIATE")
            locked = True
            task = asyncio.create_task(operation(store, invoice_id))
            await asyncio.sleep(0)
            order = sorted(
                [(cancel_at, "cancel"), (unlock_at, "unlock")]
                if unlock_at is not None
                else [(cancel_at, "cancel")]
            )
            started = time.monotonic()
            for at, event in order:
                await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
                if event == "cancel":
                    task.cancel()
                else:
                    blocker.execute("COMMIT")
                    locked = False
            cancelled = time.monotonic()
            await asyncio.wait_for(_settled(task), timeout=5)
            if locked:
                # cancellation took effect while the lock was still held: it did not wait for the lock
                assert time.monotonic() - cancelled < 1.0, (name, cancel_at, unlock_at)
                blocker.execute("COMMIT")

            where = (name, cancel_at, unlock_at)
            assert not store._db.in_transaction, where
            await asyncio.to_thread(_storefront_writes, db_path)
            await operation(store, invoice_id)  # the store's own next transaction starts cleanly
            assert not store._db.in_transaction, where
    finally:
        blocker.close()
