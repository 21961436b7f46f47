"""Zaprite webhook deliveries (docs/providers.md §4.2, docs/webhooks.md §4): pure reading of one delivery.

Zaprite signs nothing: the only authentication is the unguessable token in the path
(``POST /webhooks/{provider_id}/{token}``), compared in constant time with ``webhook_token``. The body is
``{"eventType", "orderId", "orgId"}`` and carries no delivery id, so each delivery is its own (the key is
the id the core gave it: a repeated notification nudges again, which costs one fetch and changes nothing).
``order.change`` needs a look; other event types (``invoice.sent``) do not.
"""

from __future__ import annotations

from reconciler import driver_api

LOOK_EVENTS = frozenset({"order.change"})


def parse(
    delivery: driver_api.WebhookDelivery, token: driver_api.SecretStr | None
) -> driver_api.WebhookEvent:
    """The event of a delivery to ``POST /webhooks/{provider_id}/{token}``."""
    if token is None:
        raise driver_api.WebhookNotFound("no Zaprite webhook ingress at this path")
    if not driver_api.token_matches(token, delivery.path_tail):
        raise driver_api.WebhookUnauthorized("the token in the path is missing or wrong")
    payload = driver_api.webhook_object(delivery.body)
    event_type = driver_api.webhook_text(payload, "eventType")
    order_id = driver_api.webhook_text(payload, "orderId")
    driver_api.webhook_text(payload, "orgId")
    assert event_type is not None and order_id is not None
    return driver_api.WebhookEvent(
        event_type=event_type,
        delivery_id=delivery.received_id,
        idempotency_key=delivery.received_id,
        invoice_ref=order_id,
        needs_look=event_type in LOOK_EVENTS,
    )
