"""SIGKILL at an arbitrary instant on SQLite (docs/reconcile.md §8, §16): no paid invoice is left without its
license, none gets two, and the dead process's leases are taken over once they expire."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.pg_cluster import planned, reconciler, wait_all, write_config
from tests.support.process import minutes_ago
from tests.support.shop import Shop, create_schema

EXPECTED = {"settle": "settled", "expire": "expired", "invalidate": "invalid", "pending": "pending"}


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [0.0, 0.15, 0.3])
def test_a_process_killed_mid_pass_loses_nothing_and_doubles_nothing(
    tmp_path: Path, kill_after: float
) -> None:
    count = 60
    db = tmp_path / "shop.db"
    create_schema(db)
    shop = Shop(db)
    product = shop.product()
    shop.policy(product, "default")  # what invoices without a policy of their own get
    policy = shop.policy(product, "sub", is_recurring=True, renewal_period_days=30)
    plan = {}
    for i in range(count):
        invoice = shop.invoice(
            product,
            provider_invoice_id=f"P{i}",
            created_at=minutes_ago(5),
            policy_id=policy if i % 5 == 0 else None,
        )
        shop.discount(invoice)
        plan[invoice] = planned(i)
    config = write_config(tmp_path, f"sqlite://{db}", count=count, latency=0.3, lease="3s", fast_fail=True)

    victim = reconciler(config, "--once")
    deadline = time.monotonic() + 30
    while not shop.scalar("SELECT count(*) FROM licenses"):  # the pass is under way
        assert time.monotonic() < deadline and victim.poll() is None, "the victim never settled anything"
        time.sleep(0.01)
    time.sleep(kill_after)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=10)
    unfinished = sum(1 for iid, p in plan.items() if p != "pending" and shop.status(iid) == "pending")
    assert unfinished > 0, "the kill came after the pass ended: nothing was tested"

    time.sleep(3.5)  # the dead process's leases expire
    shop.execute("UPDATE invoices SET next_check_at = NULL WHERE status <> 'settled'")
    ((code, stderr),) = wait_all([reconciler(config, "--once")])
    assert code == 0, stderr[-3000:]

    for row in shop.rows("SELECT id, status, lease_token FROM invoices"):
        assert row["status"] == EXPECTED[plan[row["id"]]]
        assert row["lease_token"] is None
    assert shop.rows("SELECT invoice_id FROM licenses GROUP BY invoice_id HAVING count(*) > 1") == []
    unlicensed = shop.scalar(
        "SELECT count(*) FROM invoices i WHERE status = 'settled'"
        " AND NOT EXISTS (SELECT 1 FROM licenses l WHERE l.invoice_id = i.id)"
    )
    assert unlicensed == 0
    settled = shop.scalar("SELECT count(*) FROM invoices WHERE status = 'settled'")
    assert shop.scalar("SELECT count(*) FROM audit_log WHERE action = 'license.issued'") == settled
    assert shop.scalar("SELECT count(*) FROM audit_log WHERE action = 'invoice.settled'") == settled
    # every settled invoice's redemption is redeemed once, every expired or invalid one's slot given back once
    assert shop.scalar("SELECT count(*) FROM discount_redemptions WHERE status = 'redeemed'") == settled
    given_back = shop.scalar("SELECT count(*) FROM discount_codes WHERE used_count = 0")
    assert given_back == sum(1 for p in plan.values() if p in ("expire", "invalidate"))
    subscriptions = shop.scalar("SELECT count(*) FROM subscriptions")
    assert subscriptions == shop.scalar(
        "SELECT count(*) FROM invoices WHERE status = 'settled' AND policy_id IS NOT NULL"
    )
