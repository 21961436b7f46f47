"""A third driver written from docs/writing-a-driver.md alone (issue 11).

`tests/drivers/toy_driver.py` is the page's example, line for line (the first tests hold the page and the
module in step), and imports nothing of the core but `reconciler.driver_api`. It runs here against a fake
Toy server speaking the page's wire format over a real socket: through `check_driver`, call by call, and
through real reconcile passes on a SQLite shop, where a paid invoice gets its license and a card its
subscription.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections import deque
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler import driver_api
from reconciler.runner import Provider, Runner, RunnerSettings
from reconciler.store.sqlite import SqliteStore
from reconciler.testing import check_driver
from tests.conftest import Clock
from tests.drivers import toy_driver
from tests.drivers.toy_driver import SAVE_CARD, ToyDriver, ToySettings
from tests.support.shop import Shop

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "writing-a-driver.md"
KEY = "toy-key-0123456789"
PROVIDER = "toy_main"


# -- the page and the module ---------------------------------------------------------------------------------
def blocks(language: str) -> list[str]:
    return re.findall(
        rf"^```{language}\n(.*?)^```$", PAGE.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL
    )


def code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]  # ruff may re-indent a block


def find_run(run: list[str], lines: list[str]) -> int | None:
    for start in range(len(lines) - len(run) + 1):
        if lines[start : start + len(run)] == run:
            return start
    return None


def test_the_page_shows_the_whole_driver_and_only_code_that_runs_here() -> None:
    """Every Python block of the page is in the example module or in this file, and together the page's blocks
    are every line of the module: the driver tested here is the page's."""
    module = code_lines(Path(toy_driver.__file__).read_text(encoding="utf-8"))
    tests = code_lines(Path(__file__).read_text(encoding="utf-8"))
    shown = [False] * len(module)
    for block in blocks("python"):
        run = code_lines(block)
        start = find_run(run, module)
        if start is None:
            assert find_run(run, tests) is not None, f"a block of the page runs nowhere:\n{block}"
            continue
        shown[start : start + len(run)] = [True] * len(run)
    missing = [line for line, seen in zip(module, shown, strict=True) if not seen]
    assert missing == [], "lines of the example the page does not show"


def test_every_driver_api_name_the_driver_uses_is_explained_on_the_page() -> None:
    source = Path(toy_driver.__file__).read_text(encoding="utf-8")
    page = PAGE.read_text(encoding="utf-8")
    used = set(re.findall(r"driver_api\.(\w+)", source))
    assert used >= {"JsonClient", "auth_header", "check_snapshot", "path_segment", "ProviderStatus"}
    unexplained = sorted(name for name in used if not re.search(rf"`(?:driver_api\.)?{name}\b", page))
    assert unexplained == []


