"""The drivers' reading of webhook deliveries (pure): authentication first, then strict parsing."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr
from reconciler_btcpay import webhooks as btcpay_webhooks
from reconciler_zaprite import webhooks as zaprite_webhooks

from reconciler import driver_api, errors
from tests.fakes import btcpay
from tests.webhooks.support import SECRET, TOKEN, btcpay_body, signature, zaprite_body


def delivery(
    body: bytes, headers: dict[str, str] | None = None, tail: str | None = None
) -> driver_api.WebhookDelivery:
    return driver_api.WebhookDelivery(body, headers or {}, tail, "rcv-1")


def read_btcpay(
    body: bytes, sig: str | None, *, secret: str | None = SECRET, tail: str | None = None
) -> driver_api.WebhookEvent:
    headers = {"btcpay-sig": sig} if sig is not None else {}
    return btcpay_webhooks.parse(
        delivery(body, headers, tail), SecretStr(secret) if secret else None, btcpay.STORE_ID
    )


def test_the_reference_test_vector_matches() -> None:
    body = b'{\n  "deliveryId": "d1",\n  "type": "InvoiceSettled"\n}'
    expected = "sha256=80055e10cc21151112eccb4a888db322a8461aae46283f19891d35daeabc6e8a"

    assert driver_api.signature_matches(SecretStr("whsec-test"), body, expected)
    assert not driver_api.signature_matches(SecretStr("whsec-test"), body + b" ", expected)


def test_a_signed_invoice_event_names_its_invoice_and_key() -> None:
    body = btcpay_body("INV1", delivery_id="d2", original="d1")

    event = read_btcpay(body, signature(body))

    assert event == driver_api.WebhookEvent("InvoiceSettled", "d2", "d1", "INV1", True)


@pytest.mark.parametrize(
    "sig",
    [
        None,
        "",
        "sha256=",
        "sha256=" + "0" * 64,
        signature(b"other"),
        signature(btcpay_body("INV1"), "another-secret"),
    ],
)
def test_a_missing_bad_or_foreign_signature_is_unauthorized(sig: str | None) -> None:
    with pytest.raises(errors.WebhookUnauthorized):
        read_btcpay(btcpay_body("INV1"), sig)


def test_a_tampered_body_is_unauthorized() -> None:
    body = btcpay_body("INV1")
    tampered = body.replace(b"INV1", b"INV2")

    with pytest.raises(errors.WebhookUnauthorized):
        read_btcpay(tampered, signature(body))


def test_a_signature_is_checked_before_the_body_is_parsed() -> None:
    with pytest.raises(errors.WebhookUnauthorized):
        read_btcpay(b"not json", "sha256=00")


def test_the_header_is_found_in_any_case_and_the_hex_in_any_case() -> None:
    body = btcpay_body("INV1")
    event = btcpay_webhooks.parse(
        delivery(body, {"BTCPAY-SIG": signature(body).upper().replace("SHA256=", "sha256=")}),
        SecretStr(SECRET),
        btcpay.STORE_ID,
    )
    assert event.invoice_ref == "INV1"


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b"{",
        b'{"type": "InvoiceSettled"}',
        json.dumps({"deliveryId": "d1", "type": 5}).encode(),
        json.dumps({"deliveryId": "d1", "type": "InvoiceSettled", "invoiceId": None}).encode(),
        json.dumps({"deliveryId": "d1", "type": "InvoiceSettled", "invoiceId": "x\u0000y"}).encode(),
        json.dumps({"deliveryId": "d" * 201, "type": "InvoiceSettled", "invoiceId": "I"}).encode(),
        b"\xff\xfe",
        b"[" * 100 + b"]" * 100,
    ],
)
def test_a_signed_body_that_is_not_the_expected_json_is_malformed(body: bytes) -> None:
    with pytest.raises(errors.WebhookMalformed):
        read_btcpay(body, signature(body))


def test_events_that_change_nothing_need_no_look() -> None:
    for body in (
        btcpay_body("INV1", "InvoiceCreated"),
        btcpay_body("INV1", "PayoutCreated"),
        btcpay_body("INV1", "InvoiceSettled", store_id="another-store"),
    ):
        assert read_btcpay(body, signature(body)).needs_look is False


def test_every_invoice_event_of_the_issue_needs_a_look() -> None:
    for event_type in btcpay_webhooks.LOOK_EVENTS:
        body = btcpay_body("INV1", event_type)
        assert read_btcpay(body, signature(body)).needs_look is True


def test_the_old_spelling_of_the_original_delivery_id_is_the_key() -> None:
    payload = {"deliveryId": "d2", "orignalDeliveryId": "d1", "type": "InvoiceSettled", "invoiceId": "I"}
    body = json.dumps(payload).encode()

    assert read_btcpay(body, signature(body)).idempotency_key == "d1"


def test_btcpay_without_a_secret_or_with_a_path_tail_is_not_found() -> None:
    body = btcpay_body("INV1")
    with pytest.raises(errors.WebhookNotFound):
        read_btcpay(body, signature(body), secret=None)
    with pytest.raises(errors.WebhookNotFound):
        read_btcpay(body, signature(body), tail="x")


def test_zaprite_with_its_token_reads_the_order() -> None:
    event = zaprite_webhooks.parse(delivery(zaprite_body("od_1"), tail=TOKEN), SecretStr(TOKEN))

    assert event == driver_api.WebhookEvent("order.change", "rcv-1", "rcv-1", "od_1", True)


@pytest.mark.parametrize("tail", [None, "", TOKEN[:-1], TOKEN + "x", TOKEN.upper()])
def test_zaprite_with_a_wrong_or_missing_token_is_unauthorized(tail: str | None) -> None:
    with pytest.raises(errors.WebhookUnauthorized):
        zaprite_webhooks.parse(delivery(zaprite_body("od_1"), tail=tail), SecretStr(TOKEN))


def test_zaprite_malformed_and_other_events() -> None:
    with pytest.raises(errors.WebhookMalformed):
        zaprite_webhooks.parse(delivery(b'{"eventType": "order.change"}', tail=TOKEN), SecretStr(TOKEN))
    event = zaprite_webhooks.parse(
        delivery(zaprite_body("od_1", "invoice.sent"), tail=TOKEN), SecretStr(TOKEN)
    )
    assert event.needs_look is False
    with pytest.raises(errors.WebhookNotFound):
        zaprite_webhooks.parse(delivery(zaprite_body("od_1"), tail=TOKEN), None)


def test_a_short_zaprite_token_is_refused_by_the_settings() -> None:
    from reconciler_zaprite import ZapriteSettings

    with pytest.raises(ValueError, match="at least 24"):
        ZapriteSettings.model_validate({"api_key": "k", "webhook_token": "short"})
    assert ZapriteSettings.model_validate({"api_key": "k", "webhook_token": TOKEN}).webhook_token is not None
