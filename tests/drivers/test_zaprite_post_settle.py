"""``ZapriteDriver.post_settle``: capturing the card payment profile a settled order saved
(docs/providers.md §2.6)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger
from reconciler_zaprite import CAPTURE_PAYMENT_PROFILE, ZapriteDriver

from reconciler import driver_api
from tests.fakes.zaprite import (
    FakeZaprite,
    make_contact,
    make_contact_ref,
    make_order,
    make_profile,
    make_transaction,
)

pytest_plugins = ("tests.drivers.zaprite_fixtures",)

INVOICE_ID = "0190f5c2-6f1e-7a51-9c55-2f0e4f3d1a77"
CONTACT_ROUTE = "/v1/contacts/{id}"


def task(
    provider_invoice_id: str = INVOICE_ID, *, kind: str = CAPTURE_PAYMENT_PROFILE
) -> driver_api.PostSettleTask:
    return driver_api.PostSettleTask(
        invoice_id=INVOICE_ID,
        kind=kind,
        provider_id="zaprite",
        provider_invoice_id=provider_invoice_id,
        attempts=1,
    )


def card_order(*, contact_id: str | None = "ct_ada", method: str = "CARD") -> dict[str, Any]:
    return make_order(
        status="PAID",
        currency="USD",
        total_amount=1_999,
        external_uniq_id=INVOICE_ID,
        contact=make_contact_ref(contact_id) if contact_id else None,
        transactions=[make_transaction(1_999, method=method, currency="USD", order_currency="USD")],
    )


def ada(*profiles: dict[str, Any]) -> dict[str, Any]:
    return make_contact("ct_ada", profiles=profiles)


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    handler = logger.add(messages.append, level="WARNING", format="{message}")
    yield messages
    logger.remove(handler)


@pytest.mark.parametrize("method", ["CARD", "APPLEPAY", "GOOGLEPAY"])
async def test_the_profile_saved_from_our_invoice_is_captured_with_a_normalised_expiry(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, method: str
) -> None:
    zaprite_fake.add_order(card_order(method=method))
    zaprite_fake.add_contact(
        ada(
            make_profile("pp_old", source_external_uniq_id="an-older-invoice"),
            make_profile(
                "pp_ours",
                source_external_uniq_id=INVOICE_ID,
                method=method,
                expires_at="2028-02-29T23:59:59Z",
            ),
        )
    )
    result = await zaprite_driver.post_settle(task())
    assert result == driver_api.Done(
        driver_api.PaymentProfile(
            contact_id="ct_ada", profile_id="pp_ours", method=method, expires_at="2028-02-29T23:59:59.000000Z"
        )
    )
    assert [exchange.path for exchange in zaprite_fake.log] == [
        f"/v1/orders/{INVOICE_ID}",
        "/v1/contacts/ct_ada",
    ]


async def test_a_profile_that_appears_on_the_third_call_is_not_yet_twice_then_done(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.add_order(card_order())
    zaprite_fake.add_contact(
        ada(make_profile("pp_ours", source_external_uniq_id=INVOICE_ID)), profiles_after_requests=2
    )
    results = [await zaprite_driver.post_settle(task()) for _ in range(3)]
    assert [type(result) for result in results] == [driver_api.NotYet, driver_api.NotYet, driver_api.Done]
    done = results[2]
    assert isinstance(done, driver_api.Done) and done.profile is not None
    assert done.profile.profile_id == "pp_ours"


async def test_a_profile_held_back_for_a_while_is_not_yet(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.add_order(card_order())
    zaprite_fake.add_contact(
        ada(make_profile("pp_ours", source_external_uniq_id=INVOICE_ID)), profiles_after_seconds=60
    )
    assert isinstance(await zaprite_driver.post_settle(task()), driver_api.NotYet)


async def test_the_task_works_from_the_zaprite_order_id_too(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    order = zaprite_fake.add_order(card_order())
    zaprite_fake.add_contact(ada(make_profile("pp_ours", source_external_uniq_id=INVOICE_ID)))
    result = await zaprite_driver.post_settle(task(order["id"]))
    assert isinstance(result, driver_api.Done)


async def test_only_other_invoices_profiles_is_not_yet(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.add_order(card_order())
    zaprite_fake.add_contact(ada(make_profile("pp_old", source_external_uniq_id="an-older-invoice")))
    assert isinstance(await zaprite_driver.post_settle(task()), driver_api.NotYet)


async def test_a_contact_that_answers_404_is_not_yet(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.add_order(card_order())
    result = await zaprite_driver.post_settle(task())
    assert isinstance(result, driver_api.NotYet)
    assert [exchange.status for exchange in zaprite_fake.requests_to(CONTACT_ROUTE)] == [404]


async def test_an_order_without_a_contact_is_not_applicable(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.add_order(card_order(contact_id=None))
    assert isinstance(await zaprite_driver.post_settle(task()), driver_api.NotApplicable)
    assert zaprite_fake.requests_to(CONTACT_ROUTE) == []


@pytest.mark.parametrize("method", ["BITCOIN", "LIGHTNING", "LIQUID"])
async def test_a_bitcoin_paid_order_is_not_applicable_without_asking_for_the_contact(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, method: str
) -> None:
    zaprite_fake.add_order(
        make_order(
            status="PAID",
            external_uniq_id=INVOICE_ID,
            contact=make_contact_ref("ct_ada"),
            transactions=[make_transaction(50_000, method=method)],
        )
    )
    zaprite_fake.add_contact(ada(make_profile("pp_ours", source_external_uniq_id=INVOICE_ID)))
    assert isinstance(await zaprite_driver.post_settle(task()), driver_api.NotApplicable)
    assert zaprite_fake.requests_to(CONTACT_ROUTE) == []


async def test_a_card_payment_that_is_not_confirmed_is_not_applicable(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    pending_card = make_transaction(
        1_999, method="CARD", status="PENDING", currency="USD", order_currency="USD"
    )
    zaprite_fake.add_order(
        make_order(
            status="PROCESSING",
            currency="USD",
            external_uniq_id=INVOICE_ID,
            contact=make_contact_ref("ct_ada"),
            transactions=[pending_card],
        )
    )
    assert isinstance(await zaprite_driver.post_settle(task()), driver_api.NotApplicable)
    assert zaprite_fake.requests_to(CONTACT_ROUTE) == []


@pytest.mark.parametrize("expires_at", ["12/28", "next year"])
async def test_an_unparseable_expiry_is_done_without_expiry_and_warned_about(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, warnings: list[str], expires_at: str
) -> None:
    zaprite_fake.add_order(card_order())
    zaprite_fake.add_contact(
        ada(make_profile("pp_ours", source_external_uniq_id=INVOICE_ID, expires_at=expires_at))
    )
    result = await zaprite_driver.post_settle(task())
    assert isinstance(result, driver_api.Done) and result.profile is not None
    assert (result.profile.profile_id, result.profile.expires_at) == ("pp_ours", None)
    assert len(warnings) == 1 and "pp_ours" in warnings[0] and expires_at in warnings[0]


async def test_a_profile_without_expiry_is_done_without_a_warning(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver, warnings: list[str]
) -> None:
    zaprite_fake.add_order(card_order())
    zaprite_fake.add_contact(
        ada(make_profile("pp_ours", source_external_uniq_id=INVOICE_ID, expires_at=None))
    )
    result = await zaprite_driver.post_settle(task())
    assert isinstance(result, driver_api.Done) and result.profile is not None
    assert result.profile.expires_at is None
    assert warnings == []


async def test_provider_errors_propagate_as_driver_errors(
    zaprite_fake: FakeZaprite, zaprite_driver: ZapriteDriver
) -> None:
    zaprite_fake.add_order(card_order())
    zaprite_fake.inject(200, 503)
    with pytest.raises(driver_api.ProviderUnavailable):
        await zaprite_driver.post_settle(task())
    with pytest.raises(driver_api.InvoiceNotFound):
        await zaprite_driver.post_settle(task("od_gone"))


async def test_a_task_of_another_kind_is_refused(zaprite_driver: ZapriteDriver) -> None:
    with pytest.raises(ValueError, match=r"btcpay\.something"):
        await zaprite_driver.post_settle(task(kind="btcpay.something"))
