"""The public API for payment-provider drivers: the only core module a driver imports.

A driver is a class registered in the entry-point group ``reconciler.drivers``::

    [project.entry-points."reconciler.drivers"]
    btcpay = "reconciler_btcpay:BTCPayDriver"

It satisfies the :class:`Driver` Protocol: a pydantic ``Settings`` model of its own options, a
constructor ``Driver(provider_id, settings, common, session)``, ``fetch(provider_invoice_id) ->
Snapshot`` and ``check()``. It may also implement ``fetch_many`` (:class:`SupportsFetchMany`) and
``post_settle`` (:class:`SupportsPostSettle`).

Retries, circuit breaking, concurrency and rate limits live in the core's runner, not in drivers:
a driver makes one attempt and translates every HTTP or JSON failure into one of the
:class:`DriverError` subclasses at one boundary, never putting a secret in a message. That boundary
is shared: :class:`JsonClient` (``reconciler.providers_http``) bounds what is read, decodes JSON
strictly and maps every transport failure and status once, the same way for every driver. What a
driver builds from an answer goes through :func:`check_snapshot` before it is returned; ids put in a
URL path go through :func:`path_segment`. Drivers never touch the database.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from reconciler import errors, providers_http, timeutil

__all__ = [
    "MAX_SATS",
    "RAW_EVIDENCE_MAX",
    "RETRY_AFTER_MAX",
    "TEXT_MAX",
    "BadProviderResponse",
    "CommonSettings",
    "Done",
    "Driver",
    "DriverError",
    "DriverSettings",
    "InvoiceNotFound",
    "JsonClient",
    "NotApplicable",
    "NotYet",
    "PaymentProfile",
    "PostSettleResult",
    "PostSettleTask",
    "ProviderAuthError",
    "ProviderStatus",
    "ProviderUnavailable",
    "Reply",
    "SecretStr",
    "Snapshot",
    "SupportsFetchMany",
    "SupportsPostSettle",
    "ascii_upper",
    "check_payment_profile",
    "check_snapshot",
    "decimal_to_sats",
    "floor_sats",
    "normalize_timestamp",
    "parse_retry_after",
    "path_segment",
    "raw_evidence",
]

# The driver error tree, re-exported so drivers import this module only.
DriverError = errors.DriverError
ProviderUnavailable = errors.ProviderUnavailable
ProviderAuthError = errors.ProviderAuthError
InvoiceNotFound = errors.InvoiceNotFound
BadProviderResponse = errors.BadProviderResponse

# The shared HTTP boundary (see reconciler.providers_http).
JsonClient = providers_http.JsonClient
Reply = providers_http.Reply
parse_retry_after = providers_http.parse_retry_after
RETRY_AFTER_MAX = providers_http.RETRY_AFTER_MAX

MAX_SATS = 2**63 - 1
"""The largest sat amount the store holds (a signed 64-bit integer)."""
TEXT_MAX = 200
"""Characters a provider string in a Snapshot (or an id in a URL path) may have."""
RAW_EVIDENCE_MAX = 64
"""Characters :func:`raw_evidence` returns at most."""
_AMOUNT_MAX_CHARS = 40
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_EXACT = Context(prec=100)  # 40 digits shifted by 8 places never need more


class ProviderStatus(StrEnum):
    """What the provider says about an invoice, in the core's terms (docs/statuses.md §2)."""

    PENDING = "PENDING"
    SETTLED = "SETTLED"
    EXPIRED = "EXPIRED"
    INVALID = "INVALID"
    REFUNDED = "REFUNDED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One provider answer about one invoice.

    ``raw_status`` / ``raw_additional_status`` are the provider's strings, verbatim, for the audit.
    ``currency`` is the invoice's currency as the provider states it. ``amount_sats`` is the
    invoice amount and ``paid_sats`` the sum of settled payments, both in whole sats, or ``None``
    when the driver has no opinion (fiat invoice, unparseable amount, no payment detail).
    ``amount_raw`` is evidence for an amount the driver could not use: when the provider stated an
    amount in a sat-comparable currency that is unparseable or not positive (``"NaN"``, ``"-5"``,
    ``"1e3"``), the driver sets it to :func:`raw_evidence` of that value (a short escaped repr, at
    most :data:`RAW_EVIDENCE_MAX` characters); otherwise it is ``None``.

    :func:`check_snapshot` says what the fields may hold: strings of at most :data:`TEXT_MAX`
    characters without control characters or lone surrogates, sats in ``0..MAX_SATS``, real bools.
    """

    status: ProviderStatus
    raw_status: str
    raw_additional_status: str | None = None
    currency: str | None = None
    amount_sats: int | None = None
    paid_sats: int | None = None
    paid_late: bool = False
    partially_paid: bool = False
    overpaid: bool = False
    manually_marked: bool = False
    amount_raw: str | None = None

    @property
    def observation(self) -> str:
        """The text stored in ``invoices.last_provider_status`` (docs/audit.md §3)."""
        if self.raw_additional_status:
            return f"{self.raw_status}/{self.raw_additional_status}"
        return self.raw_status


class DriverSettings(BaseModel):
    """Base for a driver's ``Settings``: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CommonSettings(BaseModel):
    """The keys of every ``[providers.<id>]`` section that the core owns (docs/drivers.md §2,
    docs/configuration.md §5.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    driver: str
    timeout: float = Field(default=10.0, gt=0, description="seconds per HTTP request")
    max_concurrency: int = Field(default=16, ge=1)
    rate_limit: float = Field(default=0.0, ge=0, description="requests per second, 0 = unlimited")
    retry_attempts: int = Field(default=3, ge=1)
    retry_max_delay: float = Field(default=10.0, ge=0, description="seconds")
    max_response_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="largest answer body read (decompressed), in bytes"
    )
    breaker_threshold: int = Field(default=5, ge=1, le=1000, description="fetches in a row without an answer")
    breaker_cooldown: float = Field(default=60.0, gt=0, description="seconds without requests once open")

    @property
    def worst_fetch(self) -> float:
        """The longest one fetch may take with its retries (docs/reconcile.md §16), in seconds."""
        return self.timeout * self.retry_attempts + self.retry_max_delay * (self.retry_attempts - 1)


@dataclass(frozen=True, slots=True)
class PostSettleTask:
    """A follow-up the core asks a driver to perform after a settle (docs/reconcile.md §15)."""

    invoice_id: str
    kind: str
    provider_id: str
    provider_invoice_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class PaymentProfile:
    """A buyer's saved payment method at the provider, stored on the subscription for renewals."""

    contact_id: str
    profile_id: str
    method: str | None
    expires_at: str | None  # docs/schema.md §1 timestamp form, or None


