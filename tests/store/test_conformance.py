"""The store contract, one suite over both engines (SQLite file, PostgreSQL schema)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler import errors
from reconciler.driver_api import PaymentProfile
from reconciler.models import AuditRecord, Invoice, InvoiceStatus, LicenseDraft, SubscriptionDraft
from reconciler.store import base
from reconciler.timeutil import format_ts
from tests.conftest import PG_URL, pg_connection
from tests.store.backends import Backend, postgres_backend, sqlite_backend
from tests.support.shop import T0, new_id

NOW = T0 + timedelta(hours=1)
LEASE = timedelta(minutes=5)
AGE = timedelta(hours=72)


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        async for found in sqlite_backend(tmp_path):
            yield found
    else:
        async with pg_connection() as (conn, schema):
            async for found in postgres_backend(conn, schema, PG_URL):
                yield found


async def seed(b: Backend, n: int = 1, **invoice: Any) -> tuple[str, list[str]]:
    product = new_id()
    await b.raw.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES (:id, :slug, 'P', :t)",
        {"id": product, "slug": f"p-{product[:8]}", "t": format_ts(T0)},
    )
    ids = []
    for i in range(n):
        iid = new_id()
        row = {
            "id": iid,
            "provider": "fake",
            "pid": f"P{i}-{iid[:6]}",
            "product": product,
            "status": "pending",
            "amount": 1000,
            "created": format_ts(T0 + timedelta(seconds=i)),
            "subscription_id": None,
        } | invoice
        await b.raw.execute(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, status, amount_sats,"
            " subscription_id, created_at, updated_at)"
            " VALUES (:id, :provider, :pid, :product, :status, :amount, :subscription_id, :created, :created)",
            row,
        )
        ids.append(iid)
    return product, ids


async def claim(b: Backend, owner: str = "me", batch: int = 10, now: Any = NOW) -> list[Invoice]:
    found = await b.store.claim(
        owner=owner, pass_start=now, now=now, lease=LEASE, max_age=AGE, batch_size=batch
    )
    invoices = [row for row in found if isinstance(row, Invoice)]
    assert len(invoices) == len(found), found  # the suite seeds readable rows only
    return invoices


async def test_schema_is_ours(backend: Backend) -> None:
    assert await backend.store.schema_version() == base.SCHEMA_VERSION
    assert await backend.store.init_schema() is False


async def test_claim_leases_due_candidates_oldest_first(backend: Backend) -> None:
    _, ids = await seed(backend, 5)
    await backend.raw.execute(
        "UPDATE invoices SET next_check_at = :t WHERE id = :id",
        {"t": format_ts(NOW - timedelta(minutes=1)), "id": ids[0]},
    )
    await backend.raw.execute(
        "UPDATE invoices SET next_check_at = :t WHERE id = :id",
        {"t": format_ts(NOW + timedelta(minutes=1)), "id": ids[1]},
    )
    first = await claim(backend, batch=2)
    assert [i.id for i in first] == ids[2:4]  # never-checked first, by created_at
    assert all(i.lease_token for i in first)
    second = await claim(backend, owner="other", batch=10)
    assert sorted(i.id for i in second) == sorted([ids[4], ids[0]])  # not the leased, not the not-yet-due
    assert await claim(backend) == []
    leased = await backend.scalar("SELECT count(*) FROM invoices WHERE lease_owner IS NOT NULL")
    assert leased == 4


async def test_expired_leases_can_be_claimed_by_anyone(backend: Backend) -> None:
    await seed(backend, 1)
    (mine,) = await claim(backend)
    assert await claim(backend, owner="other", now=NOW + LEASE - timedelta(seconds=1)) == []
    (theirs,) = await claim(backend, owner="other", now=NOW + LEASE + timedelta(seconds=1))
    assert theirs.id == mine.id and theirs.lease_token != mine.lease_token
    # the old holder is fenced out
    assert not await backend.store.record_check(mine, now=NOW, next_check_at=NOW, observation="New")
    assert await backend.store.record_check(theirs, now=NOW, next_check_at=NOW, observation="New")


async def test_the_lease_on_an_invoice_is_its_holders_until_it_ends(backend: Backend) -> None:
    _, (iid,) = await seed(backend, 1)
    assert await backend.store.invoice_lease(iid, now=NOW) is None
    (mine,) = await claim(backend)

    held = await backend.store.invoice_lease(iid, now=NOW + LEASE)
    assert held == base.InvoiceLease(str(mine.lease_token), NOW + LEASE)
    assert await backend.store.invoice_lease(iid, now=NOW + LEASE + timedelta(seconds=1)) is None
    assert await backend.store.invoice_lease("no-such-invoice", now=NOW) is None
    assert await backend.store.release(mine, next_check_at=None)
    assert await backend.store.invoice_lease(iid, now=NOW) is None


async def test_claim_respects_max_age_and_candidate_kinds(backend: Backend) -> None:
    await seed(backend, 1, created=format_ts(NOW - AGE - timedelta(seconds=1)))
    _, (settled,) = await seed(backend, 1, status="settled")
    _, (renewal,) = await seed(backend, 1, status="settled", subscription_id=new_id())
    _, (expired,) = await seed(backend, 1, status="expired")
    claimed = {i.id: i for i in await claim(backend)}
    assert set(claimed) == {settled, expired}
    assert claimed[settled].has_license is False
    assert renewal not in claimed


async def test_release_clears_the_lease_only(backend: Backend) -> None:
    await seed(backend, 1)
    (inv,) = await claim(backend)
    assert await backend.store.release(inv, next_check_at=None)
    rows = await backend.raw.rows("SELECT lease_token, next_check_at, check_attempts FROM invoices")
    assert rows == [{"lease_token": None, "next_check_at": None, "check_attempts": 0}]


async def test_transition_cancels_the_redemption_once(backend: Backend) -> None:
    _, (iid,) = await seed(backend, 1)
    code = new_id()
    await backend.raw.execute(
        "INSERT INTO discount_codes (id, code, used_count) VALUES (:id, 'C', 2)", {"id": code}
    )
    await backend.raw.execute(
        "INSERT INTO discount_redemptions (id, code_id, invoice_id, created_at, updated_at)"
        " VALUES (:id, :code, :inv, :t, :t)",
        {"id": new_id(), "code": code, "inv": iid, "t": format_ts(T0)},
    )
    (inv,) = await claim(backend)
    audit = AuditRecord("invoice.expired", "invoice", iid, {"provider_id": "fake"})
    outcome = await backend.store.record_transition(
        inv,
        new_status=InvoiceStatus.EXPIRED,
        now=NOW,
        next_check_at=NOW,
        observation="Expired",
        audits=[audit],
    )
    assert outcome is True
    assert await backend.scalar("SELECT used_count FROM discount_codes") == 1
    assert await backend.scalar("SELECT status FROM discount_redemptions") == "cancelled"
    details = json.loads(await backend.scalar("SELECT details FROM audit_log"))
    assert details == {"provider_id": "fake", "redemption_cancelled": True}
    # the same (stale) claim cannot write twice
    again = await backend.store.record_transition(
        inv,
        new_status=InvoiceStatus.EXPIRED,
        now=NOW,
        next_check_at=NOW,
        observation="Expired",
        audits=[audit],
    )
    assert again is False
    assert await backend.scalar("SELECT used_count FROM discount_codes") == 1


def _settlement(product: str, *, license_id: str | None = None, recurring: bool = False) -> base.Settlement:
    lid = license_id or new_id()
    return base.Settlement(
        now=NOW,
        next_check_at=NOW + timedelta(minutes=1),
        observation="Settled",
        provider_id="fake",
        audits=(),
        license=LicenseDraft(lid, product, None, "LIC1-X-Y", NOW, None, 0, 1, ("a",), False, None),
        subscription=SubscriptionDraft(new_id(), None, product, NOW, 30, "SAT", 1000, "fake", NOW)
        if recurring
        else None,
        post_settle_kinds=("fake.capture",) if recurring else (),
    )


async def test_settlement_is_exactly_once_per_invoice(backend: Backend) -> None:
    product, _ = await seed(backend, 1)
    (inv,) = await claim(backend)
    draft = _settlement(product, recurring=True)
    outcome = await backend.store.record_settlement(inv, draft)
    assert draft.license is not None and outcome == base.SettleOutcome(license_id=draft.license.id)
    assert await backend.store.record_settlement(inv, _settlement(product, recurring=True)) is None  # fenced
    issued = json.loads(await backend.scalar("SELECT details FROM audit_log WHERE action = 'license.issued'"))
    assert issued["subscription_created"] is True
    assert await backend.scalar("SELECT count(*) FROM licenses") == 1
    assert await backend.scalar("SELECT count(*) FROM subscriptions") == 1
    assert await backend.scalar("SELECT count(*) FROM post_settle_tasks") == 1
    row = (await backend.raw.rows("SELECT status, settled_at, lease_token FROM invoices"))[0]
    assert row == {"status": "settled", "settled_at": format_ts(NOW), "lease_token": None}


async def test_settlements_committed_together_are_each_whole(backend: Backend) -> None:
    """A group of settle transactions (docs/reconcile.md §8): each item's own outcome, a fenced one writes
    nothing of its own, the others are settled and licensed once."""
    product, _ = await seed(backend, 3)
    first, second, third = sorted(await claim(backend), key=lambda i: i.id)
    drafts = [_settlement(product, recurring=True) for _ in range(3)]
    fenced = replace(second, lease_token="someone-else")

    outcomes = await backend.store.record_settlements(
        [(first, drafts[0]), (fenced, drafts[1]), (third, drafts[2])]
    )

    assert [type(o).__name__ for o in outcomes] == ["SettleOutcome", "NoneType", "SettleOutcome"]
    assert outcomes[0] == base.SettleOutcome(license_id=drafts[0].license.id)  # type: ignore[union-attr]
    assert outcomes[2] == base.SettleOutcome(license_id=drafts[2].license.id)  # type: ignore[union-attr]
    statuses = await backend.raw.rows("SELECT id, status FROM invoices ORDER BY id")
    assert [r["status"] for r in statuses] == ["settled", "pending", "settled"]
    assert await backend.scalar("SELECT count(*) FROM licenses") == 2
    assert await backend.scalar("SELECT count(*) FROM subscriptions") == 2
    assert await backend.scalar("SELECT count(*) FROM post_settle_tasks") == 2
    assert await backend.scalar("SELECT count(*) FROM licenses WHERE invoice_id = :i", {"i": second.id}) == 0


async def test_a_group_settles_two_rows_of_one_payment_as_one_and_redeems_each_code(backend: Backend) -> None:
    """A group holding both rows of one payment (the provider's and one without a provider id) settles the
    one `payment_winner` names and reports the other as its duplicate, as two transactions one after the
    other would; each settled invoice's pending redemption is redeemed for its own license."""
    product, (mine,) = await seed(backend, 1, pid="SAME")
    _, (orphan,) = await seed(backend, 1, pid="SAME", provider=None)
    _, (other,) = await seed(backend, 1)
    code = new_id()
    await backend.raw.execute(
        "INSERT INTO discount_codes (id, code, used_count) VALUES (:id, 'C', 2)", {"id": code}
    )
    for invoice_id in (mine, other):
        await backend.raw.execute(
            "INSERT INTO discount_redemptions (id, code_id, invoice_id, created_at, updated_at)"
            " VALUES (:id, :code, :inv, :t, :t)",
            {"id": new_id(), "code": code, "inv": invoice_id, "t": format_ts(T0)},
        )
    by_id = {i.id: i for i in await claim(backend)}
    key = base.PaymentKey("fake", "SAME", include_null=True)
    winner = min(mine, orphan)  # same created_at: the smaller id
    loser = orphan if winner == mine else mine
    drafts = {
        i: replace(_settlement(product), payment=key if i != other else None) for i in (mine, orphan, other)
    }

    outcomes = await backend.store.record_settlements([(by_id[i], drafts[i]) for i in (mine, orphan, other)])

    by_invoice = dict(zip((mine, orphan, other), outcomes, strict=True))
    assert by_invoice[loser] == base.DuplicateFound(winner)
    for settled in (winner, other):
        license_id = drafts[settled].license.id  # type: ignore[union-attr]
        assert by_invoice[settled] == base.SettleOutcome(license_id=license_id)
    statuses = {r["id"]: r["status"] for r in await backend.raw.rows("SELECT id, status FROM invoices")}
    assert statuses == {winner: "settled", loser: "pending", other: "settled"}
    redemptions = {
        r["invoice_id"]: (r["status"], r["license_id"])
        for r in await backend.raw.rows("SELECT invoice_id, status, license_id FROM discount_redemptions")
    }
    expected_mine = ("redeemed", drafts[mine].license.id) if winner == mine else ("pending", None)  # type: ignore[union-attr]
    assert redemptions == {mine: expected_mine, other: ("redeemed", drafts[other].license.id)}  # type: ignore[union-attr]
    redeemed = await backend.raw.rows("SELECT target_id FROM audit_log WHERE action = 'code.redeemed'")
    assert sorted(r["target_id"] for r in redeemed) == [code] * (2 if winner == mine else 1)


async def test_a_group_of_settlements_that_fails_writes_none_of_them(backend: Backend) -> None:
    """All or nothing for the group: the second settlement's unique violation takes the first one's
    writes with it (the runner then tries each alone)."""
    product, ids = await seed(backend, 3)
    taken = new_id()
    await backend.raw.execute(
        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at) VALUES (:id, :p, :i, 'K', :t)",
        {"id": taken, "p": product, "i": ids[2], "t": format_ts(T0)},
    )
    by_id = {i.id: i for i in await claim(backend)}
    group = [(by_id[ids[0]], _settlement(product)), (by_id[ids[1]], _settlement(product, license_id=taken))]

    with pytest.raises(Exception, match=r"(?i)unique"):
        await backend.store.record_settlements(group)

    assert await backend.scalar("SELECT count(*) FROM invoices WHERE status = 'settled'") == 0
    assert await backend.scalar("SELECT count(*) FROM licenses") == 1
    assert await backend.scalar("SELECT count(*) FROM audit_log") == 0


