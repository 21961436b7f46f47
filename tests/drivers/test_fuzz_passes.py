"""A sample of the fuzz through whole passes (issue 10): a real Runner, a real driver, a real SQLite shop.

For each of 300 generated answers per driver a fresh pending invoice is inserted and one pass is
run: ``run_pass()`` must not raise (a raise is ``reconciler run --once`` exiting 1) and no invoice may
be left leased. Zaprite invoices are recurring, so a settle also runs the payment-profile task
against a fuzzed contact in the same pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger
from reconciler_btcpay import BTCPayDriver
from reconciler_zaprite import ZapriteDriver, ZapriteSettings

from reconciler import driver_api
from reconciler.runner import PassSummary, Provider, Runner, RunnerSettings
from reconciler.store.sqlite import SqliteStore
from tests.drivers import fuzz_answers as fz
from tests.drivers.test_fuzz import (
    BTCPAY_ANSWERS,
    CONTACT_ANSWERS,
    GOOD_KEY_ANSWER,
    KEY_ANSWERS,
    KEY_ROUTE,
    ORDER_ANSWERS,
    ForgetfulBTCPay,
)
from tests.fakes import btcpay, zaprite
from tests.fakes.raw import RawAnswer
from tests.support.shop import T0, Shop, create_schema

PASSES = 300
PASS_SETTINGS = settings(
    max_examples=PASSES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
NOW = T0 + timedelta(minutes=30)


def for_invoice(answer: RawAnswer, token: str) -> RawAnswer:
    """``answer`` about ``token`` instead of the fuzz's ``inv1`` (the ids the fuzz put in it)."""
    return dataclasses.replace(answer, body=answer.body.replace(b'"inv1"', f'"{token}"'.encode()))


class Shopfront:
    """The shop database, its store and the runner's settings for one provider."""

    def __init__(self, path: Path, provider_id: str, *, recurring: bool) -> None:
        create_schema(path)
        self.path = path
        self.shop = Shop(path)
        self.provider_id = provider_id
        self.product = self.shop.product()
        self.policy = self.shop.policy(self.product, is_recurring=recurring, renewal_period_days=30)
        self.signing_key = Ed25519PrivateKey.generate()
        self.store: SqliteStore | None = None

    def invoice(self, token: str) -> str:
        return self.shop.invoice(
            self.product,
            provider=self.provider_id,
            provider_invoice_id=token,
            invoice_id=token,
            policy_id=self.policy,
            amount_sats=100_000,
        )

    async def one_pass(self, driver: driver_api.Driver, common: driver_api.CommonSettings) -> PassSummary:
        assert self.store is not None
        runner = Runner(
            self.store,
            {self.provider_id: Provider(self.provider_id, driver, common)},
            RunnerSettings(),
            signing_key=self.signing_key,
            clock=lambda: NOW,
            owner="fuzz:1:pass",
            rng=random.Random(7),
            sleep=_no_sleep,
        )
        return await runner.run_pass()

    def leased(self) -> int:
        return int(self.shop.scalar("SELECT count(*) FROM invoices WHERE lease_owner IS NOT NULL"))


async def _no_sleep(_: float) -> None:
    return None


def common(driver: str) -> driver_api.CommonSettings:
    return driver_api.CommonSettings(
        driver=driver, timeout=fz.TIMEOUT, retry_attempts=1, retry_max_delay=0, max_response_bytes=fz.LIMIT
    )