@dataclass(frozen=True, slots=True)
class Done:
    """The task is finished (with the profile it found, if any); it is not run again."""

    profile: PaymentProfile | None = None


@dataclass(frozen=True, slots=True)
class NotYet:
    """Not possible yet (the provider has not caught up): retried on a later pass."""

    reason: str = "not there yet"


@dataclass(frozen=True, slots=True)
class NotApplicable:
    """Nothing to do for this invoice (e.g. paid in bitcoin): finished without a change."""

    reason: str = "not applicable"


PostSettleResult = Done | NotYet | NotApplicable


@runtime_checkable
class Driver(Protocol):
    """A payment-provider driver."""

    Settings: ClassVar[type[BaseModel]]
    post_settle_kinds: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        provider_id: str,
        settings: Any,
        common: CommonSettings,
        session: aiohttp.ClientSession,
    ) -> None: ...

    async def fetch(self, provider_invoice_id: str) -> Snapshot:
        """Ask the provider about one invoice; one attempt, errors translated."""
        ...

    async def check(self) -> None:
        """Verify credentials and reachability; raise a DriverError when they fail."""
        ...


@runtime_checkable
class SupportsFetchMany(Protocol):
    async def fetch_many(self, provider_invoice_ids: Sequence[str]) -> Mapping[str, Snapshot | DriverError]:
        """Ask about several invoices at once; an id missing from the answer is not found."""
        ...


@runtime_checkable
class SupportsPostSettle(Protocol):
    async def post_settle(self, task: PostSettleTask) -> PostSettleResult:
        """Perform one post-settle task; idempotent."""
        ...


def ascii_upper(text: str) -> str:
    """``text`` in upper case when it is ASCII, else unchanged: for matching provider strings to tables.

    ``str.upper()`` / ``casefold()`` map non-ASCII look-alikes onto ASCII (``"ſettled"`` casefolds
    to ``"settled"``, ``"ı"`` upper-cases to ``"I"``); a status the provider did not send must not match.
    """
    return text.upper() if text.isascii() else text


