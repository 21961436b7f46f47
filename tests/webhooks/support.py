"""Signed webhook bodies as BTCPay and Zaprite send them (docs/providers.md §4)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from tests.fakes import btcpay

SECRET = "whsec-test-0123456789abcdef"
TOKEN = "zt-0123456789abcdefghijklmnopqrstuv"


def btcpay_body(
    invoice_id: str,
    event_type: str = "InvoiceSettled",
    *,
    delivery_id: str = "d1",
    original: str | None = None,
    store_id: str = btcpay.STORE_ID,
    **extra: Any,
) -> bytes:
    """An invoice event, serialised indented like BTCPay (the signature covers these exact bytes)."""
    payload = {
        "deliveryId": delivery_id,
        "webhookId": "wh1",
        "originalDeliveryId": original or delivery_id,
        "isRedelivery": original is not None and original != delivery_id,
        "type": event_type,
        "timestamp": 1767322800,
        "storeId": store_id,
        "invoiceId": invoice_id,
        "metadata": {},
    } | extra
    return json.dumps(payload, indent=2).encode("utf-8")


def signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def zaprite_body(order_id: str, event_type: str = "order.change", org_id: str = "org_1") -> bytes:
    return json.dumps({"eventType": event_type, "orderId": order_id, "orgId": org_id}).encode("utf-8")
