"""Webhook deliveries as a driver reads them (docs/drivers.md §8, docs/webhooks.md): the values, the optional
protocol and the shared checks (signatures and tokens in constant time, strict JSON, safe strings).

A delivery is a nudge, never a source of truth: what a driver reads from it is which invoice to look at now
and how to recognise the same delivery again, nothing about the invoice's state.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import SecretStr

from reconciler import errors, strict_json
from reconciler.driver_types import TEXT_MAX
from reconciler.safe_text import UNSAFE_TEXT

MAX_WEBHOOK_BYTES = 1024 * 1024
"""The largest body the listener reads (a larger one is answered 413 unread)."""


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One delivery as it arrived: the raw body bytes (exactly as sent: signatures cover them), the request's
    headers, the path after ``/webhooks/{provider_id}`` (``None`` when there is none, else the one segment
    after it) and ``received_id``, a fresh id the core made for it (for providers whose deliveries carry
    no id of their own)."""

    body: bytes
    headers: Mapping[str, str]
    path_tail: str | None
    received_id: str

    def header(self, name: str) -> str | None:
        """A header by name in any case (the listener's headers are case-insensitive already; a plain
        mapping, as tests build, is searched)."""
        value = self.headers.get(name)
        if value is not None:
            return value
        lowered = name.lower()
        for key, item in self.headers.items():
            if key.lower() == lowered:
                return item
        return None


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """What a driver read from an authenticated delivery.

    - ``event_type``: the provider's event name, verbatim (``InvoiceSettled``, ``order.change``);
    - ``delivery_id``: this delivery's id (``received_id`` when the provider sends none);
    - ``idempotency_key``: the same for every redelivery of one delivery (BTCPay's ``originalDeliveryId``);
      a delivery whose key was recorded already is answered 200 and nothing more is done;
    - ``invoice_ref``: the provider invoice id the event names (``invoices.provider_invoice_id``), or None;
    - ``needs_look``: whether the event can change what the provider says about the invoice (False: the
      delivery is recorded and answered 200, and the invoice is left to its schedule).

    Strings are at most ``TEXT_MAX`` characters without control characters (:func:`check_event`).
    """

    event_type: str
    delivery_id: str
    idempotency_key: str
    invoice_ref: str | None
    needs_look: bool


@runtime_checkable
class SupportsWebhooks(Protocol):
    """Optional: a driver whose provider sends webhooks the core's listener can take (docs/drivers.md §8).

    ``parse_webhook`` runs on the listener's event loop for every delivery: it must be quick and pure (no
    I/O). It authenticates the delivery first (over the raw body, in constant time) and only then parses it;
    it raises ``WebhookUnauthorized`` (401), ``WebhookNotFound`` (404: no ingress at this path, e.g. a
    path tail this provider does not use) or ``WebhookMalformed`` (400, for an authenticated body only),
    never anything else. ``webhook_enabled`` says whether the provider's section configures a secret or
    token (without one, every delivery is 404). ``webhook_aliases`` is asked when no invoice row holds
    ``invoice_ref``: the other provider invoice ids the same invoice may be stored under (Zaprite: the
    order's ``externalUniqId``), read from the provider with the driver's own timeout; it raises the
    driver errors a fetch raises.
    """

    def webhook_enabled(self) -> bool: ...

    def parse_webhook(self, delivery: WebhookDelivery) -> WebhookEvent: ...

    async def webhook_aliases(self, invoice_ref: str) -> tuple[str, ...]: ...


def signature_matches(secret: SecretStr, body: bytes, given: str | None, *, prefix: str = "sha256=") -> bool:
    """Whether ``given`` is ``prefix`` + the lower-case hex HMAC-SHA256 of ``body`` keyed with ``secret``'s
    UTF-8 bytes, compared in constant time (an absent or non-ASCII header never matches)."""
    if given is None or not given.isascii():
        return False
    expected = prefix + hmac.new(secret.get_secret_value().encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode("ascii"), given.strip().lower().encode("ascii"))


def token_matches(secret: SecretStr, given: str | None) -> bool:
    """Whether a token from the request (a path segment) equals ``secret``, compared in constant time."""
    if given is None:
        return False
    return hmac.compare_digest(secret.get_secret_value().encode("utf-8"), given.encode("utf-8", "replace"))


def webhook_object(body: bytes) -> dict[str, Any]:
    """An authenticated body decoded strictly (reconciler/strict_json.py) as a JSON object;
    ``WebhookMalformed`` saying why otherwise (never quoting the body)."""
    try:
        value = strict_json.decode_json(body)
    except strict_json.UnreadableJson as exc:
        raise errors.WebhookMalformed(f"the body is not JSON this reconciler accepts: {exc}") from exc
    if not isinstance(value, dict):
        raise errors.WebhookMalformed(f"the body is a JSON {type(value).__name__}, not an object")
    return value


def webhook_text(payload: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    """``payload[key]`` as a non-empty string of at most ``TEXT_MAX`` characters without control characters;
    None when absent (or null) and not ``required``; ``WebhookMalformed`` naming the field otherwise."""
    value = payload.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise errors.WebhookMalformed(f"{key!r} is {'missing' if value is None else 'not a string'}")
    problem = text_problem(value)
    if problem is not None:
        raise errors.WebhookMalformed(f"{key!r} {problem}")
    return value


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as a webhook field, or None."""
    if not value:
        return "is empty"
    if len(value) > TEXT_MAX:
        return f"is longer than {TEXT_MAX} characters"
    if UNSAFE_TEXT.search(value):
        return "holds a control character or a lone surrogate"
    return None


def check_event(event: WebhookEvent) -> WebhookEvent:
    """``event`` when every string in it can be stored; ``WebhookMalformed`` otherwise (the core checks
    every driver's event with this before it writes anything)."""
    for name in ("event_type", "delivery_id", "idempotency_key", "invoice_ref"):
        value = getattr(event, name)
        if value is None and name == "invoice_ref":
            continue
        if not isinstance(value, str):
            raise errors.WebhookMalformed(f"the driver read no {name} from the delivery")
        problem = text_problem(value)
        if problem is not None:
            raise errors.WebhookMalformed(f"the delivery's {name} {problem}")
    if not isinstance(event.needs_look, bool):
        raise errors.WebhookMalformed("the driver's needs_look is not a bool")
    return event
