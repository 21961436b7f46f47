"""docs/reconcile.md, docs/statuses.md, docs/licenses.md through the runner, with FakeDriver and a real SQLite
file."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from reconciler.driver_api import (
    BadProviderResponse,
    CommonSettings,
    InvoiceNotFound,
    ProviderAuthError,
    ProviderStatus,
    ProviderUnavailable,
    Snapshot,
)
from reconciler.testing import FakeDriver, snapshot
from reconciler.timeutil import format_ts, parse_ts
from tests.conftest import Clock, RunnerFactory
from tests.support import license_payload
from tests.support.shop import T0, Shop, hours, new_id

SETTLED = snapshot("SETTLED", amount_sats=10_000, paid_sats=10_000, currency="BTC")


def expired(additional: str | None = None, **flags: Any) -> Snapshot:  # Any: Snapshot has str fields too
    return Snapshot(ProviderStatus.EXPIRED, "Expired", additional, "BTC", 10_000, None, **flags)


async def run(make_runner: RunnerFactory, driver: FakeDriver, **settings: object) -> dict[str, int]:
    summary = await make_runner({"fake": driver}, **settings).run_pass()
    return dict(summary.counts)


def no_lease_held(shop: Shop) -> bool:
    return bool(shop.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL") == 0)


# -- providers -------------------------------------------------------------------------------------------------


async def test_null_provider_uses_default_provider(shop: Shop, make_runner: RunnerFactory) -> None:
    inv = shop.invoice(shop.product(), provider=None, provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", SETTLED)
    counts = await run(make_runner, driver, default_provider="fake")
    assert counts == {"settle": 1}
    assert shop.status(inv) == "settled"
    # the subscription/provider bookkeeping uses the resolved id
    assert json.loads(shop.audits(inv, "invoice.settled")[0]["details"])["provider_id"] == "fake"


async def test_null_provider_without_default_is_skipped_with_one_warning_per_pass(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, log_lines: list[str]
) -> None:
    product = shop.product()
    inv = shop.invoice(product, provider=None)
    shop.invoice(product, provider=None, created_at=T0 + timedelta(minutes=1))
    driver = FakeDriver()
    counts = await run(make_runner, driver)
    assert counts == {"skipped": 2}
    assert driver.calls == []
    # issue 10: no longer silent; one line per pass names the first invoice and the setting to fix
    (line,) = log_lines
    assert line.startswith("WARNING invoices without a payment_provider_id are skipped")
    assert inv in line and "default_provider" in line
    row = shop.invoice_row(inv)
    assert row["status"] == "pending" and row["last_checked_at"] is None
    assert parse_ts(row["next_check_at"]) == clock.now + timedelta(seconds=60)
    assert no_lease_held(shop)


async def test_unconfigured_provider_skipped_with_one_warning_per_pass(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, log_lines: list[str]
) -> None:
    product = shop.product()
    ids = [shop.invoice(product, provider="gone") for _ in range(3)]
    counts = await run(make_runner, FakeDriver())
    assert counts == {"skipped": 3}
    assert len([line for line in log_lines if "'gone'" in line]) == 1
    for inv in ids:
        assert shop.status(inv) == "pending"
        assert parse_ts(shop.invoice_row(inv)["next_check_at"]) > clock.now
        assert shop.audits(inv) == []
    clock.advance(timedelta(minutes=2))
    await run(make_runner, FakeDriver())
    assert len([line for line in log_lines if "'gone'" in line]) == 2  # once per pass


# -- mapping, no-op, schedule ---------------------------------------------------------------------------------


async def test_pending_answer_is_a_noop_but_the_schedule(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A", created_at=clock.now - timedelta(minutes=10))
    driver = FakeDriver()
    driver.script("A", snapshot("PENDING", raw="Processing"))
    counts = await run(make_runner, driver)
    assert counts == {"no_change": 1}
    row = shop.invoice_row(inv)
    assert row["status"] == "pending"
    assert row["updated_at"] == row["created_at"]  # unchanged
    assert row["last_provider_status"] == "Processing"
    assert row["last_checked_at"] == format_ts(clock.now)
    assert row["check_attempts"] == 1
    # under 1 h old: a 1 minute step, ±10 %
    step = parse_ts(row["next_check_at"]) - clock.now
    assert timedelta(seconds=54) <= step <= timedelta(seconds=66)
    assert shop.audits(inv) == []
    assert no_lease_held(shop)


@pytest.mark.parametrize(
    ("age", "low", "high"),
    [(hours(0.5), 54, 66), (hours(3), 270, 330), (hours(12), 810, 990), (hours(30), 3240, 3960)],
)
async def test_schedule_grows_with_age(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, age: timedelta, low: int, high: int
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A", created_at=clock.now - age)
    driver = FakeDriver()
    driver.script("A", snapshot("PENDING"))
    await run(make_runner, driver)
    step = (parse_ts(shop.invoice_row(inv)["next_check_at"]) - clock.now).total_seconds()
    assert low <= step <= high


async def test_rows_are_not_claimed_twice_in_a_pass_and_pass_terminates(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    ids = [shop.invoice(product, provider_invoice_id=f"P{i}") for i in range(25)]
    driver = FakeDriver()
    driver.script_many([f"P{i}" for i in range(25)], snapshot("PENDING"))
    counts = await run(make_runner, driver, batch_size=4)
    assert counts == {"no_change": 25}
    assert sorted(driver.calls) == sorted(f"P{i}" for i in range(25))
    for inv in ids:
        assert parse_ts(shop.invoice_row(inv)["next_check_at"]) > clock.now


async def test_not_due_and_too_old_invoices_are_not_checked(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    shop.invoice(product, provider_invoice_id="OLD", created_at=clock.now - hours(73))
    later = shop.invoice(product, provider_invoice_id="LATER")
    shop.execute(
        "UPDATE invoices SET next_check_at = ? WHERE id = ?", (format_ts(clock.now + hours(1)), later)
    )
    driver = FakeDriver()
    driver.script_many(["OLD", "LATER"], SETTLED)
    assert await run(make_runner, driver) == {}
    assert driver.calls == []


async def test_oldest_due_first(shop: Shop, make_runner: RunnerFactory, clock: Clock) -> None:
    product = shop.product()
    a = shop.invoice(product, provider_invoice_id="A", created_at=clock.now - hours(1))
    b = shop.invoice(product, provider_invoice_id="B", created_at=clock.now - hours(2))
    c = shop.invoice(product, provider_invoice_id="C", created_at=clock.now - hours(3))
    shop.execute("UPDATE invoices SET next_check_at = ? WHERE id = ?", (format_ts(clock.now - hours(1)), c))
    driver = FakeDriver()
    driver.script_many(["A", "B", "C"], snapshot("PENDING"))
    await make_runner({"fake": driver}, batch_size=1).run_pass()
    # never-checked rows (NULL next_check_at) first, oldest created first; then by next_check_at
    assert driver.calls == ["B", "A", "C"]
    assert {a, b, c}


# -- settle ------------------------------------------------------------------------------------------------------


async def test_settle_writes_everything_in_one_go(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, signing_key: object
) -> None:
    product = shop.product()
    policy = shop.policy(product, duration_seconds=86400 * 365, entitlements=["pro", "sync"], max_machines=3)
    inv = shop.invoice(product, provider_invoice_id="A", policy_id=policy)
    code = shop.discount(inv, used_count=5)
    driver = FakeDriver()
    driver.script("A", SETTLED)
    assert await run(make_runner, driver) == {"settle": 1}
    row = shop.invoice_row(inv)
    assert row["status"] == "settled" and row["settled_at"] == format_ts(clock.now)
    (lic,) = shop.licenses(inv)
    assert lic["policy_id"] == policy and lic["max_machines"] == 3 and lic["status"] == "active"
    assert json.loads(lic["entitlements"]) == ["pro", "sync"]
    assert lic["expires_at"] == format_ts(clock.now + timedelta(days=365))
    payload = license_payload.decode_payload(_payload(lic["license_key"]))
    assert payload.product_id == product and payload.license_id == lic["id"]
    assert payload.entitlements == ("pro", "sync")
    assert shop.actions(inv) == ["invoice.settled"]
    assert [a["action"] for a in shop.audits(lic["id"])] == ["license.issued"]
    assert [a["action"] for a in shop.audits(code)] == ["code.redeemed"]
    redemption = shop.rows("SELECT * FROM discount_redemptions WHERE invoice_id = ?", (inv,))[0]
    assert redemption["status"] == "redeemed" and redemption["license_id"] == lic["id"]
    assert shop.scalar("SELECT used_count FROM discount_codes WHERE id = ?", (code,)) == 5
    assert shop.scalar("SELECT count(*) FROM subscriptions") == 0
    assert no_lease_held(shop)


def _payload(key: str) -> bytes:
    import base64

    part = key.split("-")[1]
    return base64.b32decode(part + "=" * (-len(part) % 8))


async def test_expired_or_invalid_invoice_marked_settled_by_merchant(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    product = shop.product()
    a = shop.invoice(product, provider_invoice_id="A", status="expired")
    b = shop.invoice(product, provider_invoice_id="B", status="invalid")
    driver = FakeDriver()
    driver.script_many(
        ["A", "B"], Snapshot(ProviderStatus.SETTLED, "Settled", "Marked", manually_marked=True)
    )
    assert await run(make_runner, driver) == {"settle": 2}
    assert shop.status(a) == shop.status(b) == "settled"
    assert len(shop.licenses(a)) == len(shop.licenses(b)) == 1


async def test_policy_fallbacks(shop: Shop, make_runner: RunnerFactory) -> None:
    product = shop.product()
    shop.policy(product, "first", duration_seconds=100, created_at=T0)
    default = shop.policy(product, "default", duration_seconds=200, created_at=T0 + hours(1))
    inactive = shop.policy(product, "legacy", duration_seconds=300, active=False)
    with_default = shop.invoice(product, provider_invoice_id="A")
    with_own = shop.invoice(product, provider_invoice_id="B", policy_id=inactive)
    bare_product = shop.product("bare")
    bare = shop.invoice(bare_product, provider_invoice_id="C")
    driver = FakeDriver()
    driver.script_many(["A", "B", "C"], SETTLED)
    await run(make_runner, driver)
    assert shop.licenses(with_default)[0]["policy_id"] == default
    assert shop.licenses(with_own)[0]["policy_id"] == inactive
    (lic,) = shop.licenses(bare)
    assert lic["policy_id"] is None and lic["expires_at"] is None and lic["max_machines"] == 1


async def test_recurring_policy_without_trial(shop: Shop, make_runner: RunnerFactory, clock: Clock) -> None:
    product = shop.product()
    policy = shop.policy(product, is_recurring=True, renewal_period_days=30, duration_seconds=86400 * 35)
    inv = shop.invoice(
        product, provider_invoice_id="A", policy_id=policy, listed_currency="USD", listed_value=1500
    )
    driver = FakeDriver()
    driver.script("A", SETTLED)
    await run(make_runner, driver)
    (lic,) = shop.licenses(inv)
    assert lic["is_trial"] == 0 and lic["expires_at"] == format_ts(clock.now + timedelta(days=35))
    (sub,) = shop.rows("SELECT * FROM subscriptions")
    assert sub["license_id"] == lic["id"] and sub["status"] == "active"
    assert sub["period_days"] == 30 and sub["first_invoice_id"] == inv
    assert sub["listed_currency"] == "USD" and sub["listed_value"] == 1500
    assert sub["next_renewal_at"] == format_ts(clock.now + timedelta(days=30))
    assert sub["payment_provider_id"] == "fake"


async def test_recurring_policy_with_trial(shop: Shop, make_runner: RunnerFactory, clock: Clock) -> None:
    product = shop.product()
    policy = shop.policy(
        product, is_recurring=True, renewal_period_days=0, trial_days=14, duration_seconds=99
    )
    inv = shop.invoice(product, provider_invoice_id="A", policy_id=policy, amount_sats=21_000)
    driver = FakeDriver()
    driver.script("A", snapshot("SETTLED", amount_sats=21_000))
    await run(make_runner, driver)
    (lic,) = shop.licenses(inv)
    assert lic["is_trial"] == 1 and lic["expires_at"] == format_ts(clock.now + timedelta(days=14))
    assert license_payload.decode_payload(_payload(lic["license_key"])).trial
    (sub,) = shop.rows("SELECT * FROM subscriptions")
    assert sub["period_days"] == 1  # max(renewal_period_days, 1)
    assert sub["next_renewal_at"] == format_ts(clock.now + timedelta(days=14))
    assert sub["listed_currency"] == "SAT" and sub["listed_value"] == 21_000


async def test_license_already_inserted_by_the_webhook_handler(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    policy = shop.policy(product, is_recurring=True, renewal_period_days=30)
    inv = shop.invoice(product, provider_invoice_id="A", policy_id=policy)
    code = shop.discount(inv)
    theirs = new_id()
    shop.execute(
        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at) VALUES (?, ?, ?, 'K', ?)",
        (theirs, product, inv, format_ts(clock.now)),
    )
    driver = FakeDriver()
    driver.script("A", SETTLED)
    assert await run(make_runner, driver) == {"settle": 1}
    assert [row["id"] for row in shop.licenses(inv)] == [theirs]
    assert shop.audits(action="license.issued") == []
    assert shop.actions(inv) == ["invoice.settled"]
    assert shop.scalar("SELECT license_id FROM discount_redemptions WHERE invoice_id = ?", (inv,)) == theirs
    assert [a["action"] for a in shop.audits(code)] == ["code.redeemed"]
    assert shop.scalar("SELECT license_id FROM subscriptions") == theirs


async def test_renewal_invoice_renews_the_subscription(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    policy = shop.policy(product, is_recurring=True, renewal_period_days=30)
    first = shop.invoice(product, provider_invoice_id="FIRST", policy_id=policy, status="settled")
    lic = new_id()
    shop.execute(
        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at) VALUES (?, ?, ?, 'K', ?)",
        (lic, product, first, format_ts(T0)),
    )
    sub = new_id()
    shop.execute(
        "INSERT INTO subscriptions (id, license_id, product_id, status, started_at, created_at, updated_at)"
        " VALUES (?, ?, ?, 'past_due', ?, ?, ?)",
        (sub, lic, product, format_ts(T0), format_ts(T0), format_ts(T0)),
    )
    renewal = shop.invoice(product, provider_invoice_id="R", policy_id=policy, subscription_id=sub)
    driver = FakeDriver()
    driver.script("R", SETTLED)
    assert await run(make_runner, driver) == {"renew": 1}
    assert shop.status(renewal) == "settled"
    assert shop.licenses(renewal) == []
    assert shop.scalar("SELECT status FROM subscriptions WHERE id = ?", (sub,)) == "active"
    assert shop.scalar("SELECT count(*) FROM subscriptions") == 1
    assert shop.actions(renewal) == ["invoice.settled", "subscription.renewed"]
    assert shop.scalar("SELECT count(*) FROM post_settle_tasks") == 0


# -- recovery ----------------------------------------------------------------------------------------------------


async def test_settled_without_license_is_recovered_without_asking(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    inv = shop.invoice(product, provider_invoice_id="A", status="settled")
    shop.execute("UPDATE invoices SET settled_at = ? WHERE id = ?", (format_ts(T0), inv))
    no_stamp = shop.invoice(product, provider_invoice_id="B", status="settled")
    renewal = shop.invoice(product, provider_invoice_id="C", status="settled", subscription_id=new_id())
    driver = FakeDriver()
    assert await run(make_runner, driver) == {"recover": 2}
    assert driver.calls == []
    assert shop.invoice_row(inv)["settled_at"] == format_ts(T0)  # kept
    assert shop.invoice_row(no_stamp)["settled_at"] == format_ts(clock.now)
    (lic,) = shop.licenses(inv)
    (issued,) = shop.audits(lic["id"])
    assert issued["action"] == "license.issued" and json.loads(issued["details"])["recovered"] is True
    assert shop.audits(inv) == []  # no second invoice.settled
    assert shop.licenses(renewal) == []
    assert await run(make_runner, driver) == {}  # nothing left to recover


async def test_more_settled_invoices_without_a_license_than_a_batch_are_all_recovered_in_one_pass(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    """The pass looks them up as it begins, a batch at a time: when the first look was cut at batch_size, it
    looks again once nothing else is left, so none waits for the next pass."""
    product = shop.product()
    settled = [shop.invoice(product, provider_invoice_id=f"S{i}", status="settled") for i in range(7)]
    pending = [shop.invoice(product, provider_invoice_id=f"P{i}") for i in range(3)]
    driver = FakeDriver()
    for i in range(3):
        driver.script(f"P{i}", snapshot("PENDING", raw="New"))
    assert await run(make_runner, driver, batch_size=2) == {"recover": 7, "no_change": 3}
    assert all(len(shop.licenses(inv)) == 1 for inv in settled)
    assert all(shop.status(inv) == "pending" for inv in pending)
    assert no_lease_held(shop)


# -- expire / invalidate and the redemption slot ------------------------------------------------------------------


async def test_expired_gives_the_discount_slot_back_exactly_once(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    code = shop.discount(inv, used_count=3)
    driver = FakeDriver()
    driver.script("A", expired("None"))
    assert await run(make_runner, driver) == {"expire": 1}
    assert shop.status(inv) == "expired"
    assert shop.scalar("SELECT status FROM discount_redemptions WHERE invoice_id = ?", (inv,)) == "cancelled"
    assert shop.scalar("SELECT used_count FROM discount_codes WHERE id = ?", (code,)) == 2
    (audit,) = shop.audits(inv)
    details = json.loads(audit["details"])
    assert audit["action"] == "invoice.expired" and details["redemption_cancelled"] is True
    assert details["raw_status"] == "Expired" and details["provider_id"] == "fake"
    # re-checked later (expired invoices stay candidates): nothing more is given back
    clock.advance(hours(1))
    assert await run(make_runner, driver) == {"no_change": 1}
    assert shop.scalar("SELECT used_count FROM discount_codes WHERE id = ?", (code,)) == 2
    assert shop.actions(inv) == ["invoice.expired"]


async def test_slot_never_goes_below_zero(shop: Shop, make_runner: RunnerFactory) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    code = shop.discount(inv, used_count=0)
    driver = FakeDriver()
    driver.script("A", snapshot("INVALID"))
    assert await run(make_runner, driver) == {"invalidate": 1}
    assert shop.status(inv) == "invalid"
    assert shop.scalar("SELECT used_count FROM discount_codes WHERE id = ?", (code,)) == 0


async def test_underpaid_then_expired(shop: Shop, make_runner: RunnerFactory) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", expired("PaidPartial", partially_paid=True))
    assert await run(make_runner, driver) == {"expire": 1}
    assert shop.actions(inv) == ["invoice.expired", "invoice.underpaid"]


# -- paid late -------------------------------------------------------------------------------------------------------


async def test_paid_late_flag_keeps_it_expired_and_audits_once(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    was_pending = shop.invoice(product, provider_invoice_id="A")
    was_expired = shop.invoice(product, provider_invoice_id="B", status="expired")
    shop.execute("UPDATE invoices SET last_provider_status = 'Expired' WHERE id = ?", (was_expired,))
    driver = FakeDriver()
    driver.script_many(["A", "B"], expired("PaidLate", paid_late=True))
    assert await run(make_runner, driver) == {"paid_late_flag": 2}
    assert shop.status(was_pending) == shop.status(was_expired) == "expired"
    assert shop.actions(was_pending) == ["invoice.expired", "invoice.paid_late"]
    assert shop.actions(was_expired) == ["invoice.paid_late"]
    assert shop.licenses(was_pending) == shop.licenses(was_expired) == []
    clock.advance(hours(2))
    await run(make_runner, driver)
    assert shop.actions(was_expired) == ["invoice.paid_late"]  # once


async def test_paid_late_settle_issues_the_license(shop: Shop, make_runner: RunnerFactory) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A", status="expired")
    code = shop.discount(inv, used_count=1)
    shop.execute("UPDATE discount_redemptions SET status = 'cancelled' WHERE invoice_id = ?", (inv,))
    driver = FakeDriver()
    driver.script("A", expired("PaidLate", paid_late=True))
    assert await run(make_runner, driver, paid_late="settle") == {"settle": 1}
    assert shop.status(inv) == "settled"
    assert len(shop.licenses(inv)) == 1
    assert shop.actions(inv) == ["invoice.paid_late", "invoice.settled"]
    paid_late = json.loads(shop.audits(inv, "invoice.paid_late")[0]["details"])
    assert paid_late["redemption_cancelled"] is True
    assert shop.scalar("SELECT status FROM discount_redemptions WHERE invoice_id = ?", (inv,)) == "cancelled"
    assert shop.scalar("SELECT used_count FROM discount_codes WHERE id = ?", (code,)) == 1


# -- tripwire ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "drift"),
    [
        (snapshot("SETTLED", amount_sats=10_000, paid_sats=10_000, currency="BTC"), False),
        (snapshot("SETTLED", amount_sats=10_000, paid_sats=None, currency="BTC"), False),
        (snapshot("SETTLED", amount_sats=12_000, paid_sats=12_000, currency="BTC"), True),
        (snapshot("SETTLED", amount_sats=10_000, paid_sats=9_990, currency="SATS"), True),
        (snapshot("SETTLED", amount_sats=None, currency="USD"), False),  # fiat: no opinion
        (snapshot("SETTLED", amount_sats=None, currency="BTC"), False),  # unparseable: no opinion
        (snapshot("SETTLED", amount_sats=0, currency="BTC"), False),
    ],
)
async def test_tripwire(
    shop: Shop, make_runner: RunnerFactory, log_lines: list[str], answer: Snapshot, drift: bool
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A", amount_sats=10_000)
    driver = FakeDriver()
    driver.script("A", answer)
    await run(make_runner, driver)
    assert shop.status(inv) == "settled" and len(shop.licenses(inv)) == 1  # advisory: settles anyway
    mismatches = shop.audits(inv, "invoice.amount_mismatch")
    assert len(mismatches) == int(drift)
    assert any("amount_mismatch" in line for line in log_lines) == drift
    if drift:
        details = json.loads(mismatches[0]["details"])
        assert details["expected_amount_sats"] == 10_000
        assert details["provider_amount_sats"] == answer.amount_sats
        assert details["provider_paid_sats"] == answer.paid_sats
        assert details["currency"] == answer.currency
        assert details["provider_invoice_id"] == "A"


# -- observations audited once -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "action", "kind", "observation"),
    [
        (InvoiceNotFound("gone"), "invoice.provider_not_found", "not_found", "!not_found"),
        (BadProviderResponse("garbage"), "invoice.bad_provider_response", "bad_response", "!bad_response"),
        (snapshot("UNKNOWN", raw="Weird"), "invoice.unknown_status", "no_change", "Weird"),
        (snapshot("REFUNDED", raw="Refunded"), "invoice.refunded", "no_change", "Refunded"),
    ],
)
async def test_observations_are_audited_once(
    shop: Shop,
    make_runner: RunnerFactory,
    clock: Clock,
    outcome: Snapshot | Exception,
    action: str,
    kind: str,
    observation: str,
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", outcome, outcome, snapshot("PENDING", raw="New"), outcome)
    for expected_audits in (1, 1, 1, 2):  # same again: no audit; changes in between: audited again
        assert await run(make_runner, driver) in ({kind: 1}, {"no_change": 1})
        assert len(shop.audits(inv, action)) == expected_audits
        clock.advance(hours(1))
    assert shop.status(inv) == "pending"
    assert shop.invoice_row(inv)["last_provider_status"] == observation


# -- fencing -----------------------------------------------------------------------------------------------------------


class Racing(FakeDriver):
    """Plays another writer: runs `meanwhile` while the provider call is in flight."""

    def __init__(self, meanwhile: object) -> None:
        super().__init__()
        self.meanwhile = meanwhile

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        # in a thread, as another process would: a blocking write on this loop would stall our own commit
        await asyncio.to_thread(self.meanwhile)  # type: ignore[arg-type]
        return await super().fetch(provider_invoice_id)


async def test_transition_refused_when_another_writer_changed_the_row_first(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    inv = shop.invoice(product, provider_invoice_id="A")
    theirs = new_id()

    def webhook() -> None:
        shop.execute(
            "UPDATE invoices SET status = 'settled', settled_at = ? WHERE id = ?", (format_ts(T0), inv)
        )
        shop.execute(
            "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at) VALUES (?, ?, ?, 'K', ?)",
            (theirs, product, inv, format_ts(T0)),
        )

    driver = Racing(webhook)
    driver.script("A", SETTLED)
    assert await run(make_runner, driver) == {"fenced": 1}
    assert [row["id"] for row in shop.licenses(inv)] == [theirs]
    assert shop.audits() == []
    assert no_lease_held(shop)
    assert shop.invoice_row(inv)["settled_at"] == format_ts(T0)


async def test_write_from_a_taken_over_lease_is_refused(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = Racing(
        lambda: shop.execute("UPDATE invoices SET lease_token = 'someone-else' WHERE id = ?", (inv,))
    )
    driver.script("A", expired())
    assert await run(make_runner, driver) == {"fenced": 1}
    row = shop.invoice_row(inv)
    assert row["status"] == "pending" and row["lease_token"] == "someone-else"
    assert shop.audits() == []


# -- provider failures -------------------------------------------------------------------------------------------------


async def test_transient_errors_are_retried(shop: Shop, make_runner: RunnerFactory) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", ProviderUnavailable("503"), ProviderUnavailable("503"), SETTLED)
    assert await run(make_runner, driver) == {"settle": 1}
    assert driver.calls == ["A", "A", "A"]
    assert shop.status(inv) == "settled"


async def test_still_failing_is_rescheduled_untouched(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", ProviderUnavailable("503"))
    summary = await make_runner({"fake": driver}).run_pass()
    assert dict(summary.counts) == {"provider_error": 1}
    assert len(driver.calls) == 3  # retry_attempts
    assert summary.is_degraded  # a provider that answered nothing at all
    row = shop.invoice_row(inv)
    assert row["status"] == "pending" and row["last_provider_status"] is None
    assert parse_ts(row["next_check_at"]) > clock.now
    assert shop.audits() == []


async def test_one_transient_failure_among_answers_is_not_degraded(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    product = shop.product()
    shop.invoice(product, provider_invoice_id="A")
    shop.invoice(product, provider_invoice_id="B")
    driver = FakeDriver()
    driver.script("A", ProviderUnavailable("503"))
    driver.script("B", snapshot("PENDING"))
    summary = await make_runner({"fake": driver}).run_pass()
    assert not summary.is_degraded


async def test_retry_after_longer_than_max_delay_ends_the_provider_for_the_pass(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    ids = [shop.invoice(product, provider_invoice_id=f"P{i}") for i in range(5)]
    driver = FakeDriver()
    driver.script_many([f"P{i}" for i in range(5)], ProviderUnavailable("429", retry_after=600))
    counts = await run(make_runner, driver)
    assert counts == {"provider_error": 5}
    assert len(driver.calls) == 1  # the others were not asked
    for inv in ids:
        assert parse_ts(shop.invoice_row(inv)["next_check_at"]) >= clock.now + timedelta(seconds=600)


async def test_retry_after_is_honoured_and_pauses_the_provider(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    shop.invoice(shop.product(), provider_invoice_id="A")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    driver = FakeDriver()
    driver.script("A", ProviderUnavailable("429", retry_after=0.5), SETTLED)
    assert await run(make_runner, driver, sleep=sleep) == {"settle": 1}
    assert any(0.4 <= s <= 0.5 for s in slept)


async def test_auth_failure_opens_the_circuit(
    shop: Shop, make_runner: RunnerFactory, log_lines: list[str]
) -> None:
    product = shop.product()
    for i in range(4):
        shop.invoice(product, provider_invoice_id=f"P{i}")
    driver = FakeDriver()
    driver.script_many([f"P{i}" for i in range(4)], ProviderAuthError("401"))
    summary = await make_runner(
        {"fake": driver}, common=CommonSettings(driver="fake", max_concurrency=1)
    ).run_pass()
    assert dict(summary.counts) == {"provider_error": 4}
    assert len(driver.calls) == 1
    assert summary.degraded == {"fake": "authentication failed"}
    assert len([line for line in log_lines if "credentials refused" in line]) == 1


async def test_unexpected_driver_exception_is_isolated(
    shop: Shop, make_runner: RunnerFactory, log_lines: list[str]
) -> None:
    product = shop.product()
    bad = [shop.invoice(product, provider_invoice_id=f"BAD{i}") for i in range(2)]
    good = shop.invoice(product, provider_invoice_id="GOOD")
    driver = FakeDriver()
    driver.script_many(["BAD0", "BAD1"], KeyError("driver bug"))
    driver.script("GOOD", SETTLED)
    summary = await make_runner({"fake": driver}).run_pass()
    assert dict(summary.counts) == {"provider_error": 2, "settle": 1}
    assert shop.status(good) == "settled"
    assert all(shop.status(inv) == "pending" and shop.audits(inv) == [] for inv in bad)
    assert "fake" in summary.degraded
    assert len([line for line in log_lines if "unexpected exception" in line]) == 1
    assert no_lease_held(shop)


async def test_concurrency_is_bounded_per_provider(shop: Shop, make_runner: RunnerFactory) -> None:
    product = shop.product()
    for i in range(12):
        shop.invoice(product, provider_invoice_id=f"P{i}")
    in_flight = peak = 0

    class Counting(FakeDriver):
        async def fetch(self, provider_invoice_id: str) -> Snapshot:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return await super().fetch(provider_invoice_id)

    driver = Counting()
    driver.script_many([f"P{i}" for i in range(12)], snapshot("PENDING"))
    await make_runner({"fake": driver}, common=CommonSettings(driver="fake", max_concurrency=3)).run_pass()
    assert peak == 3


# -- licenses that cannot be encoded ---------------------------------------------------------------------------------------


async def test_unencodable_license_settles_nothing_and_is_audited_once(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    policy = shop.policy(product, entitlements=[f"e{i}" for i in range(256)])
    inv = shop.invoice(product, provider_invoice_id="A", policy_id=policy)
    driver = FakeDriver()
    driver.script("A", SETTLED)
    assert await run(make_runner, driver) == {"issue_failed": 1}
    assert shop.status(inv) == "pending" and shop.licenses(inv) == []
    assert shop.actions(inv) == ["license.issue_failed"]
    assert parse_ts(shop.invoice_row(inv)["next_check_at"]) > clock.now
    clock.advance(hours(1))
    assert await run(make_runner, driver) == {"issue_failed": 1}
    assert shop.actions(inv) == ["license.issue_failed"]


# -- dry run -------------------------------------------------------------------------------------------------------------------


async def test_dry_run_reads_and_writes_nothing(
    shop: Shop, make_runner: RunnerFactory, db_path: object
) -> None:
    product = shop.product()
    a = shop.invoice(product, provider_invoice_id="A")
    shop.invoice(product, provider_invoice_id="B")
    shop.discount(a)
    driver = FakeDriver()
    driver.script("A", SETTLED)
    driver.script("B", expired())
    before = shop.rows("SELECT * FROM invoices ORDER BY id")
    lines: list[dict[str, object]] = []
    summary = await make_runner({"fake": driver}).dry_run(lines.append)
    assert dict(summary.counts) == {"settle": 1, "expire": 1}
    assert [dict(r) for r in shop.rows("SELECT * FROM invoices ORDER BY id")] == [dict(r) for r in before]
    assert shop.audits() == [] and shop.rows("SELECT * FROM licenses") == []
    assert {line["decision"] for line in lines} == {"settle", "expire"}
    assert set(lines[0]) == {
        "invoice_id",
        "provider_id",
        "status",
        "raw_status",
        "raw_additional_status",
        "decision",
        "evidence",
    }


async def test_a_store_failure_ends_the_pass_as_store_unavailable(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    from reconciler import errors

    product = shop.product()
    for i in range(3):
        shop.invoice(product, provider_invoice_id=f"P{i}")
    driver = FakeDriver()
    driver.script_many([f"P{i}" for i in range(3)], snapshot("PENDING"))
    runner = make_runner({"fake": driver})

    async def unavailable(*_: object, **__: object) -> bool:
        raise errors.StoreUnavailable("database is locked")

    real = runner.store.record_bookkeeping  # where the pass writes its no-change checks
    runner.store.record_bookkeeping = unavailable  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(errors.StoreUnavailable):  # itself, not wrapped in an ExceptionGroup
            await runner.run_pass()
    finally:
        runner.store.record_bookkeeping = real  # type: ignore[method-assign]
