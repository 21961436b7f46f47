"""One database, three providers (docs/reconcile.md §2, issue #4): invoices of two BTCPay stores and one
Zaprite account, plus some without a provider id, settled by one real ``reconciler --once``, each against its
own provider; a provider id nobody configured is skipped with one warning; a refused key degrades only its
provider (exit 75)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler import ids
from tests.acceptance.providers import (
    btcpay_provider,
    reconcile_once,
    write_config,
    zaprite_provider,
)
from tests.fakes.btcpay import FakeBTCPay, Payment, make_invoice
from tests.fakes.zaprite import FakeZaprite, make_order, make_transaction
from tests.support.process import minutes_ago
from tests.support.shop import Shop

STORE_A, KEY_A = "StoreAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "btcpay-key-a-0123456789"
STORE_B, KEY_B = "StoreBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "btcpay-key-b-9876543210"
ZAPRITE_KEY = "zaprite-key-0123456789"
AMOUNT = 100_000  # make_invoice's default 0.001 BTC


def view_permission(store: str) -> list[str]:
    return [f"btcpay.store.canviewinvoices:{store}"]


@pytest.fixture
async def store_a() -> AsyncIterator[FakeBTCPay]:
    async with FakeBTCPay(store_id=STORE_A, api_keys={KEY_A: view_permission(STORE_A)}) as fake:
        yield fake


@pytest.fixture
async def store_b() -> AsyncIterator[FakeBTCPay]:
    async with FakeBTCPay(store_id=STORE_B, api_keys={KEY_B: view_permission(STORE_B)}) as fake:
        yield fake


@pytest.fixture
async def zaprite() -> AsyncIterator[FakeZaprite]:
    async with FakeZaprite(api_key=ZAPRITE_KEY) as fake:
        yield fake


def btcpay_invoice(fake: FakeBTCPay, invoice_id: str, status: str) -> None:
    payments = [Payment("0.001")] if status == "Settled" else []
    fake.add(make_invoice(invoice_id, status, payments=payments, store_id=fake.store_id))


def paid_order(order_id: str) -> dict[str, object]:
    return make_order(
        id=order_id, status="PAID", total_amount=AMOUNT, transactions=[make_transaction(AMOUNT)]
    )


def pending(
    shop: Shop, product: str, provider: str | None, provider_invoice_id: str, *, invoice_id: str | None = None
) -> str:
    """A pending invoice as a storefront writes it at checkout, ten minutes ago."""
    return shop.invoice(
        product,
        provider=provider,
        provider_invoice_id=provider_invoice_id,
        amount_sats=AMOUNT,
        created_at=minutes_ago(10),
        invoice_id=invoice_id,
    )


def config(
    tmp_path: Path,
    shop: Shop,
    store_a: FakeBTCPay,
    store_b: FakeBTCPay,
    zaprite: FakeZaprite,
    **btcpay_b: object,
) -> Path:
    return write_config(
        tmp_path,
        database=shop.path,
        default_provider="btcpay_a",
        providers={
            "btcpay_a": btcpay_provider(store_a, KEY_A),
            "btcpay_b": btcpay_provider(store_b, KEY_B, **btcpay_b),
            "zaprite": zaprite_provider(zaprite),
        },
    )


def paths(fake: FakeBTCPay | FakeZaprite) -> Counter[str]:
    return Counter(exchange.path for exchange in fake.log)


def store_paths(store: str, *invoice_ids: str) -> Counter[str]:
    return Counter(f"/api/v1/stores/{store}/invoices/{invoice_id}" for invoice_id in invoice_ids)


def settled_by(shop: Shop, invoice_id: str) -> str:
    """The provider the `invoice.settled` audit names (the resolved one for a NULL provider id)."""
    (audit,) = shop.audits(invoice_id, "invoice.settled")
    return str(json.loads(audit["details"])["provider_id"])


async def test_one_pass_settles_every_invoice_against_its_own_provider(
    tmp_path: Path, shop: Shop, store_a: FakeBTCPay, store_b: FakeBTCPay, zaprite: FakeZaprite
) -> None:
    # The same BTCPay invoice id lives in both stores with different fates: only routing by
    # payment_provider_id tells them apart.
    btcpay_invoice(store_a, "SHARED", "Settled")
    btcpay_invoice(store_b, "SHARED", "Processing")
    btcpay_invoice(store_a, "A-EXPIRED", "Expired")
    btcpay_invoice(store_a, "A-DEFAULT", "Settled")
    btcpay_invoice(store_b, "B-PAID", "Settled")
    product = shop.product()

    def invoice(provider: str | None, provider_invoice_id: str) -> str:
        return pending(shop, product, provider, provider_invoice_id)

    a_shared = invoice("btcpay_a", "SHARED")
    a_expired = invoice("btcpay_a", "A-EXPIRED")
    b_shared = invoice("btcpay_b", "SHARED")
    b_paid = invoice("btcpay_b", "B-PAID")
    by_default = invoice(None, "A-DEFAULT")
    z_paid = invoice("zaprite", "od_paid")
    zaprite.add_order(paid_order("od_paid"))
    # Zaprite also answers by the externalUniqId the storefront set: our invoice id.
    z_pending = ids.new_id()
    pending(shop, product, "zaprite", z_pending, invoice_id=z_pending)
    zaprite.add_order(make_order(status="PENDING", total_amount=AMOUNT, external_uniq_id=z_pending))
    unconfigured = [invoice("btcpay_old", f"OLD-{n}") for n in range(3)]

    result = await reconcile_once(config(tmp_path, shop, store_a, store_b, zaprite))

    assert result.returncode == 0, result.stderr
    assert result.messages("ERROR") == []
    expected = {
        a_shared: "settled",
        a_expired: "expired",
        b_shared: "pending",
        b_paid: "settled",
        by_default: "settled",
        z_paid: "settled",
        z_pending: "pending",
    } | dict.fromkeys(unconfigured, "pending")
    assert {invoice_id: shop.status(invoice_id) for invoice_id in expected} == expected
    for invoice_id, provider in (
        (a_shared, "btcpay_a"),
        (b_paid, "btcpay_b"),
        (by_default, "btcpay_a"),
        (z_paid, "zaprite"),
    ):
        assert len(shop.licenses(invoice_id)) == 1
        assert settled_by(shop, invoice_id) == provider
    assert shop.scalar("SELECT count(*) FROM licenses") == 4
    assert shop.actions(a_expired) == ["invoice.expired"]
    assert shop.scalar("SELECT count(*) FROM audit_log WHERE action = 'invoice.amount_mismatch'") == 0

    # Each fake saw exactly one request per invoice of its own, with its own credentials.
    assert paths(store_a) == store_paths(STORE_A, "SHARED", "A-EXPIRED", "A-DEFAULT")
    assert paths(store_b) == store_paths(STORE_B, "SHARED", "B-PAID")
    assert paths(zaprite) == Counter({"/v1/orders/od_paid": 1, f"/v1/orders/{z_pending}": 1})
    assert {e.authorization for e in store_a.log} == {f"token {KEY_A}"}
    assert {e.authorization for e in store_b.log} == {f"token {KEY_B}"}
    assert {e.authorization for e in zaprite.log} == {f"Bearer {ZAPRITE_KEY}"}
    assert set(store_a.served()) == set(store_b.served()) == {e.status for e in zaprite.log} == {200}

    # The unconfigured provider id: untouched but rescheduled, and one warning for all its invoices.
    warnings = [m for m in result.messages("WARNING") if "'btcpay_old'" in m]
    assert len(warnings) == 1, result.stderr
    for invoice_id in unconfigured:
        row = shop.invoice_row(invoice_id)
        assert row["next_check_at"] is not None and row["last_checked_at"] is None
        assert shop.actions(invoice_id) == []


async def test_a_refused_key_degrades_only_its_provider(
    tmp_path: Path, shop: Shop, store_a: FakeBTCPay, store_b: FakeBTCPay, zaprite: FakeZaprite
) -> None:
    btcpay_invoice(store_a, "A-PAID", "Settled")
    btcpay_invoice(store_b, "B-1", "Settled")
    btcpay_invoice(store_b, "B-2", "Settled")
    zaprite.add_order(paid_order("od_paid"))
    product = shop.product()
    a_paid = pending(shop, product, "btcpay_a", "A-PAID")
    b_1, b_2 = pending(shop, product, "btcpay_b", "B-1"), pending(shop, product, "btcpay_b", "B-2")
    z_paid = pending(shop, product, "zaprite", "od_paid")
    store_b.api_keys.clear()  # the merchant revoked btcpay_b's key: every request answers 401

    result = await reconcile_once(config(tmp_path, shop, store_a, store_b, zaprite, max_concurrency=1))

    assert result.returncode == 75, result.stderr
    assert (shop.status(a_paid), shop.status(z_paid)) == ("settled", "settled")
    assert len(shop.licenses(a_paid)) == len(shop.licenses(z_paid)) == 1
    for invoice_id in (b_1, b_2):
        assert shop.status(invoice_id) == "pending"
        assert shop.licenses(invoice_id) == []
        assert shop.actions(invoice_id) == []
        assert shop.invoice_row(invoice_id)["next_check_at"] is not None
    # The circuit opened on the first 401: one request, one error line, not one per invoice.
    assert store_b.served() == [401]
    errors = result.messages("ERROR")
    assert len(errors) == 1 and "btcpay_b" in errors[0], result.stderr
    assert any("DEGRADED(btcpay_b: authentication failed)" in m for m in result.messages("WARNING"))
    assert KEY_B not in result.stderr
