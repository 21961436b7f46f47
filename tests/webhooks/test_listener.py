"""The webhook listener over a real socket: the real BTCPay driver against the fake BTCPay, a real database
(SQLite, and PostgreSQL where it says so), the same lease, fetch and settle transaction as a pass."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from reconciler_btcpay import BTCPayDriver

from reconciler import driver_api, errors, listing
from reconciler.config import WebhookSettings
from reconciler.driver_api import Driver
from reconciler.runner import Provider, Runner, RunnerSettings
from reconciler.store import base
from reconciler.timeutil import format_ts, utcnow
from reconciler.webhooks import WebhookService
from tests.conftest import PG_URL, pg_connection
from tests.fakes import btcpay
from tests.store.backends import Backend, postgres_backend, sqlite_backend
from tests.support.shop import new_id
from tests.webhooks.support import SECRET, btcpay_body, signature

PROVIDER = "btcpay_main"


@dataclass
class Hooks:
    backend: Backend
    fake: btcpay.FakeBTCPay
    service: WebhookService
    url: str
    session: aiohttp.ClientSession

    async def post(
        self, body: bytes, sig: str | None = None, *, path: str = f"/webhooks/{PROVIDER}"
    ) -> aiohttp.ClientResponse:
        headers = {"Content-Type": "application/json"}
        if sig is not None:
            headers["BTCPay-Sig"] = sig
        data = io.BytesIO(body) if len(body) > 64 * 1024 else body
        async with self.session.post(self.url + path, data=data, headers=headers) as response:
            await response.read()
            return response

    async def deliver(self, invoice_ref: str, **kwargs: Any) -> aiohttp.ClientResponse:
        body = btcpay_body(invoice_ref, **kwargs)
        return await self.post(body, signature(body))

    async def settled(self) -> None:
        """Until the intake is empty and its workers idle."""
        await asyncio.wait_for(self.service.intake.queue.join(), 10)

    def fetches(self, invoice_ref: str) -> int:
        return sum(
            1 for e in self.fake.log if e.method == "GET" and e.path.endswith(f"/invoices/{invoice_ref}")
        )

    async def invoice(self, ref: str, status: str = "pending") -> str:
        product = new_id()
        await self.backend.raw.execute(
            "INSERT INTO products (id, slug, name, created_at) VALUES (:id, :slug, 'P', :t)",
            {"id": product, "slug": f"p-{product[:8]}", "t": format_ts(utcnow())},
        )
        iid = new_id()
        created = format_ts(utcnow() - timedelta(minutes=5))
        await self.backend.raw.execute(
            "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, status, amount_sats,"
            " created_at, updated_at, next_check_at)"
            " VALUES (:id, :p, :ref, :product, :status, 100000, :c, :c, :later)",
            {
                "id": iid,
                "p": PROVIDER,
                "ref": ref,
                "product": product,
                "status": status,
                "c": created,
                "later": format_ts(utcnow() + timedelta(hours=1)),
            },
        )
        return iid


async def _hooks(backend: Backend, signing_key: Ed25519PrivateKey, **settings: Any) -> AsyncIterator[Hooks]:
    fake = btcpay.FakeBTCPay()
    await fake.start()
    async with aiohttp.ClientSession() as session:
        driver_settings = BTCPayDriver.Settings.model_validate(
            {
                "base_url": fake.base_url,
                "store_id": btcpay.STORE_ID,
                "api_key": btcpay.API_KEY,
                "webhook_secret": SECRET,
            }
        )
        common = driver_api.CommonSettings(driver="btcpay", timeout=5.0)
        providers = {
            PROVIDER: Provider(
                PROVIDER, cast(Driver, BTCPayDriver(PROVIDER, driver_settings, common, session)), common
            )
        }
        service = WebhookService(
            WebhookSettings.model_validate({"listen": "127.0.0.1:0"} | settings),
            backend.store,
            providers,
            RunnerSettings(),
            signing_key=signing_key,
        )
        port = await service.start()
        try:
            yield Hooks(backend, fake, service, f"http://127.0.0.1:{port}", session)
        finally:
            await service.stop()
            await fake.close()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Backend]:
    async for found in sqlite_backend(tmp_path):
        yield found


@pytest.fixture
async def hooks(sqlite_db: Backend, signing_key: Ed25519PrivateKey) -> AsyncIterator[Hooks]:
    async for found in _hooks(sqlite_db, signing_key):
        yield found


@pytest.fixture(params=["sqlite", "postgres"])
async def any_hooks(
    request: pytest.FixtureRequest, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> AsyncIterator[Hooks]:
    if request.param == "sqlite":
        async for backend in sqlite_backend(tmp_path):
            async for found in _hooks(backend, signing_key):
                yield found
    else:
        async with pg_connection() as (conn, schema):
            async for backend in postgres_backend(conn, schema, PG_URL):
                async for found in _hooks(backend, signing_key):
                    yield found


async def test_a_delivery_for_a_paid_invoice_ends_with_its_license(any_hooks: Hooks) -> None:
    iid = await any_hooks.invoice("INV-PAID")
    any_hooks.fake.add(btcpay.make_invoice("INV-PAID", status="Settled"))

    response = await any_hooks.deliver("INV-PAID")
    await any_hooks.settled()

    assert response.status == 200
    b = any_hooks.backend
    assert await b.scalar("SELECT status FROM invoices WHERE id = :id", {"id": iid}) == "settled"
    assert await b.scalar("SELECT count(*) FROM licenses WHERE invoice_id = :id", {"id": iid}) == 1
    assert await b.scalar("SELECT lease_token FROM invoices WHERE id = :id", {"id": iid}) is None
    row = (await b.raw.rows("SELECT outcome, decision, decided_at, invoice_id FROM webhook_deliveries"))[0]
    assert (row["outcome"], row["decision"], row["invoice_id"]) == ("decided", "settle", iid)
    assert row["decided_at"] is not None
    actions = [r["action"] for r in await b.raw.rows("SELECT action FROM audit_log ORDER BY occurred_at, id")]
    assert "invoice.settled" in actions and "license.issued" in actions


async def test_webhooks_arriving_together_each_ask_alone_never_a_list_page(
    sqlite_db: Backend, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass gathers fetches that wait together into list pages (batch = true, the default); a webhook's
    worker never waits for company: each invoice is one single GET at once, however many arrive together.
    A gathering window longer than the test's patience would show any wait for company."""
    monkeypatch.setattr(listing.Lister, "WINDOW", 60.0)
    async for hooks in _hooks(sqlite_db, signing_key, workers=16):
        refs = [f"INV-T{i}" for i in range(16)]
        for ref in refs:
            await hooks.invoice(ref)
            hooks.fake.add(btcpay.make_invoice(ref, status="Settled"))

        answers = await asyncio.gather(*(hooks.deliver(ref, delivery_id=ref) for ref in refs))
        await hooks.settled()

        assert {a.status for a in answers} == {200}
        assert [hooks.fetches(ref) for ref in refs] == [1] * len(refs)
        assert [e.path for e in hooks.fake.log if e.path.endswith("/invoices")] == []
        licensed = await hooks.backend.scalar("SELECT count(*) FROM licenses")
        assert licensed == len(refs)


