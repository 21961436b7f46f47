"""The Zaprite driver against hostile or broken answers (issue 10), each found by the fuzz first.

Every answer either becomes a Snapshot / post-settle result the store can write or a DriverError;
nothing else escapes, no answer for another order is trusted, no id reaches another endpoint, no
body is read past ``max_response_bytes`` and the Bearer key is in no message or exception chain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from reconciler_zaprite import CAPTURE_PAYMENT_PROFILE, ZapriteDriver

from reconciler import driver_api
from reconciler.driver_api import ProviderStatus
from tests.fakes.raw import RawAnswer
from tests.fakes.zaprite import (
    DEFAULT_API_KEY,
    FakeZaprite,
    Fault,
    make_contact,
    make_contact_ref,
    make_order,
    make_profile,
    make_transaction,
)

pytest_plugins = ("tests.drivers.zaprite_fixtures",)

MakeDriver = Callable[..., ZapriteDriver]
INVOICE_ID = "0190f5c2-6f1e-7a51-9c55-2f0e4f3d1a77"


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if id(item) not in seen:
            seen.add(id(item))
            yield item
            todo.extend(e for e in (item.__cause__, item.__context__) if e is not None)


def assert_no_key(exc: BaseException) -> None:
    for item in chain(exc):
        for text in (str(item), repr(item), repr(item.args), repr(getattr(item, "request_info", None))):
            assert DEFAULT_API_KEY not in text, f"{type(item).__name__} shows the key"


def raw(body: bytes | Any, *, status: int = 200, **fields: Any) -> Fault:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Fault(raw=RawAnswer(status, data, {"Content-Type": "application/json"}, **fields))


def task(provider_invoice_id: str = INVOICE_ID) -> driver_api.PostSettleTask:
    return driver_api.PostSettleTask(INVOICE_ID, CAPTURE_PAYMENT_PROFILE, "zaprite", provider_invoice_id, 1)


def card_order(contact_id: str = "ct_ada") -> dict[str, Any]:
    return make_order(
        status="PAID",
        currency="USD",
        total_amount=1_999,
        external_uniq_id=INVOICE_ID,
        contact=make_contact_ref(contact_id),
        transactions=[make_transaction(1_999, method="CARD", currency="USD", order_currency="USD")],
    )


async def test_deep_nesting_is_a_bad_response(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.inject(raw(b'{"status": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"))

    # Before: RecursionError is no ValueError, so it escaped the driver error tree.
    with pytest.raises(driver_api.BadProviderResponse, match="nested deeper than 64"):
        await zaprite_driver.fetch("od_1")


async def test_a_huge_integer_is_a_bad_response(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.inject(raw(b'{"id": "od_1", "status": "PAID", "totalAmount": ' + b"9" * 5000 + b"}"))

    with pytest.raises(driver_api.BadProviderResponse, match="longer than 40 digits"):
        await zaprite_driver.fetch("od_1")


@pytest.mark.parametrize(
    "changes",
    [{"status": "\ud800"}, {"status": "PAID\x00"}, {"currency": "BTC\x1b"}, {"status": "P" * 201}],
)
async def test_strings_the_store_cannot_write_are_a_bad_response(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, changes: dict[str, Any]
) -> None:
    zaprite_fake.inject(raw({**make_order(id="od_1", status="PAID"), **changes}))

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await zaprite_driver.fetch("od_1")

    assert caught.value.invoice_id == "od_1"


async def test_an_answer_for_another_order_is_a_bad_response_that_names_nobody(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    other = make_order(
        id="od_other", status="PAID", external_uniq_id="their-invoice", contact=make_contact_ref("ct_eve")
    )
    zaprite_fake.inject(raw(other))

    # Before: Zaprite settled from whatever order came back (BTCPay checks the id).
    with pytest.raises(driver_api.BadProviderResponse, match="another order") as caught:
        await zaprite_driver.fetch(INVOICE_ID)

    for text in ("od_other", "their-invoice", "ct_eve", "Ada Buyer"):
        assert text not in str(caught.value)


@pytest.mark.parametrize(
    "ids", [{"id": INVOICE_ID, "externalUniqId": None}, {"id": "od_x", "externalUniqId": INVOICE_ID}]
)
async def test_the_order_asked_for_is_recognised_by_id_or_external_uniq_id(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, ids: dict[str, Any]
) -> None:
    zaprite_fake.inject(raw({**make_order(status="PAID"), **ids}))

    assert (await zaprite_driver.fetch(INVOICE_ID)).status is ProviderStatus.SETTLED


async def test_an_answer_without_any_id_is_a_bad_response(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    body = make_order(status="PAID")
    del body["id"], body["externalUniqId"]
    zaprite_fake.inject(raw(body))

    with pytest.raises(driver_api.BadProviderResponse, match="another order"):
        await zaprite_driver.fetch(INVOICE_ID)


@pytest.mark.parametrize("invoice_id", ["", ".", "..", "a\x00b", "a\nb", "x" * 201, "\udc80"])
async def test_ids_that_are_not_a_path_segment_are_not_found_without_a_request(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, invoice_id: str
) -> None:
    # Before: '' asked GET /v1/orders/ and '..' GET /v1/ (other endpoints).
    with pytest.raises(driver_api.InvoiceNotFound):
        await zaprite_driver.fetch(invoice_id)
    with pytest.raises(driver_api.InvoiceNotFound):
        await zaprite_driver.post_settle(task(invoice_id))

    assert zaprite_fake.paths == []


@pytest.mark.parametrize("contact_id", ["", ".", "..", "ct\x00", "c" * 201])
async def test_a_contact_id_from_the_answer_that_is_not_a_path_segment_is_a_bad_response(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, contact_id: str
) -> None:
    zaprite_fake.add_order(card_order(contact_id))

    with pytest.raises(driver_api.BadProviderResponse, match="contact"):
        await zaprite_driver.post_settle(task())

    assert [exchange.route for exchange in zaprite_fake.log] == ["/v1/orders/{id}"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "pp\x00ours"), ("id", "p" * 201), ("method", "CARD\n"), ("id", "")],
)
async def test_a_payment_profile_the_store_cannot_write_is_a_bad_response(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, field: str, value: str
) -> None:
    zaprite_fake.add_order(card_order())
    profile = {**make_profile("pp_ours", source_external_uniq_id=INVOICE_ID), field: value}
    zaprite_fake.add_contact(make_contact("ct_ada", profiles=[profile]))

    with pytest.raises(driver_api.BadProviderResponse, match="profile"):
        await zaprite_driver.post_settle(task())


async def test_a_contact_answer_for_another_contact_is_a_bad_response(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.add_order(card_order())
    zaprite_fake.add_contact(make_contact("ct_ada"))
    eve = make_contact("ct_eve", profiles=[make_profile("pp_eve", source_external_uniq_id=INVOICE_ID)])
    zaprite_fake.inject(200, raw(eve))

    with pytest.raises(driver_api.BadProviderResponse, match="another contact"):
        await zaprite_driver.post_settle(task())


async def test_a_non_http_answer_is_a_bad_response_whose_chain_shows_no_key(
    make_zaprite_driver: MakeDriver,
) -> None:
    async def nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(nonsense, "127.0.0.1", 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        # Before: ProviderUnavailable (BTCPay said BadProviderResponse), chained from a
        # ClientResponseError whose request_info repr held "Authorization: Bearer <key>".
        with pytest.raises(driver_api.BadProviderResponse) as caught:
            await make_zaprite_driver(base_url=f"http://127.0.0.1:{port}").fetch("od_1")
    finally:
        listener.close()
        await listener.wait_closed()

    assert isinstance(caught.value.__cause__, aiohttp.ClientResponseError)
    assert_no_key(caught.value)


@pytest.mark.parametrize("status", [201, 202, 203, 206])
async def test_only_200_is_an_answer(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, status: int
) -> None:
    zaprite_fake.inject(raw(make_order(id="od_1", status="PAID"), status=status))

    # Before: Zaprite accepted any 2xx (BTCPay only 200).
    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await zaprite_driver.fetch("od_1")

    assert caught.value.http_status == status


async def test_an_error_message_echoing_the_key_is_scrubbed(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.inject(raw({"code": "BAD", "message": f"key {DEFAULT_API_KEY} is revoked"}, status=400))

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await zaprite_driver.fetch("od_1")

    assert "key ********** is revoked" in str(caught.value)
    assert_no_key(caught.value)


@pytest.mark.parametrize(("header", "seconds"), [("\u00b2", None), ("99999999999999999999", 86_400.0)])
async def test_retry_after_is_strict_and_clamped(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, header: str, seconds: float | None
) -> None:
    zaprite_fake.inject(Fault(status=503, retry_after=header))

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await zaprite_driver.fetch("od_1")

    assert caught.value.retry_after == seconds


async def test_a_body_over_max_response_bytes_is_not_read(
    zaprite_fake: FakeZaprite, make_zaprite_driver: MakeDriver
) -> None:
    driver = make_zaprite_driver(max_response_bytes=64 * 1024)
    zaprite_fake.inject(Fault(raw=RawAnswer(200, b" " * 8192, chunk=8192, endless=True)))

    # Before: read whole (one 300 MB answer took peak RSS from 48 MB to 699 MB).
    with pytest.raises(driver_api.BadProviderResponse, match="max_response_bytes"):
        await driver.fetch("od_1")


async def test_a_gzip_bomb_is_not_read(zaprite_fake: FakeZaprite, make_zaprite_driver: MakeDriver) -> None:
    driver = make_zaprite_driver(max_response_bytes=1024 * 1024)
    zaprite_fake.inject(Fault(raw=RawAnswer(200, bytes(1024 * 1024), gzip=True, endless=True)))

    with pytest.raises(driver_api.BadProviderResponse, match="max_response_bytes"):
        await driver.fetch("od_1")


@pytest.mark.parametrize(("total", "shown"), [(-5, "-5"), (0, "0"), (2**63, str(2**63))])
async def test_an_unusable_btc_total_is_no_opinion_with_its_evidence(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, total: int, shown: str
) -> None:
    zaprite_fake.inject(raw(make_order(id="od_1", status="PAID", currency="BTC", total_amount=total)))

    # Before: -5 left no trace in the evidence; 2**63 made a Snapshot the store cannot write.
    snapshot = await zaprite_driver.fetch("od_1")

    assert (snapshot.amount_sats, snapshot.amount_raw) == (None, shown)


@pytest.mark.parametrize(
    "amounts",
    [[-5], [2**62, 2**62]],  # a negative retained amount; a sum over 2**63-1
)
async def test_paid_sats_outside_what_the_store_holds_are_no_opinion(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, amounts: list[int]
) -> None:
    transactions = [make_transaction(amount) for amount in amounts]
    zaprite_fake.inject(raw(make_order(id="od_1", status="PAID", transactions=transactions)))

    snapshot = await zaprite_driver.fetch("od_1")

    assert snapshot.paid_sats is None
    assert snapshot.status is ProviderStatus.SETTLED
