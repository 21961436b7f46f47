"""The real `reconciler --once` in a subprocess against the fake BTCPay Server and a SQLite file
(docs/reconcile.md).

The fake runs in this test's event loop on a real port, so the reconciler is started with
`asyncio.create_subprocess_exec` (a blocking `subprocess.run` would stop the fake from answering). The
driver is found through its entry point, as in production.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import keysat_licensing_client as sdk
import pytest

from reconciler import licenses
from reconciler.timeutil import parse_ts
from tests.fakes.btcpay import API_KEY, STORE_ID, FakeBTCPay, Payment, make_invoice
from tests.support.process import clean_env
from tests.support.shop import Shop, create_schema

PROVIDER = "btcpay_main"
FULL = [Payment("0.001")]  # 100,000 sats, what every invoice here costs


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def messages(self, level: str | None = None) -> list[str]:
        """The JSON log lines' messages (every stderr line must be one), optionally of one level."""
        lines = [json.loads(line) for line in self.stderr.splitlines()]
        return [line["message"] for line in lines if level is None or line["level"] == level]

    def summary(self) -> str:
        return next(m for m in self.messages() if m.startswith("pass finished"))


@dataclass
class World:
    """A shop database with a signing key and a config pointing at one fake BTCPay store."""

    tmp: Path
    shop: Shop
    fake: FakeBTCPay
    public_key: str

    def config(
        self,
        *,
        api_key: str = API_KEY,
        paid_late: str = "flag",
        timeout: str = "2s",
        max_concurrency: int = 16,
    ) -> Path:
        key_file = self.tmp / "btcpay-key"
        key_file.write_text(api_key)
        path = self.tmp / "config.toml"
        path.write_text(
            f'default_provider = "{PROVIDER}"\n'
            f'[database]\nurl = "sqlite://{self.shop.path}"\n'
            f'[license]\nsigning_key_file = "{self.tmp / "signing-key.pem"}"\n'
            f'[reconcile]\npaid_late = "{paid_late}"\n'
            f"[providers.{PROVIDER}]\n"
            f'driver = "btcpay"\nbase_url = "{self.fake.base_url}"\nstore_id = "{STORE_ID}"\n'
            f'api_key_file = "{key_file}"\ntimeout = "{timeout}"\nretry_attempts = 3\nretry_max_delay = "1s"\n'
            f"max_concurrency = {max_concurrency}\n"
        )
        return path

    async def reconciler(self, config: Path, *args: str) -> Run:
        env = clean_env()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "reconciler",
            "--config",
            str(config),
            "--log-format",
            "json",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return Run(proc.returncode, stdout.decode(), stderr.decode())

    def snapshot(self) -> tuple[list[tuple[Any, ...]], ...]:
        """Everything a pass may decide, to compare two moments (schedule columns aside)."""
        queries = (
            "SELECT id, status, settled_at, last_provider_status FROM invoices ORDER BY id",
            "SELECT * FROM licenses ORDER BY id",
            "SELECT * FROM subscriptions ORDER BY id",
            "SELECT * FROM discount_redemptions ORDER BY id",
            "SELECT * FROM discount_codes ORDER BY id",
            "SELECT * FROM audit_log ORDER BY id",
            "SELECT * FROM post_settle_tasks ORDER BY invoice_id",
        )
        return tuple([tuple(row) for row in self.shop.rows(sql)] for sql in queries)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    db = tmp_path / "shop.db"
    create_schema(db)
    public_key = licenses.write_new_key(tmp_path / "signing-key.pem")
    async with FakeBTCPay() as fake:
        yield World(tmp_path, Shop(db), fake, public_key)


def minutes_ago(n: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=n)


@dataclass(frozen=True)
class Case:
    """A storefront invoice (``row``) and the fake's invoice for it (``btcpay``; None: unknown, 404)."""

    btcpay: Mapping[str, Any] | None
    row: Mapping[str, Any]
    status: str  # expected invoices.status after the pass
    actions: tuple[str, ...]  # expected audit actions targeting the invoice, sorted
    licensed: bool = False
    discount: bool = False  # a pending redemption of a discount code that has used a slot