async def test_a_redelivery_is_applied_once(hooks: Hooks) -> None:
    await hooks.invoice("INV-R")
    hooks.fake.add(btcpay.make_invoice("INV-R", status="Settled"))

    first = await hooks.deliver("INV-R", delivery_id="d1")
    await hooks.settled()
    again = await hooks.deliver("INV-R", delivery_id="d2", original="d1")
    await hooks.settled()

    assert (first.status, again.status) == (200, 200)
    assert hooks.fetches("INV-R") == 1
    assert await hooks.backend.scalar("SELECT count(*) FROM webhook_deliveries") == 1


async def test_an_unknown_invoice_is_accepted_and_never_created(hooks: Hooks) -> None:
    response = await hooks.deliver("NOBODY")

    assert response.status == 200
    assert await hooks.backend.scalar("SELECT count(*) FROM invoices") == 0
    assert await hooks.backend.scalar("SELECT outcome FROM webhook_deliveries") == "unknown_invoice"
    assert hooks.fetches("NOBODY") == 0


async def test_a_pending_answer_reschedules_and_trusts_nothing_from_the_body(hooks: Hooks) -> None:
    iid = await hooks.invoice("INV-P")
    hooks.fake.add(btcpay.make_invoice("INV-P", status="New"))

    response = await hooks.deliver("INV-P", event_type="InvoiceSettled")
    await hooks.settled()

    assert response.status == 200
    assert await hooks.backend.scalar("SELECT status FROM invoices WHERE id = :id", {"id": iid}) == "pending"
    assert await hooks.backend.scalar("SELECT count(*) FROM licenses") == 0