async def test_settlement_carries_on_with_an_existing_license(backend: Backend) -> None:
    product, (iid,) = await seed(backend, 1)
    theirs = new_id()
    await backend.raw.execute(
        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at) VALUES (:id, :p, :i, 'K', :t)",
        {"id": theirs, "p": product, "i": iid, "t": format_ts(T0)},
    )
    (inv,) = await claim(backend)  # status pending: still a candidate
    outcome = await backend.store.record_settlement(inv, _settlement(product, recurring=True))
    assert outcome == base.SettleOutcome(license_id=theirs)
    assert await backend.scalar("SELECT license_id FROM subscriptions") == theirs
    assert await backend.scalar("SELECT count(*) FROM audit_log WHERE action = 'license.issued'") == 0


async def test_a_unique_violation_the_sql_does_not_absorb_is_a_bug_on_both_engines(backend: Backend) -> None:
    """Every "someone else did it first" is absorbed in SQL (ON CONFLICT, fenced compare-and-set). A unique
    violation that still escapes is a bug of ours: on both engines it stays the driver's own error, never a
    store error that could pass for "unavailable, try again", and nothing of the transaction is written."""
    product, (other, mine) = await seed(backend, 2)
    taken = new_id()
    await backend.raw.execute(
        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at) VALUES (:id, :p, :i, 'K', :t)",
        {"id": taken, "p": product, "i": other, "t": format_ts(T0)},
    )
    (inv,) = [i for i in await claim(backend) if i.id == mine]
    if backend.name == "sqlite":
        expected: type[Exception] = sqlite3.IntegrityError
    else:
        import asyncpg

        expected = asyncpg.UniqueViolationError

    with pytest.raises(expected) as caught:
        await backend.store.record_settlement(inv, _settlement(product, license_id=taken))

    assert not isinstance(caught.value, errors.ReconcilerError)
    assert await backend.scalar("SELECT status FROM invoices WHERE id = :id", {"id": mine}) == "pending"
    assert await backend.scalar("SELECT count(*) FROM licenses") == 1
    assert await backend.scalar("SELECT count(*) FROM audit_log") == 0


