"""`make demo`: a shop database, a fake BTCPay Server and the real `reconciler --once`, before and after.

Everything happens in a temporary directory (removed at the end unless ``--keep``): ``reconciler keygen``
writes a signing key, the fake Greenfield server (``python -m tests.fakes.btcpay``) serves on loopback,
``reconciler init-db`` creates the schema, the storefront's rows are seeded, then the reconciler runs as
a subprocess, so the BTCPay driver is found through its entry point exactly as in production: a dry run
(decisions, no writes), a pass, and a second pass that must change nothing. No network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.timeutil import format_ts
from tests.support.shop import Shop, new_id

ROOT = Path(__file__).resolve().parents[1]
PROVIDER = "btcpay_main"
STORE_ID = "DemoStore7wXkPq3rT9mZsV2yNcL4hBfGd8eJuA5"
_AMOUNTS = {"BTC": "0.001", "SATS": "100000", "USD": "50.00"}  # 100,000 sats each at the fake's 50k USD/BTC
_TIMEOUT = 120


@dataclass(frozen=True)
class Case:
    """One storefront invoice and what the fake BTCPay Server says about it."""

    label: str
    status: str | None = "Settled"  # None: BTCPay has never heard of it (404)
    additional: str = "None"
    currency: str = "BTC"
    paid: str | None = "0.001"  # BTC paid, one payment
    payment_status: str = "Settled"
    method: str = "BTC-CHAIN"
    generation: str = "v2"
    plan: str = "perpetual"
    row: str = "pending"  # invoices.status before the pass
    amount_sats: int = 100_000
    provider: str | None = PROVIDER
    discount: bool = False
    renewal: bool = False
    fault: dict[str, Any] = field(default_factory=dict)


CASES = (
    Case("perpetual, BTC on-chain"),
    Case("perpetual, Lightning (msat amounts)", method="BTC-LN"),
    Case("perpetual, BTCPay before 2.0", generation="v1"),
    Case("yearly + entitlements, SATS", currency="SATS", plan="yearly"),
    Case("yearly, overpaid", additional="PaidOver", paid="0.0012", plan="yearly"),
    Case("monthly subscription, USD", currency="USD", plan="monthly"),
    Case("marked paid by the merchant, USD", additional="Marked", currency="USD", paid=None),
    Case("amount drift: shop says 120k sats", amount_sats=120_000),
    Case("provider NULL: default_provider", provider=None),
    Case("paid with a discount code", discount=True),
    Case("BTCPay answers 503, 503, then 200", fault={"statuses": [503, 503, 200]}),
    Case("subscription renewal, USD", currency="USD", plan="monthly", renewal=True),
    Case("paid, waiting for confirmations", "Processing", payment_status="Processing"),
    Case("checkout open", "New", paid=None),
    Case("checkout open, SATS", "New", currency="SATS", paid=None),
    Case("expired unpaid", "Expired", paid=None),
    Case("expired unpaid, yearly", "Expired", paid=None, plan="yearly"),
    Case("expired with a discount code", "Expired", paid=None, discount=True),
    Case("underpaid, then expired", "Expired", "PaidPartial", paid="0.0004"),
    Case("paid in full after expiry", "Expired", "PaidLate"),
    Case("already expired here, paid late", "Expired", "PaidLate", row="expired"),
    Case(
        "already expired here, merchant marked", additional="Marked", currency="USD", paid=None, row="expired"
    ),
    Case("payment invalid (double spend)", "Invalid", payment_status="Invalid"),
    Case("marked invalid by the merchant", "Invalid", "Marked", paid=None),
    Case("unknown to BTCPay (404)", None),
    Case("proxy error page instead of JSON", fault={"garbage": True}),
    Case("provider not configured (stripe)", None, provider="stripe"),
    Case("settled by a webhook, no license", row="settled"),
)

_NOTES = {
    "invoice.amount_mismatch": "tripwire: amount drift",
    "invoice.underpaid": "underpaid",
    "invoice.paid_late": "paid late: for review",
    "invoice.provider_not_found": "not found: audited",
    "invoice.bad_provider_response": "bad answer: audited",
    "subscription.renewed": "subscription renewed",
}


@dataclass(frozen=True)
class Seeded:
    case: Case
    invoice_id: str
    provider_invoice_id: str


class DemoFailed(Exception):
    """A step went wrong; the message says which, ``code`` is the demo's exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    try:
        _demo(workdir)
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return exc.code
    finally:
        if args.keep:
            print(f"kept {workdir} (config.toml, shop.db, fake-btcpay.json)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _demo(workdir: Path) -> None:
    api_key = f"demo-{secrets.token_hex(16)}"
    seeded = [Seeded(case, new_id(), f"Demo{n:02d}{secrets.token_hex(6)}") for n, case in enumerate(CASES)]
    state = workdir / "fake-btcpay.json"
    state.write_text(json.dumps(_fake_state(seeded, api_key)), encoding="utf-8")
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.btcpay", "--state", str(state), "--host", "127.0.0.1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=_clean_env(),
    )
    try:
        assert fake.stdout is not None
        started = fake.stdout.readline()
        if not started:
            raise DemoFailed(f"the fake BTCPay server did not start (exit {fake.wait(timeout=10)})")
        _with_fake(workdir, seeded, json.loads(started)["base_url"], api_key)
    finally:
        fake.send_signal(signal.SIGTERM)
        fake.wait(timeout=10)