def run_passes(
    shopfront: Shopfront,
    start: Callable[[aiohttp.ClientSession], Any],
    example: Callable[[Any, str, Any], None],
    strategy: st.SearchStrategy[Any],
    kind: str,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> Counter[str]:
    decisions: Counter[str] = Counter()
    with asyncio.Runner() as loop:
        session = loop.run(_session())
        context = None
        try:
            shopfront.store = loop.run(SqliteStore.open(shopfront.path))
            context = loop.run(start(session))

            @PASS_SETTINGS
            @given(strategy)
            def one(drawn: Any) -> None:
                token = str(uuid.uuid4())
                shopfront.invoice(token)
                example(context, token, drawn)
                summary = loop.run(shopfront.one_pass(context.driver, common(kind)))  # must not raise: exit 1
                decisions.update(summary.counts)
                decisions.update(f"post_settle_{k}" for k, n in summary.tasks.items() for _ in range(n))
                assert shopfront.leased() == 0

            one()
        finally:
            loop.run(_close(session, context, shopfront.store))
    line = f"{kind} passes: {PASSES} passes: " + ", ".join(f"{k}={v}" for k, v in sorted(decisions.items()))
    record_property("fuzz_pass_decisions", line)
    with capsys.disabled():
        print(f"\n{line}")
    return decisions


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


async def _close(session: aiohttp.ClientSession, context: Any, store: SqliteStore | None) -> None:
    await session.close()
    if context is not None:
        await context.fake.close()
    if store is not None:
        await store.close()


# --- BTCPay -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BTCPayPasses:
    fake: btcpay.FakeBTCPay
    driver: BTCPayDriver


async def start_btcpay(session: aiohttp.ClientSession) -> BTCPayPasses:
    fake = btcpay.FakeBTCPay()
    await fake.start()
    options = BTCPayDriver.Settings.model_validate(
        {"base_url": fake.base_url, "store_id": btcpay.STORE_ID, "api_key": btcpay.API_KEY}
    )
    return BTCPayPasses(fake, ForgetfulBTCPay("btcpay_main", options, common("btcpay"), session))


def btcpay_example(context: BTCPayPasses, token: str, drawn: tuple[RawAnswer, RawAnswer]) -> None:
    invoice_answer, key_answer = drawn
    context.fake.log.clear()
    context.fake.faults.clear()
    context.fake.fault(token, answers=[for_invoice(invoice_answer, token)])
    context.fake.fault(KEY_ROUTE, answers=[key_answer])


BTCPAY_PASS_EXAMPLES = st.tuples(BTCPAY_ANSWERS, KEY_ANSWERS | st.just(GOOD_KEY_ANSWER))


@pytest.mark.slow  # large volume: 300 whole passes
@pytest.mark.fuzz
def test_btcpay_passes_never_fail_and_leave_nothing_leased(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> None:
    shopfront = Shopfront(tmp_path / "shop.db", "btcpay_main", recurring=False)

    decisions = run_passes(
        shopfront, start_btcpay, btcpay_example, BTCPAY_PASS_EXAMPLES, "btcpay", capsys, record_property
    )

    assert decisions["settle"] > 0 and decisions["bad_response"] > 0 and decisions["provider_error"] > 0


# --- Zaprite ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ZapritePasses:
    fake: zaprite.FakeZaprite
    driver: ZapriteDriver


async def start_zaprite(session: aiohttp.ClientSession) -> ZapritePasses:
    fake = zaprite.FakeZaprite()
    await fake.start()
    options = ZapriteSettings.model_validate({"base_url": fake.url, "api_key": zaprite.DEFAULT_API_KEY})
    return ZapritePasses(fake, ZapriteDriver("zaprite", options, common("zaprite"), session))


def zaprite_example(context: ZapritePasses, token: str, drawn: tuple[RawAnswer, RawAnswer]) -> None:
    order, contact = (for_invoice(answer, token) for answer in drawn)
    context.fake.log.clear()
    context.fake.paths.clear()
    context.fake.clear_faults()
    # the pass's fetch, then the payment-profile task's own order fetch and its contact fetch
    context.fake.inject(zaprite.Fault(raw=order), zaprite.Fault(raw=order), zaprite.Fault(raw=contact))


ZAPRITE_PASS_EXAMPLES = st.tuples(ORDER_ANSWERS, CONTACT_ANSWERS)


@pytest.mark.slow  # large volume: 300 whole passes
@pytest.mark.fuzz
def test_zaprite_passes_never_fail_and_leave_nothing_leased(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], record_property: Callable[[str, object], None]
) -> None:
    shopfront = Shopfront(tmp_path / "shop.db", "zaprite", recurring=True)

    logger.disable("reconciler_zaprite")  # unreadable expiries are warned about; thousands of lines here
    try:
        decisions = run_passes(
            shopfront,
            start_zaprite,
            zaprite_example,
            ZAPRITE_PASS_EXAMPLES,
            "zaprite",
            capsys,
            record_property,
        )
    finally:
        logger.enable("reconciler_zaprite")

    assert decisions["settle"] > 0 and decisions["bad_response"] > 0
    assert decisions["post_settle_done"] > 0