def decimal_to_sats(text: object, *, unit: str = "BTC", rounding: str = ROUND_HALF_UP) -> int | None:
    """Whole sats from an amount in ``BTC`` or ``SATS``; ``None`` ("no opinion") when it is not one.

    ``text`` is a plain ASCII decimal string (``-?[0-9]+(\\.[0-9]+)?``, at most 40 characters) or a
    Python ``int`` (not a ``bool``) of at most 40 digits. Anything else is no opinion: ``1_000``,
    non-ASCII digits, exponents (``1e3``), signs other than a leading ``-``, surrounding spaces,
    ``NaN``, ``Infinity``, floats, empty strings. BTC values are multiplied by 10^8 exactly and
    rounded once, half up (use ``rounding=ROUND_FLOOR`` for a payment, whose Lightning msat fraction
    is not ours); SATS values must have no fraction. Whether a negative or zero amount means
    anything is the driver's decision.
    """
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        if abs(text) >= 10**_AMOUNT_MAX_CHARS:
            return None
        value = Decimal(text)
    elif isinstance(text, str):
        if len(text) > _AMOUNT_MAX_CHARS or not _PLAIN_DECIMAL.fullmatch(text):
            return None
        value = Decimal(text)
    else:
        return None
    unit = ascii_upper(unit)
    if unit == "BTC":
        # scaleb shifts the exponent exactly, so rounding happens once, on the exact value
        return int(value.scaleb(8, context=_EXACT).quantize(Decimal(1), rounding=rounding, context=_EXACT))
    if unit == "SATS":
        if value != value.to_integral_value(context=_EXACT):
            return None
        return int(value)
    return None


def floor_sats(text: object) -> int | None:
    """Whole sats from a BTC payment value, floored (Lightning values carry msat)."""
    return decimal_to_sats(text, unit="BTC", rounding=ROUND_FLOOR)


def raw_evidence(value: object) -> str:
    """A provider's value as short, storable evidence: an escaped repr of at most 64 characters.

    Strings and numbers are shown as ``repr`` shows them (``'NaN'``, ``-5``); containers by their
    type (``<list>``); anything longer is cut and ends in ``...``. The result never holds a control
    character or a lone surrogate (``repr`` escapes them), so it passes :func:`check_snapshot`.
    """
    if isinstance(value, str):
        shown = repr(value[:RAW_EVIDENCE_MAX])
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * RAW_EVIDENCE_MAX:
        shown = f"<{value.bit_length()}-bit integer>"
    elif value is None or isinstance(value, int | float | bool):
        shown = repr(value)
    else:
        shown = f"<{type(value).__name__}>"
    if len(shown) > RAW_EVIDENCE_MAX:
        shown = shown[: RAW_EVIDENCE_MAX - 3] + "..."
    return providers_http.UNSAFE_TEXT.sub("?", shown)


def _text_problem(value: object, *, optional: bool) -> str | None:
    """What makes ``value`` unfit for a stored text column, or ``None`` when it is fit."""
    if value is None:
        return None if optional else "is missing"
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if len(value) > TEXT_MAX:
        return f"is longer than {TEXT_MAX} characters"
    found = providers_http.UNSAFE_TEXT.search(value)
    if found is not None:
        what = "a lone surrogate" if "\ud800" <= found.group() <= "\udfff" else "a control character"
        return f"holds {what} (U+{ord(found.group()):04X})"
    return None


