"""Post-settle tasks (docs/reconcile.md §15) through the runner: enqueued in the settle transaction, run after
commit."""

from __future__ import annotations

import json
from datetime import timedelta

from reconciler.driver_api import Done, NotApplicable, NotYet, PaymentProfile, ProviderUnavailable
from reconciler.testing import FakeDriver, snapshot
from reconciler.timeutil import format_ts, parse_ts
from tests.conftest import Clock, RunnerFactory
from tests.support.shop import Shop, hours

KIND = "fake.capture"
PROFILE = PaymentProfile("contact-1", "profile-1", "CARD", "2028-01-31T00:00:00.000000Z")


class WithTasks(FakeDriver):
    post_settle_kinds = (KIND,)


def recurring_invoice(shop: Shop, provider: str = "fake") -> str:
    product = shop.product()
    policy = shop.policy(product, is_recurring=True, renewal_period_days=30)
    return shop.invoice(product, provider=provider, provider_invoice_id="A", policy_id=policy)


def task(shop: Shop) -> dict[str, object]:
    (row,) = shop.rows("SELECT * FROM post_settle_tasks")
    return dict(row)


def subscription(shop: Shop) -> dict[str, object]:
    (row,) = shop.rows("SELECT * FROM subscriptions")
    return dict(row)


async def test_profile_captured_after_the_settle(shop: Shop, make_runner: RunnerFactory) -> None:
    inv = recurring_invoice(shop)
    driver = WithTasks()
    driver.script("A", snapshot("SETTLED"))
    driver.post_settle_results.append(Done(PROFILE))
    summary = await make_runner({"fake": driver}).run_pass()
    assert dict(summary.tasks) == {"done": 1}
    (call,) = driver.post_settle_calls
    assert (call.invoice_id, call.kind, call.provider_id, call.provider_invoice_id) == (
        inv,
        KIND,
        "fake",
        "A",
    )
    row = task(shop)
    assert row["status"] == "done" and row["attempts"] == 1
    sub = subscription(shop)
    assert (sub["provider_contact_id"], sub["payment_profile_id"], sub["payment_profile_method"]) == (
        "contact-1",
        "profile-1",
        "CARD",
    )
    assert sub["payment_profile_expires_at"] == PROFILE.expires_at