def test_the_driver_imports_nothing_of_the_core_but_the_driver_api() -> None:
    tree = ast.parse(Path(toy_driver.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert {name for name in imported if name.startswith("reconciler")} == {"reconciler.driver_api"}


def test_the_page_packages_and_configures_this_driver() -> None:
    project, config = (tomllib.loads(block) for block in blocks("toml"))
    (name, target), *_ = project["project"]["entry-points"]["reconciler.drivers"].items()
    assert target == "reconciler_toy:ToyDriver" and hasattr(toy_driver, target.partition(":")[2])
    section = dict(config["providers"][PROVIDER])
    assert section.pop("driver") == name
    section["api_key"] = section.pop("api_key_file")  # the core reads the file into api_key
    assert ToySettings.model_validate(section).base_url == "https://api.toy.example"


def test_the_core_would_load_the_driver() -> None:
    assert check_driver(ToyDriver) is ToyDriver


# -- a fake Toy ---------------------------------------------------------------------------------------------
class FakeToy:
    """docs/writing-a-driver.md §1's four endpoints on 127.0.0.1; `faults` answers the next requests instead."""

    def __init__(self) -> None:
        self.invoices: dict[str, dict[str, Any]] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self.faults: deque[web.Response] = deque()
        self.requests: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/invoices", self._batch)
        app.router.add_get("/v1/invoices/{id}", self._invoice)
        app.router.add_get("/v1/invoices/{id}/card", self._card)
        app.router.add_get("/v1/me", self._me)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _refused(self, request: web.Request) -> web.Response | None:
        self.requests.append(request.path_qs)
        if self.faults:
            return self.faults.popleft()
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"code": "unauthorized", "message": "bad key"}, status=401)
        return None

    async def _invoice(self, request: web.Request) -> web.Response:
        invoice = self.invoices.get(request.match_info["id"])
        if (refused := self._refused(request)) is not None:
            return refused
        return web.json_response(invoice) if invoice else web.json_response({"code": "not-found"}, status=404)

    async def _batch(self, request: web.Request) -> web.Response:
        ids = request.query.get("ids", "").split(",")
        if (refused := self._refused(request)) is not None:
            return refused
        return web.json_response({"invoices": [self.invoices[i] for i in ids if i in self.invoices]})

    async def _card(self, request: web.Request) -> web.Response:
        card = self.cards.get(request.match_info["id"])
        if (refused := self._refused(request)) is not None:
            return refused
        return web.json_response(card) if card else web.json_response({"code": "not-found"}, status=404)

    async def _me(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response({"account": "acct_1"})


def invoice(
    invoice_id: str, state: Any, *, currency: str = "BTC", amount: Any = "0.0001", paid: Any = "0"
) -> dict[str, Any]:
    return {"id": invoice_id, "state": state, "currency": currency, "amount": amount, "paid": paid}


@pytest.fixture
async def toy() -> AsyncIterator[FakeToy]:
    fake = FakeToy()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


COMMON = driver_api.CommonSettings(driver="toy", timeout=5)


def make_driver(toy: FakeToy, session: aiohttp.ClientSession, key: str = KEY) -> ToyDriver:
    settings = ToySettings.model_validate({"base_url": toy.url + "/", "api_key": key})
    return ToyDriver(PROVIDER, settings, COMMON, session)


@pytest.fixture
def driver(toy: FakeToy, session: aiohttp.ClientSession) -> ToyDriver:
    return make_driver(toy, session)


# -- call by call -------------------------------------------------------------------------------------------
async def test_a_paid_invoice_is_settled_with_its_amounts(toy: FakeToy, driver: ToyDriver) -> None:
    toy.invoices["inv_1"] = invoice("inv_1", "paid", amount="0.0001", paid="0.0001")

    snapshot = await driver.fetch("inv_1")

    assert snapshot == driver_api.Snapshot(
        status=driver_api.ProviderStatus.SETTLED,
        raw_status="paid",
        currency="BTC",
        amount_sats=10_000,
        paid_sats=10_000,
    )


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("open", driver_api.ProviderStatus.PENDING),
        ("PAID", driver_api.ProviderStatus.SETTLED),
        ("expired", driver_api.ProviderStatus.EXPIRED),
        ("void", driver_api.ProviderStatus.INVALID),
        ("refunded", driver_api.ProviderStatus.REFUNDED),
        ("paıd", driver_api.ProviderStatus.UNKNOWN),  # a dotless i: not "paid"
        ("on-hold", driver_api.ProviderStatus.UNKNOWN),
    ],
)
async def test_every_state_maps_and_an_unknown_one_is_unknown(
    toy: FakeToy, driver: ToyDriver, state: str, status: driver_api.ProviderStatus
) -> None:
    toy.invoices["inv_1"] = invoice("inv_1", state)

    snapshot = await driver.fetch("inv_1")

    assert (snapshot.status, snapshot.raw_status) == (status, state)


@pytest.mark.parametrize(
    ("fields", "amount_sats", "paid_sats", "amount_raw"),
    [
        ({"currency": "USD", "amount": "19.99", "paid": "19.99"}, None, None, None),  # fiat: no opinion
        ({"amount": "0.000100005", "paid": "0.000100009"}, 10_001, 10_000, None),  # half up; payment floored
        ({"amount": "NaN"}, None, 0, "'NaN'"),
        ({"amount": "-5"}, None, 0, "'-5'"),
        ({"amount": 0}, None, 0, "0"),
        ({"amount": None, "paid": None}, None, None, None),
        ({"paid": "-0.00000001"}, 10_000, None, None),
    ],
)
async def test_amounts_are_an_opinion_only_when_they_are_sats(
    toy: FakeToy,
    driver: ToyDriver,
    fields: dict[str, Any],
    amount_sats: int | None,
    paid_sats: int | None,
    amount_raw: str | None,
) -> None:
    toy.invoices["inv_1"] = invoice("inv_1", "paid") | fields

    snapshot = await driver.fetch("inv_1")

    assert (snapshot.amount_sats, snapshot.paid_sats, snapshot.amount_raw) == (
        amount_sats,
        paid_sats,
        amount_raw,
    )


async def test_an_unknown_invoice_is_not_found(driver: ToyDriver) -> None:
    with pytest.raises(driver_api.InvoiceNotFound) as caught:
        await driver.fetch("inv_9")

    assert (
        caught.value.message == "toy_main: Toy invoice 'inv_9': not found: HTTP 404 (not-found)"
    )  # the page's example
    assert (caught.value.provider_id, caught.value.invoice_id, caught.value.http_status) == (
        PROVIDER,
        "inv_9",
        404,
    )