async def test_post_settle_task_attempts_are_compare_and_set(backend: Backend) -> None:
    product, (iid,) = await seed(backend, 1)
    (inv,) = await claim(backend)
    await backend.store.record_settlement(inv, _settlement(product, recurring=True))
    (task,) = await backend.store.due_tasks(now=NOW, batch_size=10)
    assert (task.invoice_id, task.kind, task.attempts, task.has_profile) == (iid, "fake.capture", 0, False)
    assert await backend.store.claim_task(task, now=NOW, lease_until=NOW + LEASE)
    assert not await backend.store.claim_task(task, now=NOW, lease_until=NOW + LEASE)
    assert await backend.store.due_tasks(now=NOW, batch_size=10) == []
    profile = PaymentProfile("c1", "pp1", "CARD", format_ts(NOW))
    assert await backend.store.finish_task(task, base.TaskResult("done", profile=profile), now=NOW)
    assert not await backend.store.finish_task(task, base.TaskResult("done"), now=NOW)
    rows = await backend.raw.rows("SELECT payment_profile_id, payment_profile_method FROM subscriptions")
    assert rows == [{"payment_profile_id": "pp1", "payment_profile_method": "CARD"}]


async def test_instances_and_status_report(backend: Backend) -> None:
    await seed(backend, 3)
    await seed(backend, 1, created=format_ts(NOW - AGE - timedelta(hours=1)))
    row = base.InstanceRow("host:1:abc", "host", 1, T0, NOW)
    await backend.store.upsert_instance(row)
    await backend.store.upsert_instance(
        base.InstanceRow(
            "host:1:abc", "host", 1, T0, None, NOW + timedelta(seconds=3), {"counts": {"settle": 1}}
        )
    )
    report = await backend.store.status_report(now=NOW, max_age=AGE)
    assert [(p.provider_id, p.pending) for p in report.pending] == [("fake", 3)]
    assert report.no_longer_checked == 1
    (instance,) = report.instances
    assert instance.last_pass_started_at == NOW  # kept from the first upsert
    assert instance.last_summary == {"counts": {"settle": 1}}


