"""The one HTTP boundary every driver uses: bounded reads, strict JSON, one table of failures.

Drivers reach it through :mod:`reconciler.driver_api` (``driver_api.JsonClient``, built in a driver's
constructor with ``JsonClient.for_provider``). What it guarantees:

- one attempt per call, a per-request timeout, no redirects followed, the driver's ``Authorization``
  header sent from a ``SecretStr`` and scrubbed from every message and every exception chained;
- a body is read in chunks and abandoned at ``max_response_bytes`` (a declared ``Content-Length``
  over the limit is refused before reading; the count is of decompressed bytes, so a gzip bomb is
  refused too);
- JSON is decoded strictly (:mod:`reconciler.strict_json`): UTF-8 only, at most
  :data:`~reconciler.strict_json.MAX_JSON_DEPTH` levels, integers of at most
  :data:`~reconciler.strict_json.MAX_INT_DIGITS` digits, no ``NaN``/``Infinity``, no lone surrogates
  in any string;
- ``Retry-After`` is read only where it matters (408, 429, 5xx), strictly
  (:mod:`reconciler.retry_after`), clamped to :data:`RETRY_AFTER_MAX`.

Requests are ``GET`` (:meth:`JsonClient.get`) or ``POST`` with a JSON body (:meth:`JsonClient.post`).
Transport failures, in one table, the same for both::

    TimeoutError                                  ProviderUnavailable
    aiohttp.ClientConnectionError / PayloadError  ProviderUnavailable (refused, reset, truncated, bad gzip)
    any other aiohttp.ClientError                 BadProviderResponse (the server spoke, but not HTTP
                                                  we can use: a malformed status line, bad headers)

Statuses, in one table (:meth:`JsonClient.status_error`): only 200 is an answer; 401/403 are auth
errors; 404 is a missing invoice when one was asked for; 408, 429 and 500-599 are transient; anything
else (other 2xx, 3xx, other 4xx, 600+) is a bad response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import SecretStr

from reconciler import errors
from reconciler.driver_types import CommonSettings
from reconciler.retry_after import RETRY_AFTER_MAX, parse_retry_after
from reconciler.safe_text import UNSAFE_TEXT, printable, short_repr
from reconciler.secret_scrub import Scrubber
from reconciler.strict_json import (
    MAX_FLOAT_CHARS,
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    UnreadableJson,
    decode_json,
)

__all__ = [  # with the names it had before the split, which keep working from here
    "ERROR_BODY_BYTES",
    "MAX_FLOAT_CHARS",
    "MAX_INT_DIGITS",
    "MAX_JSON_DEPTH",
    "RETRY_AFTER_MAX",
    "UNSAFE_TEXT",
    "JsonClient",
    "Reply",
    "UnreadableJson",
    "auth_header",
    "decode_json",
    "parse_retry_after",
    "printable",
    "short_repr",
]

ERROR_BODY_BYTES = 16 * 1024
"""How much of a non-200 body is read for its error code and message; the rest is not needed."""

_CHUNK = 64 * 1024


def auth_header(scheme: str, credential: SecretStr) -> SecretStr:
    """The ``Authorization`` value ``"<scheme> <credential>"`` (``auth_header("Bearer", key)``), still secret."""
    return SecretStr(f"{scheme} {credential.get_secret_value()}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer: its status, the body read (bounded) and ``Retry-After`` in seconds.

    ``retry_after`` is only read for 408, 429 and 5xx. ``body`` is what was read: all of a 200's body
    (or the call failed), at most :data:`ERROR_BODY_BYTES` of any other status (``b""`` when longer).
    """

    status: int
    body: bytes
    retry_after: float | None = None


