"""Zaprite over HTTP: the wire models this driver reads, on the core's one HTTP boundary.

Bounded reads, strict JSON, the status and transport tables and the scrubbing of the key are the
boundary's (``driver_api.JsonClient``); this module says how Zaprite authenticates
(``Authorization: Bearer <key>``), which models an answer must fit, and that an answer must be for
what was asked (the order's ``id`` or ``externalUniqId``, the contact's ``id``).

Paths are the current API's plural ones (``/v1/orders/{id}``, ``/v1/contacts/{id}``; docs/providers.md §2.2),
every id going through ``driver_api.path_segment``. Models ignore fields they do not name, so additions
on Zaprite's side are harmless; a field they name with the wrong type makes the answer unreadable
(:class:`~reconciler.driver_api.BadProviderResponse`).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from pydantic.alias_generators import to_camel

from reconciler import driver_api


class _Wire(BaseModel):
    # hide_input_in_errors: a chained ValidationError must not carry buyers' personal data either.
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )


class Discount(_Wire):
    """One entry of a transaction's ``discountsInOrderCurrency``."""

    amount_off: StrictInt | None = None


class Transaction(_Wire):
    """One payment towards an order."""

    status: StrictStr | None = None
    method: StrictStr | None = None
    amount_in_order_currency: StrictInt | None = None
    discounts_in_order_currency: list[Discount] = Field(default_factory=list)


class ContactRef(_Wire):
    """The contact an order names (its other fields are not needed here)."""

    id: StrictStr


class Order(_Wire):
    """The order fields reconciliation reads (docs/providers.md §2.3)."""

    id: StrictStr | None = None
    external_uniq_id: StrictStr | None = None
    status: StrictStr
    currency: StrictStr | None = None
    total_amount: StrictInt | None = None
    contact: ContactRef | None = None
    transactions: list[Transaction] = Field(default_factory=list)


class SourceOrder(_Wire):
    """The order a payment profile was saved from."""

    external_uniq_id: StrictStr | None = None


class Profile(_Wire):
    """A saved payment profile of a contact (docs/providers.md §2.6); ``expires_at`` is read as given."""

    id: StrictStr
    method: StrictStr | None = None
    expires_at: object = None
    source_order: SourceOrder | None = None


class Contact(_Wire):
    """A contact with its saved payment profiles."""

    id: StrictStr
    payment_profiles: list[Profile] = Field(default_factory=list)


_Model = TypeVar("_Model", bound=BaseModel)


SERVICE = "Zaprite"


def authorization(api_key: driver_api.SecretStr) -> driver_api.SecretStr:
    """Zaprite's ``Authorization`` value for ``api_key``."""
    return driver_api.auth_header("Bearer", api_key)


class ZapriteClient:
    """One attempt per call against one Zaprite organisation; retries are the runner's business.

    ``http`` is the core's boundary built for the provider (``driver_api.JsonClient.for_provider``) with
    ``Authorization: Bearer <key>`` (:func:`authorization`).
    """

    def __init__(self, http: driver_api.JsonClient) -> None:
        self._provider_id = http.provider_id
        self.http = http

    async def get_order(self, order_id: str) -> Order:
        """The order by Zaprite id or ``externalUniqId``; 404 (or an id no URL can hold) is :class:`InvoiceNotFound`."""
        path = f"/v1/orders/{driver_api.path_segment(order_id, provider_id=self._provider_id)}"
        order = self._parse(Order, await self.http.get_json(path, invoice_id=order_id), order_id, "order")
        if order_id not in (order.id, order.external_uniq_id):
            # Neither id is echoed: the message says what is wrong, not whose order came back.
            raise self._unreadable(
                "the answer is for another order (its id and externalUniqId differ)", order_id
            )
        return order

    async def get_contact(self, contact_id: str, *, invoice_id: str) -> Contact:
        """The contact (an id from an order) with its payment profiles; 404 is :class:`InvoiceNotFound`."""
        try:
            segment = driver_api.path_segment(contact_id)
        except driver_api.InvoiceNotFound:
            raise self._unreadable("the order names a contact id that no URL can hold", invoice_id) from None
        payload = await self.http.get_json(f"/v1/contacts/{segment}", invoice_id=invoice_id, what="contact")
        contact = self._parse(Contact, payload, invoice_id, "contact")
        if contact.id != contact_id:
            raise self._unreadable("the answer is for another contact", invoice_id)
        return contact

    async def list_orders(self, *, limit: int) -> object:
        """The first page of orders, unparsed (used to check the key)."""
        return await self.http.get_json("/v1/orders", {"limit": str(limit)}, what="order list")

    def _parse(self, model: type[_Model], payload: object, invoice_id: str, what: str) -> _Model:
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            # Never echo the input: orders carry buyers' personal data.
            first = exc.errors()[0]
            location = ".".join(str(part) for part in first["loc"]) or "the body"
            detail = f"unexpected shape of the {what} at {location}: {first['msg']}"
            raise self._unreadable(detail, invoice_id) from exc

    def _unreadable(self, detail: str, invoice_id: str) -> driver_api.DriverError:
        return self.http.error(
            driver_api.BadProviderResponse, f"unreadable answer (HTTP 200): {detail}", invoice_id, 200
        )
