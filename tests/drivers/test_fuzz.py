"""Fuzz both drivers over a real socket (issue 10): 10,000 hostile answers each, nothing escapes; BTCPay's
list pages too (issue 12): every item a storable Snapshot or that item's own bad response.

Hypothesis generates bodies, headers, statuses and ways of sending them (``fuzz_answers``); one fake
server per test serves them. Every ``fetch`` (and Zaprite's ``post_settle``) either returns what the
store can write (a Snapshot passing ``check_snapshot``, a profile passing ``check_payment_profile``)
or raises a DriverError whose message is printable, bounded and free of the key, with no key
anywhere in its exception chain. Anything else (RecursionError, ValueError, UnicodeError,
OverflowError, an aiohttp error, ...) fails the test. The outcome counts are printed (and recorded
as the ``fuzz_outcomes`` property) so they can be quoted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger
from reconciler_btcpay import BTCPayDriver
from reconciler_zaprite import CAPTURE_PAYMENT_PROFILE, ZapriteDriver, ZapriteSettings

from reconciler import driver_api
from reconciler.providers_http import UNSAFE_TEXT
from tests.drivers import fuzz_answers as fz
from tests.fakes import btcpay, zaprite
from tests.fakes.raw import RawAnswer

EXAMPLES = 10_000
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
KEY_ROUTE = "api-keys/current"
CHECK_PASSED = object()


class ForgetfulBTCPay(BTCPayDriver):
    key_check_ttl = 0.0  # every 403 asks for the key check, so its answers are fuzzed too


# --- BTCPay bodies ----------------------------------------------------------------------------------------

_BTCPAY_INVOICE = btcpay.make_invoice("inv1", "Settled", payments=[btcpay.Payment("0.001")])
_BTCPAY_PATHS: list[fz.Path] = [
    ("id",),
    ("status",),
    ("additionalStatus",),
    ("amount",),
    ("currency",),
    ("paymentMethods",),
    ("paymentMethods", 0),
    ("paymentMethods", 0, "currency"),
    ("paymentMethods", 0, "cryptoCode"),
    ("paymentMethods", 0, "payments"),
    ("paymentMethods", 0, "payments", 0),
    ("paymentMethods", 0, "payments", 0, "value"),
    ("paymentMethods", 0, "payments", 0, "status"),
    ("paymentMethods", 1, "payments"),
    (),
]
_STATUS_WORDS = [*btcpay.STATUSES, *btcpay.LEGACY_STATUSES, *btcpay.ADDITIONAL_STATUSES, "settled", "SETTLED"]
BTCPAY_BODIES = fz.json_bodies(
    fz.mutated(
        _BTCPAY_INVOICE,
        _BTCPAY_PATHS,
        {
            "id": ["inv1", "inv2", ""],
            "status": _STATUS_WORDS,
            "additionalStatus": _STATUS_WORDS,
            "amount": fz.DECIMALS,
            "value": fz.DECIMALS,
            "currency": ["BTC", "SATS", "USD", "btc", "\u017fats", ""],
            "cryptoCode": ["BTC", "LTC"],
        },
    )
)
_KEY_ANSWER = {
    "apiKey": "k",
    "label": "x",
    "permissions": [f"btcpay.store.canviewinvoices:{btcpay.STORE_ID}"],
}
KEY_BODIES = fz.json_bodies(
    fz.mutated(
        _KEY_ANSWER,
        [("permissions",), ("permissions", 0)],
        {"permissions": [["unrestricted"], ["btcpay.store.canviewinvoices:another-store"], []]},
    )
)


# --- Zaprite bodies ---------------------------------------------------------------------------------------

_ORDER = zaprite.make_order(
    id="od_1",
    status="PAID",
    currency="BTC",
    total_amount=50_000,
    external_uniq_id="inv1",
    contact=zaprite.make_contact_ref("ct_ada"),
    transactions=[zaprite.make_transaction(50_000, method="CARD", discounts=[zaprite.make_discount(100)])],
)
_ORDER_PATHS: list[fz.Path] = [
    ("id",),
    ("externalUniqId",),
    ("status",),
    ("currency",),
    ("totalAmount",),
    ("contact",),
    ("contact", "id"),
    ("transactions",),
    ("transactions", 0),
    ("transactions", 0, "status"),
    ("transactions", 0, "method"),
    ("transactions", 0, "amountInOrderCurrency"),
    ("transactions", 0, "discountsInOrderCurrency"),
    ("transactions", 0, "discountsInOrderCurrency", 0, "amountOff"),
    (),
]
_AMOUNTS = [50_000, 0, -5, 2**62, 2**63, 1, None]
ORDER_BODIES = fz.json_bodies(
    fz.mutated(
        _ORDER,
        _ORDER_PATHS,
        {
            "id": ["od_1", "od_2", "inv1", ""],
            "externalUniqId": ["inv1", "other", None],
            "status": ["PAID", "paid", "PENDING", "OVERPAID", "UNDERPAID", "EXPIRED", "pa\u0131d"],
            "currency": ["BTC", "USD", "btc", ""],
            "totalAmount": _AMOUNTS,
            "amountInOrderCurrency": _AMOUNTS,
            "amountOff": _AMOUNTS,
            "method": ["CARD", "card", "APPLEPAY", "BITCOIN", "LIGHTNING"],
        },
    )
)
_CONTACT = zaprite.make_contact(
    "ct_ada", profiles=[zaprite.make_profile("pp_1", source_external_uniq_id="inv1")]
)
_CONTACT_PATHS: list[fz.Path] = [
    ("id",),
    ("paymentProfiles",),
    ("paymentProfiles", 0),
    ("paymentProfiles", 0, "id"),
    ("paymentProfiles", 0, "method"),
    ("paymentProfiles", 0, "expiresAt"),
    ("paymentProfiles", 0, "sourceOrder"),
    ("paymentProfiles", 0, "sourceOrder", "externalUniqId"),
    (),
]
CONTACT_BODIES = fz.json_bodies(
    fz.mutated(
        _CONTACT,
        _CONTACT_PATHS,
        {
            "id": ["ct_ada", "ct_eve", "pp_1", ""],
            "externalUniqId": ["inv1", "other"],
            "expiresAt": ["2028-01-31T00:00:00Z", "12/28", "9999-99-99", "0001-01-01T00:00:00Z"],
        },
    )
)
GOOD_ORDER = RawAnswer(200, json.dumps(_ORDER).encode(), {"Content-Type": "application/json"})


# --- the invariant ----------------------------------------------------------------------------------------


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop()
        if id(item) not in seen:
            seen.add(id(item))
            yield item
            todo.extend(e for e in (item.__cause__, item.__context__) if e is not None)


def classify(result: object, *, provider_id: str, invoice_id: str, secret: str) -> str:
    """The outcome's kind; fails the example when it is anything the core could not handle."""
    if isinstance(result, driver_api.Snapshot):
        assert driver_api.check_snapshot(result, provider_id=provider_id, invoice_id=invoice_id) is result
        return "Snapshot"
    if isinstance(result, driver_api.Done):
        if result.profile is not None:
            driver_api.check_payment_profile(result.profile, provider_id=provider_id, invoice_id=invoice_id)
        return "Done"
    if isinstance(result, driver_api.NotYet | driver_api.NotApplicable):
        return type(result).__name__
    if result is CHECK_PASSED:
        return "CheckPassed"
    if isinstance(result, driver_api.DriverError):
        message = str(result)
        assert UNSAFE_TEXT.search(message) is None, message
        assert len(message) < 2_000, message
        assert result.provider_id == provider_id
        for item in chain(result):
            shown = f"{item!s} {item!r} {item.args!r} {getattr(item, 'request_info', None)!r}"
            assert secret not in shown, f"{type(item).__name__} shows the key"
        return type(result).__name__
    if isinstance(result, BaseException):
        raise AssertionError(
            f"escaped the driver error tree: {type(result).__name__}: {result!r}"
        ) from result
    raise AssertionError(f"neither a Snapshot nor a DriverError: {result!r}")


