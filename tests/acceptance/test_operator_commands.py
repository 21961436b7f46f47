"""Issue 10 as an operator meets it: `--once` under SIGTERM, `status`, `explain` and `doctor`.

The real command in a subprocess against a seeded SQLite shop and the scripted `fake` driver.
"""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.store import base
from reconciler.timeutil import format_ts
from tests.acceptance.conftest import SETTLED, TIMEOUT, Workspace, recent, start


def leased(workspace: Workspace) -> int:
    return int(workspace.shop.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL"))


def wait_for_a_lease(workspace: Workspace, proc: object) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if leased(workspace):
            return
        time.sleep(0.02)
    pytest.fail("the pass never claimed anything")


# -- --once drains on SIGTERM --------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_once_finishes_in_flight_invoices_on_a_stop_signal_and_exits_0(
    workspace: Workspace, signum: signal.Signals
) -> None:
    product = workspace.shop.product()
    for i in range(8):
        workspace.shop.invoice(product, provider_invoice_id=f"P{i}", created_at=recent())
    workspace.answers({"*": [SETTLED]})
    config = workspace.config(
        {
            "reconcile": {"batch_size": 2},
            "providers": {"fake": {"latency": 1.5, "max_concurrency": 2}},
            "daemon": {"shutdown_grace": "30s"},
        }
    )
    proc = start("--config", config, "--once")
    wait_for_a_lease(workspace, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, stderr
    assert f"{signum.name} received: finishing in-flight invoices, then stopping" in stderr
    assert "pass finished" in stderr
    assert leased(workspace) == 0
    settled = workspace.shop.scalar("SELECT count(*) FROM invoices WHERE status = 'settled'")
    licensed = workspace.shop.scalar("SELECT count(*) FROM licenses")
    assert 1 <= settled < 8 and licensed == settled  # it stopped early, and nothing is half done


def test_once_cancelled_after_the_grace_releases_its_leases(workspace: Workspace) -> None:
    product = workspace.shop.product()
    for i in range(4):
        workspace.shop.invoice(product, provider_invoice_id=f"P{i}", created_at=recent())
    workspace.answers({"*": [SETTLED]})
    config = workspace.config(
        {
            "reconcile": {"batch_size": 2},
            "providers": {"fake": {"latency": 30, "max_concurrency": 2}},
            "daemon": {"shutdown_grace": "1s"},
        }
    )
    proc = start("--config", config, "--once")
    wait_for_a_lease(workspace, proc)
    time.sleep(0.3)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert time.monotonic() - began < 10
    assert proc.returncode == 75, stderr
    assert "shutdown grace of 1s ran out" in stderr
    assert leased(workspace) == 0
    assert workspace.shop.scalar("SELECT count(*) FROM licenses") == 0


# -- status ----------------------------------------------------------------------------------------------
def test_status_lists_live_instances_and_counts_the_rest(workspace: Workspace) -> None:
    now = datetime.now(UTC)
    for n in range(30):
        started = format_ts(now - timedelta(days=2, minutes=n))
        workspace.shop.execute(
            "INSERT INTO reconciler_instances (lease_owner, hostname, pid, started_at, last_pass_started_at,"
            " last_pass_finished_at) VALUES (?, 'old', ?, ?, ?, ?)",
            (f"old:{n}:x", n, started, started, started),
        )
    crashed = format_ts(now - timedelta(seconds=20))
    workspace.shop.execute(
        "INSERT INTO reconciler_instances (lease_owner, hostname, pid, started_at, last_pass_started_at)"
        " VALUES ('crashed:1:x', 'h', 1, ?, ?)",
        (crashed, crashed),
    )
    run = workspace.run("--once")
    assert run.returncode == 0, run
    status = workspace.run("status")
    assert status.returncode == 0, status
    instance_lines = [line for line in status.stdout.splitlines() if line.startswith("  ") and ":" in line]
    assert not any(line.strip().startswith("old:") for line in instance_lines), status.stdout
    assert "and 30 older instance row(s)" in status.stdout
    assert "crashed:1:x: pass started" in status.stdout and "not finished" in status.stdout
    assert "never" not in status.stdout


def test_status_lists_quarantined_invoices_and_says_what_a_null_provider_means(
    workspace: Workspace,
) -> None:
    product = workspace.shop.product()
    bad = workspace.shop.invoice(product, provider_invoice_id="BAD", created_at=recent())
    workspace.shop.execute(
        "UPDATE invoices SET created_at = '2026-12-01T19:61:00.000000Z' WHERE id = ?", (bad,)
    )
    workspace.shop.invoice(product, provider=None, provider_invoice_id="N", created_at=recent())
    run = workspace.run("--once")
    assert run.returncode == 75, run  # an unreadable row degrades the pass
    assert bad in run.stderr and "created_at" in run.stderr
    assert "invoices without a payment_provider_id are skipped" in run.stderr
    status = workspace.run("status")
    assert f"{bad}: unreadable created_at" in status.stdout, status.stdout
    assert "(no provider id: skipped, no default_provider is set)" in status.stdout
    data = json.loads(workspace.run("status", "--json").stdout)
    assert data["quarantined"]["total"] == 1
    assert data["quarantined"]["invoices"][0]["invoice_id"] == bad


# -- explain ---------------------------------------------------------------------------------------------
def test_explain_shows_the_provider_error_the_license_and_finds_provider_ids(workspace: Workspace) -> None:
    product = workspace.shop.product()
    failing = workspace.shop.invoice(product, provider_invoice_id="DOWN", created_at=recent())
    paid = workspace.shop.invoice(product, provider_invoice_id="PAID", created_at=recent())
    workspace.answers(
        {
            "DOWN": [{"error": "unavailable"}],
            "PAID": [SETTLED],
            "*": [{"status": "PENDING", "raw_status": "New"}],
        }
    )
    assert workspace.run("--once").returncode in (0, 75)

    down = workspace.run("explain", failing)
    assert down.returncode == 0, down
    assert "provider_error" in down.stdout and "scripted unavailable" in down.stdout

    settled = workspace.run("explain", paid)
    license_id = workspace.shop.scalar("SELECT id FROM licenses WHERE invoice_id = ?", (paid,))
    assert f"license     {license_id} (active)" in settled.stdout, settled.stdout

    by_provider_id = workspace.run("explain", "--provider-invoice-id", "PAID", "--json")
    assert by_provider_id.returncode == 0, by_provider_id
    (found,) = json.loads(by_provider_id.stdout)
    assert found["invoice"]["id"] == paid and found["license"]["id"] == license_id

    missing = workspace.run("explain", "--provider-invoice-id", "NOPE")
    assert missing.returncode == 1 and "no invoice with provider invoice id 'NOPE'" in missing.stderr
    both = workspace.run("explain", paid, "--provider-invoice-id", "PAID")
    assert both.returncode == 2


# -- doctor ----------------------------------------------------------------------------------------------
def test_doctor_runs_every_start_up_check_of_run(workspace: Workspace) -> None:
    healthy = workspace.run("doctor")
    assert healthy.returncode == 0, healthy
    for check in ("drivers", "signing key", "database"):
        assert f"ok      {check}:" in healthy.stdout
    assert f"schema version {base.SCHEMA_VERSION}" in healthy.stdout

    workspace.key.unlink()
    config = workspace.config(
        {"database": {"url": f"sqlite://{workspace.root / 'absent.db'}"}}, name="b.toml"
    )
    broken = workspace.run("doctor", config=config)
    assert broken.returncode == 2, broken
    assert "FAILED  signing key:" in broken.stdout and "FAILED  database:" in broken.stdout
    assert "ok      drivers:" in broken.stdout
    assert not (workspace.root / "absent.db").exists()  # doctor creates nothing
