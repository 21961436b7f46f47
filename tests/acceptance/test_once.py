"""One real `reconciler --once` over invoices of every kind (docs/reconcile.md), then a second that changes
nothing but the schedule."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections import defaultdict
from typing import Any

from reconciler import licenses
from tests.acceptance.conftest import EXPIRED, INVALID, PENDING, SETTLED, Workspace, recent

#: Columns a check that changes nothing may still move (docs/reconcile.md §5, §10).
SCHEDULE_COLUMNS = ("next_check_at", "check_attempts", "last_checked_at")


def verifies(license_key: str, public_key: Any) -> bool:
    """`LIC1-<payload>-<signature>` checked against the public key (docs/licenses.md §3); raises when it does
    not."""
    prefix, payload, signature = license_key.split("-")

    def b32(text: str) -> bytes:
        return base64.b32decode(text + "=" * (-len(text) % 8))

    public_key.verify(b32(signature), b32(payload))
    return prefix == "LIC1"


def invoice_of(row: sqlite3.Row) -> str:
    """The invoice an audit row is about (license and discount-code rows name it in their details)."""
    return str(
        row["target_id"] if row["target_kind"] == "invoice" else json.loads(row["details"])["invoice_id"]
    )


def picture(ws: Workspace) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a pass may write, invoices without their schedule columns."""
    columns = [
        r["name"] for r in ws.shop.rows("PRAGMA table_info(invoices)") if r["name"] not in SCHEDULE_COLUMNS
    ]
    tables = {
        "invoices": f"SELECT {', '.join(columns)} FROM invoices ORDER BY id",
        "licenses": "SELECT * FROM licenses ORDER BY id",
        "subscriptions": "SELECT * FROM subscriptions ORDER BY id",
        "discount_codes": "SELECT * FROM discount_codes ORDER BY id",
        "discount_redemptions": "SELECT * FROM discount_redemptions ORDER BY id",
        "post_settle_tasks": "SELECT * FROM post_settle_tasks ORDER BY invoice_id, kind",
        "audit_log": "SELECT * FROM audit_log ORDER BY occurred_at, id",
    }
    return {name: [tuple(row) for row in ws.shop.rows(sql)] for name, sql in tables.items()}


