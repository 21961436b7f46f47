"""The fake Zaprite server itself: everything it serves matches the OpenAPI fixture, except named
deviations, each of which is shown to be needed; its knobs; its standalone mode."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import openapi
from tests.fakes import zaprite as fake
from tests.fakes.zaprite import FakeZaprite, Fault

pytest_plugins = ("tests.drivers.zaprite_fixtures",)

REPO = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {fake.DEFAULT_API_KEY}"}
INVOICE_ID = "0190f5c2-6f1e-7a51-9c55-2f0e4f3d1a77"


@pytest.fixture
async def client(zaprite_fake: FakeZaprite) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(zaprite_fake.url, headers=AUTH) as session:
        yield session


async def get(session: aiohttp.ClientSession, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with session.get(path, **kwargs) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def test_every_response_the_fake_serves_conforms(
    zaprite_fake: FakeZaprite, client: aiohttp.ClientSession, zaprite_document: openapi.OpenAPIDocument
) -> None:
    card = fake.make_transaction(1_999, method="CARD", currency="USD", order_currency="USD")
    statuses = sorted(fake.FIXTURE_STATUSES | set(fake.STATUS_DEVIATIONS) | {"REFUND_PENDING"})
    orders = [zaprite_fake.add_order(fake.make_order(status=status)) for status in statuses]
    zaprite_fake.add_order(
        fake.make_order(
            status="OVERPAID",
            external_uniq_id=INVOICE_ID,
            contact=fake.make_contact_ref("ct_ada"),
            transactions=[
                fake.make_transaction(60_000, discounts=[fake.make_discount(100)]),
                fake.make_transaction(None, status="PENDING", method="LIGHTNING"),
            ],
            paid_at="2026-01-02T03:04:05.000Z",
        )
    )
    zaprite_fake.add_order(
        fake.make_order(status="PAID", currency="USD", total_amount=1_999, transactions=[card])
    )
    zaprite_fake.add_contact(
        fake.make_contact(
            "ct_ada",
            profiles=[
                fake.make_profile("pp_1", source_external_uniq_id=INVOICE_ID),
                fake.make_profile("pp_2", source_external_uniq_id=None, method=None, expires_at=None),
            ],
        )
    )
    zaprite_fake.add_contact(fake.make_contact("ct_later"), profiles_after_requests=1)

    paths = [f"/v1/orders/{order['id']}" for order in orders]
    paths += [
        f"/v1/orders/{INVOICE_ID}",
        "/v1/orders/od_missing",
        "/v1/contacts/ct_ada",
        "/v1/contacts/ct_later",
    ]
    paths += [
        "/v1/contacts/ct_missing",
        "/v1/orders?limit=1",
        "/v1/orders?page=2&limit=5",
        "/v1/orders?limit=0",
    ]
    for path in paths:
        await get(client, path)
    for path in ("/v1/orders/od_missing", "/v1/contacts/ct_ada", "/v1/orders"):
        await get(client, path, headers={"Authorization": "Bearer wrong"})
    zaprite_fake.inject(
        Fault(status=429, retry_after="3"), 503, Fault(body=b"garbage"), Fault(body={"nope": 1})
    )
    for path in ("/v1/orders/od_missing", "/v1/contacts/ct_ada", "/v1/orders", f"/v1/orders/{INVOICE_ID}"):
        await get(client, path)

    answered = [exchange for exchange in zaprite_fake.log if exchange.status is not None]
    assert (
        fake.check_conformance(zaprite_fake.log, zaprite_document) == len(answered) == len(zaprite_fake.log)
    )
    assert {exchange.route for exchange in answered} == {"/v1/orders/{id}", "/v1/orders", "/v1/contacts/{id}"}
    assert {exchange.status for exchange in answered} == {200, 400, 401, 404, 429, 503}


@pytest.mark.parametrize(
    ("status", "deviation"),
    [
        *fake.STATUS_DEVIATIONS.items(),
        ("REFUND_PENDING", fake.UNLISTED_STATUS),
        ("paid", fake.UNLISTED_STATUS),
    ],
)
async def test_each_status_outside_the_fixture_enum_is_its_own_named_deviation(
    zaprite_fake: FakeZaprite,
    client: aiohttp.ClientSession,
    zaprite_document: openapi.OpenAPIDocument,
    status: str,
    deviation: openapi.Deviation,
) -> None:
    order = zaprite_fake.add_order(fake.make_order(status=status))
    assert await get(client, f"/v1/orders/{order['id']}") == (200, order)
    (exchange,) = zaprite_fake.log
    assert exchange.deviations == (deviation,)
    zaprite_document.validate_response("GET", "/v1/orders/{id}", 200, order, deviations=[deviation])
    with pytest.raises(AssertionError, match="status"):
        zaprite_document.validate_response("GET", "/v1/orders/{id}", 200, order)
    if deviation is not fake.UNLISTED_STATUS:
        other = fake.make_order(status="REFUND_PENDING")
        with pytest.raises(AssertionError, match="status"):
            zaprite_document.validate_response("GET", "/v1/orders/{id}", 200, other, deviations=[deviation])


@pytest.mark.parametrize(
    ("path", "route", "deviation"),
    [
        ("/v1/contacts/ct_ada", "/v1/contacts/{id}", fake.CONTACTS),
        ("/v1/orders", "/v1/orders", fake.ORDER_LIST),
    ],
)
async def test_paths_the_old_fixture_lacks_are_named_deviations(
    zaprite_fake: FakeZaprite,
    client: aiohttp.ClientSession,
    zaprite_document: openapi.OpenAPIDocument,
    path: str,
    route: str,
    deviation: openapi.Deviation,
) -> None:
    zaprite_fake.add_order(fake.make_order(status="EXPIRED"))
    zaprite_fake.add_contact(
        fake.make_contact("ct_ada", profiles=[fake.make_profile("pp", source_external_uniq_id="x")])
    )
    status, body = await get(client, path)
    assert status == 200
    assert zaprite_fake.log[0].deviations[0] == deviation
    with pytest.raises(AssertionError, match="not in the document"):
        zaprite_document.validate_response("GET", route, 200, body)
    zaprite_document.validate_response("GET", route, 200, body, deviations=zaprite_fake.log[0].deviations)


def test_built_orders_are_fixture_valid_and_the_check_is_strict(
    zaprite_document: openapi.OpenAPIDocument,
) -> None:
    order = fake.make_order(
        status="PAID",
        contact=fake.make_contact_ref("ct"),
        transactions=[
            fake.make_transaction(5, discounts=[fake.make_discount(1)]),
            fake.make_transaction(None),
        ],
    )
    zaprite_document.validate_response("GET", "/v1/orders/{id}", 200, order)
    for broken in (
        {key: value for key, value in order.items() if key != "checkoutUrl"},
        {**order, "totalAmount": "5"},
        {**order, "amount": 5},
        {**order, "transactions": [{**order["transactions"][0], "method": "DOGECOIN"}]},
    ):
        with pytest.raises(AssertionError):
            zaprite_document.validate_response("GET", "/v1/orders/{id}", 200, broken)


async def test_orders_are_found_by_id_or_external_id_and_listed_by_page(
    zaprite_fake: FakeZaprite, client: aiohttp.ClientSession
) -> None:
    orders = [zaprite_fake.add_order(fake.make_order(external_uniq_id=f"inv-{n}")) for n in range(5)]
    assert await get(client, "/v1/orders/inv-3") == (200, orders[3])
    assert await get(client, f"/v1/orders/{orders[3]['id']}") == (200, orders[3])
    assert await get(client, "/v1/orders?page=2&limit=2") == (
        200,
        {"items": orders[2:4], "meta": {"pagesCount": 3}},
    )
    status, body = await get(client, "/v1/orders?page=x")
    assert (status, body["code"]) == (400, "BAD_REQUEST")


async def test_the_key_is_checked_on_every_path(
    zaprite_fake: FakeZaprite, client: aiohttp.ClientSession
) -> None:
    zaprite_fake.add_order(fake.make_order(id="od_1"))
    for path in ("/v1/orders/od_1", "/v1/orders", "/v1/contacts/ct"):
        for headers in ({"Authorization": "Bearer nope"}, {"Authorization": fake.DEFAULT_API_KEY}):
            status, body = await get(client, path, headers=headers)
            assert (status, body["code"]) == (401, "UNAUTHORIZED")


async def test_profiles_can_be_held_back_for_a_while(
    zaprite_fake: FakeZaprite, client: aiohttp.ClientSession
) -> None:
    profile = fake.make_profile("pp", source_external_uniq_id="x")
    zaprite_fake.add_contact(fake.make_contact("ct", profiles=[profile]), profiles_after_seconds=0.3)
    assert (await get(client, "/v1/contacts/ct"))[1]["paymentProfiles"] == []
    await asyncio.sleep(0.35)
    assert (await get(client, "/v1/contacts/ct"))[1]["paymentProfiles"] == [profile]


async def test_faults_are_consumed_one_per_request(
    zaprite_fake: FakeZaprite, client: aiohttp.ClientSession
) -> None:
    zaprite_fake.add_order(fake.make_order(id="od_1"))
    zaprite_fake.inject(503, Fault(status=429, retry_after="9"), 200)
    async with client.get("/v1/orders/od_1") as first, client.get("/v1/orders/od_1") as second:
        assert (first.status, second.status, second.headers["Retry-After"]) == (503, 429, "9")
    assert [(await get(client, "/v1/orders/od_1"))[0] for _ in range(2)] == [200, 200]


async def test_a_state_document_replaces_orders_contacts_and_faults(
    zaprite_fake: FakeZaprite, client: aiohttp.ClientSession
) -> None:
    zaprite_fake.add_order(fake.make_order(id="od_old"))
    contact = fake.make_contact("ct", profiles=[fake.make_profile("pp", source_external_uniq_id="x")])
    zaprite_fake.load_state(
        {
            "api_key": fake.DEFAULT_API_KEY,
            "orders": [fake.make_order(id="od_new")],
            "contacts": [{"contact": contact, "profiles_after_requests": 1}],
            "faults": [{"status": 503, "retry_after": "1"}],
        }
    )
    assert (await get(client, "/v1/orders/od_new"))[0] == 503
    assert [(await get(client, path))[0] for path in ("/v1/orders/od_new", "/v1/orders/od_old")] == [200, 404]
    assert [(await get(client, "/v1/contacts/ct"))[1]["paymentProfiles"] for _ in range(2)] == [
        [],
        [contact["paymentProfiles"][0]],
    ]


async def test_close_does_not_wait_for_a_slow_answer() -> None:
    async with FakeZaprite() as zaprite_fake, aiohttp.ClientSession(headers=AUTH) as session:
        zaprite_fake.inject(Fault(delay=60))
        request = asyncio.ensure_future(session.get(f"{zaprite_fake.url}/v1/orders"))
        await asyncio.sleep(0.1)
        await asyncio.wait_for(zaprite_fake.close(), 5)
        response = await request
        response.release()


@pytest.mark.slow
async def test_the_standalone_server_serves_a_state_file_and_follows_its_changes(tmp_path: Path) -> None:
    order = fake.make_order(id="od_1", external_uniq_id=INVOICE_ID)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"api_key": "standalone-key", "orders": [order]}))
    requests = tmp_path / "requests.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.zaprite",
        "--state",
        str(state),
        "--request-log",
        str(requests),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.wait_for(process.stdout.readline(), 20))
        headers = {"Authorization": "Bearer standalone-key"}
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=headers) as session:
            assert await get(session, f"/v1/orders/{INVOICE_ID}") == (200, order)
            state.write_text(
                json.dumps({"api_key": "standalone-key", "orders": [{**order, "status": "PAID"}]})
            )
            os.utime(state, ns=(state.stat().st_atime_ns, state.stat().st_mtime_ns + 1_000_000_000))
            status, body = await get(session, "/v1/orders/od_1")
            assert (status, body["status"]) == (200, "PAID")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    logged = [json.loads(line) for line in requests.read_text().splitlines()]
    assert [(entry["path"], entry["status"]) for entry in logged] == [
        (f"/v1/orders/{INVOICE_ID}", 200),
        ("/v1/orders/od_1", 200),
    ]
