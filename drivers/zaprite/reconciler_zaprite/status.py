"""Pure mappings from a Zaprite order to the core's terms: docs/statuses.md §4's status table and the sat
amounts of docs/reconcile.md §14 / docs/providers.md §2.5."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from reconciler import driver_api
from reconciler.driver_api import ProviderStatus
from reconciler_zaprite import client


@dataclass(frozen=True, slots=True)
class Mapped:
    """A Zaprite status in the core's terms."""

    status: ProviderStatus
    partially_paid: bool = False
    overpaid: bool = False


UNKNOWN: Final = Mapped(ProviderStatus.UNKNOWN)

# Only the first six are in the fixture's enum; the rest are mapped explicitly so that a status
# Zaprite adds later is UNKNOWN (no change) rather than invalid (docs/statuses.md §4).
TABLE: Final[Mapping[str, Mapped]] = {
    "PENDING": Mapped(ProviderStatus.PENDING),
    "PROCESSING": Mapped(ProviderStatus.PENDING),
    "UNDERPAID": Mapped(ProviderStatus.PENDING, partially_paid=True),
    "PAID": Mapped(ProviderStatus.SETTLED),
    "COMPLETE": Mapped(ProviderStatus.SETTLED),
    "OVERPAID": Mapped(ProviderStatus.SETTLED, overpaid=True),
    "EXPIRED": Mapped(ProviderStatus.EXPIRED),
    "ABANDONED": Mapped(ProviderStatus.EXPIRED),
    "INVALID": Mapped(ProviderStatus.INVALID),
    "CANCELLED": Mapped(ProviderStatus.INVALID),
    "CANCELED": Mapped(ProviderStatus.INVALID),
}

CARD_LIKE_METHODS: Final = frozenset({"CARD", "APPLEPAY", "GOOGLEPAY"})


# ASCII-only case folding: str.upper() would turn a non-ASCII look-alike such as "paıd" into "PAID".
_key = driver_api.ascii_upper


def map_status(raw: str) -> Mapped:
    """docs/statuses.md §4's Zaprite table, case-insensitive and total: anything else is UNKNOWN."""
    return TABLE.get(_key(raw), UNKNOWN)


def is_btc(order: client.Order) -> bool:
    """Whether the order is priced in bitcoin, so its amounts are sats."""
    return order.currency is not None and _key(order.currency) == "BTC"


def amount_sats(order: client.Order) -> int | None:
    """``totalAmount`` of a BTC order (already in sats) when in ``1..MAX_SATS``; otherwise no opinion."""
    if not is_btc(order) or order.total_amount is None or not 0 < order.total_amount <= driver_api.MAX_SATS:
        return None
    return order.total_amount


def amount_evidence(order: client.Order) -> str | None:
    """``totalAmount`` as evidence when a BTC order states one that :func:`amount_sats` cannot use."""
    if not is_btc(order) or order.total_amount is None or amount_sats(order) is not None:
        return None
    return driver_api.raw_evidence(order.total_amount)


def paid_sats(order: client.Order) -> int | None:
    """What the confirmed transactions of a BTC order retained, discounts included (docs/providers.md §2.5).

    ``None`` for a non-BTC order, when any amount it would add up is null or negative, or when the
    sum is over ``driver_api.MAX_SATS``.
    """
    if not is_btc(order):
        return None
    total = 0
    for transaction in order.transactions:
        if transaction.status is None or _key(transaction.status) != "CONFIRMED":
            continue
        amounts = [transaction.amount_in_order_currency]
        amounts += [discount.amount_off for discount in transaction.discounts_in_order_currency]
        for amount in amounts:
            if amount is None or amount < 0:
                return None
            total += amount
    return total if total <= driver_api.MAX_SATS else None


def paid_by_card(order: client.Order) -> bool:
    """Whether a confirmed card-like payment, the only kind that can leave a payment profile, exists."""
    return any(
        transaction.status is not None
        and _key(transaction.status) == "CONFIRMED"
        and transaction.method is not None
        and _key(transaction.method) in CARD_LIKE_METHODS
        for transaction in order.transactions
    )


def snapshot(order: client.Order) -> driver_api.Snapshot:
    """The core's view of one order."""
    mapped = map_status(order.status)
    return driver_api.Snapshot(
        status=mapped.status,
        raw_status=order.status,
        raw_additional_status=None,
        currency=order.currency,
        amount_sats=amount_sats(order),
        paid_sats=paid_sats(order),
        partially_paid=mapped.partially_paid,
        overpaid=mapped.overpaid,
        amount_raw=amount_evidence(order),
    )
