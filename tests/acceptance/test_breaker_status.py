"""Issue 12 as an operator meets it: `--once` during an outage, then `reconciler status`.

The real command in a subprocess against a seeded SQLite shop and the scripted `fake` driver, whose every
answer is "unavailable".
"""

from __future__ import annotations

import json

from tests.acceptance.conftest import Workspace, recent

PROVIDER_SETTINGS = {"breaker_threshold": 2, "breaker_cooldown": "10m", "retry_attempts": 1}


def test_once_during_an_outage_opens_the_circuit_and_status_shows_it(workspace: Workspace) -> None:
    product = workspace.shop.product()
    workspace.shop.policy(product)
    for _ in range(6):
        workspace.shop.invoice(product, created_at=recent())
    workspace.answers({"*": [{"error": "unavailable"}]})
    config = workspace.config({"providers": {"fake": PROVIDER_SETTINGS}})

    run = workspace.run("run", "--once", config=config)

    assert run.returncode == 75, run
    opened = [line for line in run.lines if "circuit open" in line and "no requests" in line]
    assert len(opened) == 1, run
    summary = run.lines[-1]
    assert "provider_error=6" in summary and "DEGRADED(fake: circuit open until " in summary, run
    rows = workspace.shop.rows("SELECT check_attempts, lease_token, last_checked_at FROM invoices")
    assert all(row["check_attempts"] == 0 and row["lease_token"] is None for row in rows)
    assert all(row["last_checked_at"] is None for row in rows)

    status = workspace.run("status", config=config)

    assert status.returncode == 0, status
    (line,) = [line for line in status.stdout.splitlines() if "circuit" in line]
    assert line.startswith("    fake: circuit open until "), status.stdout

    data = json.loads(workspace.run("status", "--json", config=config).stdout)
    (circuit,) = data["circuits"]
    assert circuit["provider_id"] == "fake" and circuit["state"] == "open"
    (instance,) = data["instances"]
    assert circuit["lease_owner"] == instance["lease_owner"]
    assert circuit["until"] == instance["last_summary"]["circuits"]["fake"]["until"]
    assert line.endswith(circuit["until"])


def test_status_shows_nothing_about_circuits_that_are_closed(workspace: Workspace) -> None:
    product = workspace.shop.product()
    workspace.shop.policy(product)
    workspace.shop.invoice(product, created_at=recent())
    config = workspace.config({"providers": {"fake": PROVIDER_SETTINGS}})

    run = workspace.run("run", "--once", config=config)
    status = workspace.run("status", config=config)

    assert run.returncode == 0, run
    assert "circuit" not in status.stdout, status.stdout
    assert json.loads(workspace.run("status", "--json", config=config).stdout)["circuits"] == []
