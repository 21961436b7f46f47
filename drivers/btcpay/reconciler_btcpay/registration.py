"""Registering the daemon's webhook with a BTCPay store (``reconciler webhooks setup``, docs/cli.md §2.13).

``POST /api/v1/stores/{storeId}/webhooks`` (Greenfield ``Webhooks_CreateWebhook``, docs/providers.md §4.1)
with a ``WebhookDataCreate`` body: enabled, automatic redelivery, the invoice events the daemon reads
and the secret the core generated. The answer is a ``WebhookDataCreateResult``: the webhook's ``id``
and, echoed, its ``secret``. What the statuses mean here:

    200  registered: the id (the echoed secret, when there is one, must be ours)
    401  the key is not valid
    403  the key lacks btcpay.store.webhooks.canmodifywebhooks (``missingPermission`` names it)
    404  no such store
    400/422  the server refused the request (its validation errors are shown)
    other  the shared status table (5xx, 408, 429: unavailable)

Pure functions over the reply; the driver makes the request.
"""

from __future__ import annotations

from typing import Any

from reconciler import driver_api
from reconciler_btcpay import webhooks

#: The invoice events the daemon's listener reads; BTCPay then sends no others.
EVENTS = webhooks.INVOICE_EVENTS
PERMISSION = "btcpay.store.webhooks.canmodifywebhooks"
WHAT = "webhook registration"
_SHOWN_PROBLEMS = 3


def request_body(url: str, secret: driver_api.SecretStr) -> dict[str, Any]:
    """The ``WebhookDataCreate`` for ``url``: enabled, redelivered, only :data:`EVENTS`, ``secret``."""
    return {
        "enabled": True,
        "automaticRedelivery": True,
        "url": url,
        "authorizedEvents": {"everything": False, "specificEvents": list(EVENTS)},
        "secret": secret.get_secret_value(),
    }


def refusal(
    http: driver_api.JsonClient, reply: driver_api.Reply, store_id: str, secret: str
) -> driver_api.DriverError:
    """The error for a non-200 answer to the registration (the module docstring's table)."""
    body = _decoded(http, reply)
    if reply.status == 401:
        detail = f"API key refused (not a valid key): {http.describe(reply)}"
        return http.error(driver_api.ProviderAuthError, detail, None, 401, what=WHAT)
    if reply.status == 403:
        missing = body.get("missingPermission") if isinstance(body, dict) else None
        permission = missing if isinstance(missing, str) and missing.isprintable() and missing else PERMISSION
        detail = (
            f"HTTP 403: the API key lacks the permission {_printable(permission, 100)} for store "
            f"{store_id!r}; grant it to the key (BTCPay: Account → API Keys), or use a key that has it"
        )
        return http.error(driver_api.ProviderAuthError, detail, None, 403, what=WHAT)
    if reply.status == 404:
        detail = f"store {store_id!r} not found ({http.describe(reply)}): check store_id"
        return http.error(driver_api.ProviderAuthError, detail, None, 404, what=WHAT)
    if reply.status in (400, 422):
        detail = f"refused: HTTP {reply.status}{_validation(body)}".replace(secret, "**********")
        return http.error(driver_api.BadProviderResponse, detail, None, reply.status, what=WHAT)
    return http.status_error(reply, what=WHAT)


def webhook_id(http: driver_api.JsonClient, reply: driver_api.Reply, secret: str) -> str:
    """The id in a 200 ``WebhookDataCreateResult``; BadProviderResponse when there is none, or when the
    server says it kept another secret than the one we sent."""
    body = http.json(reply, what=WHAT)
    if not isinstance(body, dict):
        raise http.bad_body(f"expected a JSON object, got {type(body).__name__}", reply, what=WHAT)
    found = body.get("id")
    if not isinstance(found, str) or not 0 < len(found) <= driver_api.TEXT_MAX or not found.isprintable():
        raise http.bad_body("the answer has no usable webhook 'id'", reply, what=WHAT)
    echoed = body.get("secret")
    if echoed is not None and echoed != secret:
        reason = (
            f"webhook {found!r} was registered with a secret other than the one sent: delete it in BTCPay"
        )
        raise http.bad_body(reason, reply, what=WHAT)
    return found


def _decoded(http: driver_api.JsonClient, reply: driver_api.Reply) -> Any:
    try:
        return http.json(reply, what=WHAT) if reply.body else None
    except driver_api.BadProviderResponse:
        return None


def _validation(body: Any) -> str:
    """`` (path: message; ...)`` from a ValidationProblemDetails array, or from a ProblemDetails."""
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        message = body.get("message")
        text = body["code"] if not isinstance(message, str) else f"{body['code']}: {message}"
        return f" ({_printable(text, 300)})"
    if not isinstance(body, list):
        return ""
    problems = [
        f"{item.get('path')}: {item.get('message')}"
        for item in body[:_SHOWN_PROBLEMS]
        if isinstance(item, dict)
    ]
    return f" ({_printable('; '.join(problems), 300)})" if problems else ""


def _printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, each control character shown as ``?`` (it is the server's)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