CASES: dict[str, Case] = {
    "settled": Case({"status": "Settled", "payments": FULL}, {}, "settled", ("invoice.settled",), True),
    "settled_sats_yearly": Case(
        {"status": "Settled", "currency": "SATS", "amount": "100000", "payments": FULL},
        {"policy": "yearly"},
        "settled",
        ("invoice.settled",),
        True,
    ),
    "settled_usd_monthly": Case(
        {"status": "Settled", "currency": "USD", "amount": "50.00", "payments": FULL},
        {"policy": "monthly", "listed_currency": "USD", "listed_value": 5000},
        "settled",
        ("invoice.settled",),
        True,
    ),
    "settled_v1_lightning": Case(
        {"status": "Settled", "generation": "v1", "payments": [Payment("0.00100000123", method="BTC-LN")]},
        {},
        "settled",
        ("invoice.settled",),
        True,
    ),
    "overpaid": Case(
        {"status": "Settled", "additional_status": "PaidOver", "payments": [Payment("0.0012")]},
        {},
        "settled",
        ("invoice.settled",),
        True,
    ),
    "drift": Case(
        {"status": "Settled", "payments": FULL},
        {"amount_sats": 120_000},
        "settled",
        ("invoice.amount_mismatch", "invoice.settled"),
        True,
    ),
    "discount_settled": Case(
        {"status": "Settled", "payments": FULL}, {}, "settled", ("invoice.settled",), True, discount=True
    ),
    "null_provider": Case(
        {"status": "Settled", "payments": FULL}, {"provider": None}, "settled", ("invoice.settled",), True
    ),
    "processing": Case(
        {"status": "Processing", "payments": [Payment("0.001", status="Processing")]}, {}, "pending", ()
    ),
    "new": Case({"status": "New"}, {}, "pending", ()),
    "expired_with_discount": Case({"status": "Expired"}, {}, "expired", ("invoice.expired",), discount=True),
    "underpaid": Case(
        {"status": "Expired", "additional_status": "PaidPartial", "payments": [Payment("0.0004")]},
        {},
        "expired",
        ("invoice.expired", "invoice.underpaid"),
    ),
    "paid_late_pending": Case(
        {"status": "Expired", "additional_status": "PaidLate", "payments": FULL},
        {},
        "expired",
        ("invoice.expired", "invoice.paid_late"),
    ),
    "paid_late_expired_row": Case(
        {"status": "Expired", "additional_status": "PaidLate", "payments": FULL},
        {"status": "expired"},
        "expired",
        ("invoice.paid_late",),
    ),
    "marked_after_expiry": Case(
        {"status": "Settled", "additional_status": "Marked", "currency": "USD", "amount": "50.00"},
        {"status": "expired"},
        "settled",
        ("invoice.settled",),
        True,
    ),
    "invalid": Case(
        {"status": "Invalid", "payments": [Payment("0.001", status="Invalid")]},
        {},
        "invalid",
        ("invoice.invalid",),
    ),
    "unknown_to_btcpay": Case(None, {}, "pending", ("invoice.provider_not_found",)),
    "not_configured": Case({"status": "Settled", "payments": FULL}, {"provider": "stripe"}, "pending", ()),
    "recovery": Case({"status": "Settled", "payments": FULL}, {"status": "settled"}, "settled", (), True),
}


def seed(world: World) -> dict[str, str]:
    """Products, policies, CASES as invoices (and the fake's invoices); name → invoices.id."""
    shop = world.shop
    product = shop.product("editor")
    policies = {
        "default": shop.policy(product),
        "yearly": shop.policy(
            product, "yearly", duration_seconds=365 * 86_400, entitlements=["export", "sync"]
        ),
        "monthly": shop.policy(product, "monthly", is_recurring=True, renewal_period_days=30),
    }
    ids = {}
    for n, (name, case) in enumerate(CASES.items()):
        row = dict(case.row)
        provider_invoice_id = f"Btc{n:02d}{name.replace('_', '')}"
        ids[name] = shop.invoice(
            product,
            provider=row.pop("provider", PROVIDER),
            provider_invoice_id=provider_invoice_id,
            policy_id=policies[row.pop("policy", "default")],
            amount_sats=row.pop("amount_sats", 100_000),
            created_at=minutes_ago(60 - n),
            **row,
        )
        if case.discount:
            shop.discount(ids[name], code=f"CODE-{name}", used_count=1)
        if case.btcpay is not None:
            world.fake.add(make_invoice(provider_invoice_id, **case.btcpay))
    return ids


def pending(shop: Shop, provider_invoice_id: str, created_at: datetime, status: str = "pending") -> str:
    """An invoice of 100,000 sats (what the fake's invoices cost) at our BTCPay provider."""
    product = shop.scalar("SELECT id FROM products") or shop.product()
    return shop.invoice(
        product,
        provider=PROVIDER,
        provider_invoice_id=provider_invoice_id,
        status=status,
        amount_sats=100_000,
        created_at=created_at,
    )