async def settle(call: Awaitable[Any]) -> object:
    try:
        return await call
    except Exception as exc:  # the point of the test: what escapes, whatever it is
        return exc


def run(
    make: Callable[[aiohttp.ClientSession], Coroutine[Any, Any, Any]],
    example: Callable[[Any, Any], Coroutine[Any, Any, tuple[object, str]]],
    strategy: st.SearchStrategy[Any],
    *,
    provider_id: str,
    secret: str,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
    label: str,
) -> Counter[str]:
    """Run ``example(context, drawn)`` for every drawn value on one loop, one server, one session."""
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    with asyncio.Runner() as runner:
        session = runner.run(_session())
        context: Any = None
        try:
            context = runner.run(make(session))

            @FUZZ_SETTINGS
            @given(strategy)
            def check(drawn: Any) -> None:
                result, invoice_id = runner.run(example(context, drawn))
                outcomes[classify(result, provider_id=provider_id, invoice_id=invoice_id, secret=secret)] += 1

            check()
        finally:
            runner.run(_close(session, context))
    seconds = time.monotonic() - started
    total = sum(outcomes.values())
    summary = f"{label}: {total} examples in {seconds:.1f}s: " + ", ".join(
        f"{kind}={count}" for kind, count in sorted(outcomes.items())
    )
    record_property("fuzz_outcomes", summary)
    with capsys.disabled():
        print(f"\n{summary}")
    assert total >= EXAMPLES
    return outcomes


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