def _sats_problem(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"is a {type(value).__name__}, not an int"
    if not 0 <= value <= MAX_SATS:
        return f"is outside 0..{MAX_SATS}"
    return None


_TEXT_FIELDS = (
    ("raw_status", False),
    ("raw_additional_status", True),
    ("currency", True),
    ("amount_raw", True),
)
_SATS_FIELDS = ("amount_sats", "paid_sats")
_FLAG_FIELDS = ("paid_late", "partially_paid", "overpaid", "manually_marked")


def check_snapshot(snapshot: Snapshot, *, provider_id: str, invoice_id: str) -> Snapshot:
    """``snapshot`` itself when the store can write it and the core can trust it; else BadProviderResponse.

    Refused: a ``status`` that is not a :class:`ProviderStatus`; ``raw_status`` (required),
    ``raw_additional_status``, ``currency`` or ``amount_raw`` that is not a string (or ``None`` where
    allowed), is longer than :data:`TEXT_MAX` characters or holds a control character (C0, DEL, C1)
    or a lone surrogate (SQLite cannot encode it, PostgreSQL refuses it); ``amount_sats`` /
    ``paid_sats`` that are not ``int`` (``bool`` is not) or outside ``0..MAX_SATS``; flags that are
    not ``bool``. The message names the field, never its value. Pure and cheap: the core calls it on
    every snapshot any driver returns, and the shipped drivers call it before returning.
    """
    problem = _snapshot_problem(snapshot)
    if problem is None:
        return snapshot
    raise BadProviderResponse(
        f"{provider_id}: invoice {providers_http.short_repr(invoice_id)}: unusable answer: {problem}",
        provider_id=provider_id,
        invoice_id=invoice_id,
    )


def _snapshot_problem(snapshot: object) -> str | None:
    if not isinstance(snapshot, Snapshot):
        return f"the driver returned a {type(snapshot).__name__}, not a Snapshot"
    if not isinstance(snapshot.status, ProviderStatus):
        return "status is not a ProviderStatus"
    for name, optional in _TEXT_FIELDS:
        problem = _text_problem(getattr(snapshot, name), optional=optional)
        if problem is not None:
            return f"{name} {problem}"
    for name in _SATS_FIELDS:
        problem = _sats_problem(getattr(snapshot, name))
        if problem is not None:
            return f"{name} {problem}"
    for name in _FLAG_FIELDS:
        if not isinstance(getattr(snapshot, name), bool):
            return f"{name} is not a bool"
    return None


def check_payment_profile(profile: PaymentProfile, *, provider_id: str, invoice_id: str) -> PaymentProfile:
    """``profile`` itself when its strings are storable (as :func:`check_snapshot` rules); else BadProviderResponse.

    ``contact_id`` and ``profile_id`` must not be empty; ``expires_at`` must already be in docs/schema.md §1's
    form (:func:`normalize_timestamp`) or ``None``.
    """
    for name, value, optional in (
        ("contact_id", profile.contact_id, False),
        ("profile_id", profile.profile_id, False),
        ("method", profile.method, True),
        ("expires_at", profile.expires_at, True),
    ):
        problem = "is empty" if value == "" and not optional else _text_problem(value, optional=optional)
        if problem is not None:
            raise BadProviderResponse(
                f"{provider_id}: invoice {providers_http.short_repr(invoice_id)}: unusable payment profile: "
                f"{name} {problem}",
                provider_id=provider_id,
                invoice_id=invoice_id,
            )
    return profile


def path_segment(provider_invoice_id: str, *, provider_id: str | None = None) -> str:
    """``provider_invoice_id`` URL-quoted as one path segment (nothing is safe, ``/`` included).

    An id that cannot name one resource is :class:`InvoiceNotFound` before any request: not a
    string, empty, ``.`` or ``..`` (a URL path would resolve them to another endpoint), longer than
    :data:`TEXT_MAX` characters, or holding a control character or a lone surrogate. Use it for
    every id put in a path, including ids taken from a provider's answer.
    """
    problem: str | None
    if isinstance(provider_invoice_id, str) and provider_invoice_id in ("", ".", ".."):
        problem = "is empty, '.' or '..'"
    else:
        problem = _text_problem(provider_invoice_id, optional=False)
    if problem is None:
        return quote(provider_invoice_id, safe="")
    shown = (
        providers_http.short_repr(provider_invoice_id)
        if isinstance(provider_invoice_id, str)
        else type(provider_invoice_id).__name__
    )
    prefix = f"{provider_id}: " if provider_id else ""
    raise InvoiceNotFound(
        f"{prefix}invoice {shown}: not an invoice id: it {problem}",
        provider_id=provider_id,
        invoice_id=provider_invoice_id,
    )


def normalize_timestamp(text: str) -> str | None:
    """A provider's ISO-8601 timestamp in docs/schema.md §1's stored form; ``None`` when unparseable.

    A timestamp without an offset is taken as UTC.
    """
    try:
        return timeutil.format_ts(timeutil.parse_ts(text))
    except (ValueError, OverflowError):
        return None