def invoice_actions(shop: Shop, invoice_id: str) -> tuple[str, ...]:
    return tuple(sorted(row["action"] for row in shop.audits(invoice_id)))


@pytest.mark.slow
async def test_once_decides_every_invoice_as_spec_section_4_says_and_a_second_run_changes_nothing(
    world: World,
) -> None:
    ids = seed(world)
    config = world.config()

    run = await world.reconciler(config, "--once")

    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    shop = world.shop
    assert {name: shop.status(iid) for name, iid in ids.items()} == {n: c.status for n, c in CASES.items()}
    assert {name: invoice_actions(shop, iid) for name, iid in ids.items()} == {
        n: c.actions for n, c in CASES.items()
    }
    licensed = {name for name, iid in ids.items() if shop.licenses(iid)}
    assert licensed == {name for name, case in CASES.items() if case.licensed}
    counts = {kind: int(n) for kind, n in (c.split("=") for c in run.summary().split(": ", 1)[1].split())}
    assert counts == {
        "settle": 9,
        "recover": 1,
        "expire": 2,
        "paid_late_flag": 2,
        "invalidate": 1,
        "no_change": 2,
        "not_found": 1,
        "skipped": 1,
    }

    # docs/audit.md §1: every invoice audit names the provider, the provider's id and the raw status
    for row in shop.rows("SELECT * FROM audit_log WHERE target_kind = 'invoice'"):
        details = json.loads(row["details"])
        assert {"provider_id", "provider_invoice_id", "raw_status"} <= details.keys(), row["action"]
        assert details["provider_id"] == PROVIDER
    assert all(row["actor"] == "reconciler" for row in shop.audits())

    # docs/reconcile.md §14: the tripwire's evidence
    (drift,) = shop.audits(ids["drift"], "invoice.amount_mismatch")
    assert (
        json.loads(drift["details"]).items()
        >= {
            "expected_amount_sats": 120_000,
            "provider_amount_sats": 100_000,
            "provider_paid_sats": 100_000,
            "currency": "BTC",
        }.items()
    )

    # docs/licenses.md: the licenses verify with the published SDK and carry the policy's terms
    verifier = sdk.Verifier(sdk.PublicKey.from_pem(world.public_key))
    for name in licensed:
        (lic,) = shop.licenses(ids[name])
        verified = verifier.verify(lic["license_key"])
        assert str(verified.license_id) == lic["id"]
        issued = parse_ts(lic["issued_at"])
        if name == "settled_sats_yearly":
            assert verified.entitlements == ["export", "sync"]
            assert parse_ts(lic["expires_at"]) - issued == timedelta(days=365)
        else:
            assert lic["expires_at"] is None
    (subscription,) = shop.rows("SELECT * FROM subscriptions")
    assert subscription["first_invoice_id"] == ids["settled_usd_monthly"]
    assert (subscription["status"], subscription["period_days"]) == ("active", 30)
    assert (subscription["listed_currency"], subscription["listed_value"]) == ("USD", 5000)
    assert subscription["payment_provider_id"] == PROVIDER

    # docs/reconcile.md §7 / §8: one redemption redeemed with its license, the other cancelled and its slot
    # given back
    redemptions = {
        row["invoice_id"]: row
        for row in shop.rows(
            "SELECT r.invoice_id, r.status, r.license_id, c.used_count, c.id AS code_id"
            " FROM discount_redemptions r JOIN discount_codes c ON c.id = r.code_id"
        )
    }
    paid = redemptions[ids["discount_settled"]]
    assert (paid["status"], paid["used_count"]) == ("redeemed", 1)
    assert paid["license_id"] == shop.licenses(ids["discount_settled"])[0]["id"]
    assert [row["action"] for row in shop.audits(paid["code_id"])] == ["code.redeemed"]
    expired = redemptions[ids["expired_with_discount"]]
    assert (expired["status"], expired["used_count"], expired["license_id"]) == ("cancelled", 0, None)

    # docs/reconcile.md §1 recovery: a license, no provider call, no second invoice.settled
    (recovered,) = shop.licenses(ids["recovery"])
    (issued_audit,) = shop.audits(recovered["id"], "license.issued")
    assert json.loads(issued_audit["details"])["recovered"] is True
    assert world.fake.served(shop.invoice_row(ids["recovery"])["provider_invoice_id"]) == []
    # docs/reconcile.md §2: a provider id that is not configured is skipped: no call, no audit, one warning
    assert shop.invoice_row(ids["not_configured"])["last_provider_status"] is None
    assert sum("'stripe'" in m for m in run.messages("WARNING")) == 1

    # A second run with every invoice due again changes nothing (the once rule, docs/audit.md §3)
    shop.execute("UPDATE invoices SET next_check_at = NULL")
    before = world.snapshot()
    again = await world.reconciler(config, "--once")
    assert again.returncode == 0, again.stderr
    assert world.snapshot() == before
    assert "settle=" not in again.summary() and "no_change=" in again.summary()


