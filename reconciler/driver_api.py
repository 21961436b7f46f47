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
:class:`DriverError` subclasses at one boundary (``raise ... from exc``), never putting a secret in
a message. Drivers never touch the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from reconciler import errors, timeutil

__all__ = [
    "BadProviderResponse",
    "CommonSettings",
    "Done",
    "Driver",
    "DriverError",
    "DriverSettings",
    "InvoiceNotFound",
    "NotApplicable",
    "NotYet",
    "PaymentProfile",
    "PostSettleResult",
    "PostSettleTask",
    "ProviderAuthError",
    "ProviderStatus",
    "ProviderUnavailable",
    "SecretStr",
    "Snapshot",
    "SupportsFetchMany",
    "SupportsPostSettle",
    "decimal_to_sats",
    "floor_sats",
    "normalize_timestamp",
    "parse_retry_after",
]

# The driver error tree, re-exported so drivers import this module only.
DriverError = errors.DriverError
ProviderUnavailable = errors.ProviderUnavailable
ProviderAuthError = errors.ProviderAuthError
InvoiceNotFound = errors.InvoiceNotFound
BadProviderResponse = errors.BadProviderResponse

SATS_PER_BTC = Decimal(100_000_000)
_MAX_EXPONENT = 40
_EXACT = Context(prec=100)


class ProviderStatus(StrEnum):
    """What the provider says about an invoice, in the core's terms (SPEC §5)."""

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

    @property
    def observation(self) -> str:
        """The text stored in ``invoices.last_provider_status`` (SPEC §4.14)."""
        if self.raw_additional_status:
            return f"{self.raw_status}/{self.raw_additional_status}"
        return self.raw_status


class DriverSettings(BaseModel):
    """Base for a driver's ``Settings``: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CommonSettings(BaseModel):
    """The keys of every ``[providers.<id>]`` section that the core owns (SPEC §10, §11)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    driver: str
    timeout: float = Field(default=10.0, gt=0, description="seconds per HTTP request")
    max_concurrency: int = Field(default=16, ge=1)
    rate_limit: float = Field(default=0.0, ge=0, description="requests per second, 0 = unlimited")
    retry_attempts: int = Field(default=3, ge=1)
    retry_max_delay: float = Field(default=10.0, ge=0, description="seconds")

    @property
    def worst_fetch(self) -> float:
        """The longest one fetch may take with its retries (SPEC §9), in seconds."""
        return self.timeout * self.retry_attempts + self.retry_max_delay * (self.retry_attempts - 1)


@dataclass(frozen=True, slots=True)
class PostSettleTask:
    """A follow-up the core asks a driver to perform after a settle (SPEC §8)."""

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
    expires_at: str | None  # SPEC §3 timestamp form, or None


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


def decimal_to_sats(text: object, *, unit: str = "BTC", rounding: str = ROUND_HALF_UP) -> int | None:
    """Whole sats from a decimal string in ``BTC`` or ``SATS``; ``None`` when unparseable.

    BTC values are multiplied by 10^8 and rounded half up (use ``rounding=ROUND_FLOOR`` for a
    payment, whose Lightning msat fraction is not ours); SATS values must have no fraction.
    NaN, infinities, empty strings and non-strings are "no opinion".
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        return None
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        return None
    if not value.is_finite() or abs(value.adjusted()) > _MAX_EXPONENT:
        return None  # no real amount has 10^40 sats; refusing it keeps the arithmetic exact
    if unit.upper() == "BTC":
        # scaleb shifts the exponent exactly, so rounding happens once, on the exact value
        return int(value.scaleb(8, context=_EXACT).quantize(Decimal(1), rounding=rounding, context=_EXACT))
    if unit.upper() == "SATS":
        if value != value.to_integral_value():
            return None
        return int(value)
    return None


def floor_sats(text: object) -> int | None:
    """Whole sats from a BTC payment value, floored (Lightning values carry msat)."""
    return decimal_to_sats(text, unit="BTC", rounding=ROUND_FLOOR)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); ``None`` if absent or bad."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def normalize_timestamp(text: str) -> str | None:
    """A provider's ISO-8601 timestamp in SPEC §3's stored form; ``None`` when unparseable.

    A timestamp without an offset is taken as UTC.
    """
    try:
        return timeutil.format_ts(timeutil.parse_ts(text))
    except (ValueError, OverflowError):
        return None
