"""What a provider request and a fetch can end as (docs/reconcile.md §3): the configured `Provider`, a
`Failure` or a `Release` for one invoice, the request outcomes metrics count, a safe `Retry-After`.
Re-exported by :mod:`reconciler.traffic`, which decides them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from reconciler import driver_api, errors
from reconciler.decide import DecisionKind
from reconciler.driver_api import CommonSettings, Driver

#: The longest wait a provider can ask of us; a longer (or absurd) Retry-After counts as this long.
RETRY_AFTER_MAX = driver_api.RETRY_AFTER_MAX


@dataclass(frozen=True, slots=True)
class Provider:
    """A configured provider: its id, live driver and the core-owned settings."""

    id: str
    driver: Driver
    common: CommonSettings


@dataclass(frozen=True, slots=True)
class Failure:
    """A fetch that produced no answer: the invoice stays untouched and is rescheduled (not before
    `not_before` when the provider asked us to wait). With `circuit_open` nothing was asked: the
    provider's outage circuit is open until `not_before`, and the invoice waits exactly that long."""

    message: str
    not_before: datetime | None = None
    kind: DecisionKind = DecisionKind.PROVIDER_ERROR
    circuit_open: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """The lease is too short for a fetch to start: release the invoice untouched; the pass claims it again."""


RELEASE = Release()

_OUTCOMES: dict[type[BaseException], str] = {
    errors.InvoiceNotFound: "not_found",
    errors.BadProviderResponse: "bad_response",
    errors.ProviderAuthError: "auth_error",
    errors.ProviderUnavailable: "unavailable",
}

#: Every outcome a request can be counted under (metrics create each series up front).
REQUEST_OUTCOMES = ("ok", "not_found", "bad_response", "auth_error", "unavailable", "error")


def retry_after_seconds(value: float | None) -> float | None:
    """A driver's `retry_after` made safe: None unless a finite non-negative number, at most RETRY_AFTER_MAX."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return min(float(value), RETRY_AFTER_MAX)