async def _close(session: aiohttp.ClientSession, context: Any) -> None:
    await session.close()
    fake = getattr(context, "fake", None)
    if fake is not None:
        await fake.close()


# --- BTCPay -----------------------------------------------------------------------------------------------


class BTCPayContext:
    def __init__(self, fake: btcpay.FakeBTCPay, driver: BTCPayDriver) -> None:
        self.fake = fake
        self.driver = driver


async def make_btcpay(session: aiohttp.ClientSession) -> BTCPayContext:
    fake = btcpay.FakeBTCPay()
    await fake.start()
    settings_ = BTCPayDriver.Settings.model_validate(
        {"base_url": fake.base_url, "store_id": btcpay.STORE_ID, "api_key": btcpay.API_KEY}
    )
    common = driver_api.CommonSettings(driver="btcpay", timeout=fz.TIMEOUT, max_response_bytes=fz.LIMIT)
    return BTCPayContext(fake, ForgetfulBTCPay("btcpay_fuzz", settings_, common, session))


async def btcpay_example(
    context: BTCPayContext, drawn: tuple[str, RawAnswer, RawAnswer, bool]
) -> tuple[object, str]:
    invoice_id, invoice_answer, key_answer, check = drawn
    context.fake.log.clear()
    context.fake.fault(invoice_id, answers=[invoice_answer])
    context.fake.fault(KEY_ROUTE, answers=[key_answer])
    if check:
        result = await settle(context.driver.check())
        return (CHECK_PASSED if result is None else result), invoice_id
    return await settle(context.driver.fetch(invoice_id)), invoice_id


GOOD_KEY_ANSWER = RawAnswer(200, json.dumps(_KEY_ANSWER).encode(), {"Content-Type": "application/json"})


BTCPAY_ANSWERS = fz.answers(BTCPAY_BODIES)
KEY_ANSWERS = fz.answers(KEY_BODIES)
_TWENTY = st.integers(min_value=0, max_value=19)
# The invoice id and fetch-or-check in one draw: mostly a fetch of the id the answers are for.
_ID_AND_CALL = st.sampled_from(
    [(i, False) for i in fz.INVOICE_ID_LIST] * 19 + [("inv1", True)] * len(fz.INVOICE_ID_LIST)
)


