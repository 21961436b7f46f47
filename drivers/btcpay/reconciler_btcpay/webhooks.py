"""BTCPay webhook deliveries (docs/providers.md §4.1, docs/webhooks.md §4): pure reading of one delivery.

``BTCPay-Sig: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes keyed with the webhook's secret; it
is checked in constant time before the body is parsed. The idempotency key is ``originalDeliveryId`` (very
old servers spelled it ``orignalDeliveryId``), which every redelivery keeps. Invoice events name the invoice
by ``invoiceId``; an event for another store, or of a type that cannot change an invoice's status, needs no
look. Nothing else in the body is read: the invoice's state always comes from a fetch.
"""

from __future__ import annotations

from reconciler import driver_api

SIGNATURE_HEADER = "BTCPay-Sig"

#: The invoice events the listener reads (docs/providers.md §4.1), as `webhooks setup` subscribes to them.
INVOICE_EVENTS = (
    "InvoiceCreated",
    "InvoiceReceivedPayment",
    "InvoiceProcessing",
    "InvoicePaymentSettled",
    "InvoiceSettled",
    "InvoiceExpired",
    "InvoiceInvalid",
    "InvoiceExpiredPaidPartial",
    "InvoicePaidAfterExpiration",
)
#: Those after which the invoice's status may have changed (InvoiceCreated cannot have).
LOOK_EVENTS = frozenset(INVOICE_EVENTS) - {"InvoiceCreated"}


def parse(
    delivery: driver_api.WebhookDelivery, secret: driver_api.SecretStr | None, store_id: str
) -> driver_api.WebhookEvent:
    """The event of an authenticated delivery to ``POST /webhooks/{provider_id}``."""
    if secret is None or delivery.path_tail is not None:
        raise driver_api.WebhookNotFound("no BTCPay webhook ingress at this path")
    if not driver_api.signature_matches(secret, delivery.body, delivery.header(SIGNATURE_HEADER)):
        raise driver_api.WebhookUnauthorized(f"the {SIGNATURE_HEADER} header is missing or does not match")
    payload = driver_api.webhook_object(delivery.body)
    event_type = driver_api.webhook_text(payload, "type")
    delivery_id = driver_api.webhook_text(payload, "deliveryId")
    assert event_type is not None and delivery_id is not None
    original = driver_api.webhook_text(payload, "originalDeliveryId", required=False)
    if original is None:
        original = driver_api.webhook_text(payload, "orignalDeliveryId", required=False)
    invoice_ref = None
    needs_look = False
    if event_type.startswith("Invoice"):
        invoice_ref = driver_api.webhook_text(payload, "invoiceId", required=event_type in LOOK_EVENTS)
        event_store = driver_api.webhook_text(payload, "storeId", required=False)
        needs_look = event_type in LOOK_EVENTS and event_store in (None, store_id)
    return driver_api.WebhookEvent(
        event_type=event_type,
        delivery_id=delivery_id,
        idempotency_key=original or delivery_id,
        invoice_ref=invoice_ref,
        needs_look=needs_look,
    )
