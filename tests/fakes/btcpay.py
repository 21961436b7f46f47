"""A fake BTCPay Server (Greenfield API v1) on a real socket, with fault knobs and a request log.

Routes (what the driver and an operator's checks read)::

    GET /api/v1/health                                                  no auth
    GET /api/v1/api-keys/current
    GET /api/v1/stores/{storeId}/invoices                               startDate, endDate, orderId*,
                                                                        status*, skip, take,
                                                                        includePaymentMethods,
                                                                        includeArchived
    GET /api/v1/stores/{storeId}/invoices/{invoiceId}                   includePaymentMethods
    GET /api/v1/stores/{storeId}/invoices/{invoiceId}/payment-methods   onlyAccountedPayments
    POST /api/v1/stores/{storeId}/webhooks                              WebhookDataCreate body

Like BTCPay: ``Authorization: token <key>`` (``Bearer`` too unless ``accept_bearer=False``, as servers
before 2.0.6); 401 ``unauthenticated`` without a known key; 403 ``missing-permission`` when the key
cannot view the store's invoices, and for an invoice that belongs to another store; 404
``invoice-not-found``. Invoices come from :func:`make_invoice` and are valid against the fixtures'
``InvoiceData``; webhook registration is :mod:`tests.fakes.btcpay_webhooks`' (the request checked
against the fixture's ``WebhookDataCreate``, 403 ``missing-permission`` naming
``btcpay.store.webhooks.canmodifywebhooks`` for a key without it, every webhook kept in
:attr:`FakeBTCPay.webhooks`); the list is :mod:`tests.fakes.btcpay_list`'s (newest first, inclusive creation window,
skip/take, archived invoices hidden unless asked for: :meth:`FakeBTCPay.archive`). What real servers
send that the fixtures do not describe is one of the named
:data:`DEVIATIONS`, and every logged answer lists the deviations it uses, so
:func:`validate_exchanges` checks the whole log strictly.

Faults (:class:`Fault`) apply per target (an invoice id, ``"invoices"`` for the list,
``"api-keys/current"``, ``"health"``) or globally: latency, a status sequence such as
``[503, 503, 200]`` (``200`` = answer normally), ``Retry-After``, a non-JSON body, a JSON body of the
wrong shape, a dropped connection, or whole scripted answers (:class:`~tests.fakes.raw.RawAnswer`:
any status, headers and bytes, gzip, a slow trickle, an endless or oversized body).

Capacity: ``FakeBTCPay(concurrency=C)`` handles at most C requests at once (injected latency included)
and queues the rest, as a small server does; ``peak_in_flight`` is the most it ever handled at once.

Standalone, for ``make demo`` and subprocess acceptance tests::

    python -m tests.fakes.btcpay --state state.json [--host 127.0.0.1] [--port 0]

prints one JSON line ``{"port": ..., "base_url": ...}`` and serves until SIGINT/SIGTERM. The state file
is ``{"store_id": ..., "api_keys": {key: [permission, ...]}, "invoices": [make_invoice kwargs, ...],
"faults": {target or "*": Fault kwargs}}``. A control plane that is not logged lets such tests change
the world: ``POST /_fake/invoices`` (make_invoice kwargs), ``POST /_fake/faults`` (``{"target": ...,
...Fault kwargs}``), ``GET /_fake/log``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes import btcpay_list, btcpay_webhooks
from tests.fakes.openapi import Deviation, OpenAPIDocument, fixtures_dir, schema_errors
from tests.fakes.raw import RawAnswer

__all__ = [
    "ALIASES",
    "API_KEY",
    "DEVIATIONS",
    "STORE_ID",
    "Exchange",
    "FakeBTCPay",
    "Fault",
    "Payment",
    "fake_from_state",
    "make_invoice",
    "openapi_document",
    "serve",
    "validate_exchanges",
]

STORE_ID = "9CiNzKoANXxmk5ayZngSXrHTiVvvgCrwrpFQd4m2K776"
API_KEY = "fake-btcpay-key-0123456789abcdef"
CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z

STATUSES = ("New", "Processing", "Expired", "Invalid", "Settled")
ADDITIONAL_STATUSES = ("None", "PaidLate", "PaidPartial", "Marked", "Invalid", "PaidOver")
LEGACY_STATUSES = ("Complete", "Confirmed")
_V1_METHOD_IDS = {"BTC-CHAIN": "BTC", "BTC-LN": "BTC-LightningNetwork", "BTC-LNURL": "BTC-LNURLPAY"}
# Invoice-currency units per BTC for the rates the fake quotes, and each method currency's price in BTC.
_PER_BTC = {"BTC": Decimal(1), "SATS": Decimal(100_000_000), "USD": Decimal(50_000), "EUR": Decimal(45_000)}
_PRICE_IN_BTC = {"BTC": Decimal(1), "LTC": Decimal("0.001")}
_DIVISIBILITY = {"BTC": 8, "SATS": 0}
# Policies that include btcpay.store.canviewinvoices in BTCPay's permission tree.
_VIEW_INVOICES = {
    "btcpay.store.canviewinvoices",
    "btcpay.store.canmodifyinvoices",
    "btcpay.store.canviewstoresettings",
    "btcpay.store.canmodifystoresettings",
}
# Deviations every answer of a route uses.
_ROUTE_DEVIATIONS = {"/api/v1/api-keys/current": ("api-keys-current",)}
_AUTH = re.compile(r"(token|bearer)\s+(\S+)\s*", re.IGNORECASE)
ALIASES = {
    # Validate by operation: v2.4 documents these operations only on their storeId-less paths.
    "/api/v1/stores/{storeId}/invoices/{invoiceId}": "/api/v1/invoices/{invoiceId}",
    "/api/v1/stores/{storeId}/invoices/{invoiceId}/payment-methods": "/api/v1/invoices/{invoiceId}/payment-methods",
}

Json = Any


# --- deviations: what real servers send that the fixtures do not describe --------------------------


def _schemas(doc: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = doc["components"]["schemas"]
    return schemas


def _include_payment_methods(doc: dict[str, Any]) -> None:
    closed_part = _schemas(doc)["InvoiceData"]["allOf"][1]
    closed_part["properties"]["paymentMethods"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/InvoicePaymentMethodDataModel"},
    }


def _v1_payment_method_fields(doc: dict[str, Any]) -> None:
    properties = _schemas(doc)["InvoicePaymentMethodDataModel"]["properties"]
    for v2, v1 in (
        ("paymentMethodId", "paymentMethod"),
        ("currency", "cryptoCode"),
        ("paymentMethodFee", "networkFee"),
    ):
        properties[v1] = properties.pop(v2)


def _legacy_status(doc: dict[str, Any]) -> None:
    enum = _schemas(doc)["InvoiceStatus"].get("enum")
    if enum is not None:  # "future-status" may have opened it already
        enum.extend(LEGACY_STATUSES)


def _future_status(doc: dict[str, Any]) -> None:
    for name in ("InvoiceStatus", "InvoiceAdditionalStatus"):
        _schemas(doc)[name] = {"type": "string"}


_PROBLEM = {"application/json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}


def _operations(doc: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for item in doc["paths"].values():
        yield from (op for op in item.values() if isinstance(op, dict) and "responses" in op)


def _problem_details_bodies(doc: dict[str, Any]) -> None:
    for operation in _operations(doc):
        for status in ("401", "403", "404"):
            operation["responses"][status] = {"description": "ProblemDetails", "content": _PROBLEM}


def _injected_error_status(doc: dict[str, Any]) -> None:
    for operation in _operations(doc):
        operation["responses"].setdefault("default", {"description": "error", "content": _PROBLEM})


def _validation_problem_bodies(doc: dict[str, Any]) -> None:
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ValidationProblemDetails"}}}
    operation = doc["paths"]["/api/v1/stores/{storeId}/invoices"]["get"]
    operation["responses"]["422"] = {"description": "ValidationProblemDetails", "content": body}


def _api_keys_current(doc: dict[str, Any]) -> None:
    _schemas(doc)["ApiKeyData"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "apiKey": {"type": "string"},
            "label": {"type": "string"},
            "permissions": {"type": "array", "items": {"type": "string"}},
        },
    }
    doc["paths"]["/api/v1/api-keys/current"] = {
        "get": {
            "operationId": "ApiKeys_GetCurrentApiKey",
            "responses": {
                "200": {
                    "description": "the current key",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiKeyData"}}},
                },
                "401": {"description": "Missing authorization", "content": _PROBLEM},
            },
        }
    }


DEVIATIONS: dict[str, Deviation] = {
    d.name: d
    for d in (
        Deviation(
            "include-payment-methods",
            "GET invoice with includePaymentMethods=true adds paymentMethods (the parameter documents it), "
            "but the 200 InvoiceData schema is closed and does not list it",
            _include_payment_methods,
        ),
        Deviation(
            "v1-payment-method-fields",
            "servers before 2.0 name payment-method fields paymentMethod/cryptoCode/networkFee "
            "instead of paymentMethodId/currency/paymentMethodFee",
            _v1_payment_method_fields,
        ),
        Deviation(
            "legacy-status",
            "legacy BitPay-style statuses Complete/Confirmed, outside the Greenfield enum",
            _legacy_status,
        ),
        Deviation(
            "future-status",
            "a status or additional status a newer server might add, outside both enums",
            _future_status,
        ),
        Deviation(
            "problem-details-bodies",
            "401/403/404 carry a ProblemDetails body (code, message, missingPermission) the document "
            "lists without content or not at all",
            _problem_details_bodies,
        ),
        Deviation(
            "validation-problem-bodies",
            "the invoice list answers a bad startDate/endDate/skip/take with 422 and a "
            "ValidationProblemDetails array; the operation declares only ProblemDetails as its default",
            _validation_problem_bodies,
        ),
        Deviation(
            "api-keys-current",
            "GET /api/v1/api-keys/current (ApiKeyData) lives in swagger.template.api-keys.json, "
            "which the fixtures do not include",
            _api_keys_current,
        ),
        Deviation(
            "injected-error-status",
            "an injected 408/429/5xx answers with ProblemDetails; the document declares none of these",
            _injected_error_status,
        ),
        Deviation("fault-garbage-body", "an injected non-JSON body (a proxy's error page)", None),
        Deviation("fault-wrong-shape", "an injected JSON body that is not what the operation returns", None),
        Deviation(
            "fault-raw-answer", "an injected answer sent byte for byte (any status, headers, body)", None
        ),
    )
}


@functools.cache
def openapi_document(fixtures: Path) -> OpenAPIDocument:
    """BTCPay's merged swagger templates from ``<fixtures>/btcpay-openapi``, with :data:`ALIASES` (cached)."""
    files = sorted((fixtures / "btcpay-openapi").glob("swagger.template*.json"))
    if not files:
        raise FileNotFoundError(f"no swagger.template*.json under {fixtures / 'btcpay-openapi'}")
    return OpenAPIDocument.load(*files, aliases=ALIASES)


