"""The operator API's operations and its OpenAPI 3.1 document, from one table (docs/api.md).

The server registers its routes from `OPERATIONS` and serves `document()` at /api/v1/openapi.json; the
document is checked in as docs/api/openapi.json and a test fails when the two differ. Write it again with
`python -m reconciler.api.openapi > docs/api/openapi.json`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from reconciler import __version__
from reconciler.api import keys

PREFIX = "/api/v1"
#: The largest page any configuration allows (`[api] max_page` is clamped to it).
MAX_PAGE = 1000
MAX_REASON = 1000
MAX_LABEL = 200
MAX_ID = 200

_NULLABLE_TEXT: dict[str, Any] = {"type": ["string", "null"]}
_TEXT: dict[str, Any] = {"type": "string"}
_TIMESTAMP: dict[str, Any] = {"type": "string", "description": "UTC, 2026-01-02T03:04:05.000000Z"}
_NULLABLE_TIMESTAMP: dict[str, Any] = {"type": ["string", "null"], "description": _TIMESTAMP["description"]}
_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ID}
# what a person writes: something besides spaces, and no control characters (C0, DEL, C1)
_PLAIN_TEXT = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "pass as `cursor` for the next page; null on the last page",
            },
        },
    }


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "additionalProperties": False,
        "properties": dict(sorted((required | (optional or {})).items())),
    }


SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "status": {"type": "integer"},
                    "code": {"type": "string", "description": "stable, machine-readable"},
                    "message": {"type": "string", "description": "for a person; never holds a token"},
                },
                {"scope": {"type": "string", "description": "403: the scope the key lacks"}},
            )
        }
    ),
    "Invoice": _object(
        {
            "id": _TEXT,
            "payment_provider_id": _NULLABLE_TEXT,
            "provider_invoice_id": _TEXT,
            "product_id": _TEXT,
            "policy_id": _NULLABLE_TEXT,
            "status": {"type": "string", "enum": ["pending", "settled", "expired", "invalid"]},
            "amount_sats": {"type": "integer"},
            "listed_currency": _NULLABLE_TEXT,
            "listed_value": {"type": ["integer", "null"]},
            "subscription_id": _NULLABLE_TEXT,
            "created_at": _TIMESTAMP,
            "settled_at": _NULLABLE_TIMESTAMP,
            "next_check_at": _NULLABLE_TIMESTAMP,
            "check_attempts": {"type": "integer"},
            "last_checked_at": _NULLABLE_TIMESTAMP,
            "last_provider_status": _NULLABLE_TEXT,
            "has_license": {"type": "boolean"},
        }
    ),
    "License": _object(
        {
            "id": _TEXT,
            "status": _TEXT,
            "issued_at": _TIMESTAMP,
            "expires_at": _NULLABLE_TIMESTAMP,
            "policy_id": _NULLABLE_TEXT,
        }
    ),
    "AuditRow": _object(
        {
            "id": _TEXT,
            "occurred_at": _TIMESTAMP,
            "actor": _TEXT,
            "action": _TEXT,
            "target_kind": _TEXT,
            "target_id": _TEXT,
            "details": {"description": "JSON (docs/audit.md)"},
        }
    ),
    "ReviewItem": _object(
        {
            "id": _TEXT,
            "invoice_id": _TEXT,
            "kind": {"type": "string", "description": "the audit action that opened it"},
            "opened_at": _TIMESTAMP,
            "audit_id": {"type": "string", "description": "the audit_log row that opened it"},
            "provider_id": _NULLABLE_TEXT,
            "invoice_status": _TEXT,
        }
    ),
    "InvoiceDetail": _object(
        {
            "invoice": _ref("Invoice"),
            "license": {"oneOf": [_ref("License"), {"type": "null"}]},
            "audit": _page("AuditRow"),
            "decision": {
                "type": ["object", "null"],
                "description": "what a pass would decide now (a dry run: nothing written); null when "
                "it could not be worked out, `decision_error` says why",
            },
            "decision_error": _NULLABLE_TEXT,
        }
    ),
    "Provider": _object(
        {
            "id": _TEXT,
            "configured": {
                "type": "boolean",
                "description": "false: paused, but in no [providers.*] section",
            },
            "settings": {
                "type": ["object", "null"],
                "description": "its configuration section, every secret masked",
            },
            "paused": {"type": "boolean"},
            "paused_by": _NULLABLE_TEXT,
            "paused_at": _NULLABLE_TIMESTAMP,
            "pause_reason": _NULLABLE_TEXT,
            "circuit": {
                "type": ["string", "null"],
                "description": "why this process holds the provider back (outage circuit), null if closed",
            },
        }
    ),
    "Instance": _object(
        {
            "lease_owner": _TEXT,
            "hostname": _TEXT,
            "pid": {"type": "integer"},
            "started_at": _TIMESTAMP,
            "last_pass_started_at": _NULLABLE_TIMESTAMP,
            "last_pass_finished_at": _NULLABLE_TIMESTAMP,
            "last_summary": {"type": ["object", "null"]},
        }
    ),
    "ApiKey": _object(
        {
            "id": _TEXT,
            "label": _TEXT,
            "role": {"type": "string", "enum": [role.value for role in keys.Role]},
            "created_at": _TIMESTAMP,
            "last_used_at": _NULLABLE_TIMESTAMP,
            "revoked_at": _NULLABLE_TIMESTAMP,
        }
    ),
    "CreatedApiKey": _object(
        {
            "key": _ref("ApiKey"),
            "token": {"type": "string", "description": "shown this once: only its SHA-256 is stored"},
        }
    ),
    "NewApiKey": _object(
        {
            "role": {"type": "string", "enum": [role.value for role in keys.Role]},
            "label": {"type": "string", "minLength": 1, "maxLength": MAX_LABEL, "pattern": _PLAIN_TEXT},
        }
    ),
    "Reason": _object(
        {"reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON, "pattern": _PLAIN_TEXT}}
    ),
    "OptionalReason": _object(
        {}, {"reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON, "pattern": _PLAIN_TEXT}}
    ),
    "Done": _object({"action": _TEXT, "target_id": _TEXT}),
    "Rechecked": _object(
        {
            "action": {"const": "recheck"},
            "target_id": _TEXT,
            "invoice_id": _TEXT,
            "decision": {"type": "string", "description": "the decision kind (docs/audit.md §4)"},
            "status": {"type": "string", "description": "the invoice's status after it"},
            "license_id": _NULLABLE_TEXT,
        }
    ),
    "Settled": _object(
        {
            "action": {"const": "settle"},
            "target_id": _TEXT,
            "invoice_id": _TEXT,
            "license_id": {"type": ["string", "null"], "description": "null for a subscription renewal"},
            "status": {"const": "settled"},
        }
    ),
}


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str


_LIMIT = Param(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50},
    "rows per page; more than `[api] max_page` is read as `max_page`",
)
_CURSOR = Param(
    "cursor",
    {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,512}$"},
    "the `next_cursor` of the previous page, as it came (opaque: any other value is 400)",
)
_PAGED = (_LIMIT, _CURSOR)
_AGE = {"type": "string", "pattern": "^[0-9]{1,6}[smhd]$"}


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: its method and path (aiohttp's `{name}` form, the same in OpenAPI), the scope a caller
    needs (None: no authentication), what it answers."""

    method: str
    path: str
    operation_id: str
    summary: str
    scope: str | None
    ok_status: int
    ok_schema: dict[str, Any]
    query: tuple[Param, ...] = ()
    body: str | None = None
    body_required: bool = True
    refusals: tuple[int, ...] = ()  # an action's 409 / 422
    tag: str = "read"

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{([a-z_]+)\}", self.path)


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET", f"{PREFIX}/openapi.json", "openapi", "This document", None, 200, {"type": "object"}, tag="meta"
    ),
    Operation(
        "GET",
        f"{PREFIX}/reviews",
        "list_reviews",
        "Open review items, oldest first",
        "reviews:read",
        200,
        _page("ReviewItem"),
        query=(
            Param("kind", {"type": "string", "pattern": "^[a-z_.]{1,64}$"}, "only items of this kind"),
            *_PAGED,
        ),
    ),
    Operation(
        "GET",
        f"{PREFIX}/invoices",
        "list_invoices",
        "Invoices, newest first",
        "invoices:read",
        200,
        _page("Invoice"),
        query=(
            Param(
                "status", {"type": "string", "enum": ["pending", "settled", "expired", "invalid"]}, "status"
            ),
            Param(
                "provider",
                {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                "payment_provider_id (rows without one are not matched)",
            ),
            Param("min_age", _AGE, "created at least this long ago (90s, 15m, 72h, 2d)"),
            Param("max_age", _AGE, "created at most this long ago"),
            *_PAGED,
        ),
    ),
    Operation(
        "GET",
        f"{PREFIX}/invoices/{{invoice_id}}",
        "get_invoice",
        "One invoice: the row, its license, its audit history and what a pass would decide now",
        "invoices:read",
        200,
        _ref("InvoiceDetail"),
    ),
    Operation(
        "GET",
        f"{PREFIX}/audit/{{target_kind}}/{{target_id}}",
        "list_audit",
        "The audit log of one target (invoice, license, code, subscription, provider, review_item), "
        "oldest first",
        "audit:read",
        200,
        _page("AuditRow"),
        query=_PAGED,
    ),
    Operation(
        "GET",
        f"{PREFIX}/providers",
        "list_providers",
        "Providers: configured, paused, circuit; secrets masked",
        "providers:read",
        200,
        _page("Provider"),
    ),
    Operation(
        "GET",
        f"{PREFIX}/instances",
        "list_instances",
        "Reconciler instances, latest pass first",
        "instances:read",
        200,
        _page("Instance"),
    ),
    Operation(
        "POST",
        f"{PREFIX}/invoices/{{invoice_id}}/recheck",
        "recheck",
        "Re-check one invoice now (any status but settled with its license, any age), recorded as a pass",
        "invoices:write",
        200,
        _ref("Rechecked"),
        refusals=(409, 422),
        tag="actions",
    ),
    Operation(
        "POST",
        f"{PREFIX}/invoices/{{invoice_id}}/settle",
        "settle",
        "Settle an expired or invalid invoice its provider reports paid late or underpaid (asked now)",
        "licenses:write",
        200,
        _ref("Settled"),
        body="Reason",
        refusals=(409, 422),
        tag="actions",
    ),
    Operation(
        "POST",
        f"{PREFIX}/reviews/{{item_id}}/dismiss",
        "dismiss",
        "Dismiss an open review item",
        "reviews:write",
        200,
        _ref("Done"),
        body="Reason",
        refusals=(409, 422),
        tag="actions",
    ),
    Operation(
        "POST",
        f"{PREFIX}/invoices/{{invoice_id}}/tasks/{{kind}}/retry",
        "retry_task",
        "Queue a failed post-settle task again: the next pass of any instance runs it once",
        "tasks:write",
        200,
        _ref("Done"),
        refusals=(409, 422),
        tag="actions",
    ),
    Operation(
        "POST",
        f"{PREFIX}/providers/{{provider_id}}/pause",
        "pause_provider",
        "Pause a provider: no instance fetches its invoices or runs its tasks until it is resumed",
        "providers:write",
        200,
        _ref("Done"),
        body="OptionalReason",
        body_required=False,
        refusals=(409, 422),
        tag="actions",
    ),
    Operation(
        "POST",
        f"{PREFIX}/providers/{{provider_id}}/resume",
        "resume_provider",
        "Resume a paused provider",
        "providers:write",
        200,
        _ref("Done"),
        body="OptionalReason",
        body_required=False,
        refusals=(409, 422),
        tag="actions",
    ),
    Operation(
        "POST",
        f"{PREFIX}/api-keys",
        "create_api_key",
        "Create an API key (master key only); its token is in this answer only",
        keys.MANAGE_KEYS,
        201,
        _ref("CreatedApiKey"),
        body="NewApiKey",
        tag="keys",
    ),
    Operation(
        "GET",
        f"{PREFIX}/api-keys",
        "list_api_keys",
        "Every API key, revoked ones included (master key only)",
        keys.MANAGE_KEYS,
        200,
        _page("ApiKey"),
        tag="keys",
    ),
    Operation(
        "DELETE",
        f"{PREFIX}/api-keys/{{key_id}}",
        "revoke_api_key",
        "Revoke an API key (master key only): its next request gets 401",
        keys.MANAGE_KEYS,
        200,
        _ref("ApiKey"),
        refusals=(409,),
        tag="keys",
    ),
)

