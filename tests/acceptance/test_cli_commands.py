"""The commands of docs/cli.md §2 as an operator runs them: drivers, check-config, keygen, status, explain,
the dry run, and where global options may stand."""

from __future__ import annotations

import json
import socket
from importlib import metadata
from pathlib import Path

import pytest

from reconciler import licenses
from tests.acceptance.conftest import (
    EXPIRED,
    PENDING,
    SETTLED,
    Outcomes,
    Workspace,
    assert_refused,
    make_workspace,
    recent,
    reconciler,
)
from tests.support.shop import Shop

SECRET = "btcpay-Secret-Value-8c1f4e"
FILE_SECRET = "btcpay-File-Secret-3a9d07"
MASK = "**********"


def test_drivers_lists_each_installed_driver_with_its_distribution_and_version() -> None:
    outcome = reconciler("drivers")

    assert outcome.returncode == 0, outcome
    lines = {line.split()[0]: line for line in outcome.stdout.splitlines()}
    for name, distribution in [
        ("btcpay", "reconciler-btcpay"),
        ("zaprite", "reconciler-zaprite"),
        ("fake", "reconciler-fake-driver"),
    ]:
        assert f"{distribution} {metadata.version(distribution)}" in lines[name], outcome


def test_check_config_prints_the_effective_configuration_with_secrets_masked(workspace: Workspace) -> None:
    secret_file = workspace.root / "backup-key"
    secret_file.write_text(FILE_SECRET + "\n")
    btcpay = {"driver": "btcpay", "base_url": "http://127.0.0.1:9", "store_id": "Store1"}
    config = workspace.config(
        {
            "reconcile": {"interval": "90s"},
            "providers": {
                "shop": btcpay | {"api_key": SECRET},
                "backup": btcpay | {"api_key_file": str(secret_file), "timeout": "5s"},
            },
        }
    )
    before = workspace.state()

    outcome = workspace.run("check-config", config=config)

    assert outcome.returncode == 0, outcome
    shown = json.loads(outcome.stdout)
    assert shown["reconcile"]["interval"] == "90s"
    assert shown["providers"]["shop"]["api_key"] == MASK
    assert shown["providers"]["backup"]["api_key"] == MASK
    assert shown["providers"]["backup"]["timeout"] == "5s"
    assert shown["providers"]["fake"]["driver"] == "fake"
    assert SECRET not in outcome.stdout + outcome.stderr
    assert FILE_SECRET not in outcome.stdout + outcome.stderr
    assert workspace.state() == before


def test_keygen_writes_a_private_key_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    out = tmp_path / "new-key.pem"

    outcome = reconciler("keygen", "--out", out, "--config", tmp_path / "no-config.toml")

    assert outcome.returncode == 0, outcome
    assert out.stat().st_mode & 0o777 == 0o600
    assert outcome.stdout == licenses.public_pem(licenses.load_signing_key(out))
    written = out.read_bytes()

    again = reconciler("keygen", "--out", out)

    assert_refused(again, str(out), "already exists")
    assert out.read_bytes() == written
    assert out.stat().st_mode & 0o777 == 0o600


def test_keygen_defaults_to_the_configured_key_and_needs_no_database(workspace: Workspace) -> None:
    target = workspace.root / "keys" / "signing.pem"
    target.parent.mkdir()
    missing_db = workspace.root / "absent.db"
    config = workspace.config(
        {"database": {"url": f"sqlite://{missing_db}"}, "license": {"signing_key_file": str(target)}}
    )

    outcome = workspace.run("keygen", config=config)

    assert outcome.returncode == 0, outcome
    assert outcome.stdout == licenses.public_pem(licenses.load_signing_key(target))
    assert not missing_db.exists()


def test_status_shows_pending_counts_and_the_instance_of_the_last_pass(workspace: Workspace) -> None:
    shop = workspace.shop
    product = shop.product()
    for name in ("A", "B", "C"):
        shop.invoice(product, provider_invoice_id=name, created_at=recent())
    workspace.answers({"A": [SETTLED], "*": [PENDING]})
    config = workspace.config()

    fresh = workspace.run("status", config=config)

    assert fresh.returncode == 0, fresh
    assert "fake: 3" in fresh.stdout
    assert "instances (a pass in the last 5m):\n  (none)" in fresh.stdout
    assert workspace.run("--once", config=config).returncode == 0
    before = workspace.state()

    text = workspace.run("status", config=config)
    as_json = workspace.run("status", "--json", config=config)

    assert text.returncode == 0, text
    assert as_json.returncode == 0, as_json
    report = json.loads(as_json.stdout)
    assert [(p["provider_id"], p["pending"]) for p in report["pending"]] == [("fake", 2)]
    [instance] = report["instances"]
    assert instance["lease_owner"].startswith(f"{socket.gethostname()}:")
    assert instance["last_pass_finished_at"] is not None
    assert instance["last_summary"]["counts"] == {"no_change": 2, "settle": 1}
    assert "fake: 2" in text.stdout
    assert f"{instance['lease_owner']}: last pass finished {instance['last_pass_finished_at']}" in text.stdout
    assert workspace.state() == before


