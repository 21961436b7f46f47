"""SQLite's errors become ours at one boundary (issue 11), the way PostgreSQL's do: whichever operation meets
a database that cannot take the write (here: full), in a transaction or as one statement, the error is
StoreUnavailable in one line naming the file and the operation, and the connection is left clean."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.models import Invoice
from reconciler.store import base
from reconciler.store.sqlite import SqliteStore
from tests.support.shop import T0, Shop

NOW = T0 + timedelta(minutes=30)
BIG = "x" * 200_000  # needs pages the database may not grow by


async def _upsert_instance(store: SqliteStore, _: Invoice) -> object:
    await store.upsert_instance(base.InstanceRow("test:1:x", "host", 1, NOW, NOW, NOW, {"big": BIG}))
    return None


async def _record_check(store: SqliteStore, invoice: Invoice) -> object:
    return await store.record_check(invoice, now=NOW, next_check_at=NOW, observation=BIG)


OPERATIONS: dict[str, tuple[Callable[[SqliteStore, Invoice], Awaitable[object]], str]] = {
    "a transaction": (_upsert_instance, "upsert_instance"),
    "one statement": (_record_check, "record_check"),
}


async def _limit_growth(store: SqliteStore, pages: int | None) -> None:
    """The database may grow by no page (or by as many as it likes again): SQLITE_FULL, for real."""
    db = store._db
    if pages is None:
        pages = 1_073_741_823
    cursor = await db.execute(f"PRAGMA max_page_count = {pages}")
    await cursor.fetchall()
    await cursor.close()


@pytest.mark.parametrize("case", sorted(OPERATIONS))
async def test_a_full_database_is_store_unavailable_naming_the_file_and_the_operation(
    db_path: Path, shop: Shop, store: SqliteStore, case: str
) -> None:
    operation, name = OPERATIONS[case]
    shop.invoice(shop.product(), created_at=T0)
    (invoice,) = await store.claim(
        owner="test:1:x",
        pass_start=NOW,
        now=NOW,
        lease=timedelta(minutes=5),
        max_age=timedelta(days=3),
        batch_size=1,
    )
    assert isinstance(invoice, Invoice)
    cursor = await store._db.execute("PRAGMA page_count")
    row = await cursor.fetchone()
    await cursor.close()
    assert row is not None
    await _limit_growth(store, int(row[0]))

    with pytest.raises(errors.StoreUnavailable) as caught:
        await operation(store, invoice)

    message = caught.value.message
    assert str(db_path) in message and name in message and "full" in message, message
    assert "\n" not in message
    assert not store._db.in_transaction
    await _limit_growth(store, None)
    await operation(store, invoice)  # the same operation works once the database may grow again