_REASONS = {
    400: "malformed request: a parameter, the JSON body or a field is not what this operation takes",
    401: "missing, malformed, unknown or revoked token (one answer for all four)",
    403: "the key lacks the scope this operation needs (named in `error.scope`)",
    404: "no such object (or no such route)",
    409: "the action does not apply to the object as it is now",
    413: "body larger than `[api] max_body_bytes`",
    422: "the action refused its input",
    429: "too many failed authentications from this client address lately; see Retry-After",
    503: "the database is unavailable or not at this release's schema version (or, for an action, the "
    "reconciler's signing key or drivers are not loaded)",
}


def _error(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _REASONS[status],
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if status == 429:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _operation(op: Operation) -> dict[str, Any]:
    statuses = {503}
    if op.scope is not None:
        statuses |= {401, 403, 429}
    if op.query or op.body or op.path_params:
        statuses.add(400)
    if op.path_params:
        statuses.add(404)
    if op.body:
        statuses.add(413)
    statuses |= set(op.refusals)
    responses: dict[str, Any] = {
        str(op.ok_status): {
            "description": "done" if op.method != "GET" else "found",
            "content": {"application/json": {"schema": op.ok_schema}},
        }
    }
    responses |= {str(status): _error(status) for status in sorted(statuses)}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _ID} for name in op.path_params
    ] + [
        {"name": p.name, "in": "query", "required": False, "schema": p.schema, "description": p.description}
        for p in op.query
    ]
    data: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    if parameters:
        data["parameters"] = parameters
    if op.body:
        data["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": _ref(op.body)}},
        }
    if op.scope is None:
        data["security"] = []
    else:
        data["description"] = (
            "Master key only." if op.scope == keys.MANAGE_KEYS else f"Needs the scope `{op.scope}`."
        )
    return data


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "invoice-reconciler operator API",
            "version": __version__,
            "description": "The operator's desk over HTTP (docs/api.md). Every answer is JSON; every "
            "refusal has the `Error` shape.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key's token (rk_...) or the master key",
                }
            },
        },
    }


def rendered() -> str:
    """The document as checked in: indented, keys sorted, one newline at the end."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(rendered(), end="")
