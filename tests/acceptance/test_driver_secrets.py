"""Issue 11: a driver option is a secret because its driver's `Settings` declares it `SecretStr`, not because
of its name; only such a key has an `X_file` form; a driver whose `Settings` is not a `DriverSettings` is
refused at load.

The third-party driver is the test distribution's `fake_secrets` entry point (tests/plugins/fake-driver): its
`access_key: SecretStr` is the secret, `ca_bundle_file: str` an ordinary path, and `check()` (run by
`check-config --online`) fails unless it was handed the expected key and a path to a CA bundle.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import COMMAND, TIMEOUT, Outcome, Workspace, assert_refused
from tests.support.process import clean_env

SECRET = "s3cr3t-Access-Key-7d41"
BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIBfake-bundle-body-5e2a\n-----END CERTIFICATE-----\n"
MASK = "**********"


def run(ws: Workspace, config: Path, *args: str, **environ: str) -> Outcome:
    argv = ("--config", str(config), *args)
    done = subprocess.run(
        [*COMMAND, *argv], capture_output=True, text=True, env=clean_env(**environ), timeout=TIMEOUT
    )
    return Outcome(argv, done.returncode, done.stdout, done.stderr)


def vault(ws: Workspace, **options: Any) -> dict[str, Any]:
    """A `fake_secrets` provider section that expects SECRET, with a CA bundle file next to the config."""
    bundle = ws.root / "ca-bundle.pem"
    bundle.write_text(BUNDLE, encoding="utf-8")
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    return {"driver": "fake_secrets", "ca_bundle_file": str(bundle), "access_key_sha256": digest} | options


def test_an_inline_secret_that_its_driver_declares_secret_is_masked(workspace: Workspace) -> None:
    config = workspace.config({"providers": {"vault": vault(workspace, access_key=SECRET)}})

    outcome = run(workspace, config, "check-config")

    assert outcome.returncode == 0, outcome
    shown = json.loads(outcome.stdout)["providers"]["vault"]
    assert shown["access_key"] == MASK
    assert shown["ca_bundle_file"] == str(workspace.root / "ca-bundle.pem")
    assert SECRET not in outcome.stdout + outcome.stderr


@pytest.mark.parametrize("given", ["path", "credential", "environment"])
def test_a_declared_secret_is_read_from_its_file_and_a_path_stays_a_path(
    workspace: Workspace, given: str
) -> None:
    credentials = workspace.root / "credentials"
    credentials.mkdir()
    (credentials / "vault_key").write_text(SECRET + "\n", encoding="utf-8")
    environ: dict[str, str] = {}
    if given == "path":
        section = vault(workspace, access_key_file=str(credentials / "vault_key"))
    elif given == "credential":
        section = vault(workspace, access_key_file="vault_key")
        environ["CREDENTIALS_DIRECTORY"] = str(credentials)
    else:  # the environment's X_file replaces the file's X
        section = vault(workspace, access_key="not-the-key")
        environ["RECONCILER_PROVIDERS__VAULT__ACCESS_KEY_FILE"] = str(credentials / "vault_key")
    config = workspace.config({"providers": {"vault": section}})
    before = workspace.state()

    offline = run(workspace, config, "check-config", **environ)
    online = run(workspace, config, "check-config", "--online", **environ)

    assert offline.returncode == 0, offline
    shown = json.loads(offline.stdout)["providers"]["vault"]
    assert shown["access_key"] == MASK
    assert shown["ca_bundle_file"] == str(workspace.root / "ca-bundle.pem")
    assert "access_key_file" not in shown
    assert online.returncode == 0, online  # check() got SECRET and a readable CA bundle path
    assert any("provider vault: credentials and reachability OK" in line for line in online.lines), online
    for outcome in (offline, online):
        assert SECRET not in outcome.stdout + outcome.stderr
        assert "fake-bundle-body" not in outcome.stdout + outcome.stderr
    assert workspace.state() == before


def test_a_file_form_of_an_option_that_is_not_a_declared_secret_is_an_unknown_key(
    workspace: Workspace,
) -> None:
    (workspace.root / "token").write_text(SECRET, encoding="utf-8")
    section = vault(workspace, access_key=SECRET, token_file=str(workspace.root / "token"))
    config = workspace.config({"providers": {"vault": section}})

    outcome = run(workspace, config, "check-config")

    assert_refused(outcome, f"{config}: providers.vault.token_file: unknown key", "(driver 'fake_secrets')")
    assert SECRET not in outcome.stdout + outcome.stderr


@pytest.mark.parametrize("command", [("check-config",), ("--once",)], ids="-".join)
def test_a_driver_whose_settings_are_not_driver_settings_is_refused_at_load(
    workspace: Workspace, command: tuple[str, ...]
) -> None:
    config = workspace.config({"providers": {"loose": {"driver": "fake_loose"}}})
    before = workspace.state()

    outcome = run(workspace, config, *command)

    assert_refused(
        outcome,
        f"{config}: providers.loose.driver: driver 'fake_loose' is broken",
        "entry point reconciler.drivers:fake_loose",
        "from reconciler-fake-driver",
        "DriverSettings",
    )
    assert workspace.state() == before
