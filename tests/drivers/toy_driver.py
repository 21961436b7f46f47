"""A driver for Toy, a JSON-over-HTTP payment provider: the example of docs/writing-a-driver.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, field_validator

from reconciler import driver_api

SAVE_CARD = "toy.save_card"

# Toy's invoice states in the core's terms; any other state is UNKNOWN (never acted upon).
STATES: Mapping[str, driver_api.ProviderStatus] = {
    "OPEN": driver_api.ProviderStatus.PENDING,
    "PAID": driver_api.ProviderStatus.SETTLED,
    "EXPIRED": driver_api.ProviderStatus.EXPIRED,
    "VOID": driver_api.ProviderStatus.INVALID,
    "REFUNDED": driver_api.ProviderStatus.REFUNDED,
}


class ToySettings(driver_api.DriverSettings):
    """The options of a ``driver = "toy"`` provider section."""

    base_url: str = "https://api.toy.example"
    api_key: driver_api.SecretStr

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value.rstrip("/")


class ToyDriver:
    """Reads the invoices of one Toy account."""

    Settings: ClassVar[type[BaseModel]] = ToySettings
    post_settle_kinds: ClassVar[tuple[str, ...]] = (SAVE_CARD,)

    def __init__(
        self,
        provider_id: str,
        settings: ToySettings,
        common: driver_api.CommonSettings,
        session: aiohttp.ClientSession,
    ) -> None:
        self.provider_id = provider_id
        self._http = driver_api.JsonClient.for_provider(
            provider_id,
            common,
            session,
            service="Toy",
            base_url=settings.base_url,
            authorization=driver_api.auth_header("Bearer", settings.api_key),
        )

    async def fetch(self, provider_invoice_id: str) -> driver_api.Snapshot:
        """``GET /v1/invoices/{id}``: one attempt, every failure a driver error."""
        invoice_id = provider_invoice_id
        segment = driver_api.path_segment(invoice_id, provider_id=self.provider_id)
        reply = await self._http.get(f"/v1/invoices/{segment}", invoice_id=invoice_id)
        if reply.status != 200:
            raise self._http.status_error(reply, invoice_id=invoice_id)
        body = self._http.json(reply, invoice_id=invoice_id)
        try:
            snapshot = read_invoice(body, invoice_id)
        except ValueError as exc:
            raise self._http.bad_body(str(exc), reply, invoice_id=invoice_id) from exc
        return driver_api.check_snapshot(snapshot, provider_id=self.provider_id, invoice_id=invoice_id)

    async def fetch_many(
        self, provider_invoice_ids: Sequence[str]
    ) -> Mapping[str, driver_api.Snapshot | driver_api.DriverError]:
        """``GET /v1/invoices?ids=a,b``: one call for a batch; an id the answer leaves out is not found."""
        # An id holding a comma cannot be asked in this list; left out of the answer, it is not found.
        asked = [invoice_id for invoice_id in provider_invoice_ids if "," not in invoice_id]
        if not asked:
            return {}
        reply = await self._http.get("/v1/invoices", {"ids": ",".join(asked)}, what="batch")
        if reply.status != 200:
            raise self._http.status_error(reply, what="batch")
        body = self._http.json(reply, what="batch")
        items = body.get("invoices") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise self._http.bad_body("'invoices' is missing or not a list", reply, what="batch")
        answers: dict[str, driver_api.Snapshot | driver_api.DriverError] = {}
        for item in items:
            invoice_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(invoice_id, str) or invoice_id not in asked:
                continue  # not an invoice we asked about
            try:
                snapshot = read_invoice(item, invoice_id)
                answers[invoice_id] = driver_api.check_snapshot(
                    snapshot, provider_id=self.provider_id, invoice_id=invoice_id
                )
            except ValueError as exc:
                answers[invoice_id] = self._http.bad_body(str(exc), reply, invoice_id=invoice_id)
            except driver_api.BadProviderResponse as exc:
                answers[invoice_id] = exc
        return answers

    async def check(self) -> None:
        """``GET /v1/me`` succeeds when the key is accepted (``reconciler check-config --online``)."""
        await self._http.get_json("/v1/me", what="key check")

    async def post_settle(self, task: driver_api.PostSettleTask) -> driver_api.PostSettleResult:
        """``toy.save_card``: the card the paid invoice saved, stored on the subscription for renewals."""
        invoice_id = task.provider_invoice_id
        segment = driver_api.path_segment(invoice_id, provider_id=self.provider_id)
        reply = await self._http.get(f"/v1/invoices/{segment}/card", invoice_id=invoice_id, what="card")
        if reply.status == 404:
            return driver_api.NotYet("Toy has not saved the card yet")
        if reply.status != 200:
            raise self._http.status_error(reply, invoice_id=invoice_id, what="card")
        card = self._http.json(reply, invoice_id=invoice_id, what="card")
        if not isinstance(card, dict):
            raise self._http.bad_body("expected a JSON object", reply, invoice_id=invoice_id, what="card")
        if card.get("card") is None:
            return driver_api.NotApplicable("paid without a card")
        customer, card_id = card.get("customer"), card.get("card")
        if not isinstance(customer, str) or not isinstance(card_id, str):
            raise self._http.bad_body("'customer' and 'card' must be strings", reply, invoice_id=invoice_id)
        brand, expires = card.get("brand"), card.get("expires")
        profile = driver_api.PaymentProfile(
            contact_id=customer,
            profile_id=card_id,
            method=brand if isinstance(brand, str) else None,
            expires_at=driver_api.normalize_timestamp(expires) if isinstance(expires, str) else None,
        )
        return driver_api.Done(
            driver_api.check_payment_profile(profile, provider_id=self.provider_id, invoice_id=invoice_id)
        )


def read_invoice(body: Any, invoice_id: str) -> driver_api.Snapshot:
    """A Toy invoice as a Snapshot; ``ValueError`` saying what is wrong (never echoing it) when it is not one."""
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    state = body.get("state")
    if not isinstance(state, str):
        raise ValueError("'state' is missing or not a string")
    if body.get("id") != invoice_id:
        raise ValueError("the answer is for another invoice")
    currency = body["currency"] if isinstance(body.get("currency"), str) else None
    in_btc = currency is not None and driver_api.ascii_upper(currency) == "BTC"
    stated = body.get("amount")
    amount = btc_sats(stated) if in_btc else None
    unusable = in_btc and stated is not None and amount is None
    return driver_api.Snapshot(
        status=STATES.get(driver_api.ascii_upper(state), driver_api.ProviderStatus.UNKNOWN),
        raw_status=state,
        currency=currency,
        amount_sats=amount,
        paid_sats=btc_sats(body.get("paid"), payment=True) if in_btc else None,
        amount_raw=driver_api.raw_evidence(stated) if unusable else None,
    )


def btc_sats(value: object, *, payment: bool = False) -> int | None:
    """Whole sats from a BTC decimal string, or ``None``: no opinion (absent, unparseable, out of range).

    An invoice amount rounds half up and must be positive; a payment is floored (Lightning values carry
    millisats) and may be zero.
    """
    sats = driver_api.floor_sats(value) if payment else driver_api.decimal_to_sats(value)
    lowest = 0 if payment else 1
    return sats if sats is not None and lowest <= sats <= driver_api.MAX_SATS else None
