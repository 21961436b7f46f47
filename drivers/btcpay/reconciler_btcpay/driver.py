"""The BTCPay Server driver (docs/statuses.md §3, docs/providers.md §1): one store-scoped Greenfield GET per
invoice, and pages of the store's invoice list by creation window (``fetch_page``).

HTTP goes through the core's shared boundary (``driver_api.JsonClient``: bounded bodies, strict JSON,
one status table); what this driver adds is BTCPay's: 403 may mean "not in this store" rather than
"key refused", so on a 403 for an invoice the driver checks its own key once with
``GET /api/v1/api-keys/current`` and remembers the answer for ``key_check_ttl`` seconds: a key that
can view this store's invoices means "not found", anything else is an auth error. Invoice ids go
through ``driver_api.path_segment`` and every snapshot through ``driver_api.check_snapshot``.

``fetch_page`` reads ``GET /api/v1/stores/{storeId}/invoices`` with ``startDate``/``endDate`` (unix
seconds, inclusive, on creation time: the window rounded outwards), ``skip``/``take``,
``includePaymentMethods=true`` and ``includeArchived=true`` (docs/providers.md §1.8). Each listed item
is read exactly as a single GET's body is (``snapshot_from_invoice`` and ``check_snapshot``); one that
fails, or is listed for another store or twice, is that id's ``BadProviderResponse`` and the rest of
the page stands; an item without a usable ``id`` is left out (counted in ``Page.items`` only). There is
no ``fetch_many``: the list endpoint filters by ``orderId``, not by invoice id.

``register_webhook`` (``driver_api.SupportsWebhookSetup``) registers the daemon's webhook with the store
(:mod:`reconciler_btcpay.registration`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from pydantic import ConfigDict, field_validator

from reconciler import driver_api
from reconciler_btcpay import client, registration, status, webhooks

# Policies that include btcpay.store.canviewinvoices (BTCPay's permission tree, upper-cased for matching);
# "unrestricted" covers all.
_VIEW_INVOICES_POLICIES = frozenset(
    {
        "BTCPAY.STORE.CANVIEWINVOICES",
        "BTCPAY.STORE.CANMODIFYINVOICES",
        "BTCPAY.STORE.CANVIEWSTORESETTINGS",
        "BTCPAY.STORE.CANMODIFYSTORESETTINGS",
    }
)
_SATS_CURRENCIES = frozenset({"BTC", "SATS"})
_LAST_UNIX_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime holds
_LIST = "invoice list"


class BTCPayDriver:
    """Reads invoices from one BTCPay Server store through the Greenfield API v1."""

    class Settings(driver_api.DriverSettings):
        """``[providers.<id>]`` options of ``driver = "btcpay"`` (``api_key_file`` is resolved by the core)."""

        # Validation errors would otherwise quote the rejected input, which may be the key.
        model_config = ConfigDict(hide_input_in_errors=True)

        base_url: str
        store_id: str
        api_key: driver_api.SecretStr
        #: the secret of the store's webhook to this reconciler (docs/webhooks.md); none: no webhook ingress
        webhook_secret: driver_api.SecretStr | None = None

        @field_validator("base_url")
        @classmethod
        def _http_url(cls, value: str) -> str:
            parts = urlsplit(value)
            if any(c.isspace() for c in value):
                raise ValueError("must not contain spaces")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL with a host")
            _ = parts.port  # raises ValueError on a malformed port
            if parts.username is not None or parts.password is not None:
                raise ValueError("must not carry credentials (use api_key)")
            if parts.query or parts.fragment:
                raise ValueError("must not have a query or fragment")
            return value.rstrip("/")

        @field_validator("store_id")
        @classmethod
        def _store_id(cls, value: str) -> str:
            if not value or "/" in value or any(c.isspace() or not c.isprintable() for c in value):
                raise ValueError("must be a non-empty store id without '/', spaces or control characters")
            if value in (".", "..") or len(value) > driver_api.TEXT_MAX:
                raise ValueError("must be a store id (not '.' or '..', at most 200 characters)")
            return value

        @field_validator("api_key")
        @classmethod
        def _api_key(cls, value: driver_api.SecretStr) -> driver_api.SecretStr:
            secret = value.get_secret_value()
            if not secret or any(c.isspace() for c in secret):
                raise ValueError("must be a non-empty key without spaces")
            return value

        @field_validator("webhook_secret")
        @classmethod
        def _webhook_secret(cls, value: driver_api.SecretStr | None) -> driver_api.SecretStr | None:
            if value is not None and not value.get_secret_value():
                raise ValueError("must not be empty")
            return value

    post_settle_kinds: ClassVar[tuple[str, ...]] = ()
    key_check_ttl: ClassVar[float] = 60.0
    """Seconds a key check after a 403 is remembered (about one pass)."""
    page_item_bytes: ClassVar[int] = 16 * 1024
    """Body bytes a listed invoice may take: a page asks at most ``max_response_bytes`` // this many
    (256 with the default 4 MiB). An invoice with its payment methods is 2 to 5 KiB; metadata adds."""

    def __init__(
        self,
        provider_id: str,
        settings: BTCPayDriver.Settings,
        common: driver_api.CommonSettings,
        session: aiohttp.ClientSession,
    ) -> None:
        self.provider_id = provider_id
        self._store_id = settings.store_id
        self._store_segment = driver_api.path_segment(settings.store_id)
        self._http = client.make_client(
            provider_id=provider_id,
            base_url=settings.base_url,
            api_key=settings.api_key,
            common=common,
            session=session,
        )
        self._webhook_secret = settings.webhook_secret
        self._key_lock = asyncio.Lock()
        self._key_checked_at: float | None = None
        self._key_problem_text: str | None = None

    async def fetch(self, provider_invoice_id: str) -> driver_api.Snapshot:
        """``GET /api/v1/stores/{storeId}/invoices/{id}?includePaymentMethods=true`` as a Snapshot."""
        segment = driver_api.path_segment(provider_invoice_id, provider_id=self.provider_id)
        path = f"/api/v1/stores/{self._store_segment}/invoices/{segment}"
        reply = await self._http.get(path, {"includePaymentMethods": "true"}, invoice_id=provider_invoice_id)
        if reply.status == 403:
            raise await self._forbidden(provider_invoice_id)
        if reply.status != 200:
            raise self._http.status_error(reply, invoice_id=provider_invoice_id)
        body = self._http.json(reply, invoice_id=provider_invoice_id)
        try:
            snapshot = snapshot_from_invoice(body, provider_invoice_id)
        except ValueError as exc:
            raise self._http.bad_body(str(exc), reply, invoice_id=provider_invoice_id) from exc
        return driver_api.check_snapshot(
            snapshot, provider_id=self.provider_id, invoice_id=provider_invoice_id
        )

    async def fetch_page(self, request: driver_api.PageRequest) -> driver_api.Page:
        """One page of the store's invoices created in ``request``'s window, newest first."""
        params = {
            "startDate": str(math.floor(request.created_from.timestamp())),
            "endDate": str(math.ceil(request.created_to.timestamp())),
            "skip": str(request.skip),
            "take": str(request.take),
            "includePaymentMethods": "true",
            "includeArchived": "true",
        }
        path = f"/api/v1/stores/{self._store_segment}/invoices"
        reply = await self._http.get(path, params, what=_LIST)
        if reply.status != 200:
            raise self._http.status_error(reply, what=_LIST)
        body = self._http.json(reply, what=_LIST)
        if not isinstance(body, list):
            raise self._http.bad_body(f"expected a JSON array, got {type(body).__name__}", reply, what=_LIST)
        answers: dict[str, driver_api.Snapshot | driver_api.DriverError] = {}
        created = [_created_time(item) for item in body]
        known = [t for t in created if t is not None]
        oldest = datetime.fromtimestamp(min(known), UTC) if known and len(known) == len(body) else None
        times: dict[str, datetime] = {}
        for item, seconds in zip(body, created, strict=True):
            invoice_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(invoice_id, str) or not 0 < len(invoice_id) <= driver_api.TEXT_MAX:
                continue  # no id to give its answer to
            if invoice_id in answers:
                answers[invoice_id] = self._http.bad_body("listed twice", reply, invoice_id=invoice_id)
                times.pop(invoice_id, None)
            else:
                answers[invoice_id] = self._listed(item, invoice_id, reply)
                if seconds is not None:
                    times[invoice_id] = datetime.fromtimestamp(seconds, UTC)
        return driver_api.Page(answers, len(body), oldest, times)

    def _listed(
        self, item: dict[str, Any], invoice_id: str, reply: driver_api.Reply
    ) -> driver_api.Snapshot | driver_api.DriverError:
        """One list item read exactly as a single GET's body, or the error that item alone earned."""
        if item.get("storeId") != self._store_id:
            return self._http.bad_body("listed for another store", reply, invoice_id=invoice_id)
        try:
            snapshot = snapshot_from_invoice(item, invoice_id)
        except ValueError as exc:
            return self._http.bad_body(str(exc), reply, invoice_id=invoice_id)
        try:
            return driver_api.check_snapshot(snapshot, provider_id=self.provider_id, invoice_id=invoice_id)
        except driver_api.DriverError as exc:
            return exc

    async def register_webhook(self, url: str, secret: driver_api.SecretStr) -> str:
        """``POST /api/v1/stores/{storeId}/webhooks``: ``url`` for the invoice events, signed with
        ``secret``; the webhook's id (:mod:`reconciler_btcpay.registration`)."""
        path = f"/api/v1/stores/{self._store_segment}/webhooks"
        body = registration.request_body(url, secret)
        reply = await self._http.post(path, body, what=registration.WHAT)
        if reply.status != 200:
            raise registration.refusal(self._http, reply, self._store_id, secret.get_secret_value())
        return registration.webhook_id(self._http, reply, secret.get_secret_value())

    async def check(self) -> None:
        """Verify that the key is accepted and may view this store's invoices."""
        problem = await self._key_problem()
        if problem is not None:
            raise self._http.error(driver_api.ProviderAuthError, problem, None)

    def webhook_enabled(self) -> bool:
        """Whether ``webhook_secret`` is configured (docs/webhooks.md)."""
        return self._webhook_secret is not None

    def parse_webhook(self, delivery: driver_api.WebhookDelivery) -> driver_api.WebhookEvent:
        """A delivery's event, its ``BTCPay-Sig`` checked first (``reconciler_btcpay.webhooks``)."""
        return webhooks.parse(delivery, self._webhook_secret, self._store_id)

    async def webhook_aliases(self, invoice_ref: str) -> tuple[str, ...]:
        """None: a BTCPay invoice is stored under its own id only."""
        return ()

    async def _key_problem(self) -> str | None:
        """What is wrong with the API key for this store, or ``None``; other failures raise."""
        reply = await self._http.get("/api/v1/api-keys/current", what="key check")
        if reply.status in (401, 403):
            return f"API key refused: {self._http.describe(reply)}"
        if reply.status != 200:
            raise self._http.status_error(reply, what="key check")
        body = self._http.json(reply, what="key check")
        permissions = body.get("permissions") if isinstance(body, dict) else None
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise self._http.bad_body("api-keys/current has no permissions list", reply, what="key check")
        if not grants_view_invoices(permissions, self._store_id):
            return f"API key lacks btcpay.store.canviewinvoices for store {self._store_id!r}"
        return None

    async def _forbidden(self, invoice_id: str) -> driver_api.DriverError:
        """Interpret a 403 on an invoice: not found with a good key, an auth error otherwise."""
        async with self._key_lock:
            now = time.monotonic()
            if self._key_checked_at is None or now - self._key_checked_at >= self.key_check_ttl:
                # A transient or unreadable key check raises uncached: the next 403 asks again.
                self._key_problem_text = await self._key_problem()
                self._key_checked_at = now
            problem = self._key_problem_text
        if problem is not None:
            return self._http.error(driver_api.ProviderAuthError, f"HTTP 403; {problem}", invoice_id, 403)
        detail = f"not found: HTTP 403 with a valid key (not in store {self._store_id!r})"
        return self._http.error(driver_api.InvoiceNotFound, detail, invoice_id, 403)


