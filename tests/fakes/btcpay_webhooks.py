"""The fake BTCPay's webhook registration, ``POST /api/v1/stores/{storeId}/webhooks`` (docs/providers.md §4.1).

As BTCPay's ``GreenfieldStoreWebhooksController.CreateWebhook`` answers it, checked against the fixture
operation ``Webhooks_CreateWebhook``: the request body must be JSON valid against ``WebhookDataCreate``
(anything else is a 400 ``ValidationProblemDetails`` array naming each problem), its ``url`` an absolute
http(s) URL; ``enabled``, ``automaticRedelivery`` and ``authorizedEvents.everything`` default to true,
an absent, null or empty ``secret`` is generated. The 200 is a ``WebhookDataCreateResult``: the stored
webhook with its ``id`` and the ``secret`` echoed. Every webhook registered is kept
(:attr:`Webhooks.registered`) so tests can read what the driver asked for.

The permission is ``btcpay.store.webhooks.canmodifywebhooks`` (or a policy that includes it); a key
without it gets 403 ``missing-permission`` naming it, which the fake's endpoint answers before this.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

Json = Any
#: (status, body, deviations used), what the fake's endpoint sends
Answer = tuple[int, Json, tuple[str, ...]]
#: (JSON Schema, body) -> "$.path: message" lines
Check = Callable[[Json], list[str]]

PERMISSION = "btcpay.store.webhooks.canmodifywebhooks"
#: Policies that include it in BTCPay's permission tree (besides "unrestricted").
_GRANTING = frozenset({PERMISSION, "btcpay.store.canmodifystoresettings"})


def can_modify_webhooks(permissions: Iterable[str], store_id: str) -> bool:
    """Whether a key's permissions let it register webhooks on ``store_id`` (unscoped or scoped to it)."""
    for permission in permissions:
        policy, _, scope = permission.partition(":")
        if policy.lower() == "unrestricted" or (policy.lower() in _GRANTING and scope in ("", store_id)):
            return True
    return False


@dataclass
class Webhooks:
    """The webhooks registered with the fake, by id, each a ``WebhookData`` with its ``secret``."""

    registered: dict[str, dict[str, Json]] = field(default_factory=dict)

    def create(self, raw: bytes, check: Check) -> Answer:
        """Answer one registration request (``raw``: its body bytes; ``check``: the request schema's)."""
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _invalid([("$", f"the request body is not JSON: {exc}")])
        problems = [tuple(line.split(": ", 1)) for line in check(body)]
        if not problems and not _absolute_http(body.get("url")):
            problems = [("url", "Invalid URL")]
        if problems:
            return _invalid([(p[0], p[-1]) for p in problems])
        events = body.get("authorizedEvents") or {}
        webhook: dict[str, Json] = {
            "id": secrets.token_hex(11),
            "enabled": body.get("enabled", True),
            "automaticRedelivery": body.get("automaticRedelivery", True),
            "url": body["url"],
            "authorizedEvents": {
                "everything": events.get("everything", True),
                "specificEvents": list(events.get("specificEvents") or []),
            },
            "secret": body.get("secret") or secrets.token_urlsafe(24),
        }
        self.registered[webhook["id"]] = webhook
        return 200, dict(webhook), ()


def _absolute_http(url: Json) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _invalid(problems: list[tuple[str, str]]) -> Answer:
    body = [
        {"path": path.removeprefix("$.").removeprefix("$"), "message": message} for path, message in problems
    ]
    return 400, body, ()