def _with_fake(workdir: Path, seeded: Sequence[Seeded], base_url: str, api_key: str) -> None:
    config = _write_config(workdir, base_url, api_key)
    _reconciler(config, "keygen", "--out", str(workdir / "signing-key.pem"))
    _reconciler(config, "init-db")
    shop = Shop(workdir / "shop.db")
    _seed(shop, seeded)
    before = {s.invoice_id: shop.status(s.invoice_id) for s in seeded}
    print("invoice-reconciler demo: a shop database, a fake BTCPay Server, the real `reconciler --once`")
    print(f"  work dir  {workdir}")
    print(f"  shop      {len(seeded)} invoices ({_counts(Counter(before.values()))}); 3 policies")
    print(f"  BTCPay    fake Greenfield API at {base_url}, store {STORE_ID[:8]}…")

    _arm_faults(base_url, seeded)
    untouched = _world(shop)
    dry = _reconciler(config, "--dry-run", "--json")
    if _world(shop) != untouched:
        raise DemoFailed("the dry run wrote to the database")
    decisions = {line["invoice_id"]: line["decision"] for line in map(json.loads, dry.stdout.splitlines())}
    print(f"  dry run   {len(decisions)} decisions from BTCPay's answers, nothing written")

    _arm_faults(base_url, seeded)
    first = _reconciler(config, "--once")
    print()
    _print_table(shop, seeded, before, decisions)
    print()
    print(f"pass 1: {_summary(first)}")
    _print_totals(shop, seeded)
    print(f"BTCPay requests (dry run and pass 1): {_request_log(base_url)}")

    shop.execute("UPDATE invoices SET next_check_at = NULL")  # as if time passed: every invoice is due again
    world = _world(shop)
    second = _reconciler(config, "--once")
    if _world(shop) != world:
        raise DemoFailed(f"the second pass changed the database: {_summary(second)}")
    print(f"second pass, every invoice due again: nothing changed ({_summary(second)})")


# --- the world before the pass ----------------------------------------------------------------------


def _fake_state(seeded: Sequence[Seeded], api_key: str) -> dict[str, Any]:
    invoices = []
    for s in seeded:
        case = s.case
        if case.status is None:
            continue
        payments = (
            [{"value": case.paid, "status": case.payment_status, "method": case.method}] if case.paid else []
        )
        invoices.append(
            {
                "id": s.provider_invoice_id,
                "status": case.status,
                "additional_status": case.additional,
                "amount": _AMOUNTS[case.currency],
                "currency": case.currency,
                "payments": payments,
                "generation": case.generation,
                "order_id": s.invoice_id,
            }
        )
    permissions = [f"btcpay.store.canviewinvoices:{STORE_ID}"]
    return {"store_id": STORE_ID, "api_keys": {api_key: permissions}, "invoices": invoices}


