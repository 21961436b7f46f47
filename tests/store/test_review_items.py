"""The review worklist in the store (docs/review.md), on both engines: an item is opened in the transaction of
its audit row (a failure after the insert takes both back), one open item per invoice and kind, resolved in
the transaction of the change that clears it and only when that change is written, closed by compare-and-set;
`status` counts the open items only."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from reconciler import audit, review
from reconciler.models import AuditRecord, Invoice, InvoiceStatus, Resolution
from reconciler.store import base
from reconciler.store.engine import Tx
from reconciler.timeutil import format_ts
from tests.store.backends import Backend
from tests.store.test_conformance import AGE, NOW, _settlement, backend, claim, seed
from tests.support.shop import new_id

__all__ = ["backend"]  # the fixture, shared with the conformance suite

NOT_FOUND = audit.Action.INVOICE_PROVIDER_NOT_FOUND
FOUND = Resolution(NOT_FOUND, "the provider found the invoice (New)")


def record(action: str, invoice_id: str, **details: Any) -> AuditRecord:
    return AuditRecord(action, "invoice", invoice_id, {"provider_id": "fake", "raw_status": None, **details})


async def items(b: Backend, invoice_id: str | None = None) -> list[dict[str, Any]]:
    where = "WHERE invoice_id = :i" if invoice_id else ""
    return await b.raw.rows(
        f"SELECT id, invoice_id, kind, status, audit_id, opened_at, closed_by, closed_at, close_reason"
        f" FROM review_items {where} ORDER BY opened_at, id",
        {"i": invoice_id} if invoice_id else None,
    )


async def open_item(b: Backend, invoice_id: str, action: str = NOT_FOUND, *, at: Any = NOW) -> None:
    async def write(tx: Tx) -> None:
        await b.store._audit(tx, at, [record(action, invoice_id)])

    await b.store._atomic("test audit", write)


class Injected(Exception):
    """A failure after the audit row and its item were written, inside their transaction."""


@pytest.mark.parametrize("action", audit.REVIEW_ACTIONS)
async def test_the_item_and_its_audit_row_are_one_transaction(backend: Backend, action: str) -> None:
    _, (iid,) = await seed(backend, 1)

    async def fails(tx: Tx) -> None:
        await backend.store._audit(tx, NOW, [record(action, iid)])
        assert len(
            await tx.returning("open_review_items", {"limit": 5, "after_id": None, "after_opened_at": None})
        )
        raise Injected

    with pytest.raises(Injected):
        await backend.store._atomic("test", fails)
    assert await backend.scalar("SELECT count(*) FROM audit_log") == 0
    assert await items(backend) == []

    await open_item(backend, iid, action)
    (row,) = await backend.raw.rows("SELECT id, occurred_at FROM audit_log")
    (item,) = await items(backend)
    assert (item["kind"], item["status"], item["audit_id"]) == (action, "open", row["id"])
    assert item["opened_at"] == row["occurred_at"] == format_ts(NOW)


async def test_rows_that_are_not_for_review_open_nothing(backend: Backend) -> None:
    _, (iid,) = await seed(backend, 1)

    async def write(tx: Tx) -> None:
        await backend.store._audit(
            tx,
            NOW,
            [
                record(audit.Action.INVOICE_SETTLED, iid),
                AuditRecord(audit.Action.LICENSE_ISSUED, "license", new_id(), {"invoice_id": iid}),
                record(NOT_FOUND, "b'\\xff'"),  # an unreadable row's id: no invoice to tie an item to
            ],
        )

    await backend.store._atomic("test", write)
    assert await backend.scalar("SELECT count(*) FROM audit_log") == 3
    assert await items(backend) == []


async def test_one_open_item_per_invoice_and_kind(backend: Backend) -> None:
    _, (iid,) = await seed(backend, 1)
    await open_item(backend, iid)
    await open_item(backend, iid, at=NOW + timedelta(minutes=1))
    await open_item(backend, iid, audit.Action.INVOICE_UNKNOWN_STATUS)
    first, other = await items(backend)
    assert (first["kind"], other["kind"]) == (NOT_FOUND, audit.Action.INVOICE_UNKNOWN_STATUS)
    assert first["opened_at"] == format_ts(NOW)  # the first audit row's, not the second's

    # closed, the next audit row of the kind opens a new item; the closed one stays as history
    assert await backend.store.close_review_item(
        first["id"], status="dismissed", closed_by="cli:alice", reason="handled", now=NOW
    )
    await open_item(backend, iid, at=NOW + timedelta(minutes=2))
    statuses = [(i["kind"], i["status"]) for i in await items(backend) if i["kind"] == NOT_FOUND]
    assert statuses == [(NOT_FOUND, "dismissed"), (NOT_FOUND, "open")]


async def test_closing_is_compare_and_set(backend: Backend) -> None:
    _, (iid,) = await seed(backend, 1)
    await open_item(backend, iid)
    (item,) = await backend.store.open_review_items(limit=10)

    closes = [
        backend.store.close_review_item(
            item.id, status="dismissed", closed_by=f"cli:u{n}", reason="x", now=NOW
        )
        for n in range(4)
    ]
    assert sorted(await asyncio.gather(*closes)) == [False, False, False, True]
    closed = await backend.store.review_item(item.id)
    assert closed is not None and closed.status == "dismissed" and closed.closed_at == NOW
    assert await backend.store.review_item("no-such-item") is None
    assert not await backend.store.close_review_item(
        "no-such-item", status="dismissed", closed_by="x", reason="", now=NOW
    )
    with pytest.raises(ValueError, match="dismissed"):
        await backend.store.close_review_item(item.id, status="open", closed_by="x", reason="", now=NOW)


async def _claimed(b: Backend, n: int = 1) -> list[Invoice]:
    await seed(b, n)
    return await claim(b)


async def test_a_check_resolves_in_its_own_write_and_only_when_written(backend: Backend) -> None:
    mine, fenced = await _claimed(backend, 2)
    for inv in (mine, fenced):
        await open_item(backend, inv.id)
    stale = dataclasses.replace(fenced, lease_token="taken-over")

    later = NOW + timedelta(minutes=5)
    for inv, expected in ((mine, True), (stale, False)):
        written = await backend.store.record_check(
            inv, now=later, next_check_at=later, observation="New", resolves=[FOUND]
        )
        assert written is expected

    (resolved,) = await items(backend, mine.id)
    assert (resolved["status"], resolved["closed_by"], resolved["close_reason"]) == (
        "resolved",
        "reconciler",
        FOUND.reason,
    )
    assert resolved["closed_at"] == format_ts(later)
    assert [i["status"] for i in await items(backend, fenced.id)] == ["open"]


async def test_a_bookkeeping_batch_resolves_for_the_checks_it_wrote(backend: Backend) -> None:
    mine, fenced, quiet = await _claimed(backend, 3)
    for inv in (mine, fenced, quiet):
        await open_item(backend, inv.id)
    stale = dataclasses.replace(fenced, lease_token="taken-over")
    later = NOW + timedelta(minutes=5)
    checks = [
        base.CheckWrite(mine, later, "New", later, (FOUND,)),
        base.CheckWrite(stale, later, "New", later, (FOUND,)),
        base.CheckWrite(quiet, later, None, None),
    ]

    written = await backend.store.record_bookkeeping(checks, [])

    assert written == {mine.id, quiet.id}
    assert [i["status"] for i in await items(backend, mine.id)] == ["resolved"]
    assert [i["status"] for i in await items(backend, fenced.id)] == ["open"]
    assert [i["status"] for i in await items(backend, quiet.id)] == ["open"]


async def test_a_transition_resolves_with_its_write(backend: Backend) -> None:
    (inv,) = await _claimed(backend)
    await open_item(backend, inv.id)
    assert await backend.store.record_transition(
        inv,
        new_status=InvoiceStatus.EXPIRED,
        now=NOW,
        next_check_at=NOW,
        observation="Expired",
        audits=[record(audit.Action.INVOICE_EXPIRED, inv.id)],
        resolves=[FOUND],
    )
    assert [i["status"] for i in await items(backend, inv.id)] == ["resolved"]


async def test_a_dismissed_item_stays_dismissed(backend: Backend) -> None:
    (inv,) = await _claimed(backend)
    await open_item(backend, inv.id)
    (item,) = await backend.store.open_review_items(limit=1)
    assert await backend.store.close_review_item(
        item.id, status="dismissed", closed_by="cli:a", reason="ok", now=NOW
    )
    assert await backend.store.record_check(
        inv, now=NOW, next_check_at=NOW, observation="New", resolves=[FOUND]
    )
    closed = await backend.store.review_item(item.id)
    assert closed is not None and (closed.status, closed.closed_by) == ("dismissed", "cli:a")


async def test_the_settle_resolves_what_settling_and_the_license_clear(backend: Backend) -> None:
    product, _ = await seed(backend, 1)
    (inv,) = await claim(backend)
    for action in (
        audit.Action.INVOICE_PAID_LATE,
        audit.Action.LICENSE_ISSUE_FAILED,
        audit.Action.INVOICE_REFUNDED,
    ):
        await open_item(backend, inv.id, action)
    settle = _settlement(product)
    assert settle.license is not None
    resolves = review.after_settle(None, inv.last_provider_status)
    outcome = await backend.store.record_settlement(
        inv, dataclasses.replace(settle, resolves=resolves, recovered=True)
    )
    assert isinstance(outcome, base.SettleOutcome)
    found = {i["kind"]: (i["status"], i["close_reason"]) for i in await items(backend, inv.id)}
    assert found == {
        audit.Action.INVOICE_PAID_LATE: ("resolved", "the invoice is settled"),
        audit.Action.LICENSE_ISSUE_FAILED: ("resolved", f"license {settle.license.id} issued"),
        audit.Action.INVOICE_REFUNDED: ("open", None),
    }


async def test_a_task_done_resolves_once_no_task_is_failed(backend: Backend) -> None:
    product, (iid,) = await seed(backend, 1)
    (inv,) = await claim(backend)
    await backend.store.record_settlement(inv, _settlement(product, recurring=True))
    await open_item(backend, iid, audit.Action.POST_SETTLE_FAILED)
    # another task of the invoice is failed: its item stays open while that one is
    await backend.raw.execute(
        "INSERT INTO post_settle_tasks (invoice_id, kind, status, created_at, updated_at)"
        " VALUES (:i, 'fake.other', 'failed', :t, :t)",
        {"i": iid, "t": format_ts(NOW)},
    )
    (task,) = await backend.store.due_tasks(now=NOW, batch_size=10)
    assert await backend.store.claim_task(task, now=NOW, lease_until=NOW + AGE)
    assert await backend.store.finish_task(task, base.TaskResult("done"), now=NOW)
    assert [i["status"] for i in await items(backend, iid)] == ["open"]

    await backend.raw.execute("UPDATE post_settle_tasks SET status = 'done' WHERE kind = 'fake.other'")
    await backend.raw.execute("UPDATE post_settle_tasks SET status = 'pending' WHERE kind = 'fake.capture'")
    (task,) = await backend.store.due_tasks(now=NOW + AGE, batch_size=10)
    assert await backend.store.claim_task(task, now=NOW, lease_until=NOW + AGE)
    assert await backend.store.finish_task(task, base.TaskResult("done"), now=NOW)
    (item,) = await items(backend, iid)
    assert (item["status"], item["close_reason"]) == ("resolved", "post-settle task fake.capture done")


async def test_open_items_oldest_first_paged_and_counted_by_status(backend: Backend) -> None:
    _, ids = await seed(backend, 3)
    for n, iid in enumerate(reversed(ids)):
        await open_item(backend, iid, at=NOW + timedelta(minutes=n))
    await open_item(backend, ids[0], audit.Action.INVOICE_PAID_LATE, at=NOW + timedelta(minutes=9))
    first_page = await backend.store.open_review_items(limit=2)
    second_page = await backend.store.open_review_items(limit=2, after=first_page[-1])
    listed = [(i.invoice_id, i.kind) for i in first_page + second_page]
    assert listed == [
        (ids[2], NOT_FOUND),
        (ids[1], NOT_FOUND),
        (ids[0], NOT_FOUND),
        (ids[0], "invoice.paid_late"),
    ]
    item = first_page[0]
    assert (item.provider_id, item.status, item.details["provider_id"]) == ("fake", "open", "fake")
    assert item.provider_invoice_id is not None and item.provider_invoice_id.startswith("P")

    assert await backend.store.close_review_item(
        first_page[1].id, status="dismissed", closed_by="cli:a", reason="x", now=NOW
    )
    report = await backend.store.status_report(now=NOW, max_age=AGE)
    counts = {r.kind: (r.count, r.oldest, r.latest) for r in report.review}
    assert counts == {
        NOT_FOUND: (2, NOW, NOW + timedelta(minutes=2)),
        "invoice.paid_late": (1, NOW + timedelta(minutes=9), NOW + timedelta(minutes=9)),
    }


async def test_settlements_written_together_resolve_each_their_own(backend: Backend) -> None:
    product, _ = await seed(backend, 2)
    first, second = await claim(backend)
    for inv in (first, second):
        await open_item(backend, inv.id, audit.Action.INVOICE_PAID_LATE)
    resolves = review.after_settle(None, None)
    group = [(inv, dataclasses.replace(_settlement(product), resolves=resolves)) for inv in (first, second)]
    outcomes = await backend.store.record_settlements(group)
    assert all(isinstance(o, base.SettleOutcome) for o in outcomes)
    for inv in (first, second):
        assert [i["status"] for i in await items(backend, inv.id)] == ["resolved"]
