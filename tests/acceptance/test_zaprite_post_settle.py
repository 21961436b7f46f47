"""Zaprite's post-settle task (docs/reconcile.md §15) through the real ``reconciler --once`` against the fake
Zaprite: the card payment profile a subscription's first order saved lands on the subscription; the task is
retried across passes, gives up with an audit, makes no call when there is nothing to capture, and
survives a crash between the settle's commit and its own run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
from reconciler_zaprite import ZapriteDriver, ZapriteSettings

from reconciler import ids
from reconciler.driver_api import CommonSettings
from reconciler.runner import Provider, Runner, RunnerSettings
from reconciler.store.sqlite import SqliteStore
from reconciler.timeutil import format_ts, parse_ts
from tests.acceptance.providers import (
    btcpay_provider,
    finish,
    reconcile_once,
    spawn_once,
    write_config,
    zaprite_provider,
)
from tests.conftest import Clock
from tests.fakes.btcpay import FakeBTCPay, Payment, make_invoice
from tests.fakes.zaprite import (
    FakeZaprite,
    Fault,
    make_contact,
    make_contact_ref,
    make_order,
    make_profile,
    make_transaction,
)
from tests.support.process import minutes_ago
from tests.support.shop import Shop

KIND = "zaprite.capture_payment_profile"
CONTACTS = "/v1/contacts/{id}"
ORDERS = "/v1/orders/{id}"
CONTACT_ID = "ct_ada"
PRICE_CENTS = 1_999
EXPIRES_AT = format_ts(datetime(2028, 1, 31, tzinfo=UTC))  # make_profile's "2028-01-31T00:00:00.000Z"


@pytest.fixture
async def fake() -> AsyncIterator[FakeZaprite]:
    async with FakeZaprite() as zaprite:
        yield zaprite


def configure(tmp_path: Path, shop: Shop, fake: FakeZaprite, **post_settle: object) -> Path:
    return write_config(
        tmp_path, database=shop.path, providers={"zaprite": zaprite_provider(fake)}, post_settle=post_settle
    )


def subscribe(
    shop: Shop,
    *,
    provider: str = "zaprite",
    provider_invoice_id: str | None = None,
    created_at: datetime | None = None,
) -> str:
    """The first invoice of a monthly subscription; Zaprite finds its order by our invoice id."""
    product = shop.product()
    policy = shop.policy(product, "monthly", is_recurring=True, renewal_period_days=30)
    invoice_id = ids.new_id()
    return shop.invoice(
        product,
        provider=provider,
        provider_invoice_id=provider_invoice_id or invoice_id,
        invoice_id=invoice_id,
        policy_id=policy,
        amount_sats=30_000,
        listed_currency="USD",
        listed_value=PRICE_CENTS,
        created_at=created_at or minutes_ago(10),
    )


def card_order(invoice_id: str, *, contact: bool = True) -> dict[str, Any]:
    return make_order(
        status="PAID",
        currency="USD",
        total_amount=PRICE_CENTS,
        external_uniq_id=invoice_id,
        contact=make_contact_ref(CONTACT_ID) if contact else None,
        transactions=[make_transaction(PRICE_CENTS, method="CARD", currency="USD", order_currency="USD")],
    )


def ada(invoice_id: str) -> dict[str, Any]:
    """The buyer's contact: a profile from an older purchase, and the one our order saved."""
    return make_contact(
        CONTACT_ID,
        profiles=[
            make_profile("pp_older", source_external_uniq_id=ids.new_id()),
            make_profile("pp_ours", source_external_uniq_id=invoice_id),
        ],
    )


def task(shop: Shop) -> Mapping[str, Any]:
    (row,) = shop.rows("SELECT * FROM post_settle_tasks")
    return dict(row)


def subscription(shop: Shop) -> Mapping[str, Any]:
    (row,) = shop.rows("SELECT * FROM subscriptions")
    return dict(row)


def profile(shop: Shop) -> tuple[Any, ...]:
    sub = subscription(shop)
    return tuple(
        sub[column]
        for column in (
            "provider_contact_id",
            "payment_profile_id",
            "payment_profile_method",
            "payment_profile_expires_at",
        )
    )


def make_due(shop: Shop) -> None:
    """What an operator does to retry a task now rather than at its backoff step."""
    shop.execute("UPDATE post_settle_tasks SET next_attempt_at = NULL")


