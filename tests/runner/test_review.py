"""The review worklist through the runner (docs/review.md): every review action opens one item with its audit
row, the same problem seen again opens no second one, and the reconciler resolves an item itself, in the
write that clears its condition; the kinds only a person can judge stay open. FakeDriver, a real SQLite file."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from reconciler import audit
from reconciler.driver_api import (
    BadProviderResponse,
    Done,
    InvoiceNotFound,
    NotYet,
    ProviderStatus,
    Snapshot,
)
from reconciler.testing import FakeDriver, snapshot
from tests.conftest import Clock, RunnerFactory
from tests.support.shop import T0, Shop, hours

SETTLED = snapshot("SETTLED", amount_sats=10_000, paid_sats=10_000, currency="BTC")
NEW = snapshot("PENDING", raw="New")
KIND = "fake.capture"


def expired(additional: str | None = None, **flags: Any) -> Snapshot:
    return Snapshot(ProviderStatus.EXPIRED, "Expired", additional, "BTC", 10_000, None, **flags)


def items(shop: Shop, invoice_id: str) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in shop.rows(
            "SELECT * FROM review_items WHERE invoice_id = ? ORDER BY opened_at, id", (invoice_id,)
        )
    ]


def only_item(shop: Shop, invoice_id: str, kind: str) -> dict[str, Any]:
    (item,) = [i for i in items(shop, invoice_id) if i["kind"] == kind]
    return item


async def passes(
    make_runner: RunnerFactory, clock: Clock, driver: FakeDriver, n: int, **settings: Any
) -> None:
    runner = make_runner({"fake": driver}, **settings)
    for _ in range(n):
        await runner.run_pass()
        clock.advance(hours(2))


# -- opened with the audit row, once while open ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (InvoiceNotFound("gone"), "invoice.provider_not_found"),
        (BadProviderResponse("garbage"), "invoice.bad_provider_response"),
        (snapshot("UNKNOWN", raw="Weird"), "invoice.unknown_status"),
        (snapshot("REFUNDED", raw="Refunded"), "invoice.refunded"),
        (expired("PaidLate", paid_late=True), "invoice.paid_late"),
        (expired("PaidPartial", partially_paid=True), "invoice.underpaid"),
        (snapshot("SETTLED", amount_sats=9_000, currency="BTC"), "invoice.amount_mismatch"),
    ],
)
async def test_each_answer_for_review_opens_one_item_with_its_audit_row(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, outcome: Snapshot | Exception, kind: str
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", outcome)

    await passes(make_runner, clock, driver, 3)

    (row,) = shop.audits(inv, kind)
    item = only_item(shop, inv, kind)
    assert item["audit_id"] == row["id"] and item["opened_at"] == row["occurred_at"]
    assert (item["status"], item["closed_by"], item["closed_at"]) == ("open", None, None)


async def test_a_second_audit_row_of_an_open_kind_opens_no_second_item(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    """Not found, then an unreadable answer, then not found again: two `provider_not_found` rows, one item."""
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", InvoiceNotFound("gone"), BadProviderResponse("garbage"), InvoiceNotFound("gone"))

    await passes(make_runner, clock, driver, 3)

    first, _again = shop.audits(inv, "invoice.provider_not_found")
    assert only_item(shop, inv, "invoice.provider_not_found")["audit_id"] == first["id"]
    assert only_item(shop, inv, "invoice.bad_provider_response")["status"] == "open"


# -- resolved by the reconciler when the condition clears ---------------------------------------------------------
@pytest.mark.parametrize(
    ("bad", "kind", "reason"),
    [
        (InvoiceNotFound("gone"), "invoice.provider_not_found", "the provider found the invoice (New)"),
        (BadProviderResponse("garbage"), "invoice.bad_provider_response", "a readable answer followed (New)"),
        (snapshot("UNKNOWN", raw="Weird"), "invoice.unknown_status", "a known status followed (New)"),
    ],
)
async def test_a_good_answer_resolves_what_a_bad_one_opened(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, bad: Snapshot | Exception, kind: str, reason: str
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", bad, bad, NEW)

    await passes(make_runner, clock, driver, 2)
    assert only_item(shop, inv, kind)["status"] == "open"  # the same answer again clears nothing
    await passes(make_runner, clock, driver, 1)

    item = only_item(shop, inv, kind)
    assert (item["status"], item["closed_by"], item["close_reason"]) == ("resolved", "reconciler", reason)
    assert item["closed_at"] == shop.invoice_row(inv)["last_checked_at"]  # the write that cleared it


async def test_an_unknown_status_followed_by_another_unknown_one_stays_open(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", snapshot("UNKNOWN", raw="Weird"), snapshot("UNKNOWN", raw="Weirder"))
    await passes(make_runner, clock, driver, 2)
    assert only_item(shop, inv, "invoice.unknown_status")["status"] == "open"
    assert len(shop.audits(inv, "invoice.unknown_status")) == 2


async def test_the_same_answer_repeated_opens_nothing_again_once_resolved(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", InvoiceNotFound("gone"), NEW, InvoiceNotFound("gone"))
    await passes(make_runner, clock, driver, 4)
    statuses = [i["status"] for i in items(shop, inv)]
    assert statuses == ["resolved", "open"]  # found, then lost again: a new item, the old one kept


@pytest.mark.parametrize(
    ("late", "kind"),
    [
        (expired("PaidLate", paid_late=True), "invoice.paid_late"),
        (expired("PaidPartial", partially_paid=True), "invoice.underpaid"),
    ],
)
async def test_a_flagged_invoice_settled_later_resolves_its_item(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, late: Snapshot, kind: str
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", late, late, SETTLED)  # the merchant marked it settled at the provider

    await passes(make_runner, clock, driver, 2)
    assert only_item(shop, inv, kind)["status"] == "open"
    await passes(make_runner, clock, driver, 1)

    assert shop.status(inv) == "settled"
    item = only_item(shop, inv, kind)
    assert (item["status"], item["close_reason"]) == ("resolved", "the invoice was settled")


async def test_paid_late_settle_opens_and_resolves_in_one_transaction(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", expired("PaidLate", paid_late=True))
    await passes(make_runner, clock, driver, 1, paid_late="settle")
    item = only_item(shop, inv, "invoice.paid_late")
    assert item["status"] == "resolved" and item["opened_at"] == item["closed_at"]


async def test_a_license_issued_later_resolves_issue_failed(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    policy = shop.policy(product, entitlements=[f"e{i}" for i in range(256)])
    inv = shop.invoice(product, provider_invoice_id="A", policy_id=policy)
    driver = FakeDriver()
    driver.script("A", SETTLED)
    await passes(make_runner, clock, driver, 2)
    assert only_item(shop, inv, "license.issue_failed")["status"] == "open"

    shop.execute("UPDATE policies SET entitlements = '[\"pro\"]' WHERE id = ?", (policy,))
    await passes(make_runner, clock, driver, 1)

    (license_row,) = shop.licenses(inv)
    item = only_item(shop, inv, "license.issue_failed")
    assert (item["status"], item["close_reason"]) == ("resolved", f"license {license_row['id']} issued")


async def test_a_row_read_again_resolves_unreadable(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    inv = shop.invoice(product, provider_invoice_id="A")
    shop.execute("UPDATE invoices SET amount_sats = 'ten' WHERE id = ?", (inv,))
    driver = FakeDriver()
    driver.script("A", NEW)
    await passes(make_runner, clock, driver, 1)
    assert only_item(shop, inv, "invoice.unreadable")["status"] == "open"

    shop.execute("UPDATE invoices SET amount_sats = 10000, next_check_at = NULL WHERE id = ?", (inv,))
    await passes(make_runner, clock, driver, 1)

    item = only_item(shop, inv, "invoice.unreadable")
    assert (item["status"], item["close_reason"]) == ("resolved", "the invoice row could be read again")


async def test_a_failed_task_done_after_a_retry_resolves_its_item(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    class WithTasks(FakeDriver):
        post_settle_kinds = (KIND,)

    product = shop.product()
    policy = shop.policy(product, is_recurring=True, renewal_period_days=30)
    inv = shop.invoice(product, provider_invoice_id="A", policy_id=policy)
    driver = WithTasks()
    driver.script("A", SETTLED)
    driver.post_settle_results.extend([NotYet(), NotYet(), Done()])
    await passes(make_runner, clock, driver, 3, post_settle_max_attempts=2)
    assert only_item(shop, inv, "post_settle.failed")["status"] == "open"

    # what docs/operations.md's re-queue (and the retry action) does
    shop.execute("UPDATE post_settle_tasks SET status = 'pending', attempts = 0, next_attempt_at = NULL")
    await passes(make_runner, clock, driver, 1, post_settle_max_attempts=2)

    item = only_item(shop, inv, "post_settle.failed")
    assert (item["status"], item["close_reason"]) == ("resolved", f"post-settle task {KIND} done")


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (snapshot("REFUNDED", raw="Refunded"), "invoice.refunded"),
        (snapshot("SETTLED", amount_sats=9_000, currency="BTC"), "invoice.amount_mismatch"),
    ],
)
async def test_what_only_a_person_can_judge_stays_open(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, first: Snapshot, kind: str
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", first, NEW, SETTLED)
    await passes(make_runner, clock, driver, 4)
    assert only_item(shop, inv, kind)["status"] == "open"


async def test_a_duplicate_stays_open(shop: Shop, make_runner: RunnerFactory, clock: Clock) -> None:
    product = shop.product()
    first = shop.invoice(product, provider=None, provider_invoice_id="A")
    second = shop.invoice(
        product, provider="fake", provider_invoice_id="A", created_at=T0 + timedelta(minutes=1)
    )
    driver = FakeDriver()
    driver.script("A", SETTLED)
    await passes(make_runner, clock, driver, 3, default_provider="fake")
    assert shop.status(first) == "settled"
    item = only_item(shop, second, "invoice.duplicate")
    assert item["status"] == "open"
    assert json.loads(shop.audits(second, "invoice.duplicate")[0]["details"])["winner_invoice_id"] == first


def test_every_review_action_has_a_test_here() -> None:
    """The kinds above cover the whole vocabulary (unreadable, issue failed and post-settle have their own)."""
    covered = {
        "invoice.provider_not_found",
        "invoice.bad_provider_response",
        "invoice.unknown_status",
        "invoice.refunded",
        "invoice.paid_late",
        "invoice.underpaid",
        "invoice.amount_mismatch",
        "invoice.duplicate",
        "invoice.unreadable",
        "license.issue_failed",
        "post_settle.failed",
    }
    assert covered == set(audit.REVIEW_ACTIONS)
