"""Issue 10: one bad row, policy or duplicate never stops a pass, and every claimed row leaves it.

Each test builds the reported case on a real SQLite shop and runs the real runner with a scripted driver.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest

from reconciler import errors
from reconciler.driver_api import CommonSettings, ProviderStatus, ProviderUnavailable, Snapshot
from reconciler.models import Invoice, InvoiceStatus
from reconciler.testing import FakeDriver, snapshot
from reconciler.timeutil import parse_ts
from tests.conftest import Clock, RunnerFactory
from tests.support.shop import T0, Shop

SETTLED = snapshot("SETTLED", amount_sats=10_000, paid_sats=10_000, currency="BTC")


def leased(shop: Shop) -> int:
    return int(shop.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL"))


def details(row: Any) -> dict[str, Any]:
    return dict(json.loads(row["details"]))


# -- unreadable rows ---------------------------------------------------------------------------------------
BAD_ROWS = {
    # column: (SQL expression written by a careless storefront, what the reason mentions)
    "created_at": ("'2026-12-01T19:61:00.000000Z'", "not a valid timestamp"),
    "amount_sats": ("'ten thousand'", "not a whole number"),
    "listed_value": ("2.5", "not a whole number"),
    "settled_at": ("'2026-13-01T00:00:00.000000Z'", "not a valid timestamp"),
    "buyer_email": ("X'ff00'", "not text"),
}


@pytest.mark.parametrize("column", sorted(BAD_ROWS))
async def test_an_unreadable_row_is_quarantined_and_the_batch_carries_on(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, column: str
) -> None:
    product = shop.product()
    shop.policy(product)
    good = [shop.invoice(product, provider_invoice_id=f"G{i}") for i in range(5)]
    bad = shop.invoice(product, provider_invoice_id="BAD")
    value, reason = BAD_ROWS[column]
    # The CHECK on timestamps only looks at length and two characters: this one passes it.
    shop.execute(f"UPDATE invoices SET {column} = {value} WHERE id = ?", (bad,))
    driver = FakeDriver()
    driver.script_many([f"G{i}" for i in range(5)] + ["BAD"], SETTLED)

    summary = await make_runner({"fake": driver}).run_pass()

    assert summary.counts["settle"] == 5 and summary.counts["unreadable"] == 1
    assert all(len(shop.licenses(i)) == 1 for i in good)
    assert shop.licenses(bad) == [] and shop.status(bad) == "pending"
    assert "BAD" not in driver.calls  # nothing about an unreadable row is worth a provider call
    (audit,) = shop.audits(bad, "invoice.unreadable")
    assert details(audit)["column"] == column and reason in details(audit)["reason"]
    assert {"provider_id", "provider_invoice_id", "raw_status"} <= set(details(audit))
    assert summary.is_degraded and "invoices" in summary.degraded
    assert leased(shop) == 0
    assert parse_ts(shop.invoice_row(bad)["next_check_at"]) > clock.now

    # the next time it is met: counted and degraded again, audited no more
    clock.advance(timedelta(hours=2))
    again = await make_runner({"fake": driver}).run_pass()
    assert again.counts["unreadable"] == 1 and again.is_degraded
    assert len(shop.audits(bad, "invoice.unreadable")) == 1


async def test_a_fixed_row_is_reconciled_on_its_next_check(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    bad = shop.invoice(shop.product(), provider_invoice_id="BAD")
    shop.execute("UPDATE invoices SET created_at = '2026-11-01T12:61:00.000000Z' WHERE id = ?", (bad,))
    driver = FakeDriver()
    driver.script("BAD", SETTLED)
    await make_runner({"fake": driver}).run_pass()
    shop.execute("UPDATE invoices SET created_at = '2026-11-01T12:01:00.000000Z' WHERE id = ?", (bad,))
    clock.advance(timedelta(hours=2))
    summary = await make_runner({"fake": driver}).run_pass()
    assert summary.counts == {"settle": 1} and not summary.is_degraded
    assert len(shop.licenses(bad)) == 1


async def test_dry_run_classifies_an_unreadable_row_like_the_pass(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    bad = shop.invoice(shop.product(), provider_invoice_id="BAD")
    shop.execute("UPDATE invoices SET created_at = '2026-11-01T12:61:00.000000Z' WHERE id = ?", (bad,))
    lines: list[dict[str, Any]] = []
    summary = await make_runner({"fake": FakeDriver()}).dry_run(lines.append)
    (line,) = lines
    assert line["invoice_id"] == bad and line["decision"] == "unreadable"
    assert line["evidence"]["column"] == "created_at"
    assert summary.is_degraded
    assert shop.audits() == [] and leased(shop) == 0  # a dry run writes nothing


BAD_POLICIES = {
    "not json": ("entitlements", "'pro,team'"),
    "numbers": ("entitlements", "'[1]'"),
    "a string": ("entitlements", "'\"pro\"'"),
    "an object": ("entitlements", "'{\"a\": 1}'"),
    "huge duration": ("duration_seconds", str(10**12)),
    "fractional trial": ("trial_days", "4e6"),
    "text machine count": ("max_machines", "'many'"),
}


@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
async def test_a_bad_policy_quarantines_only_the_invoices_that_need_it(
    shop: Shop, make_runner: RunnerFactory, case: str
) -> None:
    column, value = BAD_POLICIES[case]
    app = shop.product("app")
    broken = shop.policy(app, "broken", is_recurring=True, trial_days=3)
    fine = shop.policy(app, "fine")
    other = shop.product("other")
    shop.policy(other)
    needs_broken = [shop.invoice(app, provider_invoice_id=f"B{i}", policy_id=broken) for i in range(3)]
    needs_fine = shop.invoice(app, provider_invoice_id="F", policy_id=fine)
    healthy = [shop.invoice(other, provider_invoice_id=f"O{i}") for i in range(10)]
    shop.execute(f"UPDATE policies SET {column} = {value} WHERE id = ?", (broken,))
    driver = FakeDriver()
    driver.script_many([f"B{i}" for i in range(3)] + ["F"] + [f"O{i}" for i in range(10)], SETTLED)

    summary = await make_runner({"fake": driver}).run_pass()

    assert summary.counts == {"settle": 11, "unreadable": 3}
    assert all(len(shop.licenses(i)) == 1 for i in [needs_fine, *healthy])
    for inv in needs_broken:
        assert shop.licenses(inv) == [] and shop.status(inv) == "pending"
        (audit,) = shop.audits(inv, "invoice.unreadable")
        assert details(audit)["column"] == f"policies.{column}"
        assert details(audit)["policy_id"] == broken
    assert leased(shop) == 0


async def test_an_unreadable_product_policy_blocks_only_when_it_could_be_the_one_chosen(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    with_default = shop.product("with-default")
    shop.policy(with_default, "default")
    shop.execute(
        "UPDATE policies SET entitlements = 'x' WHERE id = ?",
        (shop.policy(with_default, "extra"),),
    )
    without_default = shop.product("without-default")
    shop.policy(without_default, "first", created_at=T0)
    shop.execute(
        "UPDATE policies SET entitlements = 'x' WHERE id = ?",
        (shop.policy(without_default, "second", created_at=T0 + timedelta(days=1)),),
    )
    a = shop.invoice(with_default, provider_invoice_id="A")
    b = shop.invoice(without_default, provider_invoice_id="B")
    driver = FakeDriver()
    driver.script_many(["A", "B"], SETTLED)
    summary = await make_runner({"fake": driver}).run_pass()
    assert summary.counts == {"settle": 1, "unreadable": 1}
    assert len(shop.licenses(a)) == 1  # its readable `default` is chosen whatever the others hold
    assert shop.licenses(b) == []  # the unreadable one might be older: no guess


# -- one payment, one license --------------------------------------------------------------------------------
async def test_two_rows_of_one_payment_are_licensed_once(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    older = shop.invoice(product, provider=None, provider_invoice_id="ODD-1", created_at=T0)
    newer = shop.invoice(product, provider="fake", provider_invoice_id="ODD-1", created_at=T0 + timedelta(1))
    driver = FakeDriver()
    driver.script("ODD-1", SETTLED)

    summary = await make_runner({"fake": driver}, default_provider="fake").run_pass()

    assert summary.counts == {"settle": 1, "duplicate": 1}
    assert len(shop.licenses(older)) == 1 and shop.licenses(newer) == []
    assert shop.status(newer) == "pending"
    (audit,) = shop.audits(newer, "invoice.duplicate")
    assert details(audit)["winner_invoice_id"] == older
    assert leased(shop) == 0

    clock.advance(timedelta(hours=2))
    again = await make_runner({"fake": driver}, default_provider="fake").run_pass()
    assert again.counts == {"duplicate": 1}  # the winner is settled and licensed: no longer a candidate
    assert len(shop.audits(newer, "invoice.duplicate")) == 1
    assert shop.scalar("SELECT count(*) FROM licenses") == 1


async def test_the_row_already_licensed_wins_over_an_older_one(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    product = shop.product()
    older = shop.invoice(product, provider=None, provider_invoice_id="ODD-2", created_at=T0)
    licensed = shop.invoice(product, provider="fake", provider_invoice_id="ODD-2", status="settled")
    shop.execute(
        "INSERT INTO licenses (id, product_id, invoice_id, license_key, issued_at) VALUES (?, ?, ?, 'K', ?)",
        ("6c4c5d7e-0000-4000-8000-000000000001", product, licensed, "2026-11-01T12:00:00.000000Z"),
    )
    driver = FakeDriver()
    driver.script("ODD-2", SETTLED)
    summary = await make_runner({"fake": driver}, default_provider="fake").run_pass()
    assert summary.counts == {"duplicate": 1}
    assert shop.licenses(older) == []
    assert details(shop.audits(older, "invoice.duplicate")[0])["winner_invoice_id"] == licensed


async def test_a_duplicate_found_only_inside_the_settle_transaction_is_not_licensed(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    """The batch looked clean, then another row of the payment appeared: the locked re-check catches it."""
    product = shop.product()
    mine = shop.invoice(product, provider=None, provider_invoice_id="ODD-3", created_at=T0 + timedelta(1))

    class Racing(FakeDriver):
        async def fetch(self, provider_invoice_id: str) -> Snapshot:
            # a storefront inserts an older row of the same payment while we ask the provider
            await asyncio.to_thread(
                shop.invoice, product, provider="fake", provider_invoice_id="ODD-3", created_at=T0
            )
            return SETTLED

    summary = await make_runner({"fake": Racing()}, default_provider="fake").run_pass()
    assert summary.counts["duplicate"] == 1
    assert shop.licenses(mine) == []
    assert shop.audits(mine, "invoice.duplicate")


# -- every claimed row leaves the pass -------------------------------------------------------------------
async def test_rows_released_because_the_lease_ran_short_are_claimed_again(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    product = shop.product()
    paid = [shop.invoice(product, provider_invoice_id=f"P{i}") for i in range(12)]

    class Slow(FakeDriver):
        async def fetch(self, provider_invoice_id: str) -> Snapshot:
            clock.advance(timedelta(seconds=70))  # each answer takes a while: later leases run short
            return await super().fetch(provider_invoice_id)

    driver = Slow()
    driver.script_many([f"P{i}" for i in range(12)], SETTLED)
    common = CommonSettings(driver="fake", timeout=30, retry_attempts=1, retry_max_delay=0, max_concurrency=1)
    summary = await make_runner({"fake": driver}, common=common, lease=timedelta(minutes=5)).run_pass()
    assert summary.counts["released"] > 0  # the case happened
    assert summary.counts["settle"] == 12
    assert all(len(shop.licenses(i)) == 1 for i in paid)
    assert leased(shop) == 0


async def test_a_row_fenced_by_another_writer_is_claimed_again_in_the_same_pass(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")

    class Interfering(FakeDriver):
        async def fetch(self, provider_invoice_id: str) -> Snapshot:
            if len(self.calls) == 0:  # the storefront expires it while we ask (first time only)
                await asyncio.to_thread(
                    shop.execute, "UPDATE invoices SET status = 'expired' WHERE id = ?", (inv,)
                )
            return await super().fetch(provider_invoice_id)

    driver = Interfering()
    driver.script("A", snapshot("PENDING"), SETTLED)
    summary = await make_runner({"fake": driver}).run_pass()
    assert summary.counts == {"fenced": 1, "settle": 1}
    assert shop.status(inv) == "settled" and len(shop.licenses(inv)) == 1


async def test_a_pass_ended_by_a_store_failure_releases_what_it_holds(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    product = shop.product()
    for i in range(6):
        shop.invoice(product, provider_invoice_id=f"P{i}")
    driver = FakeDriver()
    driver.script_many([f"P{i}" for i in range(6)], snapshot("PENDING"))
    runner = make_runner({"fake": driver})
    real = runner.store.record_bookkeeping

    async def failing(*args: Any, **kwargs: Any) -> set[str]:
        if not getattr(failing, "done", False):
            failing.done = True  # type: ignore[attr-defined]
            raise errors.StoreUnavailable("database is locked")
        return await real(*args, **kwargs)

    runner.store.record_bookkeeping = failing  # type: ignore[method-assign]
    with pytest.raises(errors.StoreUnavailable):
        await runner.run_pass()
    assert leased(shop) == 0


# -- provider back-pressure ------------------------------------------------------------------------------
async def test_a_long_retry_after_ends_the_provider_for_every_waiting_request(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    """A 429 asking for an hour while other requests are retrying: nobody sleeps the hour out."""
    product = shop.product()
    invoices = [shop.invoice(product, provider_invoice_id=f"P{i}") for i in range(6)]
    busy = ProviderUnavailable("HTTP 503")
    driver = FakeDriver()
    driver.script("P0", ProviderUnavailable("HTTP 429", retry_after=3600))
    driver.script_many([f"P{i}" for i in range(1, 6)], busy, busy, SETTLED)
    common = CommonSettings(driver="fake", retry_attempts=3, retry_max_delay=10, max_concurrency=6)
    runner = make_runner({"fake": driver}, common=common, sleep=asyncio.sleep)
    async with asyncio.timeout(20):  # the bug slept for the hour
        summary = await runner.run_pass()
    assert summary.counts["provider_error"] >= 1
    assert leased(shop) == 0
    for inv in invoices:
        row = shop.invoice_row(inv)
        if row["status"] == "pending":
            assert parse_ts(row["next_check_at"]) >= clock.now + timedelta(minutes=59)


@pytest.mark.parametrize("retry_after", [3 * 86_400.0, 1e20, float("inf"), float("nan"), -5.0])
async def test_retry_after_never_pushes_an_invoice_past_its_max_age(
    shop: Shop, make_runner: RunnerFactory, clock: Clock, retry_after: float
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", ProviderUnavailable("HTTP 429", retry_after=retry_after))
    summary = await make_runner({"fake": driver}, max_age=timedelta(hours=72)).run_pass()
    assert summary.counts == {"provider_error": 1}
    next_at = parse_ts(shop.invoice_row(inv)["next_check_at"])
    assert clock.now < next_at <= T0 + timedelta(hours=72)
    assert leased(shop) == 0


# -- the dry run agrees with the pass ---------------------------------------------------------------------
async def test_dry_run_says_issue_failed_where_the_pass_does(shop: Shop, make_runner: RunnerFactory) -> None:
    shop.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES ('not-a-uuid', 'x', 'X', ?)",
        ("2026-11-01T12:00:00.000000Z",),
    )
    shop.invoice("not-a-uuid", provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", SETTLED)
    lines: list[dict[str, Any]] = []
    await make_runner({"fake": driver}).dry_run(lines.append)
    summary = await make_runner({"fake": driver}).run_pass()
    assert [line["decision"] for line in lines] == ["issue_failed"]
    assert "not a UUID" in lines[0]["evidence"]["error"]
    assert summary.counts == {"issue_failed": 1}


# -- credentials refused stay known --------------------------------------------------------------------
async def test_refused_credentials_are_remembered_until_a_request_succeeds(
    shop: Shop, make_runner: RunnerFactory, clock: Clock
) -> None:
    from reconciler.driver_api import ProviderAuthError
    from reconciler.runner import Observer

    seen: list[tuple[str, str | None]] = []

    class Watching(Observer):
        def credentials(self, provider_id: str, refused: str | None) -> None:
            seen.append((provider_id, refused))

    shop.invoice(shop.product(), provider_invoice_id="A")
    driver = FakeDriver()
    driver.script("A", ProviderAuthError("HTTP 401"), snapshot("PENDING"))
    runner = make_runner({"fake": driver})
    runner.observer = Watching()
    first = await runner.run_pass()
    assert first.is_degraded and runner.refused == {"fake": "HTTP 401"}
    clock.advance(timedelta(seconds=10))
    await runner.run_pass()  # nothing due: still refused
    assert runner.refused == {"fake": "HTTP 401"}
    clock.advance(timedelta(hours=1))
    await runner.run_pass()  # a request succeeds
    assert runner.refused == {}
    assert seen == [("fake", "HTTP 401"), ("fake", None)]


def test_unreadable_is_a_row_not_an_exception() -> None:
    from reconciler.models import Unreadable
    from reconciler.store import rows

    row = {
        "id": "x",
        "payment_provider_id": None,
        "provider_invoice_id": "P",
        "product_id": "p",
        "policy_id": None,
        "status": "pending",
        "amount_sats": True,  # a bool is not an amount
        "listed_currency": None,
        "listed_value": None,
        "buyer_email": None,
        "subscription_id": None,
        "created_at": "2026-11-01T12:00:00.000000Z",
        "settled_at": None,
        "check_attempts": 0,
        "last_provider_status": None,
        "lease_token": "t",
        "has_license": 0,
    }
    found = rows.invoice(row)
    assert isinstance(found, Unreadable) and found.column == "amount_sats"


# -- what any driver answers is checked by the core too -------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    [
        Snapshot(ProviderStatus.SETTLED, "Settled\ud800"),  # a lone surrogate: no engine can store it
        Snapshot(ProviderStatus.SETTLED, "Settled\n<2>forged"),
        Snapshot(ProviderStatus.SETTLED, "Settled", amount_sats=2**70),
    ],
)
async def test_a_third_party_snapshot_the_store_cannot_write_is_a_bad_response(
    shop: Shop, make_runner: RunnerFactory, answer: Snapshot
) -> None:
    inv = shop.invoice(shop.product(), provider_invoice_id="A")
    ok = shop.invoice(shop.product("other"), provider_invoice_id="B")
    driver = FakeDriver()
    driver.script("A", answer)
    driver.script("B", SETTLED)
    summary = await make_runner({"fake": driver}).run_pass()
    assert summary.counts == {"bad_response": 1, "settle": 1}
    assert shop.status(inv) == "pending" and shop.licenses(inv) == []
    assert len(shop.licenses(ok)) == 1
    (audit,) = shop.audits(inv, "invoice.bad_provider_response")
    assert "\ud800" not in audit["details"]
    assert leased(shop) == 0


def test_an_unusable_amount_is_shown_as_what_it_was() -> None:
    from reconciler import decide
    from tests.support.shop import T0 as created

    invoice = Invoice(
        "i", "fake", "A", "p", None, InvoiceStatus.PENDING, 10_000, None, None, None, None, created
    )
    for raw in ("NaN", "-5"):
        snap = Snapshot(ProviderStatus.SETTLED, "Settled", currency="SATS", amount_raw=raw)
        facts = decide.evidence(invoice, "fake", snap)
        assert facts["provider_amount_sats"] is None and facts["provider_amount_raw"] == raw


async def test_a_long_pass_says_how_far_it_got(
    shop: Shop, make_runner: RunnerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loguru import logger

    from reconciler import runner as runner_module

    monkeypatch.setattr(runner_module, "PROGRESS_EVERY", 0.05)
    product = shop.product()
    for i in range(4):
        shop.invoice(product, provider_invoice_id=f"P{i}")
    driver = FakeDriver()
    driver.latency = 0.1
    driver.script_many([f"P{i}" for i in range(4)], snapshot("PENDING"))
    lines: list[str] = []
    handle = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        common = CommonSettings(driver="fake", max_concurrency=1)
        await make_runner({"fake": driver}, common=common).run_pass()
    finally:
        logger.remove(handle)
    progress = [line for line in lines if line.startswith("pass in progress:")]
    assert progress and "4 claimed" in progress[0] and "invoices/s" in progress[0]


async def test_explain_and_dry_run_see_an_unreadable_row_as_the_pass_does(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    bad = shop.invoice(shop.product(), provider_invoice_id="BAD")
    shop.execute("UPDATE invoices SET amount_sats = 'lots' WHERE id = ?", (bad,))
    runner = make_runner({"fake": FakeDriver()})
    row = await runner.store.get_invoice(bad)
    assert row is not None
    lines: list[dict[str, Any]] = []
    await runner.dry_run(lines.append, only=row)
    (line,) = lines
    assert line["decision"] == "unreadable" and line["evidence"]["column"] == "amount_sats"