async def _until(condition: Callable[[], object], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_leased_invoice_is_claimed_once_its_holder_lets_go(hooks: Hooks) -> None:
    iid = await hooks.invoice("INV-L")
    hooks.fake.add(btcpay.make_invoice("INV-L", status="Settled"))
    holder = await hooks.backend.store.claim_invoice(
        iid, owner="other", now=utcnow(), lease=timedelta(minutes=5)
    )
    assert holder is not None

    response = await hooks.deliver("INV-L")
    await _until(lambda: hooks.service.intake.waiting, "the worker waiting for the holder")
    assert hooks.fetches("INV-L") == 0
    # the holder had looked before the payment: it reschedules by the schedule, overwriting the nudge
    assert await hooks.backend.store.release(holder, next_check_at=utcnow() + timedelta(hours=1))
    await hooks.settled()

    assert response.status == 200
    assert hooks.fetches("INV-L") == 1
    b = hooks.backend
    assert await b.scalar("SELECT count(*) FROM licenses WHERE invoice_id = :id", {"id": iid}) == 1
    row = (await b.raw.rows("SELECT outcome, decision FROM webhook_deliveries"))[0]
    assert (row["outcome"], row["decision"]) == ("decided", "settle")


async def test_a_lease_taken_after_the_nudge_is_left_to_its_holder(hooks: Hooks) -> None:
    iid = await hooks.invoice("INV-N")
    hooks.fake.add(btcpay.make_invoice("INV-N", status="Settled"))
    first = await hooks.backend.store.claim_invoice(
        iid, owner="other", now=utcnow(), lease=timedelta(minutes=5)
    )
    assert first is not None

    response = await hooks.deliver("INV-N")
    await _until(lambda: hooks.service.intake.waiting, "the worker waiting for the holder")
    # the holder lets go and another claim takes the invoice: it asks the provider after the delivery
    assert await hooks.backend.store.release(first, next_check_at=None)
    second = await hooks.backend.store.claim_invoice(
        iid, owner="another", now=utcnow(), lease=timedelta(minutes=5)
    )
    assert second is not None
    await hooks.settled()

    assert response.status == 200
    assert hooks.fetches("INV-N") == 0
    b = hooks.backend
    assert await b.scalar("SELECT lease_owner FROM invoices WHERE id = :id", {"id": iid}) == "another"
    assert await b.scalar("SELECT outcome FROM webhook_deliveries") == "busy"
    assert await b.scalar("SELECT count(*) FROM licenses") == 0


async def test_no_more_nudges_wait_than_the_intake_holds(
    sqlite_db: Backend, signing_key: Ed25519PrivateKey
) -> None:
    async for hooks in _hooks(sqlite_db, signing_key, intake=1, workers=1):
        await _two_leased_deliveries(hooks)


async def _two_leased_deliveries(hooks: Hooks) -> None:
    for ref in ("INV-W1", "INV-W2"):
        iid = await hooks.invoice(ref)
        held = await hooks.backend.store.claim_invoice(
            iid, owner="other", now=utcnow(), lease=timedelta(minutes=5)
        )
        assert held is not None
    intake = hooks.service.intake
    assert (await hooks.deliver("INV-W1", delivery_id="w1")).status == 200
    await _until(lambda: intake.waiting, "the first nudge waiting")
    assert (await hooks.deliver("INV-W2", delivery_id="w2")).status == 200
    await _until(lambda: intake.finished == 1, "the second nudge given up")

    outcomes = {
        r["idempotency_key"]: r["outcome"]
        for r in await hooks.backend.raw.rows("SELECT idempotency_key, outcome FROM webhook_deliveries")
    }
    assert outcomes == {"w1": "nudged", "w2": "busy"}  # the first still waits; the second left to a pass
    assert intake.most_waiting == 1


class _Gated:
    """The pass's driver: the real BTCPay driver's answer, handed over only when the test says so."""

    Settings = BTCPayDriver.Settings
    post_settle_kinds = ()

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.fetched = asyncio.Event()
        self.go = asyncio.Event()

    async def fetch(self, provider_invoice_id: str) -> driver_api.Snapshot:
        answer = await self.driver.fetch(provider_invoice_id)
        self.fetched.set()
        await self.go.wait()
        return cast(driver_api.Snapshot, answer)

    async def check(self) -> None:
        pass


async def test_a_webhook_racing_a_pass_that_looked_before_the_payment_licenses_at_once(
    any_hooks: Hooks, signing_key: Ed25519PrivateKey
) -> None:
    """The pass asks, the invoice is paid, the webhook comes while the pass still holds the lease; the pass
    records `no_change` and pushes the schedule out; the webhook's worker claims it next and settles it."""
    hooks, b = any_hooks, any_hooks.backend
    iid = await hooks.invoice("INV-RACE")
    await b.raw.execute("UPDATE invoices SET next_check_at = NULL WHERE id = :id", {"id": iid})
    hooks.fake.add(btcpay.make_invoice("INV-RACE", status="New"))
    real = hooks.service.runner.providers[PROVIDER]
    gated = _Gated(real.driver)
    pass_runner = Runner(
        b.store,
        {PROVIDER: Provider(PROVIDER, cast(Driver, gated), real.common)},
        RunnerSettings(),
        signing_key=signing_key,
    )

    a_pass = asyncio.create_task(pass_runner.run_pass())
    await asyncio.wait_for(gated.fetched.wait(), 10)  # the pass has its answer: not paid yet
    hooks.fake.add(btcpay.make_invoice("INV-RACE", status="Settled"))
    response = await hooks.deliver("INV-RACE")
    await _until(lambda: hooks.service.intake.waiting, "the worker waiting for the pass's lease")
    gated.go.set()
    summary = await asyncio.wait_for(a_pass, 10)
    await hooks.settled()

    assert response.status == 200
    assert summary.counts["no_change"] == 1
    assert await b.scalar("SELECT status FROM invoices WHERE id = :id", {"id": iid}) == "settled"
    assert await b.scalar("SELECT count(*) FROM licenses WHERE invoice_id = :id", {"id": iid}) == 1
    row = (await b.raw.rows("SELECT outcome, decision FROM webhook_deliveries"))[0]
    assert (row["outcome"], row["decision"]) == ("decided", "settle")
    settled = await b.scalar("SELECT count(*) FROM audit_log WHERE action = 'invoice.settled'")
    assert settled == 1


@pytest.mark.parametrize(
    ("path", "sig", "status"),
    [
        (f"/webhooks/{PROVIDER}", None, 401),
        (f"/webhooks/{PROVIDER}", "sha256=" + "ab" * 32, 401),
        (f"/webhooks/{PROVIDER}", signature(btcpay_body("X"), "not-the-secret"), 401),
        ("/webhooks/nobody", signature(btcpay_body("X")), 404),
        (f"/webhooks/{PROVIDER}/some-token", signature(btcpay_body("X")), 404),
    ],
)
async def test_refusals_write_nothing(hooks: Hooks, path: str, sig: str | None, status: int) -> None:
    response = await hooks.post(btcpay_body("X"), sig, path=path)

    assert response.status == status
    assert await hooks.backend.scalar("SELECT count(*) FROM webhook_deliveries") == 0


async def test_a_signed_body_that_is_not_json_is_400(hooks: Hooks) -> None:
    body = b'{"deliveryId": "d1"'
    assert (await hooks.post(body, signature(body))).status == 400


async def test_a_body_over_1_mib_is_413(hooks: Hooks) -> None:
    body = b" " * (driver_api.MAX_WEBHOOK_BYTES + 1)
    assert (await hooks.post(body, signature(body))).status == 413


async def test_a_full_intake_answers_503_and_the_nudge_is_durable(
    sqlite_db: Backend, signing_key: Ed25519PrivateKey
) -> None:
    async for hooks in _hooks(sqlite_db, signing_key, intake=1, workers=1):
        for task in hooks.service.tasks:  # no worker takes anything: the intake fills up
            task.cancel()
        first = await hooks.invoice("INV-A")
        second = await hooks.invoice("INV-B")

        accepted = await hooks.deliver("INV-A", delivery_id="a")
        full = await hooks.deliver("INV-B", delivery_id="b")

        assert accepted.status == 200
        assert full.status == 503
        assert full.headers["Retry-After"] == "5"
        for iid in (first, second):
            due = await sqlite_db.scalar("SELECT next_check_at FROM invoices WHERE id = :id", {"id": iid})
            assert due <= format_ts(utcnow())
        # the provider's retry finds the delivery recorded and undecided: queued again, so while the intake is
        # still full it is refused again (the provider keeps retrying; a pass takes the invoice anyway)
        again = await hooks.deliver("INV-B", delivery_id="b2", original="b")
        assert again.status == 503
        assert await sqlite_db.scalar("SELECT count(*) FROM webhook_deliveries") == 2


async def test_a_delivery_refused_by_a_full_intake_is_decided_when_the_provider_retries_it(
    sqlite_db: Backend, signing_key: Ed25519PrivateKey
) -> None:
    """The 503 asks the provider to retry; the retry (same originalDeliveryId) of a delivery no worker has
    decided yet is queued again, so the paid invoice is licensed then, not a pass later."""
    async for hooks in _hooks(sqlite_db, signing_key, intake=1, workers=1):
        intake = hooks.service.intake
        for task in hooks.service.tasks:  # no worker takes anything: the intake fills up
            task.cancel()
        await hooks.invoice("INV-OTHER")
        assert (await hooks.deliver("INV-OTHER", delivery_id="o")).status == 200
        paid = await hooks.invoice("INV-P")
        hooks.fake.add(btcpay.make_invoice("INV-P", status="Settled"))
        refused = await hooks.deliver("INV-P", delivery_id="p")
        assert refused.status == 503
        workers = asyncio.create_task(intake.run())  # the workers are back and take INV-OTHER: room again
        await asyncio.wait_for(intake.queue.join(), 10)

        retried = await hooks.deliver("INV-P", delivery_id="p2", original="p")
        await hooks.settled()

        assert retried.status == 200
        assert (
            await sqlite_db.scalar("SELECT count(*) FROM licenses WHERE invoice_id = :id", {"id": paid}) == 1
        )
        assert hooks.fetches("INV-P") == 1
        (row,) = await sqlite_db.raw.rows(
            "SELECT outcome, decision FROM webhook_deliveries WHERE idempotency_key = 'p'"
        )
        assert (row["outcome"], row["decision"]) == ("decided", "settle")
        # retried again once decided: 200 and nothing more
        assert (await hooks.deliver("INV-P", delivery_id="p3", original="p")).status == 200
        await hooks.settled()
        assert hooks.fetches("INV-P") == 1
        workers.cancel()


async def test_a_retry_of_a_delivery_a_pass_decided_meanwhile_asks_nothing(
    sqlite_db: Backend, signing_key: Ed25519PrivateKey
) -> None:
    async for hooks in _hooks(sqlite_db, signing_key, intake=1, workers=1):
        for task in hooks.service.tasks:
            task.cancel()
        await hooks.invoice("INV-OTHER")
        assert (await hooks.deliver("INV-OTHER", delivery_id="o")).status == 200  # the intake is full
        await hooks.invoice("INV-W")
        hooks.fake.add(btcpay.make_invoice("INV-W", status="New"))
        assert (await hooks.deliver("INV-W", delivery_id="w")).status == 503
        await hooks.service.runner.run_pass()  # a pass decides it: still pending, rescheduled
        fetched = hooks.fetches("INV-W")

        assert (await hooks.deliver("INV-W", delivery_id="w2", original="w")).status == 200
        assert hooks.service.intake.queue.qsize() == 1  # only INV-OTHER's
        assert hooks.fetches("INV-W") == fetched == 1


async def test_a_retry_of_a_delivery_still_queued_is_queued_once(
    sqlite_db: Backend, signing_key: Ed25519PrivateKey
) -> None:
    async for hooks in _hooks(sqlite_db, signing_key, intake=4, workers=1):
        for task in hooks.service.tasks:  # no worker takes anything yet
            task.cancel()
        await hooks.invoice("INV-Q")
        assert (await hooks.deliver("INV-Q", delivery_id="q")).status == 200
        assert (await hooks.deliver("INV-Q", delivery_id="q2", original="q")).status == 200
        assert hooks.service.intake.queue.qsize() == 1


class _Unavailable:
    """A store whose every delivery write fails as a lost database does."""

    def __init__(self, store: base.Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return getattr(self._store, name)  # type: ignore[no-any-return]

    async def record_delivery(self, *args: Any, **kwargs: Any) -> base.DeliveryReceipt:
        raise errors.StoreUnavailable("connection lost")


async def test_an_unavailable_database_answers_503(hooks: Hooks) -> None:
    await hooks.invoice("INV-D")
    hooks.service.server.store = _Unavailable(hooks.backend.store)  # type: ignore[assignment]

    response = await hooks.deliver("INV-D")

    assert response.status == 503
    assert response.headers["Retry-After"] == "5"


async def test_old_deliveries_are_pruned(any_hooks: Hooks) -> None:
    b = any_hooks.backend
    for key, received in (("old", utcnow() - timedelta(days=31)), ("new", utcnow() - timedelta(days=29))):
        await b.raw.execute(
            "INSERT INTO webhook_deliveries (provider_id, idempotency_key, delivery_id, event_type, received_at,"
            " outcome) VALUES (:p, :k, :k, 'InvoiceSettled', :t, 'ignored')",
            {"p": PROVIDER, "k": key, "t": format_ts(received)},
        )

    assert await any_hooks.service.server.prune() == 1
    assert [
        r["idempotency_key"] for r in await b.raw.rows("SELECT idempotency_key FROM webhook_deliveries")
    ] == ["new"]
