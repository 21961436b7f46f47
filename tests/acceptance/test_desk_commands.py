"""The operator's actions on the command line (docs/cli.md): the real command in a subprocess against a
seeded SQLite shop and the scripted `fake` driver; exit 0 done, 1 refused, 2 invalid input."""

from __future__ import annotations

import getpass
import json
from typing import Any

from tests.acceptance.conftest import PENDING, SETTLED, Workspace, assert_refused, recent

PAID_LATE: dict[str, Any] = {
    "status": "EXPIRED",
    "raw_status": "Expired",
    "raw_additional_status": "PaidLate",
    "paid_late": True,
    "amount_sats": 10_000,
}


def actor() -> str:
    return f"cli:{getpass.getuser()}"


def test_review_settle_then_a_second_settle_is_refused(workspace: Workspace) -> None:
    product = workspace.shop.product()
    workspace.shop.policy(product)
    iid = workspace.shop.invoice(product, provider_invoice_id="L1", status="expired", created_at=recent())
    workspace.answers({"L1": [PAID_LATE]})
    done = workspace.run("review", "settle", iid, "--reason", "paid by the customer a day late", "--json")
    assert done.returncode == 0, done
    result = json.loads(done.stdout)
    (lic,) = workspace.shop.licenses(iid)
    assert result == {"invoice_id": iid, "license_id": lic["id"], "status": "settled"}
    (settled,) = workspace.shop.audits(iid, "invoice.settled")
    assert settled["actor"] == actor()
    assert json.loads(settled["details"])["reason"] == "paid by the customer a day late"

    before = workspace.state()
    again = workspace.run("review", "settle", iid, "--reason", "again")
    assert_refused(again, "refused (not-applicable)", "already settled", lic["id"], code=1)
    assert workspace.state() == before


def test_invalid_input_exits_2_and_changes_nothing(workspace: Workspace) -> None:
    product = workspace.shop.product()
    iid = workspace.shop.invoice(product, provider_invoice_id="L1", status="expired", created_at=recent())
    workspace.answers({"L1": [PAID_LATE]})
    config = workspace.config()
    before = workspace.state()
    for reason in ("", "x" * 1001, "two\nlines"):
        outcome = workspace.run("review", "settle", iid, "--reason", reason, config=config)
        assert_refused(outcome, "refused (invalid)", "reason", code=2)
    missing = workspace.run("review", "settle", iid, config=config)  # --reason is required
    assert missing.returncode == 2 and "--reason" in missing.stderr
    unknown = workspace.run("recheck", "'; DROP TABLE invoices; --", config=config)
    assert_refused(unknown, "refused (not-found)", "no invoice with id", code=1)
    assert workspace.state() == before


def test_recheck_retry_task_and_provider_pause_resume(workspace: Workspace) -> None:
    product = workspace.shop.product()
    workspace.shop.policy(product)
    iid = workspace.shop.invoice(product, provider_invoice_id="S1", created_at=recent())
    workspace.answers({"S1": [SETTLED], "*": [PENDING]})
    config = workspace.config()

    paused = workspace.run("provider", "pause", "fake", "--reason", "maintenance", config=config)
    assert paused.returncode == 0 and "provider fake paused" in paused.stdout, paused
    status = json.loads(workspace.run("status", "--json", config=config).stdout)
    assert [(c["provider_id"], c["by"], c["reason"]) for c in status["paused"]] == [
        ("fake", actor(), "maintenance")
    ]
    assert "fake: by " in workspace.run("status", config=config).stdout
    refused = workspace.run("recheck", iid, config=config)
    assert_refused(refused, "refused (not-applicable)", "provider fake is paused", code=1)
    once = workspace.run("--once", config=config)
    assert once.returncode == 0, once
    assert workspace.shop.scalar("SELECT status FROM invoices WHERE id = ?", (iid,)) == "pending"
    resumed = workspace.run("provider", "resume", "fake", config=config)
    assert resumed.returncode == 0, resumed
    assert json.loads(workspace.run("status", "--json", config=config).stdout)["paused"] == []

    rechecked = workspace.run("recheck", iid, "--json", config=config)
    assert rechecked.returncode == 0, rechecked
    result = json.loads(rechecked.stdout)
    assert (result["decision"], result["status"]) == ("settle", "settled") and result["license_id"]

    workspace.shop.execute(
        "INSERT INTO post_settle_tasks (invoice_id, kind, provider_id, status, attempts, created_at, updated_at)"
        " VALUES (?, 'fake.capture', 'fake', 'failed', 8, '2026-01-01T00:00:00.000000Z',"
        " '2026-01-01T00:00:00.000000Z')",
        (iid,),
    )
    retried = workspace.run("retry-task", iid, "fake.capture", config=config)
    assert retried.returncode == 0, retried
    row = workspace.shop.rows("SELECT status, attempts FROM post_settle_tasks WHERE invoice_id = ?", (iid,))[
        0
    ]
    assert (row["status"], row["attempts"]) == ("pending", 0)
    again = workspace.run("retry-task", iid, "fake.capture", config=config)
    assert_refused(again, "refused (not-applicable)", "only a failed task is retried", code=1)
    actors = {
        r["actor"] for r in workspace.shop.rows("SELECT actor FROM audit_log WHERE actor <> 'reconciler'")
    }
    assert actors == {actor()}


def test_review_dismiss(workspace: Workspace) -> None:
    product = workspace.shop.product()
    iid = workspace.shop.invoice(product, provider_invoice_id="R1", created_at=recent())
    workspace.shop.execute(
        "INSERT INTO review_items (id, invoice_id, kind, opened_at, audit_id)"
        " VALUES ('item-1', ?, 'invoice.refunded', '2026-01-01T00:00:00.000000Z', 'a')",
        (iid,),
    )
    done = workspace.run("review", "dismiss", "item-1", "--reason", "refund handled by support")
    assert done.returncode == 0 and "review item item-1 dismissed" in done.stdout, done
    again = workspace.run("review", "dismiss", "item-1", "--reason", "again")
    assert_refused(again, "refused (not-applicable)", "dismissed already", code=1)
    unknown = workspace.run("review", "dismiss", "nope", "--reason", "x")
    assert_refused(unknown, "refused (not-found)", "no review item", code=1)
