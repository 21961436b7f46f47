"""The webhook listener (docs/webhooks.md): `POST /webhooks/{provider_id}` and `POST
/webhooks/{provider_id}/{token}` on its own port, started by `reconciler run` when `[webhooks]` is configured.

Each delivery is read with a bound (413 past `MAX_WEBHOOK_BYTES`, never buffered further), authenticated and
parsed by its provider's driver (`driver_api.SupportsWebhooks`), then recorded with its nudge in one store
transaction before any 2xx; the nudged invoices go to the bounded intake (intake.py). Nothing from the body
is stored as an invoice's state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from aiohttp import web
from loguru import logger

from reconciler import driver_api, errors, ids
from reconciler.runner import Provider
from reconciler.store import base
from reconciler.timeutil import Clock
from reconciler.webhooks.intake import Intake, Nudge, Unobserved, WebhookObserver

#: How long a delivery's row is kept (docs/webhooks.md §2); the service prunes older ones PRUNE_FIRST seconds
#: after it starts, then every PRUNE_EVERY.
RETENTION = timedelta(days=30)
PRUNE_EVERY = 3600.0
PRUNE_FIRST = 60.0
#: The provider label of a delivery for an id that is not configured (a label per unknown id would let
#: anyone grow the metrics without bound).
UNKNOWN_PROVIDER = "-"


def _answer(status: int, outcome: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = json.dumps({"outcome": outcome})
    return web.Response(text=body, status=status, content_type="application/json", headers=headers)


class WebhookServer:
    """The listener and its intake. `start()` returns the bound port (`listen` port 0 picks a free one)."""

    def __init__(
        self,
        store: base.Store,
        providers: Mapping[str, Provider],
        intake: Intake,
        *,
        host: str,
        port: int,
        retry_after: timedelta,
        default_provider: str | None,
        clock: Clock,
        observer: WebhookObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.providers = dict(providers)
        self.intake = intake
        self.host = host
        self.port = port
        self.retry_after = max(1, int(retry_after.total_seconds()))
        self.default_provider = default_provider
        self.clock = clock
        self.observer: WebhookObserver = observer or Unobserved()
        self.monotonic = monotonic
        self.app = web.Application(client_max_size=driver_api.MAX_WEBHOOK_BYTES)
        self.app.router.add_post("/webhooks/{provider_id}", self._deliver)
        self.app.router.add_post("/webhooks/{provider_id}/{tail}", self._deliver)
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def prune(self) -> int:
        """Forget the deliveries older than RETENTION; how many."""
        return await self.store.prune_deliveries(received_before=self.clock() - RETENTION)

    # -- one delivery ---------------------------------------------------------------------------------------
    async def _deliver(self, request: web.Request) -> web.Response:
        arrived = self.monotonic()
        provider_id = request.match_info["provider_id"]
        provider = self.providers.get(provider_id)
        driver = provider.driver if provider is not None else None
        if not isinstance(driver, driver_api.SupportsWebhooks) or not driver.webhook_enabled():
            return self._count(UNKNOWN_PROVIDER if provider is None else provider_id, 404, "not_found")
        body = await _read_bounded(request, driver_api.MAX_WEBHOOK_BYTES)
        if body is None:
            return self._count(provider_id, 413, "too_large")
        delivery = driver_api.WebhookDelivery(
            body, request.headers, request.match_info.get("tail"), ids.new_id()
        )
        try:
            event = driver_api.check_event(driver.parse_webhook(delivery))
        except errors.WebhookRefused as exc:
            outcome = {401: "unauthorized", 404: "not_found"}.get(exc.http_status, "malformed")
            return self._count(provider_id, exc.http_status, outcome)
        except Exception:  # a third-party parser's bug: refused, never a 5xx the provider would retry forever
            logger.exception("driver of provider {} failed to parse a webhook delivery", provider_id)
            return self._count(provider_id, 400, "malformed")
        try:
            refs = await self._invoice_ids(provider_id, driver, event)
        except errors.ProviderUnavailable:
            return self._count(provider_id, 503, "unavailable", retry_after=self.retry_after)
        record = base.DeliveryRecord(
            provider_id=provider_id,
            idempotency_key=event.idempotency_key,
            delivery_id=event.delivery_id,
            event_type=event.event_type,
            provider_invoice_ids=refs,
            received_at=self.clock(),
            needs_look=event.needs_look,
        )
        try:
            receipt = await self.store.record_delivery(record, default_provider=self.default_provider)
        except errors.StoreUnavailable as exc:
            logger.warning("webhook from {} not recorded: database unavailable: {}", provider_id, exc.message)
            return self._count(provider_id, 503, "unavailable", retry_after=self.retry_after)
        for invoice_id in receipt.nudged:
            if not self.intake.offer(Nudge(provider_id, event.idempotency_key, invoice_id, arrived)):
                # durable already: the next pass takes it; the provider retries and finds a duplicate
                return self._count(provider_id, 503, "intake_full", retry_after=self.retry_after)
        return self._count(provider_id, 200, receipt.outcome)

    async def _invoice_ids(
        self, provider_id: str, driver: driver_api.SupportsWebhooks, event: driver_api.WebhookEvent
    ) -> tuple[str, ...]:
        """The event's invoice reference, and its aliases when no row of the provider holds it."""
        ref = event.invoice_ref
        if ref is None or not event.needs_look:
            return (ref,) if ref is not None else ()
        rows = await self._rows_of(provider_id, ref)
        if rows:
            return (ref,)
        try:
            aliases = await driver.webhook_aliases(ref)
        except errors.ProviderUnavailable:
            raise
        except errors.DriverError:
            return (ref,)
        return (ref, *(a for a in aliases if driver_api.webhook_text_problem(a) is None))

    async def _rows_of(self, provider_id: str, ref: str) -> bool:
        try:
            found = await self.store.find_invoices(ref, None)
        except errors.StoreUnavailable:
            return True  # recording will say so
        return any((row.payment_provider_id or self.default_provider) == provider_id for row in found)

    def _count(
        self, provider_id: str, status: int, outcome: str, *, retry_after: int | None = None
    ) -> web.Response:
        self.observer.webhook(provider_id, outcome)
        return _answer(status, outcome, retry_after=retry_after)


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to exceed `limit` bytes (never more than that is kept)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