def test_one_pass_decides_every_kind_of_invoice_and_a_second_changes_nothing(workspace: Workspace) -> None:
    shop = workspace.shop
    app = shop.product("app")
    shop.policy(app, "default", entitlements=["pro"])
    saas = shop.product("saas")
    monthly = shop.policy(saas, "monthly", is_recurring=True, renewal_period_days=30)
    tool = shop.product("tool")
    yearly = shop.policy(tool, "yearly", duration_seconds=365 * 86_400, entitlements=["export", "sync"])

    def invoice(name: str, product: str = app, **fields: Any) -> str:
        fields.setdefault("created_at", recent())
        return shop.invoice(product, provider_invoice_id=name, **fields)

    inv = {
        "settled": invoice("settled"),
        "settled_discount": invoice("settled_discount"),
        "settled_recurring": invoice("settled_recurring", saas),
        "settled_policy": invoice("settled_policy", tool, policy_id=yearly),
        "settled_default_provider": invoice("settled_default_provider", provider=None),
        "settled_mismatch": invoice("settled_mismatch"),
        "recover": invoice("recover", status="settled"),
        "expired": invoice("expired"),
        "expired_discount": invoice("expired_discount"),
        "paid_late": invoice("paid_late"),
        "invalid": invoice("invalid"),
        "pending_new": invoice("pending_new"),
        "pending_processing": invoice("pending_processing"),
        "not_found": invoice("not_found"),
        "bad_response": invoice("bad_response"),
        "unknown_status": invoice("unknown_status"),
        "already_expired": invoice("already_expired", status="expired"),
        "unconfigured_1": invoice("unconfigured_1", provider="elsewhere"),
        "unconfigured_2": invoice("unconfigured_2", provider="elsewhere"),
        "too_old": invoice("too_old", created_at=recent(minutes=4 * 24 * 60)),
    }
    redeemed_code = shop.discount(inv["settled_discount"], used_count=1)
    cancelled_code = shop.discount(inv["expired_discount"], used_count=1)
    workspace.answers(
        {
            "settled": [SETTLED],
            "settled_discount": [SETTLED],
            "settled_recurring": [SETTLED],
            "settled_policy": [SETTLED],
            "settled_default_provider": [SETTLED],
            "settled_mismatch": [SETTLED | {"amount_sats": 9_000}],
            # the recovery path asks no provider: a crash here would make the pass degraded (exit 75)
            "recover": [{"error": "crash"}],
            "expired": [EXPIRED],
            "expired_discount": [EXPIRED],
            "paid_late": [EXPIRED | {"raw_additional_status": "PaidLate", "paid_late": True}],
            "invalid": [INVALID],
            "pending_new": [PENDING],
            "pending_processing": [PENDING | {"raw_status": "Processing"}],
            "not_found": [{"error": "not_found"}],
            "bad_response": [{"error": "bad_response"}],
            "unknown_status": [{"status": "UNKNOWN", "raw_status": "Frozen"}],
            "already_expired": [EXPIRED],
            "too_old": [SETTLED],
        }
    )
    config = workspace.config({"default_provider": "fake"})

    first = workspace.run("--once", config=config)

    assert first.returncode == 0, first
    assert sum("'elsewhere'" in line for line in first.lines) == 1, first
    settled = {k for k in inv if k.startswith("settled")} | {"recover"}
    expected_status = {k: "settled" for k in settled} | {
        "expired": "expired",
        "expired_discount": "expired",
        "paid_late": "expired",
        "already_expired": "expired",
        "invalid": "invalid",
    }
    assert {k: shop.status(i) for k, i in inv.items()} == {k: expected_status.get(k, "pending") for k in inv}

    by_invoice = {row["invoice_id"]: row for row in shop.rows("SELECT * FROM licenses")}
    assert {k for k, i in inv.items() if i in by_invoice} == settled
    assert shop.rows("SELECT invoice_id FROM licenses GROUP BY invoice_id HAVING count(*) > 1") == []
    public_key = licenses.load_signing_key(workspace.key).public_key()
    assert all(verifies(row["license_key"], public_key) for row in by_invoice.values())
    assert json.loads(by_invoice[inv["settled"]]["entitlements"]) == ["pro"]
    assert json.loads(by_invoice[inv["settled_policy"]]["entitlements"]) == ["export", "sync"]
    assert by_invoice[inv["settled_policy"]]["policy_id"] == yearly
    assert by_invoice[inv["settled_policy"]]["expires_at"] is not None

    actions: defaultdict[str, list[str]] = defaultdict(list)
    for row in shop.audits():
        actions[invoice_of(row)].append(row["action"])
    assert {k: sorted(actions[i]) for k, i in inv.items()} == {
        "settled": ["invoice.settled", "license.issued"],
        "settled_discount": ["code.redeemed", "invoice.settled", "license.issued"],
        "settled_recurring": ["invoice.settled", "license.issued"],
        "settled_policy": ["invoice.settled", "license.issued"],
        "settled_default_provider": ["invoice.settled", "license.issued"],
        "settled_mismatch": ["invoice.amount_mismatch", "invoice.settled", "license.issued"],
        "recover": ["license.issued"],
        "expired": ["invoice.expired"],
        "expired_discount": ["invoice.expired"],
        "paid_late": ["invoice.expired", "invoice.paid_late"],
        "invalid": ["invoice.invalid"],
        "pending_new": [],
        "pending_processing": [],
        "not_found": ["invoice.provider_not_found"],
        "bad_response": ["invoice.bad_provider_response"],
        "unknown_status": ["invoice.unknown_status"],
        "already_expired": [],
        "unconfigured_1": [],
        "unconfigured_2": [],
        "too_old": [],
    }
    for row in shop.audits():
        details = json.loads(row["details"])
        assert row["actor"] == "reconciler"
        if row["target_kind"] == "invoice":
            assert {"provider_id", "provider_invoice_id", "raw_status"} <= set(details), dict(row)
    [recovered] = shop.audits(action="license.issued", target_id=by_invoice[inv["recover"]]["id"])
    assert json.loads(recovered["details"])["recovered"] is True
    [issued_default] = shop.audits(
        action="license.issued", target_id=by_invoice[inv["settled_default_provider"]]["id"]
    )
    assert json.loads(issued_default["details"])["provider_id"] == "fake"

    [subscription] = shop.rows("SELECT * FROM subscriptions")
    assert subscription["license_id"] == by_invoice[inv["settled_recurring"]]["id"]
    assert (subscription["policy_id"], subscription["status"], subscription["period_days"]) == (
        monthly,
        "active",
        30,
    )
    assert (subscription["listed_currency"], subscription["listed_value"]) == ("SAT", 10_000)
    redemptions = {row["invoice_id"]: row for row in shop.rows("SELECT * FROM discount_redemptions")}
    assert redemptions[inv["settled_discount"]]["status"] == "redeemed"
    assert redemptions[inv["settled_discount"]]["license_id"] == by_invoice[inv["settled_discount"]]["id"]
    assert redemptions[inv["expired_discount"]]["status"] == "cancelled"
    used = {row["id"]: row["used_count"] for row in shop.rows("SELECT id, used_count FROM discount_codes")}
    assert used == {redeemed_code: 1, cancelled_code: 0}
    assert shop.rows("SELECT id FROM invoices WHERE lease_token IS NOT NULL OR lease_owner IS NOT NULL") == []
    untouched = ("too_old", "unconfigured_1", "unconfigured_2")
    assert all(shop.invoice_row(inv[k])["last_provider_status"] is None for k in untouched)

    before = picture(workspace)
    attempts = {
        row["id"]: row["check_attempts"] for row in shop.rows("SELECT id, check_attempts FROM invoices")
    }
    shop.execute("UPDATE invoices SET next_check_at = NULL")  # an operator asks for every invoice again

    second = workspace.run("--once", config=config)

    assert second.returncode == 0, second
    assert picture(workspace) == before
    rechecked = {
        row["id"]
        for row in shop.rows("SELECT * FROM invoices")
        if row["check_attempts"] > attempts[row["id"]]
    }
    assert {
        inv[k] for k in ("pending_new", "not_found", "unknown_status", "paid_late", "expired")
    } <= rechecked
