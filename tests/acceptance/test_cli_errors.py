"""Bad input to the real command (issue #2, docs/schema.md §6, docs/configuration.md §2, docs/cli.md §3): the
right exit code, one error line naming the problem, and nothing written to the database."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from reconciler.store import base
from tests.acceptance.conftest import (
    COMMAND,
    EXPIRED,
    PENDING,
    SETTLED,
    TIMEOUT,
    Outcome,
    Workspace,
    assert_refused,
    file_state,
    recent,
)
from tests.support.process import clean_env

SECRET = "btcpay-Secret-Value-8c1f4e"


def seed_pending(ws: Workspace) -> str:
    """One due pending invoice the provider reports settled: any pass that got this far would write."""
    ws.answers({"*": [SETTLED]})
    return ws.shop.invoice(ws.shop.product(), created_at=recent())


# -- configuration ---------------------------------------------------------------------------------------------
def test_malformed_toml_names_the_line(workspace: Workspace) -> None:
    seed_pending(workspace)
    before = workspace.state()
    config = workspace.root / "config.toml"
    config.write_text(f'[database]\nurl = "sqlite://{workspace.db}"\n\n[reconcile]\ninterval = \n')

    outcome = workspace.run("--once", config=config)

    assert_refused(outcome, str(config), "TOML", "line 5")
    assert workspace.state() == before


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        pytest.param({"colour": "blue"}, ["colour: unknown key"], id="unknown-top-level-key"),
        pytest.param(
            {"reconcile": {"intervall": "60s"}},
            ["reconcile.intervall: unknown key", "did you mean 'interval'"],
            id="unknown-section-key",
        ),
        pytest.param(
            {"providers": {"fake": {"latencyy": 0.1}}},
            ["providers.fake.latencyy: unknown key", "did you mean 'latency'"],
            id="unknown-provider-option",
        ),
        pytest.param(
            {"reconcile": {"interval": "90 seconds"}},
            ["reconcile.interval", "invalid duration '90 seconds'"],
            id="bad-duration",
        ),
        pytest.param(
            {"providers": {"fake": {"timeout": "10 s"}}},
            ["providers.fake.timeout", "invalid duration '10 s'"],
            id="bad-provider-duration",
        ),
        pytest.param(
            {"reconcile": {"schedule": ["1m", "5m", "15m"]}},
            ["reconcile.schedule", "exactly 4 steps", "got 3"],
            id="schedule-with-3-steps",
        ),
        pytest.param(
            {"default_provider": "nosuch"},
            ["default_provider", "'nosuch'", "[providers.nosuch]"],
            id="unknown-default-provider",
        ),
        pytest.param(
            {"reconcile": {"lease": "1m"}, "providers": {"fake": {"timeout": "40s", "retry_attempts": 1}}},
            ["reconcile.lease", "lease 1m is shorter than 2 × the worst fetch of provider 'fake'"],
            id="lease-shorter-than-2x-worst-fetch",
        ),
        pytest.param(
            {"providers": {"fake": {"driver": "nosuch"}}},
            ["'nosuch' is not installed", "reconciler.drivers:nosuch"],
            id="driver-not-installed",
        ),
    ],
)
def test_bad_configuration_exits_2_before_any_write(
    workspace: Workspace, overrides: dict[str, Any], needles: list[str]
) -> None:
    seed_pending(workspace)
    before = workspace.state()

    outcome = workspace.run("--once", config=workspace.config(overrides))

    assert_refused(outcome, *needles)
    assert workspace.state() == before


def test_a_missing_secret_file_exits_2_without_revealing_any_secret(workspace: Workspace) -> None:
    seed_pending(workspace)
    before = workspace.state()
    missing = workspace.root / "credentials" / "backup-key"
    btcpay = {"driver": "btcpay", "base_url": "http://127.0.0.1:9", "store_id": "Store1"}
    config = workspace.config(
        {
            "providers": {
                "fake": None,
                "shop": btcpay | {"api_key": SECRET},
                "backup": btcpay | {"api_key_file": str(missing)},
            }
        }
    )

    outcome = workspace.run("--once", config=config)

    assert_refused(outcome, "providers.backup.api_key_file", str(missing), "no such file")
    assert SECRET not in outcome.stdout + outcome.stderr
    assert workspace.state() == before


# -- the signing key ---------------------------------------------------------------------------------------------
def _x25519_pem() -> bytes:
    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("make_key", "needle"),
    [
        pytest.param(lambda key: key.unlink(), "does not exist", id="missing"),
        pytest.param(
            lambda key: key.write_bytes(b"garbage, not a key\n"), "not a PEM private key", id="garbage"
        ),
        pytest.param(lambda key: key.write_bytes(_x25519_pem()), "not an Ed25519 key", id="not-ed25519"),
        pytest.param(lambda key: key.unlink() or key.mkdir(), "cannot be read", id="a-directory"),
    ],
)
def test_a_bad_signing_key_stops_run_but_not_status(workspace: Workspace, make_key: Any, needle: str) -> None:
    seed_pending(workspace)
    make_key(workspace.key)
    config = workspace.config()
    before = workspace.state()

    outcome = workspace.run("--once", config=config)

    assert_refused(outcome, f"signing key file {workspace.key}", needle)
    assert workspace.state() == before
    assert workspace.run("status", config=config).returncode == 0
    assert workspace.run("check-config", config=config).returncode == 0


# -- the database ----------------------------------------------------------------------------------------------
FOREIGN = {
    "unrelated-schema-meta-with-two-rows": (
        "CREATE TABLE schema_meta (name TEXT, value TEXT); INSERT INTO schema_meta VALUES ('a', '1'), ('b', '2');",
        "schema_meta",
    ),
    "schema-meta-with-two-versions": (
        "CREATE TABLE schema_meta (version INTEGER NOT NULL); INSERT INTO schema_meta VALUES (1), (1);",
        "schema_meta",
    ),
    "unknown-version-99": (
        "CREATE TABLE schema_meta (version INTEGER NOT NULL); INSERT INTO schema_meta VALUES (99);",
        "version 99",
    ),
    "our-tables-without-schema-meta": (
        "CREATE TABLE invoices (id TEXT PRIMARY KEY); CREATE TABLE licenses (id TEXT PRIMARY KEY);",
        "no schema_meta",
    ),
}


def foreign_database(path: Path, ddl: str) -> None:
    """A database somebody else made (default rollback journal), with a table of theirs holding a row."""
    db = sqlite3.connect(path)
    try:
        db.executescript(
            ddl + " CREATE TABLE orders (id INTEGER PRIMARY KEY); INSERT INTO orders VALUES (7);"
        )
    finally:
        db.close()


@pytest.mark.parametrize("command", [("--once",), ("status",), ("init-db",), ("explain", "x")])
@pytest.mark.parametrize("kind", list(FOREIGN))
def test_a_database_that_is_not_ours_is_refused_with_exit_2(
    tmp_path: Path, workspace: Workspace, kind: str, command: tuple[str, ...]
) -> None:
    ddl, needle = FOREIGN[kind]
    db = tmp_path / "theirs.db"
    foreign_database(db, ddl)
    before = file_state(db)

    outcome = workspace.run(*command, config=workspace.config({"database": {"url": f"sqlite://{db}"}}))

    assert_refused(outcome, needle)
    assert file_state(db) == before  # byte for byte: not even its journal mode changed


@pytest.mark.parametrize("command", [("--once",), ("status",), ("explain", "x")])
def test_a_missing_database_names_init_db_and_is_not_created(
    tmp_path: Path, workspace: Workspace, command: tuple[str, ...]
) -> None:
    db = tmp_path / "nowhere.db"

    outcome = workspace.run(*command, config=workspace.config({"database": {"url": f"sqlite://{db}"}}))

    assert_refused(outcome, str(db), "reconciler init-db")
    assert sorted(p.name for p in tmp_path.glob("nowhere.db*")) == []


@pytest.mark.parametrize("start", ["missing", "empty", "storefront-tables-only"])
def test_init_db_creates_the_schema_then_does_nothing(
    tmp_path: Path, workspace: Workspace, start: str
) -> None:
    db = tmp_path / "new.db"
    if start == "empty":
        db.touch()
    elif start == "storefront-tables-only":
        foreign_database(db, "")
    config = workspace.config({"database": {"url": f"sqlite://{db}"}})

    first = workspace.run("init-db", config=config)

    assert first.returncode == 0, first
    assert "created the reconciler schema" in first.stderr
    tables = {
        row[0] for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert {"schema_meta", "invoices", "licenses", "audit_log", "reconciler_instances"} <= tables
    assert sqlite3.connect(db).execute("SELECT version FROM schema_meta").fetchall() == [
        (base.SCHEMA_VERSION,)
    ]
    if start == "storefront-tables-only":
        assert sqlite3.connect(db).execute("SELECT id FROM orders").fetchall() == [(7,)]
    before = file_state(db)

    second = workspace.run("init-db", config=config)

    assert second.returncode == 0, second
    assert "nothing to do" in second.stderr
    assert file_state(db) == before


# -- a driver that crashes ---------------------------------------------------------------------------------------
def test_a_crashing_driver_degrades_the_pass_and_leaves_its_invoices_untouched(workspace: Workspace) -> None:
    shop = workspace.shop
    product = shop.product()
    shop.policy(product)
    crashing = [shop.invoice(product, provider_invoice_id=f"C{i}", created_at=recent()) for i in range(2)]
    settled = shop.invoice(product, provider_invoice_id="S", created_at=recent())
    expired = shop.invoice(product, provider_invoice_id="E", created_at=recent())
    pending = shop.invoice(product, provider_invoice_id="P", created_at=recent())
    crash = [{"error": "crash"}]
    workspace.answers({"C0": crash, "C1": crash, "S": [SETTLED], "E": [EXPIRED], "P": [PENDING]})

    outcome = workspace.run("--once")

    assert outcome.returncode == 75, outcome
    assert outcome.stderr.count("Traceback (most recent call last)") == 1, outcome
    assert outcome.stderr.count("RuntimeError: fake: scripted crash") == 1, outcome
    assert "DEGRADED" in outcome.stderr
    assert shop.status(settled) == "settled" and len(shop.licenses(settled)) == 1
    assert shop.status(expired) == "expired"
    assert shop.status(pending) == "pending"
    for invoice_id in crashing:
        row = shop.invoice_row(invoice_id)
        assert row["status"] == "pending"
        assert row["last_provider_status"] is None
        assert row["lease_token"] is None
        assert shop.audits(invoice_id) == []
        assert shop.licenses(invoice_id) == []


# -- issue 10: nothing one bad value, file or pipe can stop ------------------------------------------------------
def test_check_config_masks_a_password_given_as_a_url_parameter(workspace: Workspace) -> None:
    url = f"postgresql://shop@127.0.0.1:5432/test?sslmode=disable&password={SECRET}&sslpassword={SECRET}"

    outcome = workspace.run("check-config", config=workspace.config({"database": {"url": url}}))

    assert outcome.returncode == 0, outcome
    assert SECRET not in outcome.stdout + outcome.stderr
    shown = "postgresql://shop@127.0.0.1:5432/test?sslmode=disable&password=**********&sslpassword=**********"
    assert f'"url": "{shown}"' in outcome.stdout


# A bug of ours, injected into the real command: listing the installed drivers raises.
CRASHING = """
import sys
from reconciler import cli, registry

