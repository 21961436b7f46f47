"""Rows as the store reads them: storefront-written columns are untrusted input, checked here, once.

A row that cannot be read (a timestamp that is not docs/schema.md §1's form, a number stored as text, JSON
that is not what the schema says, an impossible value) never raises: it becomes an `Unreadable` naming the
column and the reason, which the runner quarantines for that one invoice (docs/reconcile.md §11). Reasons
quote values with `ascii()` and cut them short, so a reason is always storable and printable, whatever the row
held.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from reconciler.models import Invoice, InvoiceStatus, Policy, Unreadable, UnreadablePolicy

#: The longest duration a policy may grant (100 years): anything above is a typo, and would overflow dates.
MAX_POLICY_SECONDS = 100 * 366 * 86_400
MAX_POLICY_DAYS = 100 * 366
#: Amounts are BIGINT; machine counts and attempt counters fit a 32-bit INTEGER on every engine.
MAX_BIGINT = 2**63 - 1
MAX_INT = 2**31 - 1
#: Entitlements JSON bigger than this is not a list of slugs (and would not fit in a key anyway).
MAX_ENTITLEMENTS_TEXT = 64 * 1024


class _Bad(Exception):
    """One column that cannot be read; becomes an `Unreadable` / `UnreadablePolicy`."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


def quote(value: object, limit: int = 60) -> str:
    """A value for a reason or a log line: ASCII only, control characters escaped, at most `limit` chars."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_stored_ts(value: object) -> datetime:
    """A timestamp in exactly docs/schema.md §1's stored form; ValueError otherwise."""
    if (
        not isinstance(value, str)
        or len(value) != 27
        or not value.isascii()
        or value[10] != "T"
        or value[19] != "."
        or value[26] != "Z"
    ):
        raise ValueError(f"not a timestamp of the form 2026-01-02T03:04:05.000000Z: {quote(value)}")
    try:
        # the C parser: the form is fixed above, so what it accepts beyond it (offsets, week dates) cannot occur
        moment = datetime.fromisoformat(value[:26])
    except ValueError:
        raise ValueError(f"not a valid timestamp: {quote(value)}") from None
    if value[4] != "-" or value[7] != "-" or value[13] != ":" or value[16] != ":":
        raise ValueError(f"not a timestamp of the form 2026-01-02T03:04:05.000000Z: {quote(value)}")
    return moment.replace(tzinfo=UTC)


def lenient_ts(value: object) -> datetime | None:
    """A stored timestamp, or None when it cannot be read (reports that must not fail on one bad row)."""
    try:
        return parse_stored_ts(value)
    except ValueError:
        return None


def _text(row: Any, column: str, *, nullable: bool = False, empty: bool = False) -> str | None:
    value = row[column]
    if value is None:
        if nullable:
            return None
        raise _Bad(column, "is NULL")
    if not isinstance(value, str):
        raise _Bad(column, f"is not text: {type(value).__name__} {quote(value)}")
    if not empty and not value:
        raise _Bad(column, "is empty")
    if not _storable(value):
        raise _Bad(column, f"holds characters that cannot be stored or shown: {quote(value)}")
    return value


def _storable(text: str) -> bool:
    """UTF-8 encodable (no lone surrogates, which a non-UTF-8 SQLite value decodes to) and no NUL."""
    if "\x00" in text:
        return False
    if text.isascii():  # nearly every value: nothing to encode
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int(row: Any, column: str, *, low: int, high: int, nullable: bool = False) -> int | None:
    value = row[column]
    if value is None:
        if nullable:
            return None
        raise _Bad(column, "is NULL")
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # SQLite may hand back 5.0 for a REAL written as 5.0: the value is whole
        else:
            raise _Bad(column, f"is not a whole number: {type(value).__name__} {quote(value)}")
    if not low <= value <= high:
        raise _Bad(column, f"is {value}, outside {low}..{high}")
    return value


def _flag(row: Any, column: str) -> bool:
    value = row[column]
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise _Bad(column, f"is not 0 or 1: {quote(value)}")


def _stored_ts(row: Any, column: str, *, nullable: bool = False) -> datetime | None:
    value = row[column]
    if value is None and nullable:
        return None
    try:
        return parse_stored_ts(value)
    except ValueError as exc:
        raise _Bad(column, str(exc)) from None


def _soft_text(row: Any, column: str) -> str | None:
    """A bookkeeping column of ours: unreadable means "unknown", never a quarantine."""
    value = row[column]
    return value if isinstance(value, str) and _storable(value) else None


