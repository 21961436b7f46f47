"""What a driver makes of a provider's values (docs/drivers.md §3, §5): amounts in whole sats or no
opinion, evidence for an amount it could not use, ids quoted as one URL path segment, timestamps in the
stored form, and the checks every snapshot and payment profile pass before the store sees them.
Re-exported by :mod:`reconciler.driver_api`, which is what drivers import."""

from __future__ import annotations

import re
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal
from urllib.parse import quote

from reconciler import timeutil
from reconciler.driver_types import MAX_SATS, TEXT_MAX, PaymentProfile, ProviderStatus, Snapshot
from reconciler.errors import BadProviderResponse, InvoiceNotFound
from reconciler.safe_text import UNSAFE_TEXT, short_repr

RAW_EVIDENCE_MAX = 64
"""Characters :func:`raw_evidence` returns at most."""
_AMOUNT_MAX_CHARS = 40
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_EXACT = Context(prec=100)  # 40 digits shifted by 8 places never need more


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
        if len(text) > _AMOUNT_MAX_CHARS:
            return None
        sats = _plain_btc(text, unit)
        if sats is not None:
            return sats
        if not _PLAIN_DECIMAL.fullmatch(text):
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


def _plain_btc(text: str, unit: str) -> int | None:
    """The common case without Decimal: a non-negative BTC amount of at most 8 places is a whole number of
    sats, nothing to round. None: not that case (the general path decides)."""
    if not text.isascii():  # isdigit() alone would take other scripts' digits
        return None
    whole, dot, fraction = text.partition(".")
    if not whole.isdigit() or len(fraction) > 8 or (dot and not fraction.isdigit()):
        return None
    if unit != "BTC" and ascii_upper(unit) != "BTC":
        return None
    return int(whole) * 100_000_000 + (int(fraction.ljust(8, "0")) if fraction else 0)


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
    return UNSAFE_TEXT.sub("?", shown)


def _text_problem(value: object, *, optional: bool) -> str | None:
    """What makes ``value`` unfit for a stored text column, or ``None`` when it is fit."""
    if value is None:
        return None if optional else "is missing"
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if len(value) > TEXT_MAX:
        return f"is longer than {TEXT_MAX} characters"
    found = UNSAFE_TEXT.search(value)
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
        f"{provider_id}: invoice {short_repr(invoice_id)}: unusable answer: {problem}",
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
                f"{provider_id}: invoice {short_repr(invoice_id)}: unusable payment profile: "
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
        short_repr(provider_invoice_id)
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