@pytest.mark.slow
async def test_paid_late_settle_issues_the_license(world: World) -> None:
    invoice = pending(world.shop, "LatePayer1", minutes_ago(90), status="expired")
    world.fake.add(make_invoice("LatePayer1", "Expired", "PaidLate", payments=FULL))

    run = await world.reconciler(world.config(paid_late="settle"), "--once")

    assert run.returncode == 0, run.stderr
    assert world.shop.status(invoice) == "settled"
    assert invoice_actions(world.shop, invoice) == ("invoice.paid_late", "invoice.settled")
    assert len(world.shop.licenses(invoice)) == 1


@pytest.mark.slow
async def test_transient_503s_are_retried_until_the_settle(world: World) -> None:
    invoice = pending(world.shop, "Flaky1", minutes_ago(5))
    world.fake.add(make_invoice("Flaky1", "Settled", payments=FULL))
    world.fake.fault("Flaky1", statuses=[503, 503, 200])

    run = await world.reconciler(world.config(), "--once")

    assert run.returncode == 0, run.stderr
    assert world.fake.served("Flaky1") == [503, 503, 200]
    assert world.shop.status(invoice) == "settled"
    assert invoice_actions(world.shop, invoice) == ("invoice.settled",)
    assert len(world.shop.licenses(invoice)) == 1
    assert run.summary().endswith(": settle=1")


async def test_a_refused_key_exits_75_with_one_error_line_and_writes_nothing(world: World) -> None:
    for n in range(6):
        pending(world.shop, f"Paid{n}", minutes_ago(n))
        world.fake.add(make_invoice(f"Paid{n}", "Settled", payments=FULL))
    before = world.snapshot()

    run = await world.reconciler(world.config(api_key="not-the-key-at-all", max_concurrency=2), "--once")

    assert run.returncode == 75, run.stderr
    (error,) = run.messages("ERROR")
    assert PROVIDER in error and "401" in error
    assert world.snapshot() == before
    assert set(world.fake.served()) == {401}
    assert len(world.fake.served()) <= 2  # the circuit opened: only the calls already in flight


@pytest.mark.slow
async def test_the_api_key_never_reaches_the_output_even_on_errors(world: World) -> None:
    faults: dict[str, dict[str, Any]] = {
        "Garbage1": {"garbage": True},
        "Shape1": {"wrong_shape": ["not", "an", "invoice"]},
        "Down1": {"statuses": [503, 503, 503]},
        "Drop1": {"drop": True},
        "Slow1": {"latency": 1.5},
    }
    for n, (name, knobs) in enumerate(faults.items()):
        pending(world.shop, name, minutes_ago(n))
        world.fake.add(make_invoice(name, "Settled", payments=FULL))
        world.fake.fault(name, **knobs)
    pending(world.shop, "Missing1", minutes_ago(8))
    pending(world.shop, "OtherStore1", minutes_ago(9))
    world.fake.add(make_invoice("OtherStore1", "Settled", store_id="AnotherStore"))  # 403, then a key check

    good_key = await world.reconciler(world.config(timeout="1s"), "--once")
    world.shop.execute("UPDATE invoices SET next_check_at = NULL")
    world.fake.faults.clear()
    wrong_key = "wrong-key-that-is-also-secret-42"
    bad_key = await world.reconciler(world.config(api_key=wrong_key), "--once")

    assert good_key.returncode == 0, good_key.stderr
    assert bad_key.returncode == 75, bad_key.stderr
    assert set(world.fake.served()) >= {None, 200, 401, 403, 404, 503}
    for run in (good_key, bad_key):
        run.messages()  # every stderr line is a JSON log line
        for secret in (API_KEY, wrong_key):
            assert secret not in run.stdout
            assert secret not in run.stderr
    assert API_KEY not in json.dumps([dict(row) for row in world.shop.audits()])