def installed():
    raise RuntimeError("injected fault\\n<2>forged")

registry.installed = installed
raise SystemExit(cli.main(sys.argv[1:]))
"""


def crashing(*args: str) -> Outcome:
    done = subprocess.run(
        [COMMAND[0], "-c", CRASHING, *args], capture_output=True, text=True, env=clean_env(), timeout=TIMEOUT
    )
    return Outcome(args, done.returncode, done.stdout, done.stderr)


def test_a_crash_under_json_logs_is_one_json_line_with_the_traceback() -> None:
    outcome = crashing("--log-format", "json", "drivers")

    assert outcome.returncode == 1, outcome
    (line,) = outcome.lines
    crash = json.loads(line)
    assert crash["level"] == "CRITICAL"
    assert "crashed" in crash["message"] and "RuntimeError: injected fault" in crash["message"]
    assert crash["exception"].startswith("Traceback (most recent call last):")
    assert crash["exception"].endswith("RuntimeError: injected fault\n<2>forged")
    assert "in installed" in crash["exception"]


@pytest.mark.parametrize("fmt", ["human", "journal"])
def test_a_crash_under_human_or_journal_logs_shows_the_traceback(fmt: str) -> None:
    outcome = crashing("drivers", "--log-format", fmt)

    assert outcome.returncode == 1, outcome
    first, *rest = outcome.lines
    assert "crashed" in first and "RuntimeError: injected fault\\n<2>forged" in first
    if fmt == "journal":
        assert first.startswith("<2>")
    assert any(line.endswith("Traceback (most recent call last):") for line in rest), outcome
    assert rest[-2].endswith("RuntimeError: injected fault"), outcome
    if fmt == "journal":  # the traceback stays multi-line, each line with the record's priority
        assert rest[-1] == "<2><2>forged", outcome


def run_with_closed_stdout(config: Path, *args: str, buffered: bool) -> subprocess.CompletedProcess[str]:
    """``reconciler ARGS`` whose stdout is a pipe nobody reads any more, as in ``reconciler status | head``."""
    env = clean_env()
    if buffered:
        env.pop("PYTHONUNBUFFERED", None)  # the output waits in Python's buffer until the final flush
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*COMMAND, "--config", str(config), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=TIMEOUT,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize(
    "command",
    [("status",), ("status", "--json"), ("check-config",), ("drivers",), ("explain", "missing")],
    ids="-".join,
)
def test_a_closed_stdout_ends_the_command_quietly(
    workspace: Workspace, command: tuple[str, ...], buffered: bool
) -> None:
    done = run_with_closed_stdout(workspace.config(), *command, buffered=buffered)

    if command[0] == "explain":  # it fails before printing anything: its own exit code and line
        assert done.returncode == 1, done
        assert done.stderr.count("\n") == 1 and "no invoice with id missing" in done.stderr, done
        return
    assert done.returncode == 0, done
    assert done.stderr == "", done


def test_a_closed_stdout_keeps_the_exit_code_of_a_command_that_failed(workspace: Workspace) -> None:
    btcpay = {"driver": "btcpay", "base_url": "http://127.0.0.1:9", "store_id": "S", "api_key": SECRET}
    config = workspace.config({"providers": {"fake": None, "shop": btcpay | {"retry_attempts": 1}}})

    done = run_with_closed_stdout(config, "check-config", "--online", buffered=True)

    assert done.returncode == 75, done
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done
    assert "provider shop: unreachable" in done.stderr, done


def run_with_environment(ws: Workspace, config: Path, *args: str, **environ: str) -> Outcome:
    argv = ("--config", str(config), *args)
    done = subprocess.run(
        [*COMMAND, *argv], capture_output=True, text=True, env=clean_env(**environ), timeout=TIMEOUT
    )
    return Outcome(argv, done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize("command", [("check-config",), ("--once",), ("status",)], ids="-".join)
def test_a_duration_beyond_its_bound_is_refused_before_the_run(
    workspace: Workspace, command: tuple[str, ...]
) -> None:
    seed_pending(workspace)
    before = workspace.state()

    outcome = workspace.run(*command, config=workspace.config({"reconcile": {"max_age": "999999d"}}))

    assert_refused(outcome, str(workspace.root / "config.toml"), "reconcile.max_age: at most 3650d")
    assert workspace.state() == before


@pytest.mark.parametrize("port", ["99999", "abc"])
@pytest.mark.parametrize("command", [("check-config",), ("status",), ("init-db",)], ids="-".join)
def test_a_database_url_with_a_bad_port_is_refused_before_connecting(
    workspace: Workspace, port: str, command: tuple[str, ...]
) -> None:
    url = f"postgresql://shop:{SECRET}@127.0.0.1:{port}/test"

    outcome = workspace.run(*command, config=workspace.config({"database": {"url": url}}))

    assert_refused(outcome, "database.url: port must be a number from 1 to 65535")
    assert SECRET not in outcome.stderr


def test_a_sqlite_url_with_a_query_is_refused_and_creates_no_file(
    tmp_path: Path, workspace: Workspace
) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    config = workspace.config({"database": {"url": f"sqlite://{directory}/x.db?mode=ro"}})

    outcome = workspace.run("init-db", config=config)

    assert_refused(outcome, "database.url: a sqlite:// URL is a file path only")
    assert list(directory.iterdir()) == []


def test_a_misspelt_environment_variable_is_refused(workspace: Workspace) -> None:
    seed_pending(workspace)
    before = workspace.state()

    outcome = run_with_environment(
        workspace,
        workspace.config(),
        "--once",
        RECONCILER_RECONCLE__BATCH_SIZE="5",
        RECONCILER_FIXTURES="/somewhere",  # the test harness's own: not configuration, allowed
    )

    assert_refused(
        outcome, "$RECONCILER_RECONCLE__BATCH_SIZE: reconcle: unknown key", "did you mean 'reconcile'"
    )
    assert workspace.state() == before


def test_numbers_from_the_environment_work_and_a_bool_in_the_file_does_not(workspace: Workspace) -> None:
    seed_pending(workspace)
    before = workspace.state()

    good = run_with_environment(
        workspace,
        workspace.config(),
        "check-config",
        RECONCILER_RECONCILE__BATCH_SIZE="100",
        RECONCILER_POST_SETTLE__MAX_ATTEMPTS="3",
        RECONCILER_PROVIDERS__FAKE__RATE_LIMIT="2.5",
    )
    bad = workspace.run("--once", config=workspace.config({"post_settle": {"max_attempts": True}}))

    assert good.returncode == 0, good
    shown = json.loads(good.stdout)
    assert (shown["reconcile"]["batch_size"], shown["post_settle"]["max_attempts"]) == (100, 3)
    assert shown["providers"]["fake"]["rate_limit"] == 2.5
    assert_refused(bad, "post_settle.max_attempts: expected a whole number")
    assert workspace.state() == before


def test_every_configuration_problem_is_reported_at_once(workspace: Workspace) -> None:
    seed_pending(workspace)
    before = workspace.state()
    missing = workspace.root / "missing-key"
    btcpay = {
        "driver": "btcpay",
        "base_url": "http://127.0.0.1:9",
        "store_id": "S",
        "api_key_file": str(missing),
    }
    config = workspace.config(
        {
            "reconcile": {"max_age": "999999d", "batch_size": 2.0},
            "daemon": {"grace": "1s"},
            "providers": {"shop": btcpay},
        }
    )

    outcome = run_with_environment(workspace, config, "--once", RECONCILER_RECONCILE__INTERVALL="1m")

    assert outcome.returncode == 2, outcome
    assert len(outcome.lines) == 5, outcome
    for needle in (
        "reconcile.intervall: unknown key",
        "providers.shop.api_key_file",
        "reconcile.max_age: at most 3650d",
        "reconcile.batch_size: expected a whole number",
        "daemon.grace: unknown key",
    ):
        assert sum(needle in line for line in outcome.lines) == 1, (needle, outcome)
    assert workspace.state() == before


def test_every_provider_s_driver_problem_is_reported_at_once(workspace: Workspace) -> None:
    seed_pending(workspace)
    before = workspace.state()
    config = workspace.config(
        {
            "providers": {
                "fake": {"latencyy": 1},
                "other": {"driver": "nosuch"},
                "third": {"driver": "fake"},
            }
        }
    )

    outcome = workspace.run("--once", config=config)

    assert outcome.returncode == 2, outcome
    assert len(outcome.lines) == 3, outcome
    assert "providers.fake.latencyy: unknown key" in outcome.lines[0]
    assert "providers.other.driver: driver 'nosuch' is not installed" in outcome.lines[1]
    assert "providers.third.script_path: required but not set" in outcome.lines[2]
    assert workspace.state() == before


def test_driver_option_problems_come_with_the_other_config_problems(workspace: Workspace) -> None:
    """Issue 10: one run names a bad [reconcile] key and a bad driver option together."""
    config = workspace.config(
        {"reconcile": {"batch_size": 0}, "providers": {"fake": {"script_pathh": "x"}}}, name="both.toml"
    )
    outcome = workspace.run("check-config", config=config)
    assert outcome.returncode == 2, outcome
    text = "\n".join(outcome.lines)
    assert "reconcile.batch_size" in text and "providers.fake.script_pathh" in text, text