# --- invoices --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    """One payment on an invoice; ``value`` is a decimal string in the method's currency (BTC)."""

    value: str
    status: str = "Settled"
    method: str = "BTC-CHAIN"


def _fmt(value: Decimal) -> str:
    return f"{value + 0:f}"  # + 0 turns -0 into 0


def _quantize(value: Decimal, places: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def make_invoice(
    invoice_id: str,
    status: str = "New",
    additional_status: str = "None",
    amount: str = "0.001",
    currency: str = "BTC",
    payments: Iterable[Payment | Mapping[str, str]] = (),
    generation: str = "v2",
    *,
    store_id: str = STORE_ID,
    order_id: str | None = None,
    created: int = CREATED,
) -> dict[str, Json]:
    """A Greenfield ``InvoiceData`` (unix-second times, decimal strings) with its ``paymentMethods``.

    The fake strips ``paymentMethods`` unless asked for. ``generation="v1"`` gives a pre-2.0 server's
    answer: v1 payment-method ids and field names, no ``paidAmount``. Payments use v2 method ids
    (``BTC-CHAIN``, ``BTC-LN``, ``BTC-LNURL``; ``LTC-CHAIN`` for an altcoin).
    """
    if generation not in ("v1", "v2"):
        raise ValueError(f"generation must be 'v1' or 'v2', not {generation!r}")
    paid = [p if isinstance(p, Payment) else Payment(**p) for p in payments]
    methods = list(dict.fromkeys(["BTC-CHAIN", "BTC-LN", *(p.method for p in paid)]))
    per_btc = _PER_BTC.get(currency.upper(), _PER_BTC["USD"])
    price = Decimal(amount)
    accounted = [p for p in paid if p.status != "Invalid"]

    def in_btc(payment: Payment) -> Decimal:
        return Decimal(payment.value) * _PRICE_IN_BTC[payment.method.split("-")[0]]

    paid_btc = sum((in_btc(p) for p in accounted), Decimal(0))
    elements = []
    for index, method in enumerate(methods):
        code = method.split("-")[0]
        unit_in_btc = _PRICE_IN_BTC[code]
        method_amount = _quantize(price / per_btc / unit_in_btc, 8)
        total_paid = _quantize(paid_btc / unit_in_btc, 8)
        own = sum((Decimal(p.value) for p in accounted if p.method == method), Decimal(0))
        lightning = "-LN" in method
        destination = (
            f"lnbc{invoice_id.lower()}{index}" if lightning else f"bc1qfake{invoice_id.lower()}{index}"
        )
        element: dict[str, Json] = {
            "paymentMethodId": method,
            "currency": code,
            "destination": destination,
            "paymentLink": f"{'lightning' if lightning else 'bitcoin'}:{destination}",
            "rate": _fmt(_quantize(per_btc * unit_in_btc, 8)),
            "paymentMethodPaid": _fmt(own),
            "totalPaid": _fmt(total_paid),
            "due": _fmt(method_amount - total_paid),
            "amount": _fmt(method_amount),
            "paymentMethodFee": "0.0",
            "payments": [
                {
                    "id": f"{invoice_id}-{method}-{n}",
                    "receivedDate": created + 60 * (n + 1),
                    "value": p.value,
                    "fee": "0.0",
                    "status": p.status,
                    "destination": destination,
                }
                for n, p in enumerate(p for p in paid if p.method == method)
            ],
            "activated": True,
            "additionalData": {},
        }
        if generation == "v1":
            element["paymentMethod"] = _V1_METHOD_IDS.get(element.pop("paymentMethodId"), method)
            element["cryptoCode"] = element.pop("currency")
            element["networkFee"] = element.pop("paymentMethodFee")
        elements.append(element)
    manual = {"Settled": ["Invalid"], "Invalid": ["Settled"]}.get(status, ["Settled", "Invalid"])
    invoice: dict[str, Json] = {
        "id": invoice_id,
        "storeId": store_id,
        "amount": amount,
        "paidAmount": _fmt(_quantize(paid_btc * per_btc, _DIVISIBILITY.get(currency.upper(), 2))),
        "currency": currency,
        "type": "Standard",
        "checkoutLink": f"https://btcpay.example.com/i/{invoice_id}",
        "createdTime": created,
        "expirationTime": created + 15 * 60,
        "monitoringExpiration": created + 24 * 3600,
        "status": status,
        "additionalStatus": additional_status,
        "availableStatusesForManualMarking": manual if status in STATUSES else [],
        "archived": False,
        "metadata": {"orderId": order_id} if order_id is not None else {},
        "checkout": {
            "speedPolicy": "MediumSpeed",
            "paymentMethods": [e.get("paymentMethodId", e.get("paymentMethod")) for e in elements],
            "defaultPaymentMethod": None,
            "lazyPaymentMethods": False,
            "expirationMinutes": 15,
            "monitoringMinutes": 1440,
            "paymentTolerance": 0.0,
            "redirectURL": None,
            "redirectAutomatically": False,
            "defaultLanguage": None,
        },
        "receipt": {"enabled": True, "showQR": None, "showPayments": None},
        "paymentMethods": elements,
    }
    if generation == "v1":
        del invoice["paidAmount"]  # added in 2.1.2
    return invoice


# --- the server ------------------------------------------------------------------------------------


@dataclass
class Fault:
    """How the fake misbehaves for one target, applied in this order.

    ``latency`` seconds before anything; ``drop`` closes the connection without an answer;
    ``answers`` are scripted answers sent as they are, one per request, before anything below;
    ``statuses`` are served one per request (``200`` = answer normally) before normal answers resume,
    with ``retry_after`` as the ``Retry-After`` header; ``garbage`` replaces a 200 body with non-JSON
    and ``wrong_shape`` with that JSON value.
    """

    latency: float = 0.0
    drop: bool = False
    answers: list[RawAnswer] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    garbage: bool = False
    wrong_shape: Json = None


@dataclass(frozen=True)
class Exchange:
    """One request the fake received and what it answered (``status`` ``None``: connection dropped)."""

    method: str
    path: str
    route: str | None
    target: str | None
    query: dict[str, list[str]]
    headers: dict[str, str]  # without Authorization
    at: float  # time.monotonic() on arrival
    status: int | None
    body: Json
    deviations: tuple[str, ...]
    authorization: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Json
    deviations: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)