async def test_postgres_unreachable_is_store_unavailable() -> None:
    pytest.importorskip("asyncpg")
    from reconciler.store.postgres import PostgresStore

    with pytest.raises(errors.StoreUnavailable, match="PostgreSQL connect"):
        await PostgresStore.open("postgresql://postgres@127.0.0.1:9/test")


async def test_postgres_connection_lost_mid_pass_is_store_unavailable(tmp_path: Path) -> None:
    async with pg_connection() as (conn, schema):
        async for backend in postgres_backend(conn, schema, PG_URL):
            await seed(backend, 2)
            # an operator (or a failover) kills every connection of the store's pool
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                schema,
            )
            assert killed >= 1
            with pytest.raises(errors.StoreUnavailable):
                await claim(backend)
            # Each failed tick drops the broken connection and expires the pool's others, so the pool heals
            # within a few ticks (asyncpg sometimes hands one more dead connection out first).
            for _tick in range(5):
                try:
                    claimed = await claim(backend)
                except errors.StoreUnavailable:
                    continue
                break
            else:
                pytest.fail("the pool never recovered from the lost connections")
            assert len(claimed) == 2


async def test_instance_rows_of_long_gone_processes_are_pruned(backend: Backend) -> None:
    old = base.InstanceRow("old:1:a", "old", 1, T0, T0, T0 + timedelta(seconds=1), {})
    await backend.store.upsert_instance(old)
    recent = base.InstanceRow(
        "new:2:b", "new", 2, NOW, NOW, NOW + base.INSTANCE_RETENTION - timedelta(hours=2), {}
    )
    await backend.store.upsert_instance(recent)
    assert {
        r["lease_owner"] for r in await backend.raw.rows("SELECT lease_owner FROM reconciler_instances")
    } == {
        "old:1:a",
        "new:2:b",
    }
    later = base.InstanceRow(
        "new:2:b", "new", 2, NOW, NOW, NOW + base.INSTANCE_RETENTION + timedelta(hours=2), {}
    )
    await backend.store.upsert_instance(later)
    assert [
        r["lease_owner"] for r in await backend.raw.rows("SELECT lease_owner FROM reconciler_instances")
    ] == ["new:2:b"]