def snapshot_from_invoice(body: Any, invoice_id: str) -> driver_api.Snapshot:
    """Read a Greenfield ``InvoiceData`` body; ``ValueError`` when it is not one.

    ``status`` must be a string (``additionalStatus`` a string or absent) and ``id``, when present,
    the invoice asked for. Amounts are evidence only: anything unreadable there is "no opinion"
    (with the invoice amount kept as ``amount_raw`` evidence). Whether the strings can be stored is
    ``driver_api.check_snapshot``'s to say.
    """
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    raw_status = body.get("status")
    if not isinstance(raw_status, str):
        raise ValueError("'status' is missing or not a string")
    raw_additional = body.get("additionalStatus")
    if raw_additional is not None and not isinstance(raw_additional, str):
        raise ValueError("'additionalStatus' is not a string")
    if "id" in body and body["id"] != invoice_id:
        raise ValueError(f"answer is for invoice {driver_api.raw_evidence(body['id'])}")
    currency = body.get("currency") if isinstance(body.get("currency"), str) else None
    reading = status.read_status(raw_status, raw_additional)
    amount = amount_sats(body.get("amount"), currency)
    return driver_api.Snapshot(
        status=reading.status,
        raw_status=raw_status,
        raw_additional_status=raw_additional,
        currency=currency,
        amount_sats=amount,
        paid_sats=paid_sats(body.get("paymentMethods")),
        paid_late=reading.paid_late,
        partially_paid=reading.partially_paid,
        overpaid=reading.overpaid,
        manually_marked=reading.manually_marked,
        amount_raw=amount_evidence(body.get("amount"), currency) if amount is None else None,
    )