async def test_a_card_payment_profile_is_captured_on_the_subscription(
    tmp_path: Path, shop: Shop, fake: FakeZaprite
) -> None:
    invoice_id = subscribe(shop)
    fake.add_order(card_order(invoice_id))
    fake.add_contact(ada(invoice_id))

    result = await reconcile_once(configure(tmp_path, shop, fake))

    assert result.returncode == 0, result.stderr
    assert shop.status(invoice_id) == "settled"
    assert profile(shop) == (CONTACT_ID, "pp_ours", "CARD", EXPIRES_AT)
    assert subscription(shop)["payment_provider_id"] == "zaprite"
    row = task(shop)
    assert (row["invoice_id"], row["kind"], row["provider_id"]) == (invoice_id, KIND, "zaprite")
    assert (row["status"], row["attempts"]) == ("done", 1)
    assert [e.path for e in fake.requests_to(CONTACTS)] == [f"/v1/contacts/{CONTACT_ID}"]
    assert shop.audits(action="post_settle.failed") == []


async def test_a_profile_appearing_only_on_the_third_pass(
    tmp_path: Path, shop: Shop, fake: FakeZaprite
) -> None:
    invoice_id = subscribe(shop)
    fake.add_order(card_order(invoice_id))
    fake.add_contact(ada(invoice_id), profiles_after_requests=2)
    config = configure(tmp_path, shop, fake, backoff=["1h"])

    first = await reconcile_once(config)
    assert first.returncode == 0, first.stderr
    row = task(shop)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert "not yet" in row["last_error"]
    assert parse_ts(row["next_attempt_at"]) > datetime.now(UTC)  # the backoff step
    assert profile(shop) == (None, None, None, None)

    await reconcile_once(config)  # not due: the task waits for its backoff step
    assert len(fake.requests_to(CONTACTS)) == 1

    make_due(shop)
    await reconcile_once(config)
    assert (task(shop)["status"], task(shop)["attempts"]) == ("pending", 2)

    make_due(shop)
    third = await reconcile_once(config)
    assert third.returncode == 0, third.stderr
    assert (task(shop)["status"], task(shop)["attempts"]) == ("done", 3)
    assert profile(shop) == (CONTACT_ID, "pp_ours", "CARD", EXPIRES_AT)
    assert len(fake.requests_to(CONTACTS)) == 3
    assert shop.audits(action="post_settle.failed") == []


async def test_in_process_the_retries_follow_the_backoff_steps(
    shop: Shop, store: SqliteStore, clock: Clock, signing_key: Ed25519PrivateKey, fake: FakeZaprite
) -> None:
    """The same story with the runner in-process and a fixed clock, so the steps can be exact."""
    invoice_id = subscribe(shop, created_at=clock.now - timedelta(minutes=10))
    fake.add_order(card_order(invoice_id))
    fake.add_contact(ada(invoice_id), profiles_after_requests=2)
    common = CommonSettings(driver="zaprite", timeout=5)
    settings = RunnerSettings(post_settle_backoff=(timedelta(minutes=1), timedelta(minutes=5)))
    async with aiohttp.ClientSession() as session:
        zaprite = ZapriteSettings(base_url=fake.url, api_key=SecretStr(fake.api_key))
        driver = ZapriteDriver("zaprite", zaprite, common, session)
        providers = {"zaprite": Provider("zaprite", driver, common)}
        runner = Runner(store, providers, settings, signing_key=signing_key, clock=clock)
        for step in (timedelta(minutes=1), timedelta(minutes=5)):
            await runner.run_pass()
            assert parse_ts(task(shop)["next_attempt_at"]) == clock.now + step
            clock.advance(step - timedelta(seconds=1))
            await runner.run_pass()  # a second early: nothing runs
            clock.advance(timedelta(seconds=1))
        await runner.run_pass()

    assert (task(shop)["status"], task(shop)["attempts"]) == ("done", 3)
    assert profile(shop) == (CONTACT_ID, "pp_ours", "CARD", EXPIRES_AT)
    assert len(fake.requests_to(CONTACTS)) == 3


def card_order_without_contact(invoice_id: str) -> dict[str, Any]:
    return card_order(invoice_id, contact=False)


def bitcoin_order(invoice_id: str) -> dict[str, Any]:
    return make_order(
        status="PAID",
        currency="BTC",
        total_amount=30_000,
        external_uniq_id=invoice_id,
        contact=make_contact_ref(CONTACT_ID),
        transactions=[make_transaction(30_000, method="BITCOIN")],
    )