async def test_profile_appearing_only_on_the_third_pass(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    recurring_invoice(shop)
    driver = WithTasks()
    driver.script("A", snapshot("SETTLED"))
    driver.post_settle_results.extend([NotYet("no profile yet"), NotYet("no profile yet"), Done(PROFILE)])
    runner = make_runner({"fake": driver})
    await runner.run_pass()
    row = task(shop)
    assert row["status"] == "pending" and row["attempts"] == 1 and "not yet" in str(row["last_error"])
    assert parse_ts(str(row["next_attempt_at"])) == clock.now + timedelta(minutes=1)  # backoff step 1
    await runner.run_pass()  # not due yet: nothing runs
    assert len(driver.post_settle_calls) == 1
    clock.advance(timedelta(minutes=1))
    await runner.run_pass()
    assert task(shop)["attempts"] == 2
    assert parse_ts(str(task(shop)["next_attempt_at"])) == clock.now + timedelta(minutes=5)  # step 2
    clock.advance(timedelta(minutes=5))
    await runner.run_pass()
    assert task(shop)["status"] == "done" and task(shop)["attempts"] == 3
    assert subscription(shop)["payment_profile_id"] == "profile-1"


async def test_not_applicable_ends_done_without_audit(shop: Shop, make_runner: RunnerFactory) -> None:
    recurring_invoice(shop)
    driver = WithTasks()
    driver.script("A", snapshot("SETTLED"))
    driver.post_settle_results.append(NotApplicable("paid in bitcoin"))
    await make_runner({"fake": driver}).run_pass()
    assert task(shop)["status"] == "done"
    assert subscription(shop)["payment_profile_id"] is None
    assert shop.audits(action="post_settle.failed") == []


async def test_subscription_that_already_has_a_profile_makes_no_call(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    recurring_invoice(shop)
    driver = WithTasks()
    driver.script("A", snapshot("SETTLED"))
    driver.post_settle_results.append(NotYet())
    await make_runner({"fake": driver}).run_pass()
    # the first pass already ran it once; now pretend the storefront stored a profile and reset the task
    shop.execute("UPDATE subscriptions SET payment_profile_id = 'theirs'")
    shop.execute("UPDATE post_settle_tasks SET status = 'pending', next_attempt_at = NULL")
    calls = len(driver.post_settle_calls)
    await make_runner({"fake": driver}).run_pass()
    assert len(driver.post_settle_calls) == calls
    assert task(shop)["status"] == "done"
    assert subscription(shop)["payment_profile_id"] == "theirs"


async def test_provider_without_tasks_enqueues_nothing(shop: Shop, make_runner: RunnerFactory) -> None:
    recurring_invoice(shop)
    driver = FakeDriver()  # post_settle_kinds = (), like BTCPay
    driver.script("A", snapshot("SETTLED"))
    await make_runner({"fake": driver}).run_pass()
    assert shop.rows("SELECT * FROM post_settle_tasks") == []
    assert driver.post_settle_calls == []


async def test_one_off_policy_enqueues_nothing(shop: Shop, make_runner: RunnerFactory) -> None:
    product = shop.product()
    shop.invoice(product, provider_invoice_id="A", policy_id=shop.policy(product))
    driver = WithTasks()
    driver.script("A", snapshot("SETTLED"))
    await make_runner({"fake": driver}).run_pass()
    assert shop.rows("SELECT * FROM post_settle_tasks") == []


async def test_failed_after_max_attempts_with_an_audit(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    inv = recurring_invoice(shop)
    driver = WithTasks()
    driver.script("A", snapshot("SETTLED"))
    driver.post_settle_results.extend([ProviderUnavailable("503"), NotYet(), NotYet()])
    runner = make_runner({"fake": driver}, post_settle_max_attempts=3)
    for _ in range(3):
        await runner.run_pass()
        clock.advance(hours(2))
    row = task(shop)
    assert row["status"] == "failed" and row["attempts"] == 3
    (audit,) = shop.audits(inv, "post_settle.failed")
    details = json.loads(audit["details"])
    assert details["kind"] == KIND and details["attempts"] == 3 and details["provider_id"] == "fake"
    await runner.run_pass()
    assert len(driver.post_settle_calls) == 3  # a failed task is never run again


async def test_task_survives_a_crash_between_commit_and_run(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    recurring_invoice(shop)
    driver = WithTasks()
    driver.script("A", snapshot("SETTLED"))
    driver.post_settle_results.append(Done(PROFILE))

    class Crash(Exception):
        pass

    runner = make_runner({"fake": driver})

    async def crash(**_: object) -> list[object]:
        raise Crash  # the process dies right after the settle committed

    real = runner.store.due_tasks
    runner.store.due_tasks = crash  # type: ignore[method-assign,assignment]
    try:
        await runner.run_pass()
    except Crash:
        pass
    finally:
        runner.store.due_tasks = real  # type: ignore[method-assign]
    assert task(shop)["status"] == "pending" and task(shop)["attempts"] == 0
    assert driver.post_settle_calls == []
    fresh = make_runner({"fake": driver})
    await fresh.run_pass()
    await fresh.run_pass()
    assert len(driver.post_settle_calls) == 1
    assert task(shop)["status"] == "done"


async def test_a_claimed_attempt_runs_once_across_instances(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    recurring_invoice(shop)
    driver = WithTasks()
    driver.script("A", snapshot("SETTLED"))
    driver.post_settle_results.append(NotYet())
    await make_runner({"fake": driver}, post_settle_max_attempts=5).run_pass()
    # another instance read the task before this one's attempt was recorded: its claim must fail
    shop.execute("UPDATE post_settle_tasks SET next_attempt_at = ?", (format_ts(clock.now),))
    stale = (await make_runner({"fake": driver}).store.due_tasks(now=clock.now, batch_size=10))[0]
    assert await make_runner({"fake": driver}).store.claim_task(
        stale, now=clock.now, lease_until=clock.now + timedelta(minutes=5)
    )
    assert not await make_runner({"fake": driver}).store.claim_task(
        stale, now=clock.now, lease_until=clock.now + timedelta(minutes=5)
    )
