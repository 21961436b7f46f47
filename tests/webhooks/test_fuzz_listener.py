"""Fuzz the webhook listener over a real socket (issue 14): random paths, headers and bodies, and validly signed
(or tokened) hostile JSON for BTCPay and Zaprite, thousands of deliveries to one running listener.

Every answer is one of docs/webhooks.md §3's statuses (never a 500), the listener keeps answering, a refusal
writes nothing, and the database changes only by `webhook_deliveries` rows and the `next_check_at` of the
invoices nudged: nothing in a body creates or changes anything else. The intake's workers are stopped (their
lease, fetch and settle are the pass's, tested elsewhere); the queue is emptied after each delivery. The answer
counts are printed (and recorded as the `fuzz_outcomes` property) so they can be quoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import driver_api
from reconciler.webhooks import WebhookService
from tests.drivers import fuzz_answers as fz
from tests.fakes import btcpay, zaprite
from tests.store.backends import Backend, sqlite_backend
from tests.webhooks import two_providers
from tests.webhooks.support import SECRET, TOKEN, btcpay_body, signature, zaprite_body

EXAMPLES = 4_000
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
ANSWERS = frozenset({200, 400, 401, 404, 413, 503})
#: What the database holds besides deliveries; compared whole at the end, `next_check_at` aside.
TABLES = (
    "invoices",
    "licenses",
    "audit_log",
    "review_items",
    "post_settle_tasks",
    "subscriptions",
    "products",
)
BTCPAY_PATH = f"/webhooks/{two_providers.BTCPAY}"
ZAPRITE_PATH = f"/webhooks/{two_providers.ZAPRITE}/{TOKEN}"
FRESH = "\x00fresh"  # a template's delivery id, replaced by a new one in each body that still has it

# --- bodies ---------------------------------------------------------------------------------------------------

_EVENTS = [
    "InvoiceCreated",
    "InvoiceReceivedPayment",
    "InvoiceProcessing",
    "InvoicePaymentSettled",
    "InvoiceSettled",
    "InvoiceExpired",
    "InvoiceInvalid",
    "InvoiceExpiredPaidPartial",
    "InvoicePaidAfterExpiration",
    "PayoutCreated",
    "invoicesettled",
    "Invoice",
]
_REFS = ["inv1", "inv_exp", "od_1", "nobody", "INV1", "", ".", "..", "a/b", "x" * 201, "\u00fcn\u00ef"]
_BTCPAY = json.loads(btcpay_body("inv1", delivery_id=FRESH))
BTCPAY_BODIES = fz.json_bodies(
    fz.mutated(
        _BTCPAY,
        [
            ("deliveryId",),
            ("originalDeliveryId",),
            ("type",),
            ("invoiceId",),
            ("storeId",),
            ("metadata",),
            ("isRedelivery",),
            ("timestamp",),
            (),
        ],
        {
            "type": _EVENTS,
            "invoiceId": _REFS,
            "storeId": [btcpay.STORE_ID, "another-store", ""],
            "originalDeliveryId": ["d-original", FRESH],
            "deliveryId": [FRESH, "d-same"],
        },
    ).map(lambda body: _fresh(body))
)
_ZAPRITE = json.loads(zaprite_body("od_1"))
ZAPRITE_BODIES = fz.json_bodies(
    fz.mutated(
        _ZAPRITE,
        [("eventType",), ("orderId",), ("orgId",), ()],
        {"eventType": ["order.change", "invoice.sent", "ORDER.CHANGE"], "orderId": [*_REFS, "od_2"]},
    )
)


def _fresh(body: Any) -> Any:
    """`body` with each FRESH id replaced by a new one (else every delivery after the first is a duplicate)."""
    if not isinstance(body, dict):
        return body
    new = uuid.uuid4().hex
    return {k: (new if v == FRESH else v) for k, v in body.items()}


# --- deliveries -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    oversize: bool = False  # send a body just over the bound instead (not drawn: no use in a failure report)

    @property
    def payload(self) -> bytes:
        return _BIG if self.oversize else self.body


_SIGNATURES: list[Callable[[bytes], str | None]] = [
    lambda b: signature(b),
    lambda b: signature(b).upper(),
    lambda b: " " + signature(b) + " ",
    lambda b: signature(b, "another-secret"),
    lambda b: signature(b + b" "),
    lambda b: None,
    lambda b: "sha256=",
    lambda b: signature(b).removeprefix("sha256="),
    lambda b: "sha1=" + signature(b)[7:],
]
_ODD_PATHS = [
    "/webhooks/",
    "/webhooks/nobody",
    f"/webhooks/{two_providers.BTCPAY}/x",
    f"/webhooks/{two_providers.BTCPAY}/{TOKEN}",
    f"/webhooks/{two_providers.ZAPRITE}",
    f"/webhooks/{two_providers.ZAPRITE}/wrong",
    f"/webhooks/{two_providers.ZAPRITE}/{TOKEN}/more",
    f"/webhooks/{two_providers.ZAPRITE}/{TOKEN}%00",
    f"/webhooks/{two_providers.ZAPRITE}/%ff%fe",
    "/webhooks/%ff/%ff",
    "/webhooks/..%2Fapi",
    "/",
    "/metrics",
]
_TWENTY = st.integers(min_value=0, max_value=19)
_SIGNATURE = st.sampled_from(_SIGNATURES)
_ODD_PATH = st.sampled_from(_ODD_PATHS)
_PATH_TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(fz.ODD_CHARACTERS), max_size=40)
_HEADER_TEXT = fz.headers()
_CONTENT_TYPE = st.sampled_from([*fz.CONTENT_TYPES, "application/json; charset=latin-1"])
_BIG = b'{"a": "' + b"x" * driver_api.MAX_WEBHOOK_BYTES + b'"}'


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    kind = draw(_TWENTY)
    headers = {k: v for k, v in draw(_HEADER_TEXT).items() if k != "Content-Encoding"}
    if draw(_TWENTY) < 10:
        headers["Content-Type"] = draw(_CONTENT_TYPE)
    if kind <= 9:  # BTCPay, mostly validly signed
        body = draw(BTCPAY_BODIES)
        sig = signature(body) if draw(_TWENTY) < 15 else draw(_SIGNATURE)(body)
        if sig is not None:
            headers["BTCPay-Sig"] = sig
        return Delivery(BTCPAY_PATH, headers, body)
    if kind <= 16:  # Zaprite, mostly with the token
        body = draw(ZAPRITE_BODIES)
        path = ZAPRITE_PATH if draw(_TWENTY) < 17 else draw(_ODD_PATH)
        return Delivery(path, headers, body)
    if kind == 17:  # anywhere, anything
        segment = quote(draw(_PATH_TEXT).encode("utf-8", "surrogatepass"), safe="")
        body = draw(BTCPAY_BODIES if draw(_TWENTY) < 10 else ZAPRITE_BODIES)
        return Delivery(f"/webhooks/{segment}" if draw(_TWENTY) < 15 else f"/{segment}", headers, body)
    if kind == 18:
        body = draw(BTCPAY_BODIES)
        return Delivery(draw(_ODD_PATH), headers | {"BTCPay-Sig": signature(body)}, body)
    # a body over the bound, now and then, signed or not
    path = BTCPAY_PATH if draw(_TWENTY) < 10 else ZAPRITE_PATH
    return Delivery(path, headers, b"", oversize=draw(_TWENTY) < 2)


# --- the run --------------------------------------------------------------------------------------------------


@dataclass
class Listener:
    backend: Backend
    service: WebhookService
    url: str
    session: aiohttp.ClientSession

    async def send(self, delivery: Delivery) -> int:
        async with self.session.post(
            self.url + delivery.path,
            data=io.BytesIO(delivery.payload) if delivery.oversize else delivery.payload,
            headers=delivery.headers,
            skip_auto_headers=("Content-Type",),
        ) as response:
            await response.read()
            assert response.status in ANSWERS, (response.status, delivery)
            # our own answers are JSON; aiohttp's 404 for a path outside the routes is text
            assert response.content_type == "application/json" or response.status == 404
            if response.status == 503:
                assert response.headers["Retry-After"].isdigit()
            return response.status

    async def deliveries(self) -> int:
        return int(await self.backend.scalar("SELECT count(*) FROM webhook_deliveries"))

    def drain(self) -> None:
        queue = self.service.intake.queue
        while not queue.empty():
            queue.get_nowait()
            queue.task_done()


async def snapshot(backend: Backend) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for table in TABLES:
        rows = await backend.raw.rows(f"SELECT * FROM {table} ORDER BY 1")
        found[table] = [{k: v for k, v in row.items() if k != "next_check_at"} for row in rows]
    return found


async def seed(backend: Backend, zaprite_fake: zaprite.FakeZaprite, btcpay_fake: btcpay.FakeBTCPay) -> None:
    raw = backend.raw
    await two_providers.seed_invoice(raw, two_providers.BTCPAY, "inv1")
    await two_providers.seed_invoice(raw, two_providers.BTCPAY, "inv_exp", status="expired")
    await two_providers.seed_invoice(raw, two_providers.ZAPRITE, "od_1")
    await two_providers.seed_invoice(raw, two_providers.ZAPRITE, "shop-2")
    btcpay_fake.add(btcpay.make_invoice("inv1", "Settled", payments=[btcpay.Payment("0.001")]))
    zaprite_fake.add_order(zaprite.make_order(id="od_1", status="PAID"))
    zaprite_fake.add_order(zaprite.make_order(id="od_2", status="PAID", external_uniq_id="shop-2"))


@pytest.mark.slow  # large volume: thousands of deliveries over a socket, each a database transaction
@pytest.mark.fuzz
def test_no_delivery_gets_a_500_or_changes_anything_but_deliveries_and_nudges(
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    answers: Counter[int] = Counter()
    started = time.monotonic()
    with asyncio.Runner() as runner:
        backends = sqlite_backend(tmp_path)
        backend = runner.run(_first(backends))
        session = runner.run(_session())
        btcpay_fake, zaprite_fake = btcpay.FakeBTCPay(), zaprite.FakeZaprite()
        runner.run(btcpay_fake.start())
        runner.run(zaprite_fake.start())
        service = two_providers.service(
            backend.store, session, btcpay_fake, zaprite_fake, signing_key, intake=100_000
        )
        try:
            runner.run(seed(backend, zaprite_fake, btcpay_fake))
            port = runner.run(service.start())
            for task in service.tasks:  # no worker claims anything: only the listener is under test
                task.cancel()
            listener = Listener(backend, service, f"http://127.0.0.1:{port}", session)
            before = runner.run(snapshot(backend))

            @FUZZ_SETTINGS
            @given(deliveries())
            def check(delivery: Delivery) -> None:
                recorded = runner.run(listener.deliveries())
                status = runner.run(listener.send(delivery))
                answers[status] += 1
                assert status in ANSWERS, delivery
                if status not in (200, 503):  # a refusal writes nothing
                    assert runner.run(listener.deliveries()) == recorded, delivery
                listener.drain()

            check()
            # the listener survived: a good delivery is still taken
            good = btcpay_body("inv1", delivery_id="after-the-fuzz")
            last = Delivery(
                BTCPAY_PATH, {"BTCPay-Sig": signature(good), "Content-Type": "application/json"}, good
            )
            assert runner.run(listener.send(last)) == 200
            assert runner.run(snapshot(backend)) == before
            assert SECRET.encode() not in (tmp_path / "conformance.db").read_bytes()
        finally:
            runner.run(service.stop())
            runner.run(session.close())
            runner.run(btcpay_fake.close())
            runner.run(zaprite_fake.close())
            runner.run(_close(backends))
    total = sum(answers.values())
    summary = f"webhook listener: {total} deliveries in {time.monotonic() - started:.1f}s: " + ", ".join(
        f"{status}={count}" for status, count in sorted(answers.items())
    )
    record_property("fuzz_outcomes", summary)
    with capsys.disabled():
        print(f"\n{summary}")
    assert total >= EXAMPLES
    assert answers[200] > EXAMPLES // 10 and answers[400] > EXAMPLES // 20 and answers[401] > EXAMPLES // 50


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


async def _first(backends: AsyncIterator[Backend]) -> Backend:
    return await anext(backends)


async def _close(backends: AsyncIterator[Backend]) -> None:
    with contextlib.suppress(StopAsyncIteration):  # the generator's own cleanup closes the store
        await anext(backends)
