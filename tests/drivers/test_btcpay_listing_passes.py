"""Issue 12: BTCPay invoices read from pages of the store's list, through full passes.

A real Runner over a real SQLite shop drives the real BTCPay driver against the fake Greenfield server;
the fake's request log counts list pages and single GETs. The listing's rules (docs/reconcile.md §3.1):
a dense creation window is paged, newest first, with its end fixed when the read starts; what the pages
do not answer asks alone; a sparse window stops paging; a page that fails after its tries loses nothing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.driver_api import CommonSettings, Driver
from reconciler.runner import PassSummary, Provider, Runner, RunnerSettings
from reconciler.store.sqlite import SqliteStore
from tests.conftest import Clock
from tests.drivers.conftest import MakeBTCPayDriver
from tests.fakes import btcpay
from tests.fakes.btcpay import Payment, make_invoice
from tests.support.shop import Shop

PROVIDER = "btcpay_main"
PAGE = 20  # page_size of these tests: min_hits = 2


async def _no_sleep(_: float) -> None:
    return None


class World:
    """N invoices, one a second, the newest `age` old; the same in the shop and at the fake."""

    def __init__(
        self,
        shop: Shop,
        store: SqliteStore,
        clock: Clock,
        signing_key: Ed25519PrivateKey,
        fake: btcpay.FakeBTCPay,
        driver: Any,
    ) -> None:
        self.shop, self.store, self.clock, self.fake = shop, store, clock, fake
        self.driver = cast(Driver, driver)
        self.signing_key = signing_key
        self.product = shop.product()
        shop.policy(self.product)
        self.ids: dict[str, str] = {}

    def invoice(self, pid: str, created: datetime, *, in_shop: bool = True, **btcpay_kwargs: Any) -> None:
        if in_shop:
            self.ids[pid] = self.shop.invoice(
                self.product, provider=PROVIDER, provider_invoice_id=pid, created_at=created
            )
        kwargs = {"status": "Settled", "payments": [Payment("0.0001")], "amount": "0.0001"} | btcpay_kwargs
        self.fake.add(make_invoice(pid, created=int(created.timestamp()), **kwargs))

    def series(self, n: int, *, newest: datetime, prefix: str = "inv", **kwargs: Any) -> list[str]:
        pids = [f"{prefix}{i:04d}" for i in range(n)]
        for i, pid in enumerate(pids):
            self.invoice(pid, newest - timedelta(seconds=i), **kwargs)
        return pids

    async def run(self, **common: Any) -> PassSummary:
        settings = {"driver": "btcpay", "timeout": 5.0, "retry_max_delay": 0.0, "page_size": PAGE} | common
        runner = Runner(
            self.store,
            {PROVIDER: Provider(PROVIDER, self.driver, CommonSettings(**settings))},
            RunnerSettings(),
            signing_key=self.signing_key,
            clock=self.clock,
            owner="test:1:abc",
            rng=random.Random(7),
            sleep=_no_sleep,
        )
        return await runner.run_pass()

    def pages(self) -> list[btcpay.Exchange]:
        return self.fake.listed()

    def singles(self) -> list[str]:
        return [e.target for e in self.fake.log if e.target not in (None, "invoices", "api-keys/current")]

    def statuses(self) -> dict[str, str]:
        return {pid: self.shop.status(iid) for pid, iid in self.ids.items()}


@pytest.fixture
def world(
    shop: Shop,
    store: SqliteStore,
    clock: Clock,
    signing_key: Ed25519PrivateKey,
    btcpay_fake: btcpay.FakeBTCPay,
    btcpay_make_driver: MakeBTCPayDriver,
) -> World:
    return World(shop, store, clock, signing_key, btcpay_fake, btcpay_make_driver(provider_id=PROVIDER))


def newest(clock: Clock) -> datetime:
    return clock.now.astimezone(UTC) - timedelta(minutes=10)


async def test_a_dense_window_is_read_in_pages(world: World) -> None:
    world.series(100, newest=newest(world.clock))

    summary = await world.run()

    assert dict(summary.counts) == {"settle": 100}
    assert world.singles() == []
    assert len(world.pages()) <= 100 // PAGE + 2
    assert set(world.statuses().values()) == {"settled"}
