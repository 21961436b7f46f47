"""The types a driver and the core exchange (docs/drivers.md §2, §3): the ``Driver`` protocol and its
optional parts, ``Snapshot`` and ``ProviderStatus``, the settings bases, and what a post-settle task
is given and answers. Re-exported by :mod:`reconciler.driver_api`, which is what drivers import."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from reconciler.errors import DriverError

MAX_SATS = 2**63 - 1
"""The largest sat amount the store holds (a signed 64-bit integer)."""
TEXT_MAX = 200
"""Characters a provider string in a Snapshot (or an id in a URL path) may have."""


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
    ``"1e3"``), the driver sets it to :func:`~reconciler.driver_values.raw_evidence` of that value (a short escaped repr, at
    most :data:`~reconciler.driver_values.RAW_EVIDENCE_MAX` characters); otherwise it is ``None``.

    :func:`~reconciler.driver_values.check_snapshot` says what the fields may hold: strings of at most :data:`TEXT_MAX`
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
    batch: bool = Field(
        default=True, description="batched reads (fetch_page, fetch_many) when the driver has them"
    )
    page_size: int = Field(default=200, ge=10, le=1000, description="invoices asked per list page")

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
class SupportsWebhookSetup(Protocol):
    async def register_webhook(self, url: str, secret: SecretStr) -> str:
        """Register ``url`` with the provider as a webhook for its invoice events, its deliveries signed
        with ``secret``; the id the provider gave the webhook (``reconciler webhooks setup``, docs/cli.md
        §2.13). One attempt (a timed-out request may have registered it), errors translated; neither
        ``secret`` nor a credential in any message.

        A driver whose provider's webhooks are set up elsewhere (its dashboard) leaves this out and may
        set ``webhook_setup_hint: ClassVar[str]``, one line telling the operator how, in which
        ``{url}`` stands for the URL the provider should call."""
        ...


PAGE_ITEM_BYTES = 16 * 1024
"""The body bytes one listed invoice is allowed when a driver does not say (``page_item_bytes``)."""


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One page of a provider's invoice list (docs/drivers.md §2.1): the invoices created from
    ``created_from`` to ``created_to`` (both inclusive, aware datetimes), newest first, skipping
    ``skip`` and answering at most ``take``."""

    created_from: datetime
    created_to: datetime
    skip: int
    take: int


@dataclass(frozen=True, slots=True)
class Page:
    """A provider's answer to a :class:`PageRequest`.

    ``answers`` holds one entry per listed invoice with a usable id: its Snapshot, or the
    DriverError its item alone earned (an item that failed the parse loses nothing else).
    ``items`` is how many items the page held, usable or not: fewer than ``take`` ends the list.
    ``oldest_created``, when the provider says, is the creation time of the oldest item listed: a page
    whose items are all newer than every invoice waiting is not sparse, only above them.
    ``created``, when the provider says, is each listed invoice's creation time (aware datetimes): how
    closely the provider's times follow the storefront's ``created_at`` narrows the margin later reads
    reach past their newest invoice (docs/reconcile.md §3.1).
    """

    answers: Mapping[str, Snapshot | DriverError]
    items: int
    oldest_created: datetime | None = None
    created: Mapping[str, datetime] = field(default_factory=dict)


@runtime_checkable
class SupportsFetchPages(Protocol):
    async def fetch_page(self, request: PageRequest) -> Page:
        """One page of the invoices created in a window, newest first; one attempt, errors translated.

        A driver may set ``page_item_bytes: ClassVar[int]``, the body bytes one listed invoice may
        take (default :data:`PAGE_ITEM_BYTES`): the core asks no more than ``max_response_bytes //
        page_item_bytes`` invoices per page, so that a full page fits the body limit."""
        ...


@runtime_checkable
class SupportsPostSettle(Protocol):
    async def post_settle(self, task: PostSettleTask) -> PostSettleResult:
        """Perform one post-settle task; idempotent."""
        ...
