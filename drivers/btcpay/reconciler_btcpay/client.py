"""HTTP to the BTCPay Greenfield API, and the one place HTTP and JSON failures become driver errors."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from reconciler import driver_api

_DETAIL_LIMIT = 160


@dataclass(frozen=True, slots=True)
class Reply:
    """One BTCPay answer: its status, decoded body and ``Retry-After`` in seconds.

    ``body`` is the decoded JSON; ``is_json`` is false (and ``body`` ``None``) when the body was not
    JSON at all (empty, a proxy's HTML error page).
    """

    status: int
    body: Any
    is_json: bool
    retry_after: float | None


class Client:
    """Authenticated GETs against one BTCPay Server, one attempt each, with a per-request timeout."""

    def __init__(
        self,
        *,
        provider_id: str,
        base_url: str,
        api_key: driver_api.SecretStr,
        timeout: float,
        session: aiohttp.ClientSession,
    ) -> None:
        self.provider_id = provider_id
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session

    async def get(
        self, path: str, params: Mapping[str, str] | None = None, *, invoice_id: str | None = None
    ) -> Reply:
        """GET ``path`` (already URL-quoted); transport failures raise, every status is returned."""
        headers = {"Authorization": f"token {self._api_key.get_secret_value()}", "Accept": "application/json"}
        try:
            async with self._session.get(
                self._base_url + path,
                params=params,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status, retry_after = response.status, response.headers.get("Retry-After")
        except TimeoutError as exc:
            limit = self._timeout.total
            raise self.error(
                driver_api.ProviderUnavailable, f"timed out after {limit:g}s", invoice_id
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            detail = f"connection failed: {type(exc).__name__}: {exc}"
            raise self.error(driver_api.ProviderUnavailable, detail, invoice_id) from exc
        except aiohttp.ClientError as exc:
            if isinstance(exc, aiohttp.ClientResponseError):
                _forget_authorization(exc)
            detail = f"unusable answer: {type(exc).__name__}: {exc}"
            raise self.error(driver_api.BadProviderResponse, detail, invoice_id) from exc
        body, is_json = _decode(raw)
        return Reply(status, body, is_json, driver_api.parse_retry_after(retry_after))

    def status_error(self, reply: Reply, *, invoice_id: str | None = None) -> driver_api.DriverError:
        """The driver error for a non-200 answer.

        401 and 403 are auth errors (a 403 on an invoice is the driver's to interpret first), 404 is
        a missing invoice when one was asked for, 408/429/5xx are transient, anything else is bad.
        """
        status = reply.status
        detail = describe(reply)
        if status in (401, 403):
            return self.error(driver_api.ProviderAuthError, f"API key refused: {detail}", invoice_id, status)
        if status == 404 and invoice_id is not None:
            return self.error(driver_api.InvoiceNotFound, f"not found: {detail}", invoice_id, status)
        if status in (408, 429) or status >= 500:
            if reply.retry_after is not None:
                detail += f", retry after {reply.retry_after:g}s"
            return self.error(
                driver_api.ProviderUnavailable,
                f"unavailable: {detail}",
                invoice_id,
                status,
                reply.retry_after,
            )
        return self.error(driver_api.BadProviderResponse, f"unexpected {detail}", invoice_id, status)

    def bad_body(self, reason: str, reply: Reply, *, invoice_id: str | None = None) -> driver_api.DriverError:
        """The error for a 200 whose body cannot be read."""
        return self.error(
            driver_api.BadProviderResponse,
            f"unreadable answer (HTTP {reply.status}): {reason}",
            invoice_id,
            reply.status,
        )

    def error(
        self,
        kind: type[driver_api.DriverError],
        detail: str,
        invoice_id: str | None,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> driver_api.DriverError:
        """A ``kind`` error with the provider id, invoice id and status in message and attributes."""
        subject = f" invoice {invoice_id!r}" if invoice_id is not None else ""
        message = f"{self.provider_id}: BTCPay{subject}: {detail}"
        # Belt and braces: nothing we echo from the server or aiohttp may carry the key.
        message = message.replace(self._api_key.get_secret_value(), "**********")
        context: dict[str, Any] = {"provider_id": self.provider_id, "invoice_id": invoice_id}
        if kind is driver_api.ProviderUnavailable:
            return driver_api.ProviderUnavailable(
                message, retry_after=retry_after, http_status=http_status, **context
            )
        return kind(message, http_status=http_status, **context)


def _forget_authorization(exc: aiohttp.ClientResponseError) -> None:
    """Drop our ``Authorization`` header from the request the error carries: its repr shows headers."""
    headers = exc.request_info.headers.copy()
    headers.popall("Authorization", None)
    exc.request_info = exc.request_info._replace(headers=type(exc.request_info.headers)(headers))
    exc.args = (exc.request_info, exc.history)


def _decode(raw: bytes) -> tuple[Any, bool]:
    try:
        return json.loads(raw), True
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, False


def describe(reply: Reply) -> str:
    """``HTTP <status>``, plus ``(code: message)`` from a ProblemDetails body when there is one."""
    body = reply.body
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        return f"HTTP {reply.status}"
    message = body.get("message")
    text = body["code"] if not isinstance(message, str) else f"{body['code']}: {message}"
    return f"HTTP {reply.status} ({text[:_DETAIL_LIMIT]})"