async def test_claims_take_the_candidates_in_the_order_a_peek_lists_them(backend: Backend) -> None:
    """A claim reads its batch from four index-ordered parts (never checked, next check before the window,
    due in the window, settled without a license): batch by batch they give exactly the candidates, in
    docs/reconcile.md §1's order, which the dry run's one-query peek also lists."""
    window = NOW - AGE

    async def one(label: str, *, created: Any, next_check: Any = None, **row: Any) -> tuple[str, str]:
        _, (iid,) = await seed(backend, 1, created=format_ts(created), **row)
        if next_check is not None:
            await backend.raw.execute(
                "UPDATE invoices SET next_check_at = :t WHERE id = :id",
                {"t": format_ts(next_check), "id": iid},
            )
        return label, iid

    made = [
        await one("never", created=NOW - timedelta(hours=3)),
        await one("never-older", created=NOW - timedelta(hours=5)),
        await one("never-expired", created=NOW - timedelta(hours=4), status="expired"),
        await one("due", created=NOW - timedelta(hours=9), next_check=NOW - timedelta(minutes=10)),
        await one(
            "due-invalid",
            created=NOW - timedelta(hours=9),
            next_check=NOW - timedelta(hours=2),
            status="invalid",
        ),
        await one("due-now", created=NOW - timedelta(hours=9), next_check=NOW),
        # a storefront's odd rows: a next check before the row's creation, before or inside the window
        await one("odd-early", created=window + timedelta(hours=1), next_check=window - timedelta(days=3)),
        await one("odd-inside", created=window + timedelta(hours=5), next_check=window + timedelta(hours=1)),
        await one("recover", created=NOW - timedelta(hours=2), status="settled"),
        await one(
            "recover-due",
            created=NOW - timedelta(hours=2),
            next_check=NOW - timedelta(hours=1),
            status="settled",
        ),
        # not candidates
        await one("aged-out", created=window - timedelta(seconds=1)),
        await one(
            "aged-out-checked", created=window - timedelta(hours=1), next_check=window - timedelta(minutes=1)
        ),
        await one("not-due", created=NOW - timedelta(hours=9), next_check=NOW + timedelta(seconds=1)),
        await one("renewal", created=NOW - timedelta(hours=2), status="settled", subscription_id=new_id()),
        await one("leased", created=NOW - timedelta(hours=6)),
    ]
    label_of = {iid: label for label, iid in made}
    await backend.raw.execute(
        "UPDATE invoices SET lease_owner = 'other', lease_token = 't', lease_until = :until WHERE id = :id",
        {"until": format_ts(NOW + LEASE), "id": dict(made)["leased"]},
    )
    peeked = await backend.store.peek(pass_start=NOW, now=NOW, max_age=AGE, batch_size=100, offset=0)
    order = [label_of[row.id] for row in peeked]
    assert order == [
        "never-older",
        "never-expired",
        "never",
        "recover",  # never checked, by creation
        "odd-early",
        "odd-inside",
        "due-invalid",
        "recover-due",
        "due",
        "due-now",  # by next check
    ]

    found = await backend.store.recovery_candidates(pass_start=NOW, now=NOW, max_age=AGE, batch_size=100)
    assert [label_of[i] for i in found] == ["recover", "recover-due"]
    for recovery in (None, found):  # looked up by each claim, or once as a pass does
        claimed: list[str] = []
        while batch := await backend.store.claim(
            owner="me", pass_start=NOW, now=NOW, lease=LEASE, max_age=AGE, batch_size=3, recovery=recovery
        ):
            assert len(batch) <= 3
            claimed += sorted(
                (label_of[row.id] for row in batch), key=order.index
            )  # a batch comes back by creation: its order is within the batch
        assert claimed == order
        await backend.raw.execute(
            "UPDATE invoices SET lease_owner = NULL, lease_token = NULL, lease_until = NULL WHERE lease_owner = 'me'"
        )
    # a settled invoice the pass did not find as it began waits for the next pass
    rest = await backend.store.claim(
        owner="me", pass_start=NOW, now=NOW, lease=LEASE, max_age=AGE, batch_size=100, recovery=[]
    )
    assert sorted(label_of[row.id] for row in rest) == sorted(set(order) - {"recover", "recover-due"})
