"""Every role, the master key, no key, a revoked key, a wrong key and a malformed header against every
endpoint: allowed (the operation's success status) or refused with the right code.

The role table below is the issue's, written out here rather than read from reconciler.api.keys, so that
a change to a role's scopes fails this test."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.api import keys, openapi
from tests.api.harness import MASTER, PAID_LATE, Live, add_key, live_api
from tests.store.backends import Backend

READS = {"invoices:read", "reviews:read", "audit:read", "providers:read", "instances:read"}
EXPECTED_SCOPES = {
    "read-only": READS,
    "license-issuer": READS | {"licenses:write"},
    "support": READS | {"licenses:write", "invoices:write", "reviews:write", "tasks:write"},
    "full-admin": READS
    | {"licenses:write", "invoices:write", "reviews:write", "tasks:write", "providers:write"},
}
REFUSED_401 = {
    "no key": None,
    "revoked key": "revoked",
    "wrong key": "rk_" + "A" * 43,
    "malformed": "not a token at all",
}


async def _request(live: Live, op: openapi.Operation, token: str | None) -> tuple[int, Any]:
    """One call of `op` by `token`'s holder, on targets made fresh for it: every allowed call can succeed."""
    seeded = live.seeded
    values = {
        "invoice_id": seeded.invoice_id,
        "target_kind": "invoice",
        "target_id": seeded.invoice_id,
        "provider_id": "fake",
        "kind": "capture",
    }
    if op.operation_id == "recheck":
        values["invoice_id"] = await live.invoice()
    elif op.operation_id == "settle":
        values["invoice_id"] = await live.invoice("expired", PAID_LATE)
    elif op.operation_id == "dismiss":
        values["item_id"] = await live.review_item()
    elif op.operation_id == "retry_task":
        values["invoice_id"] = await live.failed_task()
    elif op.operation_id in ("pause_provider", "resume_provider"):
        await live.set_paused(op.operation_id == "resume_provider")
    elif "key_id" in op.path_params:  # a fresh key to revoke each time
        values["key_id"], _ = await add_key(live.backend, "read-only")
    path = op.path.format(**values)
    body: dict[str, Any] | None = None
    if op.body == "NewApiKey":
        body = {"role": "support", "label": "colleague"}
    elif op.body in ("Reason", "OptionalReason"):
        body = {"reason": "checked with the buyer"}
    headers = live.auth(token)
    if token == "not a token at all":
        headers = {"Authorization": token}
    async with live.client.request(op.method, path, json=body, headers=headers) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("op", openapi.OPERATIONS, ids=lambda op: op.operation_id)
async def test_every_caller_against_every_endpoint(backend: Backend, op: openapi.Operation) -> None:
    async with live_api(backend, max_failures=1000) as live:
        unauthorized_bodies = []
        for caller, token in REFUSED_401.items():
            status, body = await _request(live, op, live.revoked if token == "revoked" else token)
            if op.scope is None:
                assert status == op.ok_status, (caller, body)
                continue
            assert status == 401, (caller, status, body)
            unauthorized_bodies.append(body)
        assert all(body == unauthorized_bodies[0] for body in unauthorized_bodies)

        status, body = await _request(live, op, MASTER)
        assert status == op.ok_status, ("master", body)

        for role, scopes in EXPECTED_SCOPES.items():
            status, body = await _request(live, op, live.tokens[role])
            if op.scope is None or op.scope in scopes:
                assert status == op.ok_status, (role, status, body)
            else:
                assert status == 403, (role, status, body)
                assert body["error"]["scope"] == op.scope
                if op.scope == keys.MANAGE_KEYS:
                    assert "master key" in body["error"]["message"]
                else:
                    assert op.scope in body["error"]["message"]


def test_the_table_covers_every_scope_an_operation_needs() -> None:
    needed = {op.scope for op in openapi.OPERATIONS if op.scope is not None}
    assert needed <= set().union(*EXPECTED_SCOPES.values()) | {keys.MANAGE_KEYS}
    assert {role: set(keys.scopes(role)) for role in EXPECTED_SCOPES} == EXPECTED_SCOPES
    assert keys.MANAGE_KEYS not in keys.scopes("full-admin")
