"""The one HTTP boundary every driver uses: bounded reads, strict JSON, one table of failures.

Drivers reach it through :mod:`reconciler.driver_api` (``driver_api.JsonClient``). What it guarantees:

- one attempt per call, a per-request timeout, no redirects followed, the driver's ``Authorization``
  header sent from a ``SecretStr`` and scrubbed from every message and every exception chained;
- a body is read in chunks and abandoned at ``max_response_bytes`` (a declared ``Content-Length``
  over the limit is refused before reading; the count is of decompressed bytes, so a gzip bomb is
  refused too);
- JSON is decoded strictly: UTF-8 only, at most :data:`MAX_JSON_DEPTH` levels, integers of at most
  :data:`MAX_INT_DIGITS` digits, no ``NaN``/``Infinity``, no lone surrogates in any string;
- ``Retry-After`` is read only where it matters (408, 429, 5xx), strictly, clamped to
  :data:`RETRY_AFTER_MAX`.

Transport failures, in one table (:meth:`JsonClient.get`)::

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
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, NoReturn

import aiohttp
from pydantic import SecretStr

from reconciler import errors

RETRY_AFTER_MAX = 86_400.0
"""The longest ``Retry-After`` believed, in seconds (24 h); longer ones are clamped to it."""
MAX_JSON_DEPTH = 64
"""Nesting levels a provider answer may have (arrays and objects)."""
MAX_INT_DIGITS = 40
"""Digits a JSON integer may have; no amount, count or time a provider sends needs more."""
MAX_FLOAT_CHARS = 64
"""Characters a JSON number with a fraction or exponent may have."""
ERROR_BODY_BYTES = 16 * 1024
"""How much of a non-200 body is read for its error code and message; the rest is not needed."""

UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Characters no stored or logged text may hold: C0 and C1 controls, DEL and lone surrogates."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_MASK = "**********"
_DETAIL_LIMIT = 160
_CHUNK = 64 * 1024
_SQUARE_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_OWS = " \t"
_DELTA_SECONDS = re.compile(r"[0-9]+")
_MONTHS = {
    m: n
    for n, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = r"(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
# RFC 9110 §5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms a recipient must accept.
_IMF_FIXDATE = re.compile(rf"{_DAY}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT")
_RFC850_DATE = re.compile(rf"{_LONG_DAY}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT")
_ASCTIME_DATE = re.compile(rf"{_DAY} {_MONTH} (?P<day>[ 0-9][0-9]) {_TIME} (?P<year>[0-9]{{4}})")


# --- Retry-After ---------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value; ``None`` when absent or not one of RFC 9110's forms.

    Delta-seconds are ASCII digits only; an HTTP-date is one of the three RFC 9110 forms, in the past
    meaning 0. The result is clamped to :data:`RETRY_AFTER_MAX`. Never raises. ``now`` defaults to
    the current time (it only matters for dates).
    """
    if not isinstance(value, str):
        return None
    text = value.strip(_OWS)
    if _DELTA_SECONDS.fullmatch(text):
        digits = text.lstrip("0") or "0"
        if len(digits) > len(str(int(RETRY_AFTER_MAX))):
            return RETRY_AFTER_MAX
        return min(float(digits), RETRY_AFTER_MAX)
    moment = _http_date(text, now or datetime.now(UTC))
    if moment is None:
        return None
    seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def _http_date(text: str, now: datetime) -> datetime | None:
    match = _IMF_FIXDATE.fullmatch(text) or _ASCTIME_DATE.fullmatch(text)
    two_digit_year = False
    if match is None:
        match = _RFC850_DATE.fullmatch(text)
        two_digit_year = match is not None
    if match is None:
        return None
    year = int(match["year"])
    if two_digit_year:
        # RFC 9110: a two-digit year more than 50 years ahead is the most recent one in the past.
        year += now.year // 100 * 100
        if year > now.year + 50:
            year -= 100
    try:
        return datetime(
            year,
            _MONTHS[match["month"]],
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"]),
            tzinfo=UTC,
        )
    except ValueError:  # 31 Feb, hour 25, ...
        return None


# --- JSON ------------------------------------------------------------------------------------------------


class UnreadableJson(ValueError):
    """A body that is not JSON this reconciler accepts; the message says why, never what it held."""