@pytest.mark.parametrize("order", [card_order_without_contact, bitcoin_order])
async def test_an_order_that_cannot_have_saved_a_profile_ends_the_task_without_a_contact_call(
    tmp_path: Path, shop: Shop, fake: FakeZaprite, order: Callable[[str], dict[str, Any]]
) -> None:
    invoice_id = subscribe(shop)
    fake.add_order(order(invoice_id))
    fake.add_contact(ada(invoice_id))

    result = await reconcile_once(configure(tmp_path, shop, fake))

    assert result.returncode == 0, result.stderr
    assert shop.status(invoice_id) == "settled"
    assert (task(shop)["status"], task(shop)["attempts"]) == ("done", 1)
    assert fake.requests_to(CONTACTS) == []
    assert profile(shop) == (None, None, None, None)
    assert shop.audits(action="post_settle.failed") == []
    assert shop.audits(action="invoice.amount_mismatch") == []


async def test_a_subscription_that_already_has_a_profile_makes_no_call(
    tmp_path: Path, shop: Shop, fake: FakeZaprite
) -> None:
    invoice_id = subscribe(shop)
    fake.add_order(card_order(invoice_id))
    fake.add_contact(ada(invoice_id), profiles_after_requests=1)
    config = configure(tmp_path, shop, fake)
    await reconcile_once(config)
    assert task(shop)["status"] == "pending"
    # Meanwhile the storefront's own webhook handler stored the profile.
    shop.execute("UPDATE subscriptions SET payment_profile_id = 'pp_from_webhook'")
    make_due(shop)
    requests = len(fake.log)

    result = await reconcile_once(config)

    assert result.returncode == 0, result.stderr
    assert len(fake.log) == requests
    assert task(shop)["status"] == "done"
    assert subscription(shop)["payment_profile_id"] == "pp_from_webhook"


async def test_a_btcpay_paid_subscription_enqueues_no_task(
    tmp_path: Path, shop: Shop, fake: FakeZaprite
) -> None:
    invoice_id = subscribe(shop, provider="btcpay", provider_invoice_id="BTCPAY-1")
    async with FakeBTCPay() as btcpay:
        btcpay.add(make_invoice("BTCPAY-1", "Settled", amount="0.0003", payments=[Payment("0.0003")]))
        providers = {
            "btcpay": btcpay_provider(btcpay, next(iter(btcpay.api_keys))),
            "zaprite": zaprite_provider(fake),
        }
        result = await reconcile_once(write_config(tmp_path, database=shop.path, providers=providers))

    assert result.returncode == 0, result.stderr
    assert shop.status(invoice_id) == "settled"
    assert subscription(shop)["payment_provider_id"] == "btcpay"
    assert shop.rows("SELECT * FROM post_settle_tasks") == []
    assert fake.log == []


async def test_the_task_fails_for_review_after_max_attempts(
    tmp_path: Path, shop: Shop, fake: FakeZaprite
) -> None:
    invoice_id = subscribe(shop)
    fake.add_order(card_order(invoice_id))
    fake.add_contact(ada(invoice_id), profiles_after_requests=1_000)
    config = configure(tmp_path, shop, fake, max_attempts=2)

    await reconcile_once(config)
    assert (task(shop)["status"], task(shop)["attempts"]) == ("pending", 1)
    assert shop.audits(action="post_settle.failed") == []
    make_due(shop)
    result = await reconcile_once(config)

    assert result.returncode == 0, result.stderr
    row = task(shop)
    assert (row["status"], row["attempts"]) == ("failed", 2)
    (audit,) = shop.audits(invoice_id, "post_settle.failed")
    details = json.loads(audit["details"])
    assert (audit["target_kind"], details["provider_id"], details["kind"], details["attempts"]) == (
        "invoice",
        "zaprite",
        KIND,
        2,
    )
    assert details["provider_invoice_id"] == invoice_id and "not yet" in details["error"]
    assert any("failed after 2 attempts" in m for m in result.messages("WARNING")), result.stderr
    assert profile(shop) == (None, None, None, None)
    assert shop.status(invoice_id) == "settled" and len(shop.licenses(invoice_id)) == 1

    make_due(shop)
    await reconcile_once(config)  # a failed task is never run again
    assert len(fake.requests_to(CONTACTS)) == 2
    assert len(shop.audits(action="post_settle.failed")) == 1


