"""The operator API as an operator meets it: keys from the shell, the API inside `reconciler run` on its own
listener, and no token or master key anywhere it should not be (logs, the database, metrics)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.acceptance.conftest import Workspace, file_state
from tests.acceptance.test_service import Service, get
from tests.support.process import clean_env

MASTER = "a-master-key-of-at-least-32-characters-0123456789"


def call(url: str, token: str | None, *, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_keys_from_the_shell_the_api_in_the_daemon_and_no_secret_leaks(
    workspace: Workspace, tmp_path: Path
) -> None:
    master_file = tmp_path / "master-key"
    master_file.write_text(MASTER + "\n", encoding="utf-8")
    config = workspace.config(
        {
            "reconcile": {"initial_delay": "1h"},
            "log": {"level": "DEBUG"},
            "http": {"listen": "127.0.0.1:0"},
            "api": {"listen": "127.0.0.1:0", "master_key_file": str(master_file)},
        }
    )
    logs: list[str] = []

    created = workspace.run(
        "api-key", "create", "--role", "support", "--label", "Alice, support", config=config
    )
    assert created.returncode == 0, created
    support = created.stdout.splitlines()[-1]
    assert support.startswith("rk_") and len(support) == 46
    logs.append(created.stderr)  # its stdout is where the token is shown, once

    service = Service(config, env=clean_env())
    try:
        api = service.wait_for(r"operator API on (http://127\.0\.0\.1:\d+/api/v1/)").group(1)
        metrics = service.wait_for(r"metrics and health on (http://127\.0\.0\.1:\d+/)").group(1)
        assert call(api + "invoices", support) == (200, {"items": [], "next_cursor": None})
        assert call(api + "invoices", support + "x")[0] == 401
        assert call(api + "api-keys", support)[0] == 403

        status, made = call(
            api + "api-keys", MASTER, method="POST", body={"role": "read-only", "label": "Bob"}
        )
        assert status == 201
        reader, reader_id = made["token"], made["key"]["id"]
        assert call(api + "reviews", reader)[0] == 200
        status, keys = call(api + "api-keys", MASTER)
        assert status == 200 and {k["role"] for k in keys["items"]} == {"support", "read-only"}
        assert call(api + f"api-keys/{reader_id}", MASTER, method="DELETE")[0] == 200
        assert call(api + "reviews", reader)[0] == 401
        _, exposition = get(metrics + "metrics")
        logs.append(exposition)
    finally:
        assert service.stop() == 0
        logs.append(service.stderr)

    listed = workspace.run("api-key", "list", "--json", config=config)
    assert listed.returncode == 0, listed
    rows = json.loads(listed.stdout)
    support_id = next(r["id"] for r in rows if r["role"] == "support")
    assert next(r for r in rows if r["id"] == support_id)["last_used_at"] is not None
    revoked = workspace.run("api-key", "revoke", support_id, config=config)
    again = workspace.run("api-key", "revoke", support_id, config=config)
    assert revoked.returncode == 0 and again.returncode == 1 and "revoked already" in again.stderr
    logs += [listed.stdout, listed.stderr, revoked.stdout, revoked.stderr, again.stderr]

    database = b"".join(file_state(workspace.db).values())
    for secret in (support, reader, MASTER):
        assert secret.encode() not in database
        for text in logs:
            assert secret not in text
    # who made and revoked each key is audited, by the shell's user or the master key, with no token
    audited = workspace.shop.rows(
        "SELECT action, target_id, actor FROM audit_log WHERE action LIKE 'api_key.%'"
    )
    assert {(r["action"], r["target_id"]) for r in audited} == {
        ("api_key.created", support_id),
        ("api_key.created", reader_id),
        ("api_key.revoked", reader_id),
        ("api_key.revoked", support_id),
    }
    by = {(r["action"], r["target_id"]): r["actor"] for r in audited}
    assert by[("api_key.created", reader_id)] == by[("api_key.revoked", reader_id)] == "api-key:master"
    assert by[("api_key.created", support_id)].startswith("cli:")
    assert by[("api_key.revoked", support_id)].startswith("cli:")
    # the stored hashes are what is in the database
    assert workspace.shop.scalar("SELECT count(*) FROM api_keys WHERE length(token_hash) = 64") == 2
