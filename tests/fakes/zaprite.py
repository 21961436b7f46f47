"""A fake Zaprite API: real sockets and JSON, fault knobs, and a log of every exchange.

Serves what the Zaprite driver reads (docs/providers.md §2):

- ``GET /v1/orders/{id}``: one order by Zaprite id or ``externalUniqId``;
- ``GET /v1/orders?page=&limit=``: ``{"items": [...], "meta": {"pagesCount": n}}``;
- ``GET /v1/contacts/{id}``: a contact with ``paymentProfiles[]``, which can be held back for the
  first N requests or for some seconds (Zaprite saves a profile shortly after the payment);
- ``Authorization: Bearer <key>`` on every path (401 otherwise), errors in Zaprite's envelope.

Faults are queued with :meth:`FakeZaprite.inject` and consumed one per request: a status (``503``,
``429`` with ``Retry-After``), a garbage or wrong-shaped body, a dropped connection, a delay, or a
whole scripted answer (:class:`~tests.fakes.raw.RawAnswer`: any status, headers and bytes, gzip, a
slow trickle, an endless or oversized body). ``latency``
delays every answer. Every exchange lands in :attr:`FakeZaprite.log` with the :class:`Deviation` s its
body relies on, so a test can validate everything the fake served against the OpenAPI fixture
(:func:`check_conformance`).

The fixture is an old snapshot with singular ``/v1/order/{id}`` paths: order bodies are validated
against its ``getOrderById`` operation (:data:`ALIASES`). What it does not describe is a named
deviation: the list endpoint, contacts, and statuses outside its enum.

Standalone, for subprocess tests: ``python -m tests.fakes.zaprite --state state.json`` prints the port
on stdout and serves until SIGTERM/SIGINT; the state file (see :meth:`FakeZaprite.load_state`) is read
again whenever it changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import math
import signal
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.openapi import Deviation, OpenAPIDocument
from tests.fakes.raw import RawAnswer

JsonObject = dict[str, Any]
Answer = tuple[int, Any, tuple[Deviation, ...]]

DEFAULT_API_KEY = "zk_test_5ecret-key"
FIXTURE = ("zaprite-openapi", "zaprite_api.json")
ALIASES: Mapping[str, str] = {"/v1/orders/{id}": "/v1/order/{id}"}
FIXTURE_STATUSES = frozenset({"PENDING", "PROCESSING", "PAID", "OVERPAID", "UNDERPAID", "COMPLETE"})

_ORDER_ROUTE = "/v1/orders/{id}"
_LIST_ROUTE = "/v1/orders"
_CONTACT_ROUTE = "/v1/contacts/{id}"
_ORDER_SCHEMA_PATH = ("paths", "/v1/order/{id}", "get", "responses", "200", "content", "application/json")
_ORDER_SCHEMA_REF = "#/paths/~1v1~1order~1{id}/get/responses/200/content/application~1json/schema"


def _order_schema(raw: JsonObject) -> JsonObject:
    node: Any = raw
    for key in _ORDER_SCHEMA_PATH:
        node = node[key]
    schema: JsonObject = node["schema"]
    return schema


def _operation(schema: JsonObject) -> JsonObject:
    return {
        "get": {
            "responses": {
                "200": {"description": "ok", "content": {"application/json": {"schema": schema}}},
                "default": {"$ref": "#/components/responses/error"},
            }
        }
    }


def _allow_status(status: str | None) -> Callable[[JsonObject], None]:
    def patch(raw: JsonObject) -> None:
        prop = _order_schema(raw)["properties"]["status"]
        if status is None:
            prop.pop("enum", None)
        elif "enum" in prop:
            prop["enum"] = [*prop["enum"], status]

    return patch


def _add_order_list(raw: JsonObject) -> None:
    page = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": _ORDER_SCHEMA_REF}},
            "meta": {
                "type": "object",
                "properties": {"pagesCount": {"type": "integer", "minimum": 0}},
                "required": ["pagesCount"],
            },
        },
        "required": ["items", "meta"],
        "additionalProperties": False,
    }
    raw["paths"][_LIST_ROUTE] = _operation(page)


def _add_contacts(raw: JsonObject) -> None:
    nullable_string = {"type": "string", "nullable": True}
    profile = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "method": nullable_string,
            "expiresAt": nullable_string,
            "sourceOrder": {
                "type": "object",
                "nullable": True,
                "properties": {"id": {"type": "string"}, "externalUniqId": nullable_string},
                "required": ["id", "externalUniqId"],
                "additionalProperties": False,
            },
        },
        "required": ["id", "method", "expiresAt", "sourceOrder"],
        "additionalProperties": False,
    }
    contact = copy.deepcopy(_order_schema(raw)["properties"]["contact"])
    contact.pop("nullable")
    contact["properties"]["paymentProfiles"] = {"type": "array", "items": profile}
    contact["required"] = [*contact["required"], "paymentProfiles"]
    raw["paths"][_CONTACT_ROUTE] = _operation(contact)


STATUS_DEVIATIONS: Mapping[str, Deviation] = {
    status: Deviation(
        f"zaprite.status.{status}",
        f"{status} is not in the fixture's enum; docs/statuses.md §4 maps it (integrators expect it)",
        _allow_status(status),
    )
    for status in ("EXPIRED", "ABANDONED", "INVALID", "CANCELLED", "CANCELED")
}
UNLISTED_STATUS = Deviation(
    "zaprite.status.unlisted",
    "a status no source lists, or a listed one in another case: the driver must map it to UNKNOWN",
    _allow_status(None),
)
ORDER_LIST = Deviation(
    "zaprite.orders.list",
    "GET /v1/orders is only in the current API (docs/providers.md §2.8, third-party shape)",
    _add_order_list,
)
CONTACTS = Deviation(
    "zaprite.contacts",
    "GET /v1/contacts/{id} with paymentProfiles[] is only in the current API (docs/providers.md §2.6)",
    _add_contacts,
)
GARBAGE = Deviation("fault.garbage", "a deliberate fault: a 200 whose body is not JSON", None)
WRONG_SHAPE = Deviation(
    "fault.wrong_shape", "a deliberate fault: JSON that is not what the path serves", None
)
RAW = Deviation(
    "fault.raw", "a deliberate fault: an answer sent byte for byte (any status, headers, body)", None
)
_ROUTE_DEVIATIONS: Mapping[str, tuple[Deviation, ...]] = {
    _LIST_ROUTE: (ORDER_LIST,),
    _CONTACT_ROUTE: (CONTACTS,),
}


def status_deviations(status: str) -> tuple[Deviation, ...]:
    """The deviations an order with this status needs (none for the fixture's own six)."""
    if status in FIXTURE_STATUSES:
        return ()
    return (STATUS_DEVIATIONS.get(status, UNLISTED_STATUS),)


# Builders of fixture-valid bodies: every required field present, nullable ones null.


def make_discount(amount_off: int, *, payment_type: str = "BITCOIN", rate_bips_off: int = 0) -> JsonObject:
    """One ``discountsInOrderCurrency`` entry."""
    return {"amountOff": amount_off, "rateBipsOff": rate_bips_off, "paymentType": payment_type}


def make_transaction(
    amount_in_order_currency: int | None,
    *,
    method: str = "BITCOIN",
    status: str = "CONFIRMED",
    currency: str = "BTC",
    order_currency: str = "BTC",
    amount: int | None = None,
    discounts: Sequence[JsonObject] = (),
) -> JsonObject:
    """One payment towards an order; ``amount`` defaults to the amount in order currency."""
    paid = amount if amount is not None else (amount_in_order_currency or 0)
    return {
        "id": f"tx_{uuid.uuid4().hex[:12]}",
        "date": "2026-01-02T03:04:05.000Z",
        "amount": paid,
        "currency": currency,
        "amountInOrderCurrency": amount_in_order_currency,
        "discountsInOrderCurrency": list(discounts),
        "orderCurrency": order_currency,
        "accountingCurrency": None,
        "amountInAccountingCurrency": None,
        "method": method,
        "externalRef": None,
        "status": status,
    }


def make_contact_ref(contact_id: str, *, legal_name: str = "Ada Buyer") -> JsonObject:
    """The ``contact`` object embedded in an order."""
    return {
        "id": contact_id,
        "legalName": legal_name,
        "contactName": None,
        "displayName": None,
        "email": None,
        "taxId": None,
    }


def make_order(
    *,
    id: str | None = None,
    status: str = "PENDING",
    currency: str = "BTC",
    total_amount: int = 50_000,
    external_uniq_id: str | None = None,
    transactions: Sequence[JsonObject] = (),
    contact: JsonObject | None = None,
    paid_at: str | None = None,
) -> JsonObject:
    """An order as ``GET /v1/orders/{id}`` returns it."""
    order_id = id or f"od_{uuid.uuid4().hex[:12]}"
    return {
        "id": order_id,
        "orgId": "org_fake",
        "orderType": "other",
        "totalAmount": total_amount,
        "currency": currency,
        "externalUniqId": external_uniq_id,
        "status": status,
        "paidAt": paid_at,
        "redirectUrl": None,
        "label": None,
        "checkoutUrl": f"https://pay.zaprite.com/order/{order_id}",
        "customCheckoutId": None,
        "contact": contact,
        "invoice": None,
        "paymentLink": None,
        "transactions": list(transactions),
        "customerData": None,
        "metadata": {},
    }


def make_profile(
    id: str,
    *,
    source_external_uniq_id: str | None,
    method: str | None = "CARD",
    expires_at: str | None = "2028-01-31T00:00:00.000Z",
    source_order_id: str = "od_source",
) -> JsonObject:
    """A saved payment profile, as docs/providers.md §2.6 describes it."""
    return {
        "id": id,
        "method": method,
        "expiresAt": expires_at,
        "sourceOrder": {"id": source_order_id, "externalUniqId": source_external_uniq_id},
    }


def make_contact(contact_id: str, *, profiles: Sequence[JsonObject] = ()) -> JsonObject:
    """A contact as ``GET /v1/contacts/{id}`` returns it."""
    return {**make_contact_ref(contact_id), "paymentProfiles": list(profiles)}


@dataclass(frozen=True)
class Fault:
    """What the next request gets instead of (or before) its normal answer.

    ``status``: answer this error status with Zaprite's envelope (``retry_after`` sets the header);
    ``body``: answer 200 with this body (``bytes`` are sent raw); ``drop``: close the connection;
    ``delay``: wait this long first (then answer normally unless another field says otherwise);
    ``raw``: send this scripted answer as it is, whatever the request (no key check).
    """

    status: int | None = None
    retry_after: str | None = None
    body: bytes | JsonObject | list[Any] | None = None
    drop: bool = False
    delay: float = 0.0
    raw: RawAnswer | None = None


@dataclass(frozen=True)
class Exchange:
    """One request and what the fake answered (``status`` is None when the connection was dropped)."""

    method: str
    path: str
    query: Mapping[str, str]
    authorization: str | None
    route: str | None
    status: int | None
    body: Any
    deviations: tuple[Deviation, ...]

    def as_json(self) -> JsonObject:
        """The exchange in the standalone server's JSON-lines request log."""
        return {
            "method": self.method,
            "path": self.path,
            "query": dict(self.query),
            "authorization": self.authorization,
            "route": self.route,
            "status": self.status,
            "deviations": [d.name for d in self.deviations],
        }


@dataclass
class _Contact:
    body: JsonObject
    profiles_after_requests: int
    profiles_after_seconds: float
    added_at: float = field(default_factory=time.monotonic)
    requests: int = 0

    def serve(self) -> JsonObject:
        self.requests += 1
        hidden = self.requests <= self.profiles_after_requests or (
            time.monotonic() - self.added_at < self.profiles_after_seconds
        )
        return {**self.body, "paymentProfiles": []} if hidden else self.body


class FakeZaprite:
    """An in-process fake of the Zaprite API; start it with ``async with`` or :meth:`start`."""

    def __init__(self, *, api_key: str = DEFAULT_API_KEY, latency: float = 0.0) -> None:
        self.api_key = api_key
        self.latency = latency
        self.log: list[Exchange] = []
        #: the raw path of every request that arrived, routed or not (the log holds routed ones only)
        self.paths: list[str] = []
        self._orders: list[JsonObject] = []
        self._contacts: dict[str, _Contact] = {}
        self._faults: deque[Fault] = deque()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._state_file: Path | None = None
        self._state_mtime: int | None = None
        self._request_log: Path | None = None
        self.url = ""

    # State

    def add_order(self, order: JsonObject) -> JsonObject:
        """Serve this order (by ``id`` or ``externalUniqId``); returns it, and changes to it are served."""
        self._orders.append(order)
        return order

    def add_contact(
        self,
        contact: JsonObject,
        *,
        profiles_after_requests: int = 0,
        profiles_after_seconds: float = 0.0,
    ) -> None:
        """Serve this contact; its profiles stay hidden for the first N requests / some seconds."""
        self._contacts[contact["id"]] = _Contact(contact, profiles_after_requests, profiles_after_seconds)

    def inject(self, *faults: Fault | int) -> None:
        """Queue faults for the next requests, one each; an int is a status (below 400: answer normally)."""
        for fault in faults:
            if isinstance(fault, int):
                fault = Fault(status=fault) if fault >= 400 else Fault()
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Forget the faults still queued."""
        self._faults.clear()

    def requests_to(self, route: str) -> list[Exchange]:
        """The logged exchanges whose route template is ``route`` (e.g. ``/v1/contacts/{id}``)."""
        return [exchange for exchange in self.log if exchange.route == route]

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace orders and contacts from a state document::

        {"api_key": "...", "latency": 0.0, "orders": [order, ...],
         "contacts": [{"contact": contact, "profiles_after_requests": 0, "profiles_after_seconds": 0}],
         "faults": [{"status": 503, "retry_after": "2"}, {"drop": true}, ...]}
        """
        self.api_key = state.get("api_key", self.api_key)
        self.latency = float(state.get("latency", self.latency))
        self._orders = list(state.get("orders", []))
        self._contacts = {}
        for entry in state.get("contacts", []):
            self.add_contact(
                entry["contact"],
                profiles_after_requests=int(entry.get("profiles_after_requests", 0)),
                profiles_after_seconds=float(entry.get("profiles_after_seconds", 0.0)),
            )
        self._faults = deque(Fault(**fault) for fault in state.get("faults", []))

    # Server

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL (``http://host:port``)."""
        app = web.Application(middlewares=[self._arrived])
        app.router.add_get(_LIST_ROUTE, self._list_orders)
        app.router.add_get(_ORDER_ROUTE, self._get_order)
        app.router.add_get(_CONTACT_ROUTE, self._get_contact)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    async def close(self) -> None:
        """Stop listening; requests still waiting on a delay are answered at once."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeZaprite:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Handlers

    @web.middleware
    async def _arrived(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.paths.append(request.raw_path)
        return await handler(request)

    async def _list_orders(self, request: web.Request) -> web.StreamResponse:
        async def answer() -> Answer:
            try:
                page = int(request.query.get("page", "1"))
                limit = int(request.query.get("limit", "20"))
            except ValueError:
                page = limit = 0
            if page < 1 or limit < 1:
                return _error(400, "BAD_REQUEST", "page and limit must be positive integers")
            items = self._orders[(page - 1) * limit : page * limit]
            body = {"items": items, "meta": {"pagesCount": math.ceil(len(self._orders) / limit)}}
            deviations = {d.name: d for item in items for d in status_deviations(item["status"])}
            return 200, body, tuple(deviations.values())

        return await self._handle(request, _LIST_ROUTE, answer)

    async def _get_order(self, request: web.Request) -> web.StreamResponse:
        async def answer() -> Answer:
            order = self._find_order(request.match_info["id"])
            if order is None:
                return _error(404, "NOT_FOUND", "Order not found")
            return 200, order, status_deviations(order["status"])

        return await self._handle(request, _ORDER_ROUTE, answer)

    async def _get_contact(self, request: web.Request) -> web.StreamResponse:
        async def answer() -> Answer:
            contact = self._contacts.get(request.match_info["id"])
            if contact is None:
                return _error(404, "NOT_FOUND", "Contact not found")
            return 200, contact.serve(), ()

        return await self._handle(request, _CONTACT_ROUTE, answer)

    async def _handle(
        self, request: web.Request, route: str, answer: Callable[[], Awaitable[Answer]]
    ) -> web.StreamResponse:
        self._reload_state()
        fault = self._faults.popleft() if self._faults else Fault()
        delay = self.latency + fault.delay
        if delay > 0:
            # Waits on the closing event so that close() never hangs on a "slow" request.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)
        authorization = request.headers.get("Authorization")
        headers: dict[str, str] = {}
        if fault.drop:
            assert request.transport is not None
            request.transport.close()
            self._record(request, route, authorization, None, None, ())
            return web.Response()
        if fault.raw is not None:
            self._record(request, route, authorization, fault.raw.status, None, (RAW,))
            return await fault.raw.send(request)
        if authorization != f"Bearer {self.api_key}":
            status, body, deviations = _error(401, "UNAUTHORIZED", "Invalid API key")
        elif fault.status is not None:
            status, body, deviations = _error(fault.status, "FAULT", f"injected HTTP {fault.status}")
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
        elif isinstance(fault.body, bytes):
            status, body, deviations = 200, fault.body, (GARBAGE,)
        elif fault.body is not None:
            status, body, deviations = 200, fault.body, (WRONG_SHAPE,)
        else:
            status, body, deviations = await answer()
        deviations = (*_ROUTE_DEVIATIONS.get(route, ()), *deviations)
        self._record(request, route, authorization, status, body, deviations)
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, headers=headers, content_type="application/json")
        return web.json_response(body, status=status, headers=headers)

    # Helpers

    def _find_order(self, key: str) -> JsonObject | None:
        by_id = next((order for order in self._orders if order["id"] == key), None)
        if by_id is not None:
            return by_id
        return next((order for order in self._orders if order.get("externalUniqId") == key), None)

    def _record(
        self,
        request: web.Request,
        route: str,
        authorization: str | None,
        status: int | None,
        body: Any,
        deviations: tuple[Deviation, ...],
    ) -> None:
        exchange = Exchange(
            method=request.method,
            path=request.raw_path.partition("?")[0],
            query=dict(request.query),
            authorization=authorization,
            route=route,
            status=status,
            body=copy.deepcopy(body),
            deviations=deviations,
        )
        self.log.append(exchange)
        if self._request_log is not None:
            with self._request_log.open("a", encoding="utf-8") as out:
                out.write(json.dumps(exchange.as_json()) + "\n")

    def _reload_state(self) -> None:
        if self._state_file is None:
            return
        mtime = self._state_file.stat().st_mtime_ns
        if mtime != self._state_mtime:
            self._state_mtime = mtime
            self.load_state(json.loads(self._state_file.read_text(encoding="utf-8")))

    def watch_state(self, state_file: Path, *, request_log: Path | None = None) -> None:
        """Serve the state in ``state_file``, re-read whenever it changes; log requests as JSON lines."""
        self._state_file = state_file
        self._request_log = request_log
        self._reload_state()


def _error(status: int, code: str, message: str) -> Answer:
    return status, {"code": code, "message": message}, ()


def check_conformance(exchanges: Iterable[Exchange], document: OpenAPIDocument) -> int:
    """Validate every answered exchange against the fixture with its deviations; returns how many."""
    checked = 0
    for exchange in exchanges:
        if exchange.status is None or exchange.route is None:
            continue
        document.validate_response(
            exchange.method, exchange.route, exchange.status, exchange.body, deviations=exchange.deviations
        )
        checked += 1
    return checked


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.fakes.zaprite --state FILE [--port N] [--request-log FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.zaprite", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--state", type=Path, required=True, help="JSON state file (re-read when it changes)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--request-log", type=Path, help="append every exchange here as a JSON line")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.state, args.host, args.port, args.request_log))


async def _serve(state: Path, host: str, port: int, request_log: Path | None) -> None:
    fake = FakeZaprite()
    fake.watch_state(state, request_log=request_log)
    url = await fake.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(url.rsplit(":", 1)[1], flush=True)
    try:
        await stop.wait()
    finally:
        await fake.close()


if __name__ == "__main__":
    main()