def invoice(row: Any) -> Invoice | Unreadable:
    """An invoice row (claim, peek, lookup) as an `Invoice`, or `Unreadable` naming the first bad column."""
    try:
        return Invoice(
            id=_required(_text(row, "id")),
            payment_provider_id=_text(row, "payment_provider_id", nullable=True),
            provider_invoice_id=_required(_text(row, "provider_invoice_id", empty=True)),
            product_id=_required(_text(row, "product_id")),
            policy_id=_text(row, "policy_id", nullable=True),
            status=_status(row),
            amount_sats=_required(_int(row, "amount_sats", low=0, high=MAX_BIGINT)),
            listed_currency=_text(row, "listed_currency", nullable=True, empty=True),
            listed_value=_int(row, "listed_value", low=0, high=MAX_BIGINT, nullable=True),
            buyer_email=_text(row, "buyer_email", nullable=True, empty=True),
            subscription_id=_text(row, "subscription_id", nullable=True),
            created_at=_required(_stored_ts(row, "created_at")),
            settled_at=_stored_ts(row, "settled_at", nullable=True),
            check_attempts=_int(row, "check_attempts", low=0, high=MAX_INT) or 0,
            last_provider_status=_soft_text(row, "last_provider_status"),
            lease_token=_soft_text(row, "lease_token"),
            has_license=bool(row["has_license"]),
        )
    except _Bad as bad:
        return Unreadable(
            id=row["id"],
            lease_token=_soft_text(row, "lease_token"),
            column=bad.column,
            reason=bad.reason,
            payment_provider_id=_soft_text(row, "payment_provider_id"),
            provider_invoice_id=_soft_text(row, "provider_invoice_id"),
            last_provider_status=_soft_text(row, "last_provider_status"),
        )


def _required(value: Any) -> Any:
    assert value is not None  # the reader above was told the column is not nullable
    return value


_STATUSES = {status.value: status for status in InvoiceStatus}


def _status(row: Any) -> InvoiceStatus:
    value = row["status"]
    status = _STATUSES.get(value) if isinstance(value, str) else None
    if status is None:
        raise _Bad("status", f"is not one of pending, settled, expired, invalid: {quote(value)}")
    return status


def policy(row: Any) -> Policy | UnreadablePolicy:
    """A policy row as a `Policy`, or `UnreadablePolicy` naming the first bad column."""
    try:
        return Policy(
            id=_required(_text(row, "id")),
            product_id=_required(_text(row, "product_id")),
            slug=_required(_text(row, "slug", empty=True)),
            duration_seconds=_required(_int(row, "duration_seconds", low=0, high=MAX_POLICY_SECONDS)),
            is_trial=_flag(row, "is_trial"),
            is_recurring=_flag(row, "is_recurring"),
            trial_days=_required(_int(row, "trial_days", low=0, high=MAX_POLICY_DAYS)),
            renewal_period_days=_required(_int(row, "renewal_period_days", low=0, high=MAX_POLICY_DAYS)),
            grace_seconds=_required(_int(row, "grace_seconds", low=0, high=MAX_POLICY_SECONDS)),
            max_machines=_required(_int(row, "max_machines", low=0, high=MAX_INT)),
            entitlements=_entitlements(row),
            active=_flag(row, "active"),
            created_at=_text(row, "created_at", empty=True) or "",
        )
    except _Bad as bad:
        return UnreadablePolicy(
            id=str(row["id"]) if isinstance(row["id"], str) else quote(row["id"]),
            slug=_soft_text(row, "slug"),
            active=row["active"] in (1, True),
            column=bad.column,
            reason=bad.reason,
        )


def _entitlements(row: Any) -> tuple[str, ...]:
    text = _text(row, "entitlements", nullable=True, empty=True)
    if text is None or text == "":
        return ()
    if len(text) > MAX_ENTITLEMENTS_TEXT:
        raise _Bad("entitlements", f"is {len(text)} characters long, not a list of slugs")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise _Bad("entitlements", f"is not JSON: {quote(text)}") from None
    if not isinstance(value, list):
        raise _Bad("entitlements", f"is not a JSON array of slugs: {quote(text)}")
    for item in value:
        if not isinstance(item, str) or not _storable(item):
            raise _Bad("entitlements", f"holds {quote(item)}, not a slug string")
    return tuple(value)