async def test_an_id_no_url_can_name_is_not_found_without_a_request(toy: FakeToy, driver: ToyDriver) -> None:
    with pytest.raises(driver_api.InvoiceNotFound):
        await driver.fetch("..")

    assert toy.requests == []


async def test_a_refused_key_is_an_auth_error_that_never_shows_the_key(
    toy: FakeToy, session: aiohttp.ClientSession
) -> None:
    toy.invoices["inv_1"] = invoice("inv_1", "paid")
    wrong = make_driver(toy, session, key="wrong-key-42")

    with pytest.raises(driver_api.ProviderAuthError) as caught:
        await wrong.fetch("inv_1")
    with pytest.raises(driver_api.ProviderAuthError):
        await wrong.check()

    assert "wrong-key-42" not in str(caught.value)


async def test_a_busy_provider_is_unavailable_with_its_retry_after(toy: FakeToy, driver: ToyDriver) -> None:
    toy.faults.append(web.json_response({"code": "busy"}, status=503, headers={"Retry-After": "7"}))

    with pytest.raises(driver_api.ProviderUnavailable) as caught:
        await driver.fetch("inv_1")

    assert (caught.value.retry_after, caught.value.http_status) == (7.0, 503)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "inv_2", "state": "paid"},  # another invoice
        {"id": "inv_1", "state": 3},
        ["inv_1"],
    ],
)
async def test_an_answer_the_driver_cannot_read_is_a_bad_response(
    toy: FakeToy, driver: ToyDriver, body: Any
) -> None:
    toy.faults.append(web.json_response(body))

    with pytest.raises(driver_api.BadProviderResponse) as caught:
        await driver.fetch("inv_1")

    assert caught.value.message.startswith("toy_main: Toy invoice 'inv_1': unreadable answer (HTTP 200): ")


async def test_text_the_store_cannot_hold_is_a_bad_response(toy: FakeToy, driver: ToyDriver) -> None:
    toy.invoices["inv_1"] = invoice("inv_1", "paid\u0000")

    with pytest.raises(driver_api.BadProviderResponse, match="raw_status holds a control character"):
        await driver.fetch("inv_1")


async def test_check_accepts_a_good_key(toy: FakeToy, driver: ToyDriver) -> None:
    await driver.check()

    assert toy.requests == ["/v1/me"]


async def test_a_batch_answers_each_invoice_on_its_own(toy: FakeToy, driver: ToyDriver) -> None:
    toy.invoices["a"] = invoice("a", "paid")
    toy.invoices["b"] = invoice("b", 7)  # unreadable: b's failure alone
    toy.invoices["c"] = invoice("c", "open")

    answers = await driver.fetch_many(["a", "b", "c", "gone", "x,y"])

    assert toy.requests == ["/v1/invoices?ids=a,b,c,gone"]
    assert set(answers) == {"a", "b", "c"}  # "gone" and "x,y" are left out: not found
    assert (
        isinstance(answers["a"], driver_api.Snapshot)
        and answers["a"].status is driver_api.ProviderStatus.SETTLED
    )
    assert isinstance(answers["b"], driver_api.BadProviderResponse) and answers["b"].invoice_id == "b"
    assert (
        isinstance(answers["c"], driver_api.Snapshot)
        and answers["c"].status is driver_api.ProviderStatus.PENDING
    )


async def test_a_failed_batch_call_raises_for_the_whole_batch(toy: FakeToy, driver: ToyDriver) -> None:
    toy.faults.append(web.json_response({"code": "busy"}, status=502))

    with pytest.raises(driver_api.ProviderUnavailable):
        await driver.fetch_many(["a", "b"])


def task(invoice_id: str = "inv_1") -> driver_api.PostSettleTask:
    return driver_api.PostSettleTask(
        invoice_id="ours-1", kind=SAVE_CARD, provider_id=PROVIDER, provider_invoice_id=invoice_id, attempts=1
    )


async def test_save_card_waits_for_the_card_then_returns_the_profile(toy: FakeToy, driver: ToyDriver) -> None:
    assert await driver.post_settle(task()) == driver_api.NotYet("Toy has not saved the card yet")

    toy.cards["inv_1"] = {
        "customer": "cus_1",
        "card": "card_1",
        "brand": "visa",
        "expires": "2030-01-31T00:00:00Z",
    }

    assert await driver.post_settle(task()) == driver_api.Done(
        driver_api.PaymentProfile("cus_1", "card_1", "visa", "2030-01-31T00:00:00.000000Z")
    )


