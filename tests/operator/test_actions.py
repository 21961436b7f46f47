"""An operator's actions end to end on both engines (SQLite file, PostgreSQL schema): each through the code a
pass runs, audited with the actor, refused with a clear message (and nothing changed) when it does not apply."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.driver_api import CommonSettings, Done, NotYet, PaymentProfile, ProviderStatus
from reconciler.operator.actions import REASON_MAX, ActionRefused, Actor, Operator
from reconciler.runner import Provider, Runner, RunnerSettings
from reconciler.testing import FakeDriver, snapshot
from reconciler.timeutil import format_ts
from tests.conftest import PG_URL, Clock, pg_connection
from tests.store.backends import Backend, SqliteRaw, postgres_backend, sqlite_backend
from tests.support.shop import T0, new_id

ALICE = Actor.cli("alice")
PAID_LATE = snapshot(ProviderStatus.EXPIRED, "Expired", raw_additional_status="PaidLate", paid_late=True)
UNDERPAID = snapshot(
    ProviderStatus.EXPIRED, "Expired", raw_additional_status="PaidPartial", partially_paid=True, paid_sats=600
)
PROFILE = PaymentProfile("contact-1", "profile-1", "CARD", "2028-01-31T00:00:00.000000Z")
HOSTILE = ["x' OR '1'='1", "'; DROP TABLE invoices; --", '"); DELETE FROM licenses; --', "%_\\"]


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        async for found in sqlite_backend(tmp_path):
            yield found
    else:
        async with pg_connection() as (conn, schema):
            async for found in postgres_backend(conn, schema, PG_URL):
                yield found


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver("fake")


async def _no_sleep(_: float) -> None:
    return None


def providers(driver: FakeDriver) -> dict[str, Provider]:
    return {"fake": Provider("fake", driver, CommonSettings(driver="fake", retry_attempts=1))}


@pytest.fixture
def operator(backend: Backend, driver: FakeDriver, clock: Clock, signing_key: Ed25519PrivateKey) -> Operator:
    return Operator(
        backend.store,
        providers(driver),
        RunnerSettings(),
        signing_key=signing_key,
        clock=clock,
        owner="op:1:abc",
        rng=random.Random(3),
        sleep=_no_sleep,
    )


def runner(
    backend: Backend, driver: FakeDriver, clock: Clock, key: Ed25519PrivateKey, **settings: Any
) -> Runner:
    return Runner(
        backend.store,
        providers(driver),
        RunnerSettings(**settings),
        signing_key=key,
        clock=clock,
        owner=f"pass:{new_id()[:6]}",
        rng=random.Random(5),
        sleep=_no_sleep,
    )


async def seed(b: Backend, *, status: str = "pending", provider: str | None = "fake", **extra: Any) -> str:
    product = new_id()
    await b.raw.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES (:id, :slug, 'P', :t)",
        {"id": product, "slug": f"p-{product[:8]}", "t": format_ts(T0)},
    )
    iid = new_id()
    row = {
        "id": iid,
        "provider": provider,
        "pid": f"P-{iid[:8]}",
        "product": product,
        "status": status,
        "amount": 1000,
        "created": format_ts(T0),
    } | extra
    await b.raw.execute(
        "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, status, amount_sats,"
        " created_at, updated_at) VALUES (:id, :provider, :pid, :product, :status, :amount, :created, :created)",
        row,
    )
    return iid


async def pid_of(b: Backend, invoice_id: str) -> str:
    return str(await b.scalar("SELECT provider_invoice_id FROM invoices WHERE id = :id", {"id": invoice_id}))


async def licenses(b: Backend, invoice_id: str) -> list[dict[str, Any]]:
    return await b.raw.rows("SELECT * FROM licenses WHERE invoice_id = :id", {"id": invoice_id})


async def audits(b: Backend, target_id: str, action: str | None = None) -> list[dict[str, Any]]:
    rows = await b.raw.rows(
        "SELECT actor, action, details FROM audit_log WHERE target_id = :id ORDER BY occurred_at, id",
        {"id": target_id},
    )
    return [
        r | {"details": json.loads(r["details"])} for r in rows if action is None or r["action"] == action
    ]


async def snapshot_db(b: Backend) -> dict[str, list[dict[str, Any]]]:
    """Every row an action may change, to prove a refused one changed nothing."""
    tables = ("invoices", "licenses", "audit_log", "post_settle_tasks", "provider_controls", "review_items")
    return {t: await b.raw.rows(f"SELECT * FROM {t} ORDER BY 1") for t in tables}


# -- re-check --------------------------------------------------------------------------------------------------
async def test_recheck_settles_a_pending_invoice_now_whatever_its_schedule(
    backend: Backend, operator: Operator, driver: FakeDriver, clock: Clock
) -> None:
    iid = await seed(backend)
    # not due for a day, and older than max_age: a pass would not look at it
    await backend.raw.execute(
        "UPDATE invoices SET next_check_at = :t, created_at = :c WHERE id = :id",
        {
            "t": format_ts(clock() + timedelta(days=1)),
            "c": format_ts(clock() - timedelta(days=30)),
            "id": iid,
        },
    )
    driver.script(await pid_of(backend, iid), snapshot(ProviderStatus.SETTLED, amount_sats=1000))
    done = await operator.recheck(iid, ALICE)
    assert done.decision == "settle" and done.status == "settled"
    assert done.license_id is not None
    assert [r["id"] for r in await licenses(backend, iid)] == [done.license_id]
    requested = await audits(backend, iid, "invoice.recheck_requested")
    assert [(r["actor"], r["details"]["actor"]) for r in requested] == [("cli:alice", "cli:alice")]
    # the lease is given back
    assert await backend.scalar("SELECT lease_token FROM invoices WHERE id = :id", {"id": iid}) is None


async def test_recheck_records_what_a_pass_records(
    backend: Backend, operator: Operator, driver: FakeDriver
) -> None:
    iid = await seed(backend)
    driver.script(await pid_of(backend, iid), snapshot(ProviderStatus.EXPIRED))
    done = await operator.recheck(iid, ALICE)
    assert (done.decision, done.status, done.license_id) == ("expire", "expired", None)
    assert [r["action"] for r in await audits(backend, iid)] == [
        "invoice.recheck_requested",
        "invoice.expired",
    ]
    assert await backend.scalar("SELECT check_attempts FROM invoices WHERE id = :id", {"id": iid}) == 1


async def test_recheck_refuses_a_settled_licensed_invoice_and_a_leased_one(
    backend: Backend, operator: Operator, driver: FakeDriver, clock: Clock
) -> None:
    iid = await seed(backend)
    driver.script(await pid_of(backend, iid), snapshot(ProviderStatus.SETTLED, amount_sats=1000))
    await operator.recheck(iid, ALICE)
    before = await snapshot_db(backend)
    with pytest.raises(ActionRefused) as refused:
        await operator.recheck(iid, ALICE)
    assert refused.value.code == "not-applicable" and "settled with its license" in refused.value.message

    other = await seed(backend)
    await backend.raw.execute(
        "UPDATE invoices SET lease_owner = 'other', lease_token = 't', lease_until = :u WHERE id = :id",
        {"u": format_ts(clock() + timedelta(minutes=1)), "id": other},
    )
    before = await snapshot_db(backend)
    with pytest.raises(ActionRefused) as refused:
        await operator.recheck(other, ALICE)
    assert refused.value.code == "conflict"
    assert await snapshot_db(backend) == before
    assert driver.calls == [await pid_of(backend, iid)]  # asked once, for the first invoice only


# -- manual settle ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer", [PAID_LATE, UNDERPAID], ids=["paid-late", "underpaid"])
@pytest.mark.parametrize("status", ["expired", "invalid"])
async def test_settle_flagged_issues_one_license_audited_as_manual(
    backend: Backend, operator: Operator, driver: FakeDriver, answer: Any, status: str
) -> None:
    iid = await seed(backend, status=status)
    driver.script(await pid_of(backend, iid), answer)
    settled = await operator.settle_flagged(iid, "  customer paid by bank transfer; ticket #42 ", ALICE)
    (lic,) = await licenses(backend, iid)
    assert settled.license_id == lic["id"]
    assert await backend.scalar("SELECT status FROM invoices WHERE id = :id", {"id": iid}) == "settled"
    (row,) = await audits(backend, iid, "invoice.settled")
    assert row["actor"] == "cli:alice"
    details = row["details"]
    assert details["manual"] is True and details["actor"] == "cli:alice"
    assert details["reason"] == "customer paid by bank transfer; ticket #42"
    assert details["paid_late"] is answer.paid_late and details["underpaid"] is answer.partially_paid
    issued = await audits(backend, lic["id"], "license.issued")
    assert [r["actor"] for r in issued] == ["cli:alice"]

    # a second settle is refused, and changes nothing
    before = await snapshot_db(backend)
    with pytest.raises(ActionRefused) as refused:
        await operator.settle_flagged(iid, "again", ALICE)
    assert refused.value.code == "not-applicable"
    assert "already settled" in refused.value.message and lic["id"] in refused.value.message
    assert await snapshot_db(backend) == before


@pytest.mark.parametrize(
    "answer",
    [
        snapshot(ProviderStatus.EXPIRED, "Expired"),
        snapshot(ProviderStatus.SETTLED, amount_sats=1000),
        snapshot(ProviderStatus.PENDING, "New"),
    ],
    ids=["expired-unpaid", "settled", "new"],
)
async def test_settle_flagged_refuses_unless_the_provider_confirms_a_late_or_short_payment(
    backend: Backend, operator: Operator, driver: FakeDriver, answer: Any
) -> None:
    iid = await seed(backend, status="expired")
    driver.script(await pid_of(backend, iid), answer)
    before = await snapshot_db(backend)
    with pytest.raises(ActionRefused) as refused:
        await operator.settle_flagged(iid, "the customer says so", ALICE)
    assert (
        refused.value.code == "not-applicable" and "neither paid late nor underpaid" in refused.value.message
    )
    assert await snapshot_db(backend) == before


async def test_settle_flagged_refuses_a_pending_invoice_and_an_unknown_one(
    backend: Backend, operator: Operator, driver: FakeDriver
) -> None:
    iid = await seed(backend)
    before = await snapshot_db(backend)
    with pytest.raises(ActionRefused) as refused:
        await operator.settle_flagged(iid, "why not", ALICE)
    assert refused.value.code == "not-applicable" and "pending" in refused.value.message
    with pytest.raises(ActionRefused) as refused:
        await operator.settle_flagged(new_id(), "why not", ALICE)
    assert refused.value.code == "not-found"
    assert await snapshot_db(backend) == before
    assert driver.calls == []


async def test_a_manual_settle_racing_a_pass_and_a_webhook_issues_exactly_one_license(
    backend: Backend, driver: FakeDriver, clock: Clock, signing_key: Ed25519PrivateKey
) -> None:
    """The paid-late settle, a pass that would settle it too (`paid_late = "settle"`) and a storefront webhook
    handler settling it directly, all at once, many times: one license per invoice, whoever wins."""
    driver.latency = 0.002
    outcomes: dict[str, int] = {}
    for n in range(12):
        iid = await seed(backend, status="expired")
        driver.script(await pid_of(backend, iid), PAID_LATE)
        operator = Operator(
            backend.store,
            providers(driver),
            RunnerSettings(),
            signing_key=signing_key,
            clock=clock,
            sleep=_no_sleep,
        )
        a_pass = runner(backend, driver, clock, signing_key, paid_late="settle")

        # who starts first turns with n: each of the three gets ahead in some rounds
        head = [0.0, 0.004, 0.008]
        d_manual, d_pass, d_webhook = head[n % 3], head[(n + 1) % 3], head[(n + 2) % 3] + 0.001 * (n % 2)

        async def webhook(iid: str = iid, delay: float = d_webhook) -> None:
            await asyncio.sleep(delay)
            await settle_directly(backend, iid, format_ts(clock()))

        async def pass_(a_pass: Runner = a_pass, delay: float = d_pass) -> None:
            await asyncio.sleep(delay)
            await a_pass.run_pass()

        async def manual(iid: str = iid, operator: Operator = operator, delay: float = d_manual) -> str:
            await asyncio.sleep(delay)
            try:
                await operator.settle_flagged(iid, "accepted late payment", ALICE)
            except ActionRefused as exc:
                return exc.code
            return "settled"

        results = await asyncio.gather(manual(), pass_(), webhook())
        outcomes[str(results[0])] = outcomes.get(str(results[0]), 0) + 1
        assert len(await licenses(backend, iid)) == 1, results
        assert await backend.scalar("SELECT status FROM invoices WHERE id = :id", {"id": iid}) == "settled"
        assert str(results[0]) in ("settled", "conflict", "not-applicable")
    assert sum(outcomes.values()) == 12, outcomes


WEBHOOK = [
    "UPDATE invoices SET status = 'settled', settled_at = :t, updated_at = :t WHERE id = :id AND status <> 'settled'",
    "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at, metadata)"
    " SELECT :lic, product_id, id, 'WEBHOOK-KEY', :t, '{}' FROM invoices WHERE id = :id"
    " ON CONFLICT (invoice_id) DO NOTHING",
]


async def settle_directly(b: Backend, invoice_id: str, now: str) -> None:
    """What a storefront's webhook handler does on a "paid" event: its own transaction, no lease, its own
    license unless the invoice has one (tests/acceptance/storefront_webhook.py)."""
    params = {"id": invoice_id, "t": now, "lic": new_id()}
    if isinstance(b.raw, SqliteRaw):  # plain sqlite3 blocks: off the event loop, like another process

        def write(path: Path = b.raw.path) -> None:
            with sqlite3.connect(path, timeout=30) as db:
                for sql in WEBHOOK:
                    db.execute(sql, params)

        await asyncio.to_thread(write)
    else:
        for sql in WEBHOOK:
            await b.raw.execute(sql, params)


# -- dismiss ---------------------------------------------------------------------------------------------------
async def open_item(b: Backend, invoice_id: str, kind: str = "invoice.refunded") -> str:
    item = new_id()
    await b.raw.execute(
        "INSERT INTO review_items (id, invoice_id, kind, opened_at, audit_id) VALUES (:id, :i, :k, :t, 'a')",
        {"id": item, "i": invoice_id, "k": kind, "t": format_ts(T0)},
    )
    return item


async def test_dismiss_closes_an_open_item_once(backend: Backend, operator: Operator) -> None:
    iid = await seed(backend)
    item = await open_item(backend, iid)
    await operator.dismiss(item, "refund confirmed with the customer", ALICE)
    (row,) = await backend.raw.rows("SELECT * FROM review_items WHERE id = :id", {"id": item})
    assert (row["status"], row["closed_by"], row["close_reason"]) == (
        "dismissed",
        "cli:alice",
        "refund confirmed with the customer",
    )
    (dismissed,) = await audits(backend, iid, "review.dismissed")
    assert dismissed["actor"] == "cli:alice" and dismissed["details"]["item_id"] == item
    before = await snapshot_db(backend)
    with pytest.raises(ActionRefused) as refused:
        await operator.dismiss(item, "again", ALICE)
    assert refused.value.code == "not-applicable" and "dismissed already" in refused.value.message
    assert await snapshot_db(backend) == before


# -- retry a post-settle task ----------------------------------------------------------------------------------
async def test_retry_task_requeues_a_failed_task_only(
    backend: Backend, operator: Operator, clock: Clock
) -> None:
    iid = await seed(backend, status="settled")
    await backend.raw.execute(
        "INSERT INTO post_settle_tasks (invoice_id, kind, provider_id, status, attempts, next_attempt_at,"
        " last_error, created_at, updated_at) VALUES (:i, 'capture', 'fake', 'failed', 8, NULL, 'boom', :t, :t)",
        {"i": iid, "t": format_ts(T0)},
    )
    await operator.retry_task(iid, "capture", ALICE)
    (task,) = await backend.raw.rows("SELECT * FROM post_settle_tasks WHERE invoice_id = :i", {"i": iid})
    assert (task["status"], task["attempts"], task["next_attempt_at"]) == ("pending", 0, format_ts(clock()))
    assert [r["actor"] for r in await audits(backend, iid, "post_settle.retry_requested")] == ["cli:alice"]
    before = await snapshot_db(backend)
    with pytest.raises(ActionRefused) as refused:
        await operator.retry_task(iid, "capture", ALICE)
    assert refused.value.code == "not-applicable" and "pending" in refused.value.message
    with pytest.raises(ActionRefused) as refused:
        await operator.retry_task(iid, "other", ALICE)
    assert refused.value.code == "not-found"
    assert await snapshot_db(backend) == before


# -- pause / resume --------------------------------------------------------------------------------------------
async def test_pause_and_resume(backend: Backend, operator: Operator) -> None:
    await operator.pause_provider("fake", ALICE, reason="provider maintenance")
    (row,) = await backend.raw.rows("SELECT * FROM provider_controls")
    assert (row["provider_id"], row["paused"], row["changed_by"], row["reason"]) == (
        "fake",
        1,
        "cli:alice",
        "provider maintenance",
    )
    with pytest.raises(ActionRefused) as refused:
        await operator.pause_provider("fake", ALICE)
    assert refused.value.code == "not-applicable"
    await operator.resume_provider("fake", ALICE)
    assert await backend.scalar("SELECT paused FROM provider_controls") == 0
    with pytest.raises(ActionRefused) as refused:
        await operator.resume_provider("fake", ALICE)
    assert refused.value.code == "not-applicable"
    with pytest.raises(ActionRefused) as refused:
        await operator.pause_provider("nope", ALICE)
    assert refused.value.code == "not-found"
    actions = [r["action"] for r in await audits(backend, "fake")]
    assert actions == ["provider.paused", "provider.resumed"]


# -- bad input -------------------------------------------------------------------------------------------------
async def test_bad_input_is_refused_and_changes_nothing(
    backend: Backend, operator: Operator, driver: FakeDriver
) -> None:
    iid = await seed(backend, status="expired")
    driver.script(await pid_of(backend, iid), PAID_LATE)
    item = await open_item(backend, iid)
    before = await snapshot_db(backend)

    async def refused(call: Any) -> ActionRefused:
        with pytest.raises(ActionRefused) as caught:
            await call
        return caught.value

    for reason in ("", "   ", "x" * (REASON_MAX + 1), "x" * 10_000_000, "two\nlines", "nul\x00"):
        assert (await refused(operator.settle_flagged(iid, reason, ALICE))).code == "invalid"
        assert (await refused(operator.dismiss(item, reason, ALICE))).code == "invalid"
    for bad in HOSTILE:
        assert (await refused(operator.recheck(bad, ALICE))).code == "not-found"
        assert (await refused(operator.settle_flagged(bad, "ok", ALICE))).code == "not-found"
        assert (await refused(operator.dismiss(bad, "ok", ALICE))).code == "not-found"
        assert (await refused(operator.retry_task(bad, "capture", ALICE))).code == "not-found"
        assert (await refused(operator.retry_task(iid, bad, ALICE))).code == "not-found"
        assert (await refused(operator.pause_provider(bad, ALICE))).code == "not-found"
        assert (await refused(operator.resume_provider(bad, ALICE))).code == "not-found"
        assert (await refused(operator.decide_now(bad))).code == "not-found"
    big = "x" * 10_000_000
    for call in (
        operator.recheck(big, ALICE),
        operator.decide_now("a\x00b"),
        operator.pause_provider(big, ALICE),
    ):
        error = await refused(call)
        assert error.code == "invalid" and len(error.message) < 200
    assert await snapshot_db(backend) == before
    assert driver.calls == []


# -- what two racing instances do after an action --------------------------------------------------------------
class WithTasks(FakeDriver):
    post_settle_kinds = ("fake.capture",)


async def recurring(b: Backend) -> str:
    iid = await seed(b)
    product = await b.scalar("SELECT product_id FROM invoices WHERE id = :id", {"id": iid})
    policy = new_id()
    await b.raw.execute(
        "INSERT INTO policies (id, product_id, slug, duration_seconds, is_trial, is_recurring, trial_days,"
        " renewal_period_days, grace_seconds, max_machines, entitlements, active, created_at)"
        " VALUES (:id, :p, 'default', 0, 0, 1, 0, 30, 0, 1, '[]', 1, :t)",
        {"id": policy, "p": product, "t": format_ts(T0)},
    )
    await b.raw.execute("UPDATE invoices SET policy_id = :p WHERE id = :id", {"p": policy, "id": iid})
    return iid


async def test_a_retried_task_runs_once_with_two_instances(
    backend: Backend, clock: Clock, signing_key: Ed25519PrivateKey
) -> None:
    driver = WithTasks("fake")
    iid = await recurring(backend)
    driver.script(await pid_of(backend, iid), snapshot(ProviderStatus.SETTLED, amount_sats=1000))
    driver.post_settle_results.append(NotYet("no profile yet"))
    await runner(backend, driver, clock, signing_key, post_settle_max_attempts=1).run_pass()
    status = await backend.scalar("SELECT status FROM post_settle_tasks WHERE invoice_id = :i", {"i": iid})
    assert status == "failed" and len(driver.post_settle_calls) == 1

    operator = Operator(
        backend.store,
        providers(driver),
        RunnerSettings(),
        signing_key=signing_key,
        clock=clock,
        sleep=_no_sleep,
    )
    await operator.retry_task(iid, "fake.capture", ALICE)
    driver.post_settle_results.extend([Done(PROFILE), Done(PROFILE)])
    two = [runner(backend, driver, clock, signing_key) for _ in range(2)]
    await asyncio.gather(*(r.run_pass() for r in two))
    assert len(driver.post_settle_calls) == 2  # the failed attempt, and the retry once
    (task,) = await backend.raw.rows("SELECT * FROM post_settle_tasks WHERE invoice_id = :i", {"i": iid})
    assert (task["status"], task["attempts"]) == ("done", 1)


async def test_a_paused_provider_gets_no_request_from_two_racing_instances(
    backend: Backend, operator: Operator, driver: FakeDriver, clock: Clock, signing_key: Ed25519PrivateKey
) -> None:
    ids = [await seed(backend) for _ in range(6)]
    # an invoice without a provider id is the default provider's: paused with it
    ids.append(await seed(backend, provider=None))
    for iid in ids:
        driver.script(await pid_of(backend, iid), snapshot(ProviderStatus.SETTLED, amount_sats=1000))
    before = await backend.raw.rows(
        "SELECT id, next_check_at, check_attempts, lease_token FROM invoices ORDER BY id"
    )
    await operator.pause_provider("fake", ALICE, reason="maintenance")
    two = [runner(backend, driver, clock, signing_key, default_provider="fake") for _ in range(2)]
    summaries = await asyncio.gather(*(r.run_pass() for r in two))
    assert driver.calls == []
    assert [s.claimed for s in summaries] == [0, 0]
    after = await backend.raw.rows(
        "SELECT id, next_check_at, check_attempts, lease_token FROM invoices ORDER BY id"
    )
    assert after == before  # not fetched, and neither schedule nor attempts bumped
    # a re-check of one of them is refused while paused, and asks nobody
    with pytest.raises(ActionRefused) as refused:
        await operator.recheck(ids[0], ALICE)
    assert refused.value.code == "not-applicable" and "paused" in refused.value.message
    assert (await operator.decide_now(ids[0]))["decision"] == "paused"
    assert driver.calls == []

    await operator.resume_provider("fake", ALICE)
    await asyncio.gather(*(r.run_pass() for r in two))
    assert sorted(driver.calls) == sorted([await pid_of(backend, iid) for iid in ids])  # each once
    settled = await backend.scalar("SELECT count(*) FROM invoices WHERE status = 'settled'")
    assert settled == len(ids)


async def test_decide_now_writes_nothing(backend: Backend, operator: Operator, driver: FakeDriver) -> None:
    iid = await seed(backend)
    driver.script(await pid_of(backend, iid), snapshot(ProviderStatus.SETTLED, amount_sats=1000))
    before = await snapshot_db(backend)
    line = await operator.decide_now(iid)
    assert (line["invoice_id"], line["decision"], line["evidence"]["new_status"]) == (
        iid,
        "settle",
        "settled",
    )
    assert await snapshot_db(backend) == before


@pytest.mark.parametrize(
    ("answer", "kind"),
    [(PAID_LATE, "invoice.paid_late"), (UNDERPAID, "invoice.underpaid")],
    ids=["late", "short"],
)
async def test_a_manual_settle_resolves_its_review_item_as_the_operator(
    backend: Backend, operator: Operator, driver: FakeDriver, answer: Any, kind: str
) -> None:
    iid = await seed(backend, status="expired")
    item = await open_item(backend, iid, kind)
    driver.script(await pid_of(backend, iid), answer)

    await operator.settle_flagged(iid, "paid by bank transfer", ALICE)

    (row,) = await backend.raw.rows("SELECT * FROM review_items WHERE id = :id", {"id": item})
    assert (row["status"], row["closed_by"]) == ("resolved", "cli:alice")
    assert row["close_reason"]
