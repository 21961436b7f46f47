"""The fake BTCPay's invoice list, ``GET /api/v1/stores/{storeId}/invoices`` (docs/providers.md §1.8).

As BTCPay's ``GreenfieldInvoiceController.GetInvoices`` answers it: a bare JSON array of the store's
invoices, newest first by ``createdTime``; ``startDate``/``endDate`` in unix seconds filter on creation
time, both inclusive (anything but an integer, or a start after the end, is a 422 with a
``ValidationProblemDetails`` array); ``skip``/``take`` page it (no ``take``: everything); ``orderId`` and
``status`` are repeatable, ``status`` case-insensitive with BTCPay's aliases, unknown values dropped and
all-unknown meaning no filter at all; archived invoices are hidden unless ``includeArchived=true``;
``paymentMethods`` only with ``includePaymentMethods=true``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from multidict import MultiMapping

Json = Any
#: (status, body, deviations used), what the fake's endpoint sends
Listed = tuple[int, Json, tuple[str, ...]]
Present = Callable[[Mapping[str, Json], bool], tuple[dict[str, Json], tuple[str, ...]]]

STATUS_ALIASES = {
    "new": "New",
    "processing": "Processing",
    "paid": "Processing",
    "settled": "Settled",
    "complete": "Settled",
    "confirmed": "Settled",
    "expired": "Expired",
    "invalid": "Invalid",
}
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_VALIDATION = ("validation-problem-bodies",)


def _flag(query: MultiMapping[str], name: str) -> bool:
    return query.get(name, "").lower() == "true"


def _integers(query: MultiMapping[str], names: Iterable[str]) -> dict[str, int | None] | Listed:
    found: dict[str, int | None] = {}
    for name in names:
        text = query.get(name)
        if text is not None and not _INTEGER.fullmatch(text.strip()):
            message = (
                "Invalid unix timestamp" if name.endswith("Date") else f"The value '{text}' is not valid."
            )
            return 422, [{"path": name, "message": message}], _VALIDATION
        found[name] = int(text) if text is not None else None
    return found


class ByCreation:
    """Invoices newest first by ``createdTime``, so a window is two bisections, not a scan: the bench
    lists 100,000 invoices a thousand times."""

    def __init__(self, invoices: Iterable[Mapping[str, Json]]) -> None:
        self.newest_first = sorted(invoices, key=lambda i: cast(int, i["createdTime"]), reverse=True)
        self._keys = [-cast(int, i["createdTime"]) for i in self.newest_first]

    def window(self, start: int | None, end: int | None) -> Sequence[Mapping[str, Json]]:
        """The invoices created from ``start`` to ``end`` (inclusive, unix seconds), newest first."""
        low = 0 if end is None else bisect.bisect_left(self._keys, -end)
        high = len(self._keys) if start is None else bisect.bisect_right(self._keys, -start)
        return self.newest_first[low:high]


def list_invoices(invoices: ByCreation, store: str, query: MultiMapping[str], present: Present) -> Listed:
    """The answer to a list request for ``store`` over ``invoices``; ``present`` renders one invoice."""
    numbers = _integers(query, ("startDate", "endDate", "skip", "take"))
    if isinstance(numbers, tuple):
        return numbers
    start, end = numbers["startDate"], numbers["endDate"]
    if start is not None and end is not None and start > end:
        return 422, [{"path": "startDate", "message": "startDate should not be above endDate"}], _VALIDATION
    order_ids = set(query.getall("orderId", []))
    wanted = {STATUS_ALIASES.get(s.lower()) for s in query.getall("status", [])} - {None}
    archived = _flag(query, "includeArchived")
    with_methods = _flag(query, "includePaymentMethods")
    found = [
        invoice
        for invoice in invoices.window(start, end)
        if invoice["storeId"] == store
        and (archived or not invoice.get("archived"))
        and (not order_ids or invoice["metadata"].get("orderId") in order_ids)
        and (not wanted or invoice["status"] in wanted)
    ]
    skip, take = max(numbers["skip"] or 0, 0), numbers["take"]
    found = found[skip:] if take is None else found[skip : skip + max(take, 0)]
    bodies: list[dict[str, Json]] = []
    deviations: set[str] = {"include-payment-methods"} if with_methods and found else set()
    for invoice in found:
        body, used = present(invoice, with_methods)
        bodies.append(body)
        deviations.update(used)
    return 200, bodies, tuple(sorted(deviations))