async def test_save_card_has_nothing_to_do_for_an_invoice_paid_otherwise(
    toy: FakeToy, driver: ToyDriver
) -> None:
    toy.cards["inv_1"] = {"customer": "cus_1", "card": None}

    assert await driver.post_settle(task()) == driver_api.NotApplicable("paid without a card")


async def test_save_card_refuses_a_card_it_cannot_store(toy: FakeToy, driver: ToyDriver) -> None:
    toy.cards["inv_1"] = {"customer": "", "card": "card_1"}

    with pytest.raises(driver_api.BadProviderResponse, match="contact_id is empty"):
        await driver.post_settle(task())


# -- through real passes ------------------------------------------------------------------------------------
def runner(store: SqliteStore, driver: ToyDriver, clock: Clock, signing_key: Ed25519PrivateKey) -> Runner:
    settings = RunnerSettings(post_settle_backoff=(timedelta(minutes=1),))
    return Runner(
        store, {PROVIDER: Provider(PROVIDER, driver, COMMON)}, settings, signing_key=signing_key, clock=clock
    )


async def test_a_pass_settles_and_licenses_a_paid_toy_invoice(
    shop: Shop,
    store: SqliteStore,
    clock: Clock,
    signing_key: Ed25519PrivateKey,
    toy: FakeToy,
    driver: ToyDriver,
) -> None:
    product = shop.product()
    policy = shop.policy(product)
    paid = shop.invoice(product, provider=PROVIDER, provider_invoice_id="inv_paid", policy_id=policy)
    expired = shop.invoice(product, provider=PROVIDER, provider_invoice_id="inv_late", policy_id=policy)
    unknown = shop.invoice(product, provider=PROVIDER, provider_invoice_id="inv_gone", policy_id=policy)
    toy.invoices["inv_paid"] = invoice("inv_paid", "paid", paid="0.0001")
    toy.invoices["inv_late"] = invoice("inv_late", "expired")

    summary = await runner(store, driver, clock, signing_key).run_pass()

    assert dict(summary.counts) == {"settle": 1, "expire": 1, "not_found": 1}
    assert (shop.status(paid), shop.status(expired), shop.status(unknown)) == (
        "settled",
        "expired",
        "pending",
    )
    (license_row,) = shop.licenses(paid)
    assert license_row["license_key"].startswith("LIC1")
    assert shop.actions(paid) == ["invoice.settled"]
    (issued,) = shop.audits(license_row["id"], "license.issued")
    assert json.loads(issued["details"])["invoice_id"] == paid
    assert shop.actions(unknown) == ["invoice.provider_not_found"]
    assert shop.audits(action="invoice.amount_mismatch") == []
    assert shop.scalar("SELECT count(*) FROM invoices WHERE lease_token IS NOT NULL") == 0
    # fetch_many: the three due invoices went out in one call
    (request,) = toy.requests
    assert request.startswith("/v1/invoices?ids=") and sorted(request.partition("=")[2].split(",")) == [
        "inv_gone",
        "inv_late",
        "inv_paid",
    ]


async def test_a_subscription_gets_the_card_toy_saved_on_a_later_pass(
    shop: Shop,
    store: SqliteStore,
    clock: Clock,
    signing_key: Ed25519PrivateKey,
    toy: FakeToy,
    driver: ToyDriver,
) -> None:
    product = shop.product()
    policy = shop.policy(product, "monthly", is_recurring=True, renewal_period_days=30)
    first = shop.invoice(product, provider=PROVIDER, provider_invoice_id="inv_1", policy_id=policy)
    toy.invoices["inv_1"] = invoice("inv_1", "paid", paid="0.0001")
    reconcile = runner(store, driver, clock, signing_key)

    await reconcile.run_pass()
    (pending,) = shop.rows(
        "SELECT kind, status, attempts FROM post_settle_tasks WHERE invoice_id = ?", (first,)
    )
    assert tuple(pending) == (SAVE_CARD, "pending", 1)

    toy.cards["inv_1"] = {
        "customer": "cus_1",
        "card": "card_1",
        "brand": "visa",
        "expires": "2030-01-31T00:00:00Z",
    }
    clock.advance(timedelta(minutes=1))
    await reconcile.run_pass()

    (done,) = shop.rows("SELECT status, attempts FROM post_settle_tasks WHERE invoice_id = ?", (first,))
    assert tuple(done) == ("done", 2)
    (subscription,) = shop.rows(
        "SELECT provider_contact_id, payment_profile_id, payment_profile_method, payment_profile_expires_at"
        " FROM subscriptions WHERE first_invoice_id = ?",
        (first,),
    )
    assert tuple(subscription) == ("cus_1", "card_1", "visa", "2030-01-31T00:00:00.000000Z")