_Handler = Callable[[web.Request, str | None], _Answer]
"""Answers a request; gets the API key it authenticated with (``None`` on unauthenticated routes)."""
_Permission = tuple[Callable[[Iterable[str], str], bool], str]
"""Whether a key's permissions allow the route on a store, and the permission a 403 names."""
_VIEW_DENIED = "btcpay.store.canviewinvoices"
_HOOKS_DENIED = btcpay_webhooks.PERMISSION
_RAW_BODY = web.RequestKey("raw_body", bytes)


def _problem(status: int, code: str, message: str, **extra: str) -> _Answer:
    return _Answer(status, {"code": code, "message": message, **extra}, ("problem-details-bodies",))


_UNAUTHENTICATED = ("unauthenticated", "Authentication is required for accessing this endpoint")
_NOT_FOUND = ("invoice-not-found", "The invoice was not found")


class FakeBTCPay:
    """The fake server. ``await start()`` binds 127.0.0.1 (port 0 = any) and returns the base URL."""

    def __init__(
        self,
        *,
        store_id: str = STORE_ID,
        api_keys: Mapping[str, Sequence[str]] | None = None,
        accept_bearer: bool = True,
        concurrency: int | None = None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be at least 1 (or None: no cap), not {concurrency}")
        self.store_id = store_id
        self.api_keys: dict[str, list[str]] = {
            key: list(permissions)
            for key, permissions in (
                api_keys or {API_KEY: [f"btcpay.store.canviewinvoices:{store_id}"]}
            ).items()
        }
        self.accept_bearer = accept_bearer
        self.invoices: dict[str, dict[str, Json]] = {}
        #: the list endpoint's index: (how many invoices it was built over, the index); add() drops it
        self._by_creation: tuple[int, btcpay_list.ByCreation] | None = None
        self.faults: dict[str | None, Fault] = {}
        #: webhooks registered through POST /api/v1/stores/{storeId}/webhooks, by id (with their secret)
        self.webhooks = btcpay_webhooks.Webhooks()
        self.log: list[Exchange] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._slots = asyncio.Semaphore(concurrency) if concurrency is not None else None
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- test-facing API ---

    def add(self, *invoices: dict[str, Json]) -> None:
        """Add or replace invoices (from :func:`make_invoice`)."""
        for invoice in invoices:
            self.invoices[invoice["id"]] = invoice
        self._by_creation = None

    def archive(self, invoice_id: str) -> None:
        """Archive an invoice: the list hides it unless ``includeArchived=true``; its own GET still answers."""
        self.invoices[invoice_id]["archived"] = True

    def listed(self) -> list[Exchange]:
        """The list requests received, in order."""
        return [e for e in self.log if e.target == "invoices"]

    def fault(self, target: str | None = None, **knobs: Any) -> Fault:
        """Install a :class:`Fault` for ``target`` (``None``: every request without its own fault)."""
        self.faults[target] = Fault(**knobs)
        return self.faults[target]

    def served(self, target: str | None = None) -> list[int | None]:
        """The statuses answered for ``target``, in order (``None`` for a dropped connection)."""
        return [e.status for e in self.log if target is None or e.target == target]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port); returns and remembers ``base_url``."""
        app = web.Application()
        # (method, path, handler, fault target (None: the invoice id), authenticated, permission check)
        view, hooks = (_can_view_invoices, _VIEW_DENIED), (btcpay_webhooks.can_modify_webhooks, _HOOKS_DENIED)
        routes: list[tuple[str, str, _Handler, str | None, bool, _Permission]] = [
            ("GET", "/api/v1/health", self._health, "health", False, view),
            ("GET", "/api/v1/api-keys/current", self._api_key, "api-keys/current", True, view),
            ("GET", "/api/v1/stores/{storeId}/invoices", self._list_invoices, "invoices", True, view),
            ("GET", "/api/v1/stores/{storeId}/invoices/{invoiceId}", self._get_invoice, None, True, view),
            (
                "GET",
                "/api/v1/stores/{storeId}/invoices/{invoiceId}/payment-methods",
                self._payment_methods,
                None,
                True,
                view,
            ),
            ("POST", "/api/v1/stores/{storeId}/webhooks", self._create_webhook, "webhooks", True, hooks),
        ]
        for method, path, handler, target, authenticated, permission in routes:
            app.router.add_route(
                method, path, self._endpoint(path, handler, target, authenticated, permission)
            )
        app.router.add_post("/_fake/invoices", self._control_invoice)
        app.router.add_post("/_fake/faults", self._control_fault)
        app.router.add_get("/_fake/log", self._control_log)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def close(self) -> None:
        """Stop serving; requests sleeping in injected latency are answered at once."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeBTCPay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- plumbing: faults, auth, log ---

    def _endpoint(
        self,
        route: str,
        handler: _Handler,
        route_target: str | None,
        authenticated: bool,
        permission: _Permission,
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            target = route_target or request.match_info["invoiceId"]
            if request.method == "POST":
                request[_RAW_BODY] = await request.read()
            arrived = time.monotonic()
            fault = self.faults.get(target) or self.faults.get(None) or Fault()
            if fault.latency:
                with contextlib.suppress(TimeoutError):  # cut short when the fake closes
                    await asyncio.wait_for(self._closing.wait(), fault.latency)
            if fault.drop:
                self._record(request, route, target, arrived, None)
                assert request.transport is not None
                request.transport.abort()
                return web.Response()
            if fault.answers:
                raw = fault.answers.pop(0)
                self._record(
                    request, route, target, arrived, _Answer(raw.status, None, ("fault-raw-answer",))
                )
                return await raw.send(request)
            answer = self._injected(fault) or self._answer(request, handler, authenticated, permission)
            if answer.status == 200 and fault.garbage:
                self._record(request, route, target, arrived, _Answer(200, None, ("fault-garbage-body",)))
                return web.Response(
                    text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
                )
            if answer.status == 200 and fault.wrong_shape is not None:
                answer = _Answer(200, fault.wrong_shape, ("fault-wrong-shape",))
            self._record(request, route, target, arrived, answer)
            return web.json_response(answer.body, status=answer.status, headers=dict(answer.headers))

        return self._capped(endpoint)

    def _capped(
        self, endpoint: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``endpoint`` holding one of the ``concurrency`` slots while it runs (a request's ``at`` is
        when it got its slot)."""

        async def capped(request: web.Request) -> web.StreamResponse:
            async with self._slots or contextlib.nullcontext():
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                try:
                    return await endpoint(request)
                finally:
                    self.in_flight -= 1

        return capped

    @staticmethod
    def _injected(fault: Fault) -> _Answer | None:
        if not fault.statuses:
            return None
        status = fault.statuses.pop(0)
        if status == 200:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        body = {"code": "fake-injected", "message": f"injected HTTP {status}"}
        return _Answer(status, body, ("injected-error-status",), headers)

    def _answer(
        self, request: web.Request, handler: _Handler, authenticated: bool, permission: _Permission
    ) -> _Answer:
        if not authenticated:
            return handler(request, None)
        match = _AUTH.fullmatch(request.headers.get("Authorization", ""))
        if match is None or match.group(2) not in self.api_keys:
            return _problem(401, *_UNAUTHENTICATED)
        if match.group(1).lower() == "bearer" and not self.accept_bearer:
            return _problem(401, *_UNAUTHENTICATED)
        key = match.group(2)
        store = request.match_info.get("storeId")
        allowed, needed = permission
        if store is not None and not allowed(self.api_keys[key], store):
            return _problem(
                403,
                "missing-permission",
                f'Insufficient API Permissions. Please use an API key with permission "{needed}".',
                missingPermission=needed,
            )
        return handler(request, key)

    def _record(
        self, request: web.Request, route: str, target: str | None, at: float, answer: _Answer | None
    ) -> None:
        self.log.append(
            Exchange(
                method=request.method,
                path=request.path,
                route=route,
                target=target,
                query={key: request.query.getall(key) for key in request.query},
                headers={k: v for k, v in request.headers.items() if k.lower() != "authorization"},
                at=at,
                status=None if answer is None else answer.status,
                body=None if answer is None else answer.body,
                deviations=() if answer is None else (*_ROUTE_DEVIATIONS.get(route, ()), *answer.deviations),
                authorization=request.headers.get("Authorization"),
            )
        )

    # --- handlers ---

    def _health(self, request: web.Request, key: str | None) -> _Answer:
        return _Answer(200, {"synchronized": True})

    def _api_key(self, request: web.Request, key: str | None) -> _Answer:
        assert key is not None
        body = {"apiKey": key, "label": "reconciler", "permissions": self.api_keys[key]}
        return _Answer(200, body)

    def _lookup(self, request: web.Request) -> dict[str, Json] | _Answer:
        invoice = self.invoices.get(request.match_info["invoiceId"])
        if invoice is None:
            return _problem(404, *_NOT_FOUND)
        if invoice["storeId"] != request.match_info["storeId"]:
            return _problem(403, "missing-permission", "The invoice belongs to another store")
        return invoice

    def _get_invoice(self, request: web.Request, key: str | None) -> _Answer:
        invoice = self._lookup(request)
        if isinstance(invoice, _Answer):
            return invoice
        with_methods = request.query.get("includePaymentMethods", "").lower() == "true"
        body, deviations = _present(invoice, with_methods)
        return _Answer(200, body, (*deviations, "include-payment-methods") if with_methods else deviations)

    def _payment_methods(self, request: web.Request, key: str | None) -> _Answer:
        invoice = self._lookup(request)
        if isinstance(invoice, _Answer):
            return invoice
        accounted_only = request.query.get("onlyAccountedPayments", "true").lower() != "false"
        methods = _methods(invoice, accounted_only)
        v1 = any("cryptoCode" in m for m in methods)
        return _Answer(200, methods, ("v1-payment-method-fields",) if v1 else ())

    def _list_invoices(self, request: web.Request, key: str | None) -> _Answer:
        if self._by_creation is None or self._by_creation[0] != len(self.invoices):
            self._by_creation = (len(self.invoices), btcpay_list.ByCreation(self.invoices.values()))
        status, body, deviations = btcpay_list.list_invoices(
            self._by_creation[1], request.match_info["storeId"], request.query, _present
        )
        return _Answer(status, body, deviations)

    def _create_webhook(self, request: web.Request, key: str | None) -> _Answer:
        if request.match_info["storeId"] != self.store_id:
            return _problem(404, "store-not-found", "The store was not found")
        schema = openapi_document(fixtures_dir()).request_schema("POST", "/api/v1/stores/{storeId}/webhooks")
        status, body, deviations = self.webhooks.create(
            request[_RAW_BODY], lambda value: schema_errors(schema, value)
        )
        return _Answer(status, body, deviations)

    # --- control plane (not logged) ---

    async def _control_invoice(self, request: web.Request) -> web.Response:
        kwargs = await request.json()
        self.add(make_invoice(kwargs.pop("id"), **kwargs))
        return web.json_response({"ok": True})

    async def _control_fault(self, request: web.Request) -> web.Response:
        knobs = await request.json()
        target = knobs.pop("target", None)
        self.fault(None if target == "*" else target, **knobs)
        return web.json_response({"ok": True})

    async def _control_log(self, request: web.Request) -> web.Response:
        entries = [{k: v for k, v in asdict(e).items() if k != "authorization"} for e in self.log]
        return web.json_response(entries)


def _can_view_invoices(permissions: Iterable[str], store_id: str) -> bool:
    for permission in permissions:
        policy, _, scope = permission.partition(":")
        if policy.lower() == "unrestricted" or (policy.lower() in _VIEW_INVOICES and scope in ("", store_id)):
            return True
    return False


def _methods(invoice: Mapping[str, Json], accounted_only: bool) -> list[dict[str, Json]]:
    return [
        {
            **method,
            "payments": [p for p in method["payments"] if not accounted_only or p["status"] != "Invalid"],
        }
        for method in invoice["paymentMethods"]
    ]


def _present(invoice: Mapping[str, Json], with_methods: bool) -> tuple[dict[str, Json], tuple[str, ...]]:
    """The body BTCPay would send for ``invoice`` and the deviations it uses."""
    body = {k: v for k, v in invoice.items() if k != "paymentMethods"}
    deviations = []
    if with_methods:
        body["paymentMethods"] = _methods(invoice, accounted_only=True)
        if any("cryptoCode" in m for m in body["paymentMethods"]):
            deviations.append("v1-payment-method-fields")
    if invoice["status"] in LEGACY_STATUSES:
        deviations.append("legacy-status")
    if (
        invoice["status"] not in (*STATUSES, *LEGACY_STATUSES)
        or invoice["additionalStatus"] not in ADDITIONAL_STATUSES
    ):
        deviations.append("future-status")
    return body, tuple(deviations)


def validate_exchanges(document: OpenAPIDocument, exchanges: Iterable[Exchange]) -> int:
    """Validate every answered exchange against ``document`` with the deviations it names; the count."""
    checked = 0
    for exchange in exchanges:
        if exchange.status is None or exchange.route is None:
            continue
        document.validate_response(
            exchange.method,
            exchange.route,
            exchange.status,
            exchange.body,
            deviations=[DEVIATIONS[name] for name in exchange.deviations],
        )
        checked += 1
    return checked


# --- standalone ------------------------------------------------------------------------------------


def fake_from_state(state: Mapping[str, Any]) -> FakeBTCPay:
    """A fake populated from a state mapping (the ``--state`` file's format, see the module docstring)."""
    store_id = state.get("store_id", STORE_ID)
    fake = FakeBTCPay(store_id=store_id, api_keys=state.get("api_keys"))
    for kwargs in state.get("invoices", []):
        kwargs = dict(kwargs)
        fake.add(make_invoice(kwargs.pop("id"), **{"store_id": store_id, **kwargs}))
    for target, knobs in state.get("faults", {}).items():
        fake.fault(None if target == "*" else target, **knobs)
    return fake


async def serve(state: Mapping[str, Any], host: str = "127.0.0.1", port: int = 0) -> None:
    """Run a fake from ``state`` until SIGINT/SIGTERM, printing ``{"port", "base_url"}`` once bound."""
    fake = fake_from_state(state)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    base_url = await fake.start(host, port)
    print(json.dumps({"port": int(base_url.rsplit(":", 1)[1]), "base_url": base_url}), flush=True)
    try:
        await stop.wait()
    finally:
        await fake.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.btcpay", description=__doc__.split("\n")[0])
    parser.add_argument("--state", type=Path, help="JSON state file (store_id, api_keys, invoices, faults)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    state = json.loads(args.state.read_text(encoding="utf-8")) if args.state else {}
    asyncio.run(serve(state, args.host, args.port))


if __name__ == "__main__":
    main()
