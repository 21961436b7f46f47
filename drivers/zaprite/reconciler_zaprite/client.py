"""Zaprite over HTTP: the wire models this driver reads, and the one place where HTTP and JSON
failures become driver errors.

Paths are the current API's plural ones (``/v1/orders/{id}``, ``/v1/contacts/{id}``; SPEC §10).
Models ignore fields they do not name, so additions on Zaprite's side are harmless; a field they
name with the wrong type makes the answer unreadable (:class:`~reconciler.driver_api.BadProviderResponse`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from pydantic.alias_generators import to_camel

from reconciler import driver_api


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


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
    """The order fields reconciliation reads (providers.md B.3)."""

    status: StrictStr
    currency: StrictStr | None = None
    total_amount: StrictInt | None = None
    contact: ContactRef | None = None
    transactions: list[Transaction] = Field(default_factory=list)


class SourceOrder(_Wire):
    """The order a payment profile was saved from."""

    external_uniq_id: StrictStr | None = None


class Profile(_Wire):
    """A saved payment profile of a contact (providers.md B.7); ``expires_at`` is read as given."""

    id: StrictStr
    method: StrictStr | None = None
    expires_at: object = None
    source_order: SourceOrder | None = None


class Contact(_Wire):
    """A contact with its saved payment profiles."""

    id: StrictStr
    payment_profiles: list[Profile] = Field(default_factory=list)


_Model = TypeVar("_Model", bound=BaseModel)


class ZapriteClient:
    """One attempt per call against one Zaprite organisation; retries are the runner's business."""

    def __init__(
        self,
        *,
        provider_id: str,
        base_url: str,
        api_key: driver_api.SecretStr,
        timeout: float,
        session: aiohttp.ClientSession,
    ) -> None:
        self._provider_id = provider_id
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session

    async def get_order(self, order_id: str) -> Order:
        """The order by Zaprite id or ``externalUniqId``; 404 is :class:`InvoiceNotFound`."""
        path = f"/v1/orders/{quote(order_id, safe='')}"
        return _parse(Order, await self._get(path, invoice_id=order_id), path, self._provider_id, order_id)

    async def get_contact(self, contact_id: str, *, invoice_id: str | None = None) -> Contact:
        """The contact with its payment profiles; 404 is :class:`InvoiceNotFound`."""
        path = f"/v1/contacts/{quote(contact_id, safe='')}"
        payload = await self._get(path, invoice_id=invoice_id)
        return _parse(Contact, payload, path, self._provider_id, invoice_id)

    async def list_orders(self, *, limit: int) -> object:
        """The first page of orders, unparsed (used to check the key)."""
        return await self._get("/v1/orders", params={"limit": str(limit)})

    async def _get(
        self, path: str, *, params: Mapping[str, str] | None = None, invoice_id: str | None = None
    ) -> object:
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        where = f"GET {path}"
        try:
            async with self._session.get(
                self._base_url + path,
                params=params,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                body = await response.read()
        except TimeoutError as exc:
            raise driver_api.ProviderUnavailable(
                f"{where}: no answer within {self._timeout.total:g}s",
                provider_id=self._provider_id,
                invoice_id=invoice_id,
            ) from exc
        except aiohttp.ClientError as exc:
            # Settings forbid credentials in base_url, so aiohttp's text (host, port, reason) is safe.
            raise driver_api.ProviderUnavailable(
                f"{where}: {type(exc).__name__}: {exc}", provider_id=self._provider_id, invoice_id=invoice_id
            ) from exc
        if not 200 <= status < 300:
            raise _status_error(where, status, retry_after, self._provider_id, invoice_id)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise driver_api.BadProviderResponse(
                f"{where}: the answer is not JSON",
                provider_id=self._provider_id,
                invoice_id=invoice_id,
                http_status=status,
            ) from exc


def _status_error(
    where: str, status: int, retry_after: str | None, provider_id: str, invoice_id: str | None
) -> driver_api.DriverError:
    if status in (401, 403):
        return driver_api.ProviderAuthError(
            f"{where}: HTTP {status}, the API key was refused",
            provider_id=provider_id,
            invoice_id=invoice_id,
            http_status=status,
        )
    if status == 404:
        return driver_api.InvoiceNotFound(
            f"{where}: HTTP 404", provider_id=provider_id, invoice_id=invoice_id, http_status=status
        )
    if status in (408, 429) or status >= 500:
        return driver_api.ProviderUnavailable(
            f"{where}: HTTP {status}",
            retry_after=driver_api.parse_retry_after(retry_after),
            provider_id=provider_id,
            invoice_id=invoice_id,
            http_status=status,
        )
    return driver_api.BadProviderResponse(
        f"{where}: unexpected HTTP {status}",
        provider_id=provider_id,
        invoice_id=invoice_id,
        http_status=status,
    )


def _parse(
    model: type[_Model], payload: object, path: str, provider_id: str, invoice_id: str | None
) -> _Model:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        # Never echo the input: orders carry buyers' personal data.
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "the body"
        raise driver_api.BadProviderResponse(
            f"GET {path}: unexpected shape at {location}: {first['msg']}",
            provider_id=provider_id,
            invoice_id=invoice_id,
        ) from exc