def settled_before_the_task_ran(shop: Shop, invoice_id: str) -> None:
    """The rows the settle transaction committed, as a crash right after its commit leaves them."""
    now = format_ts(datetime.now(UTC))
    invoice = shop.invoice_row(invoice_id)
    license_id, subscription_id = ids.new_id(), ids.new_id()
    shop.execute(
        "UPDATE invoices SET status = 'settled', settled_at = ?, updated_at = ?, last_checked_at = ?,"
        " last_provider_status = 'PAID' WHERE id = ?",
        (now, now, now, invoice_id),
    )
    shop.execute(
        "INSERT INTO licenses (id, product_id, policy_id, invoice_id, license_key, issued_at)"
        " VALUES (?, ?, ?, ?, 'LIC1-ISSUED-BEFORE-THE-CRASH', ?)",
        (license_id, invoice["product_id"], invoice["policy_id"], invoice_id, now),
    )
    shop.execute(
        "INSERT INTO subscriptions (id, license_id, policy_id, product_id, started_at, period_days,"
        " listed_currency, listed_value, first_invoice_id, payment_provider_id, next_renewal_at,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 30, 'USD', ?, ?, 'zaprite', ?, ?, ?)",
        (
            subscription_id,
            license_id,
            invoice["policy_id"],
            invoice["product_id"],
            now,
            PRICE_CENTS,
            invoice_id,
            now,
            now,
            now,
        ),
    )
    shop.execute(
        "INSERT INTO post_settle_tasks (invoice_id, kind, provider_id, status, attempts, next_attempt_at,"
        " created_at, updated_at) VALUES (?, ?, 'zaprite', 'pending', 0, ?, ?, ?)",
        (invoice_id, KIND, now, now, now),
    )


async def test_a_task_committed_before_a_crash_runs_on_the_next_pass_exactly_once(
    tmp_path: Path, shop: Shop, fake: FakeZaprite
) -> None:
    invoice_id = subscribe(shop)
    settled_before_the_task_ran(shop, invoice_id)
    fake.add_order(card_order(invoice_id))
    fake.add_contact(ada(invoice_id))
    config = configure(tmp_path, shop, fake)

    result = await reconcile_once(config)
    await reconcile_once(config)

    assert result.returncode == 0, result.stderr
    assert (task(shop)["status"], task(shop)["attempts"]) == ("done", 1)
    assert profile(shop) == (CONTACT_ID, "pp_ours", "CARD", EXPIRES_AT)
    assert len(fake.requests_to(CONTACTS)) == 1
    # No second settle: the order was read by the task only, and nothing was issued again.
    assert [e.route for e in fake.log] == [ORDERS, CONTACTS]
    assert len(shop.licenses(invoice_id)) == 1 and shop.actions(invoice_id) == []


@pytest.mark.slow
async def test_a_task_whose_process_was_killed_mid_attempt_runs_again_once_its_claim_expires(
    tmp_path: Path, shop: Shop, fake: FakeZaprite
) -> None:
    invoice_id = subscribe(shop)
    fake.add_order(card_order(invoice_id))
    fake.add_contact(ada(invoice_id))
    fake.inject(Fault(), Fault(delay=60))  # the settle's order read answers; the task's hangs
    # a timeout a loaded CI machine cannot hit by accident on loopback (the second attempt must succeed)
    common = {"timeout": "4s", "retry_attempts": 1, "retry_max_delay": "1s"}
    config = write_config(
        tmp_path,
        database=shop.path,
        providers={"zaprite": zaprite_provider(fake, **common)},
        reconcile={"lease": "8s"},  # 2 × the worst fetch; a claimed task attempt holds it as long
    )

    process = await spawn_once(config)
    async with asyncio.timeout(30):
        # Another process's database: there is no event to await, so poll.
        while not shop.rows("SELECT 1 FROM post_settle_tasks WHERE attempts = 1"):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    process.kill()  # after the settle's commit and the task's claim, before its answer
    await finish(process)
    assert shop.status(invoice_id) == "settled"
    row = task(shop)
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, None)  # never finished
    assert fake.requests_to(CONTACTS) == []

    await asyncio.sleep((parse_ts(row["next_attempt_at"]) - datetime.now(UTC)).total_seconds() + 0.1)
    result = await reconcile_once(config)

    assert result.returncode == 0, result.stderr
    done = task(shop)
    assert (done["status"], done["attempts"]) == ("done", 2), dict(done)
    assert profile(shop) == (CONTACT_ID, "pp_ours", "CARD", EXPIRES_AT)
    assert len(fake.requests_to(CONTACTS)) == 1
    assert len(shop.licenses(invoice_id)) == 1
