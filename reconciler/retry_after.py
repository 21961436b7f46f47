"""``Retry-After`` (RFC 9110 §10.2.3) read strictly: delta-seconds or one of the three HTTP-date forms,
clamped to a day."""

from __future__ import annotations

import re
from datetime import UTC, datetime

RETRY_AFTER_MAX = 86_400.0
"""The longest ``Retry-After`` believed, in seconds (24 h); longer ones are clamped to it."""

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
