"""The public API for payment-provider drivers: the only core module a driver imports.

A driver is a class registered in the entry-point group ``reconciler.drivers``::

    [project.entry-points."reconciler.drivers"]
    btcpay = "reconciler_btcpay:BTCPayDriver"

It satisfies the :class:`Driver` Protocol: a pydantic ``Settings`` model of its own options, a
constructor ``Driver(provider_id, settings, common, session)``, ``fetch(provider_invoice_id) ->
Snapshot`` and ``check()``. It may also implement ``fetch_page`` (:class:`SupportsFetchPages`: one page
of the invoices created in a window), ``fetch_many`` (:class:`SupportsFetchMany`), ``post_settle``
(:class:`SupportsPostSettle`), ``parse_webhook`` with ``webhook_enabled`` and ``webhook_aliases``
(:class:`SupportsWebhooks`: deliveries to the core's webhook listener, docs/drivers.md §8) and
``register_webhook`` (:class:`SupportsWebhookSetup`: registering the daemon's webhook URL with the provider,
for ``reconciler webhooks setup``).

Retries, circuit breaking, concurrency and rate limits live in the core's runner, not in drivers:
a driver makes one attempt and translates every HTTP or JSON failure into one of the
:class:`DriverError` subclasses at one boundary, never putting a secret in a message. That boundary
is shared: :class:`JsonClient` (``reconciler.providers_http``), which a driver builds in its
constructor with ``JsonClient.for_provider(provider_id, common, session, service=..., base_url=...,
authorization=auth_header("Bearer", settings.api_key))``, bounds what is read, decodes JSON strictly
and maps every transport failure and status once, the same way for every driver. What a
driver builds from an answer goes through :func:`check_snapshot` before it is returned; ids put in a
URL path go through :func:`path_segment`. Drivers never touch the database.
"""

# The implementation lives in modules split along its seams; this module is the one drivers import:
#   driver_types   the Driver protocol, Snapshot, ProviderStatus, settings bases, post-settle types
#   driver_values  amounts, evidence, path segments, timestamps, the snapshot and profile checks
#   providers_http the HTTP client (with strict_json, retry_after, secret_scrub and safe_text beneath it)
#   driver_webhooks webhook deliveries: the optional protocol, its values, signature and token checks
#   errors         the driver error tree
from __future__ import annotations

from pydantic import SecretStr

from reconciler import driver_webhooks, errors, providers_http
from reconciler.driver_types import (
    MAX_SATS,
    PAGE_ITEM_BYTES,
    TEXT_MAX,
    CommonSettings,
    Done,
    Driver,
    DriverSettings,
    NotApplicable,
    NotYet,
    Page,
    PageRequest,
    PaymentProfile,
    PostSettleResult,
    PostSettleTask,
    ProviderStatus,
    Snapshot,
    SupportsFetchMany,
    SupportsFetchPages,
    SupportsPostSettle,
    SupportsWebhookSetup,
)
from reconciler.driver_values import (
    RAW_EVIDENCE_MAX,
    ascii_upper,
    check_payment_profile,
    check_snapshot,
    decimal_to_sats,
    floor_sats,
    normalize_timestamp,
    path_segment,
    raw_evidence,
)

__all__ = [
    "MAX_SATS",
    "MAX_WEBHOOK_BYTES",
    "PAGE_ITEM_BYTES",
    "RAW_EVIDENCE_MAX",
    "RETRY_AFTER_MAX",
    "TEXT_MAX",
    "BadProviderResponse",
    "CommonSettings",
    "Done",
    "Driver",
    "DriverError",
    "DriverSettings",
    "InvoiceNotFound",
    "JsonClient",
    "NotApplicable",
    "NotYet",
    "Page",
    "PageRequest",
    "PaymentProfile",
    "PostSettleResult",
    "PostSettleTask",
    "ProviderAuthError",
    "ProviderStatus",
    "ProviderUnavailable",
    "Reply",
    "SecretStr",
    "Snapshot",
    "SupportsFetchMany",
    "SupportsFetchPages",
    "SupportsPostSettle",
    "SupportsWebhookSetup",
    "SupportsWebhooks",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookMalformed",
    "WebhookNotFound",
    "WebhookRefused",
    "WebhookUnauthorized",
    "ascii_upper",
    "auth_header",
    "check_event",
    "check_payment_profile",
    "check_snapshot",
    "decimal_to_sats",
    "floor_sats",
    "normalize_timestamp",
    "parse_retry_after",
    "path_segment",
    "raw_evidence",
    "signature_matches",
    "token_matches",
    "webhook_object",
    "webhook_text",
    "webhook_text_problem",
]

# The driver error tree, re-exported so drivers import this module only.
DriverError = errors.DriverError
ProviderUnavailable = errors.ProviderUnavailable
ProviderAuthError = errors.ProviderAuthError
InvoiceNotFound = errors.InvoiceNotFound
BadProviderResponse = errors.BadProviderResponse

# The shared HTTP boundary (see reconciler.providers_http).
JsonClient = providers_http.JsonClient
auth_header = providers_http.auth_header
Reply = providers_http.Reply
parse_retry_after = providers_http.parse_retry_after
RETRY_AFTER_MAX = providers_http.RETRY_AFTER_MAX

# Webhook deliveries (see reconciler.driver_webhooks): the optional protocol, its values and shared checks.
SupportsWebhooks = driver_webhooks.SupportsWebhooks
WebhookDelivery = driver_webhooks.WebhookDelivery
WebhookEvent = driver_webhooks.WebhookEvent
MAX_WEBHOOK_BYTES = driver_webhooks.MAX_WEBHOOK_BYTES
check_event = driver_webhooks.check_event
signature_matches = driver_webhooks.signature_matches
token_matches = driver_webhooks.token_matches
webhook_object = driver_webhooks.webhook_object
webhook_text = driver_webhooks.webhook_text
webhook_text_problem = driver_webhooks.text_problem
WebhookRefused = errors.WebhookRefused
WebhookUnauthorized = errors.WebhookUnauthorized
WebhookNotFound = errors.WebhookNotFound
WebhookMalformed = errors.WebhookMalformed