def test_explain_shows_the_decision_without_writing(workspace: Workspace) -> None:
    shop = workspace.shop
    invoice_id = shop.invoice(shop.product(), provider_invoice_id="A", created_at=recent())
    workspace.answers({"A": [SETTLED]})
    before = workspace.state()

    outcome = workspace.run("explain", invoice_id, "--json")

    assert outcome.returncode == 0, outcome
    shown = json.loads(outcome.stdout)
    assert shown["invoice"]["id"] == invoice_id
    assert shown["decision"]["decision"] == "settle"
    assert shown["decision"]["raw_status"] == "Settled"
    assert shown["decision"]["evidence"]["new_status"] == "settled"
    assert shown["audit_history"] == []
    assert workspace.state() == before
    human = workspace.run("explain", invoice_id)
    assert human.returncode == 0, human
    assert "decision    settle (dry run: nothing written)" in human.stdout
    assert "answer      Settled" in human.stdout
    assert workspace.state() == before


def test_explain_an_unknown_invoice_exits_1(workspace: Workspace) -> None:
    before = workspace.state()

    outcome = workspace.run("explain", "00000000-0000-4000-8000-000000000000")

    assert_refused(outcome, "00000000-0000-4000-8000-000000000000", code=1)
    assert workspace.state() == before


def test_a_dry_run_prints_one_json_line_per_due_invoice_and_writes_nothing(workspace: Workspace) -> None:
    shop = workspace.shop
    product = shop.product()
    due = {
        shop.invoice(product, provider_invoice_id="S", created_at=recent()): "settle",
        shop.invoice(product, provider_invoice_id="E", created_at=recent()): "expire",
        shop.invoice(product, provider_invoice_id="P", created_at=recent()): "no_change",
    }
    later = shop.invoice(product, provider_invoice_id="L", created_at=recent())
    shop.execute("UPDATE invoices SET next_check_at = '2999-01-01T00:00:00.000000Z' WHERE id = ?", (later,))
    shop.invoice(product, provider_invoice_id="OLD", created_at=recent(minutes=4 * 24 * 60))
    workspace.answers({"S": [SETTLED], "E": [EXPIRED], "*": [PENDING]})
    before = workspace.state()

    outcome = workspace.run("--once", "--dry-run", "--json")

    assert outcome.returncode == 0, outcome
    lines = [json.loads(line) for line in outcome.stdout.splitlines()]
    assert {line["invoice_id"]: line["decision"] for line in lines} == due
    keys = {
        "invoice_id",
        "provider_id",
        "status",
        "raw_status",
        "raw_additional_status",
        "decision",
        "evidence",
    }
    assert all(set(line) == keys for line in lines)
    assert {(line["provider_id"], line["status"]) for line in lines} == {("fake", "pending")}
    assert {line["raw_status"] for line in lines} == {"Settled", "Expired", "New"}
    assert workspace.state() == before


@pytest.mark.parametrize(
    "argv",
    [
        ("--config", "CONFIG", "--log-format", "json", "run", "--once"),
        ("run", "--once", "--config", "CONFIG", "--log-format", "json"),
        ("--log-format", "json", "run", "--config", "CONFIG", "--once"),
        ("--once", "--config", "CONFIG", "--log-format", "json"),
    ],
    ids=["before", "after", "around", "no-subcommand"],
)
def test_global_options_stand_before_or_after_the_subcommand(
    workspace: Workspace, argv: tuple[str, ...]
) -> None:
    shop = workspace.shop
    invoice_id = shop.invoice(shop.product(), provider_invoice_id="A", created_at=recent())
    workspace.answers({"A": [SETTLED]})
    config = str(workspace.config())

    outcome = reconciler(*(config if arg == "CONFIG" else arg for arg in argv))

    assert outcome.returncode == 0, outcome
    log = [json.loads(line) for line in outcome.lines]
    assert any(line["message"].startswith("pass finished") for line in log), outcome
    assert {"time", "level", "message"} <= set(log[-1])
    assert shop.status(invoice_id) == "settled"


def test_errors_are_json_lines_too_with_log_format_json(workspace: Workspace) -> None:
    outcome = workspace.run("--log-format", "json", "--once", config=workspace.config({"colour": "blue"}))

    assert_refused(outcome, '"level": "ERROR"', "colour: unknown key")
    assert "colour: unknown key" in json.loads(outcome.lines[0])["message"]


def seed_the_same(shop: Shop) -> list[str]:
    """The same product, policy and invoices (fixed ids) in any shop."""
    product = "00000000-0000-4000-8000-0000000000aa"
    shop.execute(
        "INSERT INTO products (id, slug, name, created_at) VALUES (?, 'app', 'App', ?)",
        (product, "2026-01-01T00:00:00.000000Z"),
    )
    ids = [f"00000000-0000-4000-8000-00000000000{n}" for n in range(4)]
    for n, invoice_id in enumerate(ids):
        shop.invoice(product, provider_invoice_id=f"P{n}", created_at=recent(), invoice_id=invoice_id)
    return ids


def outcome_of(shop: Shop, ids: list[str]) -> list[tuple[str, int, list[str]]]:
    return [(shop.status(i), len(shop.licenses(i)), shop.actions(i)) for i in ids]


def test_once_alone_is_run_once(tmp_path: Path) -> None:
    answers: Outcomes = {"P0": [SETTLED], "P1": [EXPIRED], "P2": [{"error": "not_found"}], "*": [PENDING]}
    bare, explicit = make_workspace(tmp_path / "bare"), make_workspace(tmp_path / "explicit")
    results = []
    for ws, argv in ((bare, ("--once",)), (explicit, ("run", "--once"))):
        ids = seed_the_same(ws.shop)
        ws.answers(answers)
        assert ws.run(*argv).returncode == 0
        results.append(outcome_of(ws.shop, ids))

    assert results[0] == results[1]
    assert [status for status, _, _ in results[0]] == ["settled", "expired", "pending", "pending"]
