"""Issue 12: BTCPay invoices read from pages of the store's list, through full passes.

A real Runner over a real SQLite shop drives the real BTCPay driver against the fake Greenfield server;
the fake's request log counts list pages and single GETs. The listing's rules (docs/reconcile.md §3.1):
a dense creation window is paged, newest first, with its end fixed when the read starts; what the pages
do not answer asks alone; a sparse window stops paging; a page that fails after its tries loses nothing.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reconciler.driver_api import CommonSettings, Driver
from reconciler.listing import Lister, _Waiting, usable_time
from reconciler.runner import PassSummary, Provider, Runner, RunnerSettings
from reconciler.store.sqlite import SqliteStore
from reconciler.traffic import ProviderGate
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

    def invoice(
        self,
        pid: str,
        created: datetime,
        *,
        in_shop: bool = True,
        late: timedelta = timedelta(0),
        **btcpay_kwargs: Any,
    ) -> None:
        """`late`: how much later than the shop's `created_at` the provider says it created the invoice."""
        if in_shop:
            self.ids[pid] = self.shop.invoice(
                self.product, provider=PROVIDER, provider_invoice_id=pid, created_at=created
            )
        kwargs = {"status": "Settled", "payments": [Payment("0.0001")], "amount": "0.0001"} | btcpay_kwargs
        self.fake.add(make_invoice(pid, created=int((created + late).timestamp()), **kwargs))

    def series(self, n: int, *, newest: datetime, prefix: str = "inv", **kwargs: Any) -> list[str]:
        pids = [f"{prefix}{i:04d}" for i in range(n)]
        for i, pid in enumerate(pids):
            self.invoice(pid, newest - timedelta(seconds=i), **kwargs)
        return pids

    async def run(self, *, batch_size: int = 500, **common: Any) -> PassSummary:
        settings = {"driver": "btcpay", "timeout": 5.0, "retry_max_delay": 0.0, "page_size": PAGE} | common
        runner = Runner(
            self.store,
            {PROVIDER: Provider(PROVIDER, self.driver, CommonSettings(**settings))},
            RunnerSettings(batch_size=batch_size),
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


async def test_a_claimed_batch_is_read_as_it_arrives_not_after_the_window(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its invoices reach their fetches together: enough for a page, they are read at once. A gathering
    window longer than the test's patience would show any wait for company."""
    monkeypatch.setattr(Lister, "WINDOW", 600.0)
    world.series(50, newest=newest(world.clock))

    summary = await asyncio.wait_for(world.run(), 30)

    assert dict(summary.counts) == {"settle": 50}
    assert world.singles() == []
    assert len(world.pages()) <= 50 // PAGE + 2


async def test_fetches_too_few_for_a_page_wait_for_company(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fetch alone is fewer than a page must list (min_hits = 2): it is not read as it arrives but waits
    out the window, so a second one arriving a few loop turns later shares its page."""
    monkeypatch.setattr(Lister, "WINDOW", 0.5)
    first, second = world.series(2, newest=newest(world.clock))
    common = CommonSettings(driver="btcpay", timeout=5.0, retry_max_delay=0.0, page_size=PAGE)
    gate = ProviderGate(Provider(PROVIDER, world.driver, common), clock=world.clock, sleep=_no_sleep)
    lister = Lister(gate, cast(Any, world.driver))
    created = {pid: newest(world.clock) - timedelta(seconds=i) for i, pid in enumerate((first, second))}

    early = asyncio.create_task(lister.fetch(first, created[first], None))
    for _ in range(3):
        await asyncio.sleep(0)
    late = asyncio.create_task(lister.fetch(second, created[second], None))
    answers = await asyncio.wait_for(asyncio.gather(early, late), 30)

    assert all(answer is not None for answer in answers)
    assert len(world.pages()) == 1 and world.singles() == []


def queries(exchanges: list[btcpay.Exchange], key: str) -> list[str]:
    return [e.query[key][0] for e in exchanges]


@pytest.mark.parametrize(("count", "pages"), [(PAGE, 1), (PAGE + 1, 2), (2 * PAGE, 2)])
async def test_waiting_invoices_filling_or_spilling_a_page(world: World, count: int, pages: int) -> None:
    world.series(count, newest=newest(world.clock))

    summary = await world.run()

    assert dict(summary.counts) == {"settle": count}
    assert world.singles() == []
    assert queries(world.pages(), "skip") == [str(PAGE * n) for n in range(pages)]


async def test_invoices_created_during_the_pass_cannot_shift_its_pages(world: World) -> None:
    world.series(3 * PAGE, newest=newest(world.clock))
    driver = world.driver
    fetch_page = driver.fetch_page  # type: ignore[attr-defined]
    later = newest(world.clock) + timedelta(minutes=1)

    async def while_paging(request: Any) -> Any:
        page = await fetch_page(request)
        for n in range(PAGE // 2):  # the shop sells on while the pass reads
            world.invoice(f"new{request.skip}-{n}", later, in_shop=False)
        return page

    driver.fetch_page = while_paging  # type: ignore[attr-defined]
    summary = await world.run()

    assert dict(summary.counts) == {"settle": 3 * PAGE}
    assert world.singles() == []
    pages = world.pages()
    assert queries(pages, "skip") == ["0", str(PAGE), str(2 * PAGE)]
    assert len(set(queries(pages, "endDate"))) == len(set(queries(pages, "startDate"))) == 1
    assert not any(item["id"].startswith("new") for e in pages for item in e.body)


async def test_archived_invoices_are_read_from_the_pages_too(world: World) -> None:
    pids = world.series(PAGE, newest=newest(world.clock))
    for pid in pids[::3]:
        world.fake.archive(pid)

    assert dict((await world.run()).counts) == {"settle": PAGE}
    assert world.singles() == []


async def test_an_invoice_the_list_does_not_return_asks_alone(world: World) -> None:
    pids = world.series(PAGE, newest=newest(world.clock))
    # BTCPay created it an hour before the shop wrote it: outside the window
    world.invoice("drifted", newest(world.clock) - timedelta(seconds=5), in_shop=True)
    world.fake.invoices["drifted"]["createdTime"] -= 3600
    world.invoice("gone", newest(world.clock) - timedelta(seconds=6))
    del world.fake.invoices["gone"]

    summary = await world.run()

    assert dict(summary.counts) == {"settle": PAGE + 1, "not_found": 1}
    assert sorted(world.singles()) == ["drifted", "gone"]
    assert world.statuses()["drifted"] == "settled" and world.statuses()["gone"] == "pending"
    assert {world.statuses()[pid] for pid in pids} == {"settled"}
    assert world.shop.audits(world.ids["gone"], action="invoice.provider_not_found")


async def test_a_sparse_window_stops_paging_and_asks_alone(world: World) -> None:
    top = newest(world.clock)
    due = [f"due{n}" for n in range(PAGE)]
    for n, pid in enumerate(due):  # one due invoice in every 25 the store holds
        world.invoice(pid, top - timedelta(seconds=25 * n))
        for k in range(1, 25):
            world.invoice(f"other{n}-{k}", top - timedelta(seconds=25 * n + k), in_shop=False)

    summary = await world.run()

    assert dict(summary.counts) == {"settle": PAGE}
    assert len(world.pages()) == 1  # it listed 1 of PAGE: sparse
    assert len(world.singles()) == PAGE - 1


async def test_the_newer_invoices_in_the_margin_above_a_dense_run_do_not_make_it_sparse(world: World) -> None:
    """The window reaches `Lister.MARGIN` past the run's newest invoice, and a busy store has many invoices
    there that nobody waits for: the first pages list none of the run, yet the run below them is dense
    (seen at N = 100,000 in `make bench`: every invoice fell back to a single GET)."""
    top = newest(world.clock)
    due = world.series(3 * PAGE, newest=top)
    for n in range(int(Lister.MARGIN.total_seconds()) * 3):  # three a second, newer than every due one
        world.invoice(f"newer{n:03d}", top + timedelta(seconds=1 + n // 3), in_shop=False)

    summary = await world.run()

    assert dict(summary.counts) == {"settle": len(due)}
    assert world.singles() == []
    assert len(world.pages()) <= (len(due) + 45) // PAGE + 2


def _windows(world: World) -> list[tuple[datetime, datetime]]:
    """The creation window of each read (its first page's startDate and endDate), in order."""
    return [
        (
            datetime.fromtimestamp(int(e.query["startDate"][0]), UTC),
            datetime.fromtimestamp(int(e.query["endDate"][0]), UTC),
        )
        for e in world.pages()
        if e.query["skip"] == ["0"]
    ]


def _reach_past(world: World, pid: str) -> float:
    """How far past the shop's `created_at` of `pid` the last read whose window holds it reaches, in s."""
    created = datetime.fromisoformat(
        world.shop.invoice_row(world.ids[pid])["created_at"].replace("Z", "+00:00")
    )
    ends = [end for start, end in _windows(world) if start <= created <= end]
    return (ends[-1] - created).total_seconds()


async def test_once_the_providers_times_are_seen_to_follow_the_shops_the_margin_above_narrows(
    world: World,
) -> None:
    """The first read reaches `MARGIN` past its run; once `SKEW_SAMPLES` listed invoices showed the
    provider's creation times within a second of the shop's, later reads reach only that plus
    `MARGIN_MIN`, so the invoices a busy store created just above a run are no longer paged through."""
    top = newest(world.clock)
    due = world.series(4 * PAGE, newest=top)
    for n in range(3 * PAGE):  # five a second, just above the newest due invoice: nobody waits for them
        world.invoice(f"newer{n:03d}", top + timedelta(seconds=4 + n // 5), in_shop=False)

    summary = await world.run(batch_size=PAGE)

    assert dict(summary.counts) == {"settle": len(due)}
    assert world.singles() == []
    windows = _windows(world)
    assert len(windows) >= 2
    first_start, first_end = windows[0]
    assert first_end - first_start >= 2 * Lister.MARGIN  # both margins wide: nothing learned yet
    # the read of the newest invoices reaches the margin learned (+ the provider's whole seconds)
    assert _reach_past(world, due[0]) <= (Lister.MARGIN_MIN + timedelta(seconds=2)).total_seconds()


async def test_a_provider_whose_times_run_late_keeps_a_margin_that_covers_them(world: World) -> None:
    top = newest(world.clock)
    due = world.series(4 * PAGE, newest=top, late=timedelta(seconds=8))

    summary = await world.run(batch_size=PAGE)

    assert dict(summary.counts) == {"settle": len(due)}
    assert world.singles() == []  # every one found on a page: the margin learned covers 8 s
    assert _reach_past(world, due[0]) >= 8


async def test_an_invoice_missed_past_a_narrowed_margin_asks_alone(world: World) -> None:
    top = newest(world.clock)
    due = world.series(4 * PAGE, newest=top)
    # the newest due invoice of all, which the provider says it created 12 s after the shop did
    world.invoice("straggler", top + timedelta(seconds=1), late=timedelta(seconds=12))

    summary = await world.run(batch_size=PAGE)

    assert dict(summary.counts) == {"settle": len(due) + 1}
    assert world.singles() == ["straggler"]
    assert _reach_past(world, "straggler") < 12  # the read that missed it was narrowed


async def test_pages_above_the_run_are_bounded_then_it_asks_alone(world: World) -> None:
    """A margin so crowded that paging through it would cost more than the run's own single GETs: a few
    pages, then single GETs."""
    top = newest(world.clock)
    due = world.series(PAGE, newest=top)
    for n in range(PAGE * 12):
        world.invoice(f"crowd{n:04d}", top + timedelta(seconds=1) + timedelta(seconds=n % 14), in_shop=False)

    summary = await world.run()

    assert dict(summary.counts) == {"settle": len(due)}
    assert len(world.pages()) <= 3
    assert len(world.singles()) == len(due)


async def test_a_run_too_small_for_a_page_is_single_gets(world: World) -> None:
    world.series(1, newest=newest(world.clock))

    assert dict((await world.run()).counts) == {"settle": 1}
    assert world.pages() == [] and world.singles() == ["inv0000"]


async def test_a_page_failing_mid_way_loses_nothing(world: World) -> None:
    pids = world.series(3 * PAGE, newest=newest(world.clock), status="Expired", payments=[])
    for pid in pids[::2]:
        world.fake.add(make_invoice(pid, "New", created=world.fake.invoices[pid]["createdTime"]))
    world.fake.fault("invoices", statuses=[200, 503, 503, 503])  # the 2nd page fails all its tries

    summary = await world.run(retry_attempts=3)

    assert dict(summary.counts) == {"expire": 3 * PAGE // 2, "no_change": 3 * PAGE // 2}
    assert world.fake.served("invoices") == [200, 503, 503, 503]
    assert len(world.singles()) == 2 * PAGE  # the first page answered its invoices; the rest asked alone
    expected = {pid: "expired" if n % 2 else "pending" for n, pid in enumerate(pids)}
    assert world.statuses() == expected


async def test_refused_credentials_on_a_page_are_every_waiting_invoices_outcome(world: World) -> None:
    world.series(PAGE, newest=newest(world.clock))
    world.fake.fault("invoices", statuses=[401])

    summary = await world.run()

    assert dict(summary.counts) == {"provider_error": PAGE}
    assert world.singles() == [] and len(world.pages()) == 1
    assert set(world.statuses().values()) == {"pending"}


async def test_batch_false_sends_single_gets_only(world: World) -> None:
    world.series(2 * PAGE, newest=newest(world.clock))

    summary = await world.run(batch=False)

    assert dict(summary.counts) == {"settle": 2 * PAGE}
    assert world.pages() == [] and len(world.singles()) == 2 * PAGE


@pytest.mark.parametrize(
    ("value", "usable"),
    [
        (datetime(2026, 12, 1, tzinfo=UTC), True),
        (datetime(2026, 12, 1), False),  # naive: comparing it with an aware time would raise
        ("2026-12-01T00:00:00Z", False),
        (1764547200, False),
        (None, False),
    ],
)
def test_a_pages_oldest_time_counts_only_when_it_is_an_aware_datetime(value: Any, usable: bool) -> None:
    assert (usable_time(value) is value) if usable else usable_time(value) is None


def test_a_miss_near_the_top_of_a_narrowed_read_widens_the_margin_again() -> None:
    """Only a read that reached less than `MARGIN` past its run, and missed an invoice created within
    `MARGIN` of its newest, forgets what it learned: that invoice may lie past the narrowed end."""
    common = CommonSettings(driver="btcpay", page_size=PAGE)
    lister = Lister(cast(Any, SimpleNamespace(provider=SimpleNamespace(common=common))), cast(Any, object()))
    top = datetime(2026, 12, 1, tzinfo=UTC)

    def learned() -> None:
        lister._skew, lister._samples = timedelta(seconds=1), Lister.SKEW_SAMPLES

    learned()
    assert lister.margin_above() == Lister.MARGIN_MIN + timedelta(seconds=1)
    far_below = {"old": _Waiting(top - timedelta(hours=1), None)}
    lister._missed(far_below, top, top + lister.margin_above())  # missing for its own reasons: kept
    assert lister.margin_above() < Lister.MARGIN
    near_top = {"new": _Waiting(top - timedelta(seconds=3), None)}
    lister._missed(near_top, top, top + Lister.MARGIN)  # a wide read cannot have missed it by the margin
    assert lister.margin_above() < Lister.MARGIN
    lister._missed(near_top, top, top + lister.margin_above())
    assert lister.margin_above() == Lister.MARGIN
