"""Crash consistency of the settle transaction (docs/reconcile.md §8): a failure at any step leaves all or
nothing.

Faults are injected by the database itself: a trigger that aborts one statement of the transaction. The
pass then fails loudly (a store failure is not swallowed) but gives back the leases it held; the next pass
completes the settlement exactly once.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest

from reconciler.testing import FakeDriver, snapshot
from tests.conftest import Clock, RunnerFactory
from tests.support.shop import Shop

FAULTS = {
    "status": "BEFORE UPDATE OF status ON invoices WHEN NEW.status = 'settled'",
    "license": "BEFORE INSERT ON licenses",
    "subscription": "BEFORE INSERT ON subscriptions",
    "redemption": "BEFORE UPDATE ON discount_redemptions",
    "tripwire_audit": "BEFORE INSERT ON audit_log WHEN NEW.action = 'invoice.amount_mismatch'",
    "settled_audit": "BEFORE INSERT ON audit_log WHEN NEW.action = 'invoice.settled'",
    "license_audit": "BEFORE INSERT ON audit_log WHEN NEW.action = 'license.issued'",
    "code_audit": "BEFORE INSERT ON audit_log WHEN NEW.action = 'code.redeemed'",
    "post_settle_task": "BEFORE INSERT ON post_settle_tasks",
}


class WithTasks(FakeDriver):
    post_settle_kinds = ("fake.capture",)


def nothing_written(shop: Shop, invoice_id: str) -> None:
    assert shop.status(invoice_id) == "pending"
    assert shop.invoice_row(invoice_id)["settled_at"] is None
    for table in ("licenses", "subscriptions", "audit_log", "post_settle_tasks"):
        assert shop.scalar(f"SELECT count(*) FROM {table}") == 0, table
    assert shop.scalar("SELECT status FROM discount_redemptions") == "pending"


def everything_written(shop: Shop, invoice_id: str) -> None:
    assert shop.status(invoice_id) == "settled"
    (lic,) = shop.licenses(invoice_id)
    assert shop.scalar("SELECT license_id FROM subscriptions") == lic["id"]
    assert shop.scalar("SELECT count(*) FROM subscriptions") == 1
    assert shop.scalar("SELECT license_id FROM discount_redemptions WHERE status = 'redeemed'") == lic["id"]
    assert sorted(shop.actions(invoice_id)) == ["invoice.amount_mismatch", "invoice.settled"]
    assert [a["action"] for a in shop.audits(lic["id"])] == ["license.issued"]
    assert shop.scalar("SELECT count(*) FROM audit_log WHERE action = 'code.redeemed'") == 1
    assert shop.scalar("SELECT count(*) FROM post_settle_tasks") == 1


@pytest.mark.parametrize("step", sorted(FAULTS))
async def test_settle_is_all_or_nothing_and_completes_on_the_next_pass(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, step: str
) -> None:
    product = shop.product()
    policy = shop.policy(product, is_recurring=True, renewal_period_days=30)
    inv = shop.invoice(product, provider_invoice_id="A", policy_id=policy, amount_sats=10_000)
    shop.discount(inv)
    driver = WithTasks()
    driver.script(
        "A", snapshot("SETTLED", amount_sats=10_001, currency="BTC")
    )  # drift: the tripwire writes too
    shop.execute(f"CREATE TRIGGER fault {FAULTS[step]} BEGIN SELECT RAISE(ABORT, 'injected fault'); END")

    with pytest.raises(ExceptionGroup) as failure:
        await make_runner({"fake": driver}).run_pass()
    assert failure.group_contains(sqlite3.IntegrityError, match="injected fault")
    nothing_written(shop, inv)

    # the failed pass gave its lease back on the way out
    assert shop.invoice_row(inv)["lease_token"] is None
    shop.execute("DROP TRIGGER fault")
    summary = await make_runner({"fake": driver}).run_pass()
    assert summary.counts["settle"] == 1
    everything_written(shop, inv)
    clock.advance(timedelta(hours=1))
    await make_runner({"fake": driver}).run_pass()
    everything_written(shop, inv)  # and never twice


async def test_recovery_is_all_or_nothing(shop: Shop, make_runner: RunnerFactory, clock: Clock) -> None:
    product = shop.product()
    inv = shop.invoice(product, provider_invoice_id="A", status="settled")
    shop.execute(
        "CREATE TRIGGER fault BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
    )
    with pytest.raises(ExceptionGroup):
        await make_runner({"fake": FakeDriver()}).run_pass()
    assert shop.licenses(inv) == [] and shop.invoice_row(inv)["settled_at"] is None
    assert shop.invoice_row(inv)["lease_token"] is None
    shop.execute("DROP TRIGGER fault")
    assert (await make_runner({"fake": FakeDriver()}).run_pass()).counts["recover"] == 1
    assert len(shop.licenses(inv)) == 1
