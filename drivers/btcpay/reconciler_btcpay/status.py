"""BTCPay invoice status → the core's ProviderStatus and evidence flags (docs/statuses.md §3).

Total and table-driven: the typed status depends on ``status`` alone (a ``Settled`` invoice is paid
whatever its additional status says), ``additionalStatus`` only sets flags, matching ignores ASCII
case only (``"ſettled"`` is not ``"Settled"``), and any string the tables do not know is ``UNKNOWN`` /
no flag, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler import driver_api

_STATUSES: dict[str, driver_api.ProviderStatus] = {
    "NEW": driver_api.ProviderStatus.PENDING,
    "PROCESSING": driver_api.ProviderStatus.PENDING,
    "SETTLED": driver_api.ProviderStatus.SETTLED,
    # Legacy (BitPay-compatible) names; Greenfield never sends them, but older integrations did.
    "COMPLETE": driver_api.ProviderStatus.SETTLED,
    "CONFIRMED": driver_api.ProviderStatus.SETTLED,
    "EXPIRED": driver_api.ProviderStatus.EXPIRED,
    "INVALID": driver_api.ProviderStatus.INVALID,
}

_FLAGS: dict[str, str] = {
    "PAIDPARTIAL": "partially_paid",
    "PAIDOVER": "overpaid",
    "PAIDLATE": "paid_late",
    "MARKED": "manually_marked",
}


@dataclass(frozen=True, slots=True)
class StatusReading:
    """What ``status`` and ``additionalStatus`` say, in the core's terms."""

    status: driver_api.ProviderStatus
    paid_late: bool = False
    partially_paid: bool = False
    overpaid: bool = False
    manually_marked: bool = False


def read_status(status: str, additional_status: str | None) -> StatusReading:
    """Map a BTCPay ``status`` / ``additionalStatus`` pair; unknown strings give UNKNOWN / no flag."""
    typed = _STATUSES.get(driver_api.ascii_upper(status), driver_api.ProviderStatus.UNKNOWN)
    flag = _FLAGS.get(driver_api.ascii_upper(additional_status)) if additional_status is not None else None
    return StatusReading(
        typed,
        paid_late=flag == "paid_late",
        partially_paid=flag == "partially_paid",
        overpaid=flag == "overpaid",
        manually_marked=flag == "manually_marked",
    )