@st.composite
def btcpay_examples(draw: st.DrawFn) -> tuple[str, RawAnswer, RawAnswer, bool]:
    """An invoice id, its answer, the key check's answer (fuzzed when it will be asked) and fetch-or-check."""
    invoice_id, check = draw(_ID_AND_CALL)
    invoice_answer = draw(BTCPAY_ANSWERS) if not check else GOOD_KEY_ANSWER
    asked = check or invoice_answer.status == 403
    key_answer = draw(KEY_ANSWERS) if asked and draw(_TWENTY) < 10 else GOOD_KEY_ANSWER
    return invoice_id, invoice_answer, key_answer, check


BTCPAY_EXAMPLES = btcpay_examples()


@pytest.mark.slow  # large volume: 10,000 examples
@pytest.mark.fuzz
def test_btcpay_fetch_never_lets_anything_but_a_driver_error_escape(
    capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> None:
    outcomes = run(
        make_btcpay,
        btcpay_example,
        BTCPAY_EXAMPLES,
        provider_id="btcpay_fuzz",
        secret=btcpay.API_KEY,
        capsys=capsys,
        record_property=record_property,
        label="BTCPay fuzz",
    )
    # The generator reaches every outcome, or it tests less than it claims.
    assert {"Snapshot", "BadProviderResponse", "ProviderUnavailable", "InvoiceNotFound"} <= set(outcomes)
    assert "ProviderAuthError" in outcomes


# --- BTCPay list pages ------------------------------------------------------------------------------------

_PAGE = [
    btcpay.make_invoice("inv1", "Settled", payments=[btcpay.Payment("0.001")]),
    btcpay.make_invoice("inv2", "Expired", "PaidPartial", payments=[btcpay.Payment("0.0004")]),
]
_PAGE_PATHS: list[fz.Path] = [(n, *path) for n in range(2) for path in _BTCPAY_PATHS] + [
    (0, "storeId"),
    (0, "createdTime"),
    (1, "createdTime"),
    (),
]
PAGE_BODIES = fz.json_bodies(
    fz.mutated(
        _PAGE,
        _PAGE_PATHS,
        {
            "id": ["inv1", "inv2", "", "x" * 201],
            "storeId": [btcpay.STORE_ID, "another-store", None],
            "status": _STATUS_WORDS,
            "additionalStatus": _STATUS_WORDS,
            "amount": fz.DECIMALS,
            "value": fz.DECIMALS,
            "currency": ["BTC", "SATS", "USD", "btc", "\u017fats", ""],
            "cryptoCode": ["BTC", "LTC"],
        },
    )
)
PAGE_REQUEST = driver_api.PageRequest(
    datetime.fromtimestamp(1_767_225_000, UTC), datetime.fromtimestamp(1_767_226_000, UTC), 0, 50
)


async def btcpay_page_example(context: BTCPayContext, answer: RawAnswer) -> tuple[object, str]:
    context.fake.log.clear()
    context.fake.fault("invoices", answers=[answer])
    result = await settle(context.driver.fetch_page(PAGE_REQUEST))
    if not isinstance(result, driver_api.Page):
        return result, "inv1"
    assert isinstance(result.items, int) and result.items >= len(result.answers)
    # creation times only for invoices the page answered, each an aware datetime (what narrows the margin)
    assert set(result.created) <= set(result.answers)
    assert all(isinstance(t, datetime) and t.utcoffset() is not None for t in result.created.values())
    for invoice_id, item in result.answers.items():
        kind = classify(item, provider_id="btcpay_fuzz", invoice_id=invoice_id, secret=btcpay.API_KEY)
        assert kind in ("Snapshot", "BadProviderResponse"), kind
    return CHECK_PASSED, "inv1"


@pytest.mark.fuzz
def test_btcpay_list_pages_never_let_anything_but_a_driver_error_escape(
    capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> None:
    outcomes = run(
        make_btcpay,
        btcpay_page_example,
        fz.answers(PAGE_BODIES),
        provider_id="btcpay_fuzz",
        secret=btcpay.API_KEY,
        capsys=capsys,
        record_property=record_property,
        label="BTCPay list fuzz",
    )
    # CheckPassed: a page, each of its answers a storable Snapshot or that item's own bad response
    assert {"CheckPassed", "BadProviderResponse", "ProviderUnavailable"} <= set(outcomes)


# --- Zaprite ----------------------------------------------------------------------------------------------


class ZapriteContext:
    def __init__(self, fake: zaprite.FakeZaprite, driver: ZapriteDriver) -> None:
        self.fake = fake
        self.driver = driver


async def make_zaprite(session: aiohttp.ClientSession) -> ZapriteContext:
    fake = zaprite.FakeZaprite()
    await fake.start()
    settings_ = ZapriteSettings.model_validate({"base_url": fake.url, "api_key": zaprite.DEFAULT_API_KEY})
    common = driver_api.CommonSettings(driver="zaprite", timeout=fz.TIMEOUT, max_response_bytes=fz.LIMIT)
    return ZapriteContext(fake, ZapriteDriver("zaprite_fuzz", settings_, common, session))


async def zaprite_example(
    context: ZapriteContext, drawn: tuple[str, str, RawAnswer, RawAnswer]
) -> tuple[object, str]:
    operation, invoice_id, first, second = drawn
    context.fake.log.clear()
    context.fake.paths.clear()
    context.fake.clear_faults()
    if operation == "fetch":
        context.fake.inject(zaprite.Fault(raw=first))
        return await settle(context.driver.fetch(invoice_id)), invoice_id
    context.fake.inject(zaprite.Fault(raw=first), zaprite.Fault(raw=second))
    task = driver_api.PostSettleTask(invoice_id, CAPTURE_PAYMENT_PROFILE, "zaprite_fuzz", invoice_id, 1)
    return await settle(context.driver.post_settle(task)), invoice_id


ORDER_ANSWERS = fz.answers(ORDER_BODIES)
CONTACT_ANSWERS = fz.answers(CONTACT_BODIES)
_CALL_AND_ID = st.sampled_from(
    [
        (call, i)
        for call in ["fetch"] * 6 + ["post_settle"] * 3 + ["post_settle_fuzzed_order"]
        for i in fz.INVOICE_ID_LIST
    ]
)


@st.composite
def zaprite_examples(draw: st.DrawFn) -> tuple[str, str, RawAnswer, RawAnswer]:
    """fetch, post_settle with a good order and a fuzzed contact, or post_settle with both fuzzed."""
    call, invoice_id = draw(_CALL_AND_ID)
    first = draw(ORDER_ANSWERS) if call != "post_settle" else GOOD_ORDER
    second = draw(CONTACT_ANSWERS) if call != "fetch" else GOOD_ORDER
    return call, invoice_id, first, second


ZAPRITE_EXAMPLES = zaprite_examples()


@pytest.mark.slow  # large volume: 10,000 examples
@pytest.mark.fuzz
def test_zaprite_fetch_and_post_settle_never_let_anything_but_a_driver_error_escape(
    capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> None:
    logger.disable("reconciler_zaprite")  # unreadable expiries are warned about; thousands of lines here
    try:
        outcomes = run(
            make_zaprite,
            zaprite_example,
            ZAPRITE_EXAMPLES,
            provider_id="zaprite_fuzz",
            secret=zaprite.DEFAULT_API_KEY,
            capsys=capsys,
            record_property=record_property,
            label="Zaprite fuzz",
        )
    finally:
        logger.enable("reconciler_zaprite")
    expected = {"Snapshot", "Done", "NotYet", "BadProviderResponse", "ProviderUnavailable", "InvoiceNotFound"}
    assert expected <= set(outcomes)