class JsonClient:
    """Authenticated requests to one provider, one attempt each, mapped to the driver error tree.

    ``service`` names the provider in messages (``"BTCPay"``); ``authorization`` is the whole
    ``Authorization`` header value (``SecretStr("token <key>")``); the value and its credential part
    are scrubbed from every message and exception chain this client produces.
    """

    def __init__(
        self,
        *,
        provider_id: str,
        service: str,
        base_url: str,
        authorization: SecretStr,
        timeout: float,
        max_response_bytes: int,
        session: aiohttp.ClientSession,
    ) -> None:
        self.provider_id = provider_id
        self.service = service
        self._base_url = base_url
        self._authorization = authorization
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = max_response_bytes
        self._session = session
        self._scrubber = Scrubber(authorization)

    @classmethod
    def for_provider(
        cls,
        provider_id: str,
        common: CommonSettings,
        session: aiohttp.ClientSession,
        *,
        service: str,
        base_url: str,
        authorization: SecretStr,
    ) -> JsonClient:
        """The client a driver's constructor builds from what the core hands it.

        ``provider_id``, ``common`` and ``session`` are the constructor's own arguments: each request
        is timed with ``common.timeout`` and a body is read up to ``common.max_response_bytes``.
        ``base_url`` (no trailing ``/``) and ``authorization`` (see :func:`auth_header`) come from the
        driver's ``Settings``.
        """
        return cls(
            provider_id=provider_id,
            service=service,
            base_url=base_url,
            authorization=authorization,
            timeout=common.timeout,
            max_response_bytes=common.max_response_bytes,
            session=session,
        )

    # --- requests ---

    async def get(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        invoice_id: str | None = None,
        what: str | None = None,
    ) -> Reply:
        """GET ``base_url + path`` (``path`` already quoted, see ``driver_api.path_segment``).

        Every status is returned; transport failures and an oversized 200 body raise. ``invoice_id``
        and ``what`` (e.g. ``"contact"``) only shape error messages.
        """
        return await self._send("GET", path, params, None, invoice_id=invoice_id, what=what)

    async def post(
        self,
        path: str,
        payload: Any,
        *,
        invoice_id: str | None = None,
        what: str | None = None,
    ) -> Reply:
        """POST ``payload`` as a JSON body to ``base_url + path``; otherwise exactly as :meth:`get`.

        One attempt: a POST that timed out may have been applied, so whether to ask again is the
        caller's decision. Nothing of ``payload`` appears in a message this client produces.
        """
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return await self._send("POST", path, None, body, invoice_id=invoice_id, what=what)

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: bytes | None,
        *,
        invoice_id: str | None,
        what: str | None,
    ) -> Reply:
        headers = {"Authorization": self._authorization.get_secret_value(), "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        failure: errors.DriverError | None = None
        reply: Reply | None = None
        try:
            async with self._session.request(
                method,
                self._base_url + path,
                params=params,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                reply, failure = await self._read(response, invoice_id, what)
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = self._scrubber.chain(self._transport_error(exc, invoice_id, what), exc)
        # Raised here, outside the except clauses, so that no unscrubbed exception becomes its context.
        if failure is not None:
            raise failure
        assert reply is not None
        return reply

    def _transport_error(
        self, exc: TimeoutError | aiohttp.ClientError, invoice_id: str | None, what: str | None
    ) -> errors.DriverError:
        """The module docstring's transport table (a timeout first: aiohttp's are connection errors too)."""
        kind: type[errors.DriverError] = errors.ProviderUnavailable
        if isinstance(exc, TimeoutError):
            detail = f"timed out: no complete answer within {self._timeout.total:g}s"
        elif isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            detail = f"connection failed: {type(exc).__name__}: {printable(str(exc))}"
        else:
            kind = errors.BadProviderResponse
            detail = f"unusable answer: {type(exc).__name__}: {printable(str(exc))}"
        return self.error(kind, detail, invoice_id, what=what)

    async def _read(
        self, response: aiohttp.ClientResponse, invoice_id: str | None, what: str | None
    ) -> tuple[Reply | None, errors.DriverError | None]:
        status = response.status
        limit = self._limit if status == 200 else min(self._limit, ERROR_BODY_BYTES)
        declared = response.content_length
        body: bytes | None = b""
        if declared is not None and declared > limit:
            body = None
        else:
            body = await _read_at_most(response.content, limit)
        if body is None and status == 200:
            detail = f"the answer is larger than max_response_bytes ({self._limit} bytes)"
            return None, self.error(errors.BadProviderResponse, detail, invoice_id, 200, what=what)
        retry_after = None
        if status in (408, 429) or 500 <= status <= 599:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return Reply(status, body or b"", retry_after), None

    async def get_json(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        invoice_id: str | None = None,
        what: str | None = None,
    ) -> Any:
        """GET and decode: the JSON of a 200, or the status's driver error raised."""
        reply = await self.get(path, params, invoice_id=invoice_id, what=what)
        if reply.status != 200:
            raise self.status_error(reply, invoice_id=invoice_id, what=what)
        return self.json(reply, invoice_id=invoice_id, what=what)

    def json(self, reply: Reply, *, invoice_id: str | None = None, what: str | None = None) -> Any:
        """The decoded body of ``reply``; :class:`~reconciler.errors.BadProviderResponse` when unreadable."""
        try:
            return decode_json(reply.body)
        except UnreadableJson as exc:
            detail = f"unreadable answer (HTTP {reply.status}): not JSON we accept: {exc}"
            cause = exc.__cause__ if isinstance(exc.__cause__, ValueError) else exc
            error = self.error(errors.BadProviderResponse, detail, invoice_id, reply.status, what=what)
            raise error from cause

    # --- errors ---

    def status_error(
        self, reply: Reply, *, invoice_id: str | None = None, what: str | None = None
    ) -> errors.DriverError:
        """The driver error for a non-200 answer (see the module docstring's table)."""
        status = reply.status
        detail = self.describe(reply)
        if status in (401, 403):
            kind: type[errors.DriverError] = errors.ProviderAuthError
            detail = f"API key refused: {detail}"
        elif status == 404 and invoice_id is not None:
            kind, detail = errors.InvoiceNotFound, f"not found: {detail}"
        elif status in (408, 429) or 500 <= status <= 599:
            if reply.retry_after is not None:
                detail += f", retry after {reply.retry_after:g}s"
            return self.error(
                errors.ProviderUnavailable,
                f"unavailable: {detail}",
                invoice_id,
                status,
                reply.retry_after,
                what=what,
            )
        else:
            kind, detail = errors.BadProviderResponse, f"unexpected {detail}"
        return self.error(kind, detail, invoice_id, status, what=what)

    def describe(self, reply: Reply) -> str:
        """``HTTP <status>``, plus ``(code: message)`` from a JSON error body that has a string ``code``."""
        try:
            body = decode_json(reply.body) if reply.body else None
        except UnreadableJson:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("code"), str):
            return f"HTTP {reply.status}"
        message = body.get("message")
        text = body["code"] if not isinstance(message, str) else f"{body['code']}: {message}"
        return f"HTTP {reply.status} ({printable(text)})"

    def bad_body(
        self, reason: str, reply: Reply, *, invoice_id: str | None = None, what: str | None = None
    ) -> errors.DriverError:
        """The error for a 200 whose JSON is not what the driver reads (``reason`` must not echo it)."""
        detail = f"unreadable answer (HTTP {reply.status}): {printable(reason, 300)}"
        return self.error(errors.BadProviderResponse, detail, invoice_id, reply.status, what=what)

    def error(
        self,
        kind: type[errors.DriverError],
        detail: str,
        invoice_id: str | None,
        http_status: int | None = None,
        retry_after: float | None = None,
        *,
        what: str | None = None,
    ) -> errors.DriverError:
        """A ``kind`` error with provider, invoice and status in its message and attributes, no secret."""
        subject = f" invoice {short_repr(invoice_id)}" if invoice_id is not None else ""
        if what:
            subject += f" ({what})"
        message = self.scrub(f"{self.provider_id}: {self.service}{subject}: {detail}")
        context: dict[str, Any] = {"provider_id": self.provider_id, "invoice_id": invoice_id}
        if issubclass(kind, errors.ProviderUnavailable):
            return kind(message, retry_after=retry_after, http_status=http_status, **context)
        return kind(message, http_status=http_status, **context)

    def scrub(self, text: str) -> str:
        """``text`` with the ``Authorization`` value and its credential masked."""
        return self._scrubber.scrub(text)


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or ``None`` as soon as it proves longer than ``limit`` bytes (decompressed)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