def _refuse_constant(name: str) -> NoReturn:
    raise UnreadableJson(f"the non-finite number {name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise UnreadableJson(f"an integer longer than {MAX_INT_DIGITS} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > MAX_FLOAT_CHARS:
        raise UnreadableJson(f"a number longer than {MAX_FLOAT_CHARS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise UnreadableJson("a number too large for a float")
    return value


_CAREFUL = json.JSONDecoder(
    parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_refuse_constant, strict=True
)
# Number hooks take the C scanner off its fast path, so they are only used when a number could need
# them: a run of more than MAX_INT_DIGITS digits, or an exponent of three digits or more (float overflow).
_FAST = json.JSONDecoder(parse_constant=_refuse_constant, strict=True)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * (MAX_INT_DIGITS + 1)
_LONG_EXPONENT = re.compile(rb"[eE][+-]?000")


def _needs_care(raw: bytes) -> bool:
    digits = raw.translate(_DIGITS_AS_ZERO)
    if _LONG_DIGITS in digits:
        return True
    return (b"e" in raw or b"E" in raw) and _LONG_EXPONENT.search(digits) is not None


def decode_json(raw: bytes) -> Any:
    """Decode a provider's JSON body strictly; :class:`UnreadableJson` (chained) when it cannot be.

    ``strict=True`` already refuses raw control characters inside strings; escaped ones (``\\u0000``)
    decode, and whether a field may hold them is for :func:`~reconciler.driver_api.check_snapshot`.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableJson("not valid UTF-8") from exc
    _check_depth(raw)
    try:
        value = (_CAREFUL if _needs_care(raw) else _FAST).decode(text)
    except UnreadableJson:
        raise
    except json.JSONDecodeError as exc:
        raise UnreadableJson(f"not JSON ({exc.msg} at character {exc.pos})") from exc
    except (ValueError, RecursionError) as exc:  # belt and braces: the depth check should have caught it
        raise UnreadableJson(f"not JSON ({type(exc).__name__})") from exc
    if b"\\ud" in raw.lower() and _holds_surrogate(value):  # only a JSON \u escape makes one
        raise UnreadableJson("a string holds a lone surrogate (\\ud800-\\udfff escape)")
    return value


def _check_depth(raw: bytes) -> None:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH` before the recursive decoder sees it.

    Linear and in C, on the UTF-8 bytes (brackets, quotes and backslashes are never part of a
    multi-byte character): drop escaped backslashes and quotes, keep what lies outside strings, keep
    only brackets as ``[`` / ``]``, and take the deepest prefix. Unbalanced brackets are the
    decoder's to refuse; it never gets deeper than the prefix measured here.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(_SQUARE_BRACKETS, _NOT_BRACKETS)
    too_deep = b"[" * (MAX_JSON_DEPTH + 1) in brackets
    if not too_deep:
        closed = brackets.split(b"]")
        # the depth just before the i-th "]" is the "[" seen so far minus i
        too_deep = max(map(operator.sub, accumulate(map(len, closed)), range(len(closed)))) > MAX_JSON_DEPTH
    if too_deep:
        raise UnreadableJson(f"nested deeper than {MAX_JSON_DEPTH} levels")


def _holds_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


# --- HTTP ------------------------------------------------------------------------------------------------


def printable(text: str, limit: int = _DETAIL_LIMIT) -> str:
    """``text`` cut to ``limit`` characters with every control character or surrogate shown as ``?``."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return UNSAFE_TEXT.sub("?", text)


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
        header = authorization.get_secret_value()
        # The whole value first, so that "token <key>" is masked as one.
        self._secrets = tuple(
            sorted({s for s in (header, header.rpartition(" ")[2]) if s}, key=len, reverse=True)
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
        headers = {"Authorization": self._authorization.get_secret_value(), "Accept": "application/json"}
        failure: errors.DriverError | None = None
        reply: Reply | None = None
        try:
            async with self._session.get(
                self._base_url + path,
                params=params,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                reply, failure = await self._read(response, invoice_id, what)
        except TimeoutError as exc:
            detail = f"timed out: no complete answer within {self._timeout.total:g}s"
            failure = self._chained(
                self.error(errors.ProviderUnavailable, detail, invoice_id, what=what), exc
            )
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            detail = f"connection failed: {type(exc).__name__}: {printable(str(exc))}"
            failure = self._chained(
                self.error(errors.ProviderUnavailable, detail, invoice_id, what=what), exc
            )
        except aiohttp.ClientError as exc:
            detail = f"unusable answer: {type(exc).__name__}: {printable(str(exc))}"
            failure = self._chained(
                self.error(errors.BadProviderResponse, detail, invoice_id, what=what), exc
            )
        # Raised here, outside the except clauses, so that no unscrubbed exception becomes its context.
        if failure is not None:
            raise failure
        assert reply is not None
        return reply

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
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text

    def _chained(self, error: errors.DriverError, cause: BaseException) -> errors.DriverError:
        """``error`` caused by ``cause`` when nothing in ``cause``'s chain shows a secret, else by nothing."""
        error.__cause__ = cause if _forget_authorization(cause, self._secrets) else None
        error.__suppress_context__ = True
        return error


def _forget_authorization(exc: BaseException, secrets: tuple[str, ...]) -> bool:
    """Drop request headers from every aiohttp error in ``exc``'s chain; whether the chain is then clean.

    ``ClientResponseError`` carries ``request_info`` with our headers, and its repr shows them.
    """
    seen: set[int] = set()
    chain: list[BaseException] = [exc]
    while chain:
        item = chain.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, aiohttp.ClientResponseError):
            info = item.request_info
            kept = info.headers.copy()
            kept.popall("Authorization", None)
            item.request_info = info._replace(headers=type(info.headers)(kept))
            item.args = (item.request_info, item.history)
        try:
            shown = f"{item!r} {item!s} {item.args!r}"
        except Exception:  # an exception whose repr fails cannot be checked, so it is not kept
            return False
        if any(secret in shown for secret in secrets):
            return False
        chain.extend(e for e in (item.__cause__, item.__context__) if e is not None)
    return True


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


def short_repr(value: str, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters (ids in messages stay readable)."""
    if len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    return repr(value)
