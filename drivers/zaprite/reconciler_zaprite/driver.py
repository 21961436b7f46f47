"""The Zaprite driver: settings, ``fetch``, ``check`` and the payment-profile post-settle task
(docs/reconcile.md §15, docs/providers.md §2).

HTTP goes through the core's shared boundary (see ``client``); every snapshot passes
``driver_api.check_snapshot`` and every payment profile ``driver_api.check_payment_profile`` before
it is returned, so nothing the store cannot write leaves the driver.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

import aiohttp
from loguru import logger
from pydantic import BaseModel, field_validator

from reconciler import driver_api
from reconciler_zaprite import client, status, webhooks

CAPTURE_PAYMENT_PROFILE = "zaprite.capture_payment_profile"


class ZapriteSettings(driver_api.DriverSettings):
    """The options of a ``driver = "zaprite"`` provider section."""

    base_url: str = "https://api.zaprite.com"
    api_key: driver_api.SecretStr
    #: the secret path segment of this reconciler's webhook URL (docs/webhooks.md); none: no webhook ingress
    webhook_token: driver_api.SecretStr | None = None

    @field_validator("webhook_token")
    @classmethod
    def _check_webhook_token(cls, value: driver_api.SecretStr | None) -> driver_api.SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value()
        if len(token) < 24 or not all(c.isascii() and (c.isalnum() or c in "-_.~") for c in token):
            raise ValueError(
                "webhook_token must be at least 24 URL-safe characters (letters, digits, - _ . ~), "
                "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("base_url must not carry credentials; use api_key or api_key_file")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        return value.rstrip("/")


def find_profile(contact: client.Contact, invoice_id: str) -> client.Profile | None:
    """The contact's profile saved from the order whose ``externalUniqId`` is our invoice id."""
    for profile in contact.payment_profiles:
        if profile.source_order is not None and profile.source_order.external_uniq_id == invoice_id:
            return profile
    return None


def expiry(profile: client.Profile) -> str | None:
    """The profile's ``expiresAt`` in docs/schema.md §1's form; ``None`` (with a warning) when unreadable."""
    if profile.expires_at is None:
        return None
    text = profile.expires_at if isinstance(profile.expires_at, str) else None
    normalised = driver_api.normalize_timestamp(text) if text is not None else None
    if normalised is None:
        logger.warning(
            "Zaprite payment profile {} has an unreadable expiresAt {}; storing no expiry",
            driver_api.raw_evidence(profile.id),
            driver_api.raw_evidence(profile.expires_at),
        )
    return normalised


class ZapriteDriver:
    """Reads Zaprite orders by id or ``externalUniqId`` and captures card payment profiles."""

    Settings: ClassVar[type[BaseModel]] = ZapriteSettings
    post_settle_kinds: ClassVar[tuple[str, ...]] = (CAPTURE_PAYMENT_PROFILE,)
    webhook_setup_hint: ClassVar[str] = (
        "add the webhook in Zaprite's dashboard (Settings → API → Add Webhook) with the endpoint URL "
        "{url}/<token>, where <token> is the unguessable token in this provider's webhook_token_file "
        "(docs/operations.md, Webhooks)"
    )

    def __init__(
        self,
        provider_id: str,
        settings: ZapriteSettings,
        common: driver_api.CommonSettings,
        session: aiohttp.ClientSession,
    ) -> None:
        self.provider_id = provider_id
        self._webhook_token = settings.webhook_token
        authorization = client.authorization(settings.api_key)
        self._client = client.ZapriteClient(
            driver_api.JsonClient.for_provider(
                provider_id,
                common,
                session,
                service=client.SERVICE,
                base_url=settings.base_url,
                authorization=authorization,
            )
        )

    async def fetch(self, provider_invoice_id: str) -> driver_api.Snapshot:
        """The order's snapshot; one attempt, errors translated."""
        snapshot = status.snapshot(await self._client.get_order(provider_invoice_id))
        return driver_api.check_snapshot(
            snapshot, provider_id=self.provider_id, invoice_id=provider_invoice_id
        )

    def webhook_enabled(self) -> bool:
        """Whether ``webhook_token`` is configured (docs/webhooks.md)."""
        return self._webhook_token is not None

    def parse_webhook(self, delivery: driver_api.WebhookDelivery) -> driver_api.WebhookEvent:
        """A delivery's event, its path token checked first (``reconciler_zaprite.webhooks``)."""
        return webhooks.parse(delivery, self._webhook_token)

    async def webhook_aliases(self, invoice_ref: str) -> tuple[str, ...]:
        """The order's ``externalUniqId``, the id a storefront may have stored instead of the order id."""
        order = await self._client.get_order(invoice_ref)
        alias = order.external_uniq_id
        if alias is None or alias == invoice_ref or driver_api.webhook_text_problem(alias) is not None:
            return ()
        return (alias,)

    async def check(self) -> None:
        """``GET /v1/orders?limit=1``: succeeds when the key is accepted."""
        try:
            await self._client.list_orders(limit=1)
        except driver_api.BadProviderResponse as exc:
            if exc.http_status != 404:
                raise
            raise self._client.http.error(
                driver_api.BadProviderResponse,
                "GET /v1/orders: HTTP 404; is base_url a Zaprite API?",
                None,
                404,
            ) from exc

    async def post_settle(self, task: driver_api.PostSettleTask) -> driver_api.PostSettleResult:
        """Find the payment profile the settled order saved, if its payment could leave one."""
        if task.kind != CAPTURE_PAYMENT_PROFILE:
            raise ValueError(f"the zaprite driver has no post-settle task {task.kind!r}")
        order = await self._client.get_order(task.provider_invoice_id)
        if not status.paid_by_card(order):
            return driver_api.NotApplicable("no confirmed card-like payment, so no payment profile")
        if order.contact is None:
            return driver_api.NotApplicable("the order has no contact")
        try:
            contact = await self._client.get_contact(order.contact.id, invoice_id=task.provider_invoice_id)
        except driver_api.InvoiceNotFound:
            return driver_api.NotYet("the order's contact is not visible yet")
        profile = find_profile(contact, task.invoice_id)
        if profile is None:
            return driver_api.NotYet("no payment profile saved from this order yet")
        found = driver_api.PaymentProfile(
            contact_id=contact.id, profile_id=profile.id, method=profile.method, expires_at=expiry(profile)
        )
        checked = driver_api.check_payment_profile(
            found, provider_id=self.provider_id, invoice_id=task.provider_invoice_id
        )
        if not checked.profile_id:
            raise self._client.http.error(
                driver_api.BadProviderResponse,
                "the payment profile has an empty id",
                task.provider_invoice_id,
            )
        return driver_api.Done(checked)