def _write_config(workdir: Path, base_url: str, api_key: str) -> Path:
    key_file = workdir / "btcpay-api-key"
    key_file.write_text(api_key, encoding="utf-8")
    key_file.chmod(0o600)
    config = workdir / "config.toml"
    config.write_text(
        f"""default_provider = "{PROVIDER}"

[database]
url = {_toml(f"sqlite://{workdir / 'shop.db'}")}

[reconcile]
paid_late = "flag"

[license]
signing_key_file = {_toml(workdir / "signing-key.pem")}

[log]
format = "json"

[providers.{PROVIDER}]
driver = "btcpay"
base_url = {_toml(base_url)}
store_id = "{STORE_ID}"
api_key_file = {_toml(key_file)}
timeout = "5s"
retry_attempts = 3
retry_max_delay = "1s"
""",
        encoding="utf-8",
    )
    return config


def _toml(value: object) -> str:
    """A TOML basic string (JSON's string escapes are TOML's)."""
    return json.dumps(str(value))


def _seed(shop: Shop, seeded: Sequence[Seeded]) -> None:
    """Write what a storefront writes: products, policies, invoices, discount codes, a subscription."""
    now = datetime.now(UTC)
    product = shop.product("editor")
    plans = {
        "perpetual": shop.policy(product, "default"),
        "yearly": shop.policy(
            product, "yearly", duration_seconds=365 * 86_400, entitlements=["export", "sync"]
        ),
        "monthly": shop.policy(
            product, "monthly", is_recurring=True, renewal_period_days=30, entitlements=["sync"]
        ),
    }
    subscription = _existing_subscription(shop, product, plans["monthly"], now)
    for minutes, s in enumerate(seeded):
        case = s.case
        fiat = case.currency == "USD"
        shop.invoice(
            product,
            invoice_id=s.invoice_id,
            provider=case.provider,
            provider_invoice_id=s.provider_invoice_id,
            status=case.row,
            amount_sats=case.amount_sats,
            policy_id=plans[case.plan],
            created_at=now - timedelta(minutes=90 - 3 * minutes),
            listed_currency="USD" if fiat else None,
            listed_value=5_000 if fiat else None,
            subscription_id=subscription if case.renewal else None,
        )
        if case.discount:
            shop.discount(s.invoice_id, code=f"LAUNCH{minutes:02d}")


def _existing_subscription(shop: Shop, product: str, policy: str, now: datetime) -> str:
    """A subscription bought last month, past due: what a renewal invoice renews."""
    license_id, subscription_id = new_id(), new_id()
    started = format_ts(now - timedelta(days=31))
    shop.execute(
        "INSERT INTO licenses (id, product_id, policy_id, license_key, issued_at, entitlements)"
        " VALUES (?, ?, ?, 'LIC1-ISSUED-BY-THE-STOREFRONT', ?, '[\"sync\"]')",
        (license_id, product, policy, started),
    )
    shop.execute(
        "INSERT INTO subscriptions (id, license_id, policy_id, product_id, status, started_at, period_days,"
        " listed_currency, listed_value, payment_provider_id, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'past_due', ?, 30, 'USD', 5000, ?, ?, ?)",
        (subscription_id, license_id, policy, product, started, PROVIDER, started, started),
    )
    return subscription_id


def _arm_faults(base_url: str, seeded: Sequence[Seeded]) -> None:
    """Install each case's fault through the fake's control plane (a status sequence is used up once)."""
    for s in seeded:
        if s.case.fault:
            _post(f"{base_url}/_fake/faults", {"target": s.provider_invoice_id, **s.case.fault})


