"""Several writers on one SQLite file (docs/reconcile.md §16, issue #2): two `reconciler --once` processes and
a storefront's webhook handler race over the same invoices; every license is issued exactly once and no
transition is lost."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from reconciler.timeutil import format_ts
from tests.acceptance.conftest import (
    EXPIRED,
    INVALID,
    PENDING,
    SETTLED,
    TIMEOUT,
    Workspace,
    recent,
    start,
)
from tests.support.process import clean_env
from tests.support.shop import new_id

WEBHOOK = Path(__file__).with_name("storefront_webhook.py")
ANSWERS = {"SETTLED": SETTLED, "EXPIRED": EXPIRED, "INVALID": INVALID, "PENDING": PENDING}
#: What a provider-checked invoice ends as.
FINAL = {"SETTLED": "settled", "EXPIRED": "expired", "INVALID": "invalid", "PENDING": "pending"}


def seed(ws: Workspace, count: int, rng: random.Random) -> tuple[str, dict[str, str]]:
    """`count` pending invoices in one transaction; their provider answers (mostly SETTLED) by invoice id."""
    product = ws.shop.product()
    ws.shop.policy(product)
    kinds = rng.choices(list(ANSWERS), weights=[60, 15, 10, 15], k=count)
    created = recent()
    plan = {new_id(): kind for kind in kinds}
    db = sqlite3.connect(ws.db)
    try:
        with db:
            db.executemany(
                "INSERT INTO invoices (id, payment_provider_id, provider_invoice_id, product_id, status, amount_sats,"
                " created_at, updated_at) VALUES (?, 'fake', ?, ?, 'pending', 10000, ?, ?)",
                [(i, f"p-{i}", product, format_ts(created), format_ts(created)) for i in plan],
            )
    finally:
        db.close()
    ws.answers({f"p-{i}": [ANSWERS[kind]] for i, kind in plan.items()})
    return product, plan


def settled_audits(ws: Workspace) -> Counter[str]:
    return Counter(row["target_id"] for row in ws.shop.audits(action="invoice.settled"))


def held_leases(ws: Workspace) -> list[str]:
    sql = "SELECT id FROM invoices WHERE lease_owner IS NOT NULL OR lease_token IS NOT NULL OR lease_until IS NOT NULL"
    return [row["id"] for row in ws.shop.rows(sql)]


@pytest.mark.slow
def test_two_runners_and_a_webhook_handler_issue_each_license_exactly_once(workspace: Workspace) -> None:
    began = time.monotonic()
    rng = random.Random(20261124)
    product, plan = seed(workspace, 600, rng)
    paid = [i for i, kind in plan.items() if kind == "SETTLED"]
    webhook_plan = [[i, product, rng.random() < 0.6] for i in rng.sample(paid, k=len(paid) * 2 // 5)]
    (workspace.root / "webhook-plan.json").write_text(json.dumps(webhook_plan))
    config = workspace.config(
        {"reconcile": {"batch_size": 20}, "providers": {"fake": {"latency": 0.1, "max_concurrency": 4}}}
    )
    webhook_out = workspace.root / "webhook-out.json"

    webhook = subprocess.Popen(
        [
            sys.executable,
            str(WEBHOOK),
            str(workspace.db),
            str(workspace.root / "webhook-plan.json"),
            str(webhook_out),
            "6",
        ],
        env=clean_env(),
    )
    runners = [start("--config", config, "--log-format", "json", "--once") for _ in range(2)]
    results = [(runner.communicate(timeout=TIMEOUT), runner.returncode) for runner in runners]
    assert webhook.wait(timeout=TIMEOUT) == 0
    for (_, stderr), code in results:
        assert code == 0, stderr

    racing = json.loads(webhook_out.read_text())
    passes = [
        json.loads(row["last_summary"]) for row in workspace.shop.rows("SELECT * FROM reconciler_instances")
    ]
    assert len(passes) == 2 and all(sum(p["counts"].values()) > 0 for p in passes), passes  # both took work
    assert racing["flipped_while_leased"], "the webhook never wrote while a reconciler held the row"
    assert set(racing["flipped"]) - set(racing["licensed"]), "the webhook always inserted its license"

    workspace.shop.execute("UPDATE invoices SET next_check_at = NULL")  # an operator: check everything now
    final = workspace.run("--once", config=config)
    assert final.returncode == 0, final

    shop = workspace.shop
    statuses = {row["id"]: row["status"] for row in shop.rows("SELECT id, status FROM invoices")}
    assert statuses == {i: FINAL[kind] for i, kind in plan.items()}
    assert (
        shop.rows("SELECT invoice_id, count(*) FROM licenses GROUP BY invoice_id HAVING count(*) > 1") == []
    )
    licensed = {row["invoice_id"] for row in shop.rows("SELECT invoice_id FROM licenses")}
    assert licensed == set(paid)
    assert held_leases(workspace) == []

    by_webhook = set(racing["flipped"])
    assert settled_audits(workspace) == Counter({i: 1 for i in paid if i not in by_webhook})
    issued = shop.audits(action="license.issued")
    webhook_licenses = shop.scalar("SELECT count(*) FROM licenses WHERE license_key = 'WEBHOOK-KEY'")
    assert webhook_licenses == len(racing["licensed"])
    assert len(issued) + webhook_licenses == len(paid)
    recovered = {
        json.loads(row["details"])["invoice_id"] for row in issued if json.loads(row["details"])["recovered"]
    }
    assert recovered == by_webhook - set(racing["licensed"])
    for action, kind in (("invoice.expired", "EXPIRED"), ("invoice.invalid", "INVALID")):
        assert Counter(row["target_id"] for row in shop.audits(action=action)) == Counter(
            {i: 1 for i, k in plan.items() if k == kind}
        )
    assert time.monotonic() - began < 60


def test_a_webhook_that_settles_during_the_fetch_fences_the_runner_out(workspace: Workspace) -> None:
    shop = workspace.shop
    invoice_id = shop.invoice(shop.product(), provider_invoice_id="A", created_at=recent())
    workspace.answers({"A": [SETTLED]})
    config = workspace.config({"providers": {"fake": {"latency": 3}}})
    runner = start("--config", config, "--once")
    deadline = time.monotonic() + 20
    while shop.invoice_row(invoice_id)["lease_token"] is None:
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate(timeout=TIMEOUT)
        time.sleep(0.01)

    shop.execute(
        "UPDATE invoices SET status = 'settled', settled_at = ? WHERE id = ?",
        (format_ts(recent(0)), invoice_id),
    )
    _, stderr = runner.communicate(timeout=TIMEOUT)

    assert runner.returncode == 0, stderr
    assert held_leases(workspace) == []
    assert shop.actions(invoice_id) == []
    shop.execute("UPDATE invoices SET next_check_at = NULL")
    assert workspace.run("--once", config=config).returncode == 0
    [license_row] = shop.licenses(invoice_id)
    [issued] = shop.audits(action="license.issued")
    assert json.loads(issued["details"])["recovered"] is True
    assert shop.actions(invoice_id) == []  # no second invoice.settled: the webhook settled it
    assert issued["target_id"] == license_row["id"]