def _created_time(item: object) -> int | None:
    """A list item's `createdTime` (unix seconds) when it is a plausible one; None otherwise."""
    value = item.get("createdTime") if isinstance(item, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _LAST_UNIX_SECOND:
        return value
    return None


def _sats_currency(currency: str | None) -> bool:
    return currency is not None and driver_api.ascii_upper(currency) in _SATS_CURRENCIES


def amount_sats(amount: object, currency: str | None) -> int | None:
    """The invoice amount in sats for ``BTC`` (half up) and ``SATS`` invoices; ``None`` otherwise
    (docs/reconcile.md §14).

    Only positive amounts up to ``driver_api.MAX_SATS`` are an opinion.
    """
    if currency is None or not _sats_currency(currency):
        return None
    sats = driver_api.decimal_to_sats(amount, unit=currency)
    return sats if sats is not None and 0 < sats <= driver_api.MAX_SATS else None


def amount_evidence(amount: object, currency: str | None) -> str | None:
    """``amount`` as evidence when a ``BTC``/``SATS`` invoice states one that :func:`amount_sats` cannot use."""
    if amount is None or not _sats_currency(currency) or amount_sats(amount, currency) is not None:
        return None
    return driver_api.raw_evidence(amount)


def paid_sats(payment_methods: object) -> int | None:
    """Sum of settled Bitcoin payments, each floored to whole sats; ``None`` without Bitcoin detail.

    Reads both field generations: v2 ``currency`` and v1 (before BTCPay 2.0) ``cryptoCode``. A
    payment that is unreadable or negative, or a sum over ``driver_api.MAX_SATS``, is no opinion.
    """
    if not isinstance(payment_methods, list):
        return None
    total, bitcoin = 0, False
    for method in payment_methods:
        if not isinstance(method, dict):
            return None
        code = method.get("currency", method.get("cryptoCode"))
        if not isinstance(code, str) or driver_api.ascii_upper(code) != "BTC":
            continue
        bitcoin = True
        payments = method.get("payments", [])
        if not isinstance(payments, list):
            return None
        for payment in payments:
            if not isinstance(payment, dict):
                return None
            state = payment.get("status")
            if not isinstance(state, str) or driver_api.ascii_upper(state) != "SETTLED":
                continue
            sats = driver_api.floor_sats(payment.get("value"))
            if sats is None or sats < 0:
                return None
            total += sats
    if not bitcoin or total > driver_api.MAX_SATS:
        return None
    return total


def grants_view_invoices(permissions: Iterable[str], store_id: str) -> bool:
    """Whether API-key permissions include viewing ``store_id``'s invoices (unscoped or scoped to it)."""
    for permission in permissions:
        policy, _, scope = permission.partition(":")
        policy = driver_api.ascii_upper(policy.strip())
        if policy == "UNRESTRICTED" and not scope:
            return True
        if policy in _VIEW_INVOICES_POLICIES and scope in ("", store_id):
            return True
    return False