# --- running things ---------------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """Our environment without what would redirect the reconciler (RECONCILER_* overrides, systemd)."""
    dropped = ("RECONCILER_", "NOTIFY_SOCKET", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


def _reconciler(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``reconciler --config CONFIG ARGS``; DemoFailed with its last log lines unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(f"  {_message(line)}" for line in done.stderr.splitlines()[-15:])
        raise DemoFailed(f"`reconciler {' '.join(args)}` exited {done.returncode}:\n{tail}", done.returncode)
    return done


def _message(line: str) -> str:
    try:
        return str(json.loads(line)["message"])
    except (ValueError, KeyError, TypeError):
        return line


def _summary(done: subprocess.CompletedProcess[str]) -> str:
    lines = [_message(line) for line in done.stderr.splitlines()]
    return next((line for line in reversed(lines) if line.startswith("pass finished")), "(no summary line)")


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def _request_log(base_url: str) -> str:
    with urllib.request.urlopen(f"{base_url}/_fake/log", timeout=10) as response:
        log = json.load(response)
    statuses = Counter("dropped" if e["status"] is None else str(e["status"]) for e in log)
    return f"{len(log)} ({', '.join(f'{status} ×{n}' for status, n in sorted(statuses.items()))})"


# --- the world after --------------------------------------------------------------------------------


def _world(shop: Shop) -> tuple[Any, ...]:
    """What a pass may change, to compare two moments (bookkeeping columns aside)."""
    return tuple(
        [tuple(row) for row in shop.rows(sql)]
        for sql in (
            "SELECT id, status, settled_at FROM invoices ORDER BY id",
            "SELECT id, invoice_id, license_key FROM licenses ORDER BY id",
            "SELECT id, status, updated_at FROM subscriptions ORDER BY id",
            "SELECT id, status, license_id FROM discount_redemptions ORDER BY id",
            "SELECT id, used_count FROM discount_codes ORDER BY id",
            "SELECT id FROM audit_log ORDER BY id",
        )
    )


def _print_table(
    shop: Shop, seeded: Sequence[Seeded], before: dict[str, str], decisions: dict[str, str]
) -> None:
    header = f"{'invoice':<9}{'case':<39}{'BTCPay says':<21}{'decision':<16}{'before → after':<20}license"
    print(header)
    print("─" * (len(header) + 2))
    for s in seeded:
        row = shop.invoice_row(s.invoice_id)
        said = (row["last_provider_status"] or "-").removesuffix("/None")
        licensed = "yes" if shop.licenses(s.invoice_id) else "-"
        change = f"{before[s.invoice_id]} → {row['status']}"
        notes = ", ".join(_notes(shop, s.invoice_id))
        print(
            f"{s.invoice_id[:8]:<9}{s.case.label:<39}{said:<21}{decisions.get(s.invoice_id, '-'):<16}"
            f"{change:<20}{licensed:<8}{notes}".rstrip()
        )


def _notes(shop: Shop, invoice_id: str) -> list[str]:
    notes = [_NOTES[action] for action in shop.actions(invoice_id) if action in _NOTES]
    for (redemption,) in shop.rows(
        "SELECT status FROM discount_redemptions WHERE invoice_id = ?", (invoice_id,)
    ):
        notes.append({"redeemed": "code redeemed", "cancelled": "code slot given back"}.get(redemption, ""))
    if shop.scalar("SELECT count(*) FROM subscriptions WHERE first_invoice_id = ?", (invoice_id,)):
        notes.append("subscription started")
    issued = shop.rows(
        "SELECT a.details FROM audit_log a JOIN licenses l ON l.id = a.target_id"
        " WHERE a.action = 'license.issued' AND l.invoice_id = ?",
        (invoice_id,),
    )
    if any(json.loads(row["details"]).get("recovered") for row in issued):
        notes.append("recovered")
    return [note for note in notes if note]


def _print_totals(shop: Shop, seeded: Sequence[Seeded]) -> None:
    licenses = shop.scalar("SELECT count(*) FROM licenses WHERE invoice_id IS NOT NULL")
    subscriptions = Counter(row["status"] for row in shop.rows("SELECT status FROM subscriptions"))
    print(f"licenses issued: {licenses}; subscriptions: {_counts(subscriptions)}")
    example = next(s for s in seeded if s.case.plan == "yearly" and shop.licenses(s.invoice_id))
    (lic,) = shop.licenses(example.invoice_id)
    key = lic["license_key"]
    print(
        f"  e.g. {example.invoice_id[:8]}: {key[:36]}…{key[-8:]} (Ed25519, expires {lic['expires_at'][:10]})"
    )
    actions = Counter(row["action"] for row in shop.rows("SELECT action FROM audit_log"))
    print(f"audit rows ({sum(actions.values())}) by action:")
    items = [f"{action} {n}" for action, n in sorted(actions.items())]
    for start in range(0, len(items), 4):
        print("  " + " · ".join(items[start : start + 4]))


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {key}" for key, n in sorted(counter.items())) or "none"
