"""Drivers with a batch endpoint (`fetch_many`, docs/drivers.md §2): the runner gathers their fetches into
batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.driver_api import (
    CommonSettings,
    DriverError,
    ProviderAuthError,
    ProviderUnavailable,
    Snapshot,
)
from reconciler.testing import FakeDriver, snapshot
from tests.conftest import RunnerFactory
from tests.support.shop import Shop


class Batching(FakeDriver):
    """Answers `fetch_many` from the same script; single `fetch` calls are recorded separately."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.fail_batches: list[BaseException] = []

    async def fetch_many(self, provider_invoice_ids: Sequence[str]) -> Mapping[str, Snapshot | DriverError]:
        self.batches.append(list(provider_invoice_ids))
        if self.fail_batches:
            raise self.fail_batches.pop(0)
        answers: dict[str, Snapshot | DriverError] = {}
        for pid in provider_invoice_ids:
            queue = self._script.get(pid)
            if not queue:
                continue  # left out: not found
            outcome = queue[0]
            if isinstance(outcome, DriverError | Snapshot):
                answers[pid] = outcome
        return answers


def seed(shop: Shop, n: int) -> list[str]:
    product = shop.product()
    return [shop.invoice(product, provider_invoice_id=f"P{i}") for i in range(n)]


async def test_fetches_are_gathered_into_batches(shop: Shop, make_runner: RunnerFactory) -> None:
    ids = seed(shop, 30)
    driver = Batching()
    driver.script_many([f"P{i}" for i in range(30)], snapshot("SETTLED"))
    summary = await make_runner({"fake": driver}).run_pass()
    assert dict(summary.counts) == {"settle": 30}
    assert driver.calls == []  # no single fetch
    assert sorted(pid for batch in driver.batches for pid in batch) == sorted(f"P{i}" for i in range(30))
    assert len(driver.batches) < 30
    assert all(shop.status(i) == "settled" for i in ids)


async def test_left_out_ids_are_not_found_and_errors_are_per_invoice(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    seed(shop, 3)
    driver = Batching()
    driver.script("P0", snapshot("SETTLED"))
    driver.script("P1", ProviderAuthError("not yours"))  # an error for this invoice only
    summary = await make_runner({"fake": driver}).run_pass()  # P2 is left out of the answer
    assert dict(summary.counts) == {"settle": 1, "provider_error": 1, "not_found": 1}
    assert shop.audits(action="invoice.provider_not_found")


async def test_a_failed_batch_is_retried_as_a_whole(shop: Shop, make_runner: RunnerFactory) -> None:
    seed(shop, 5)
    driver = Batching()
    driver.script_many([f"P{i}" for i in range(5)], snapshot("PENDING"))
    driver.fail_batches = [ProviderUnavailable("503"), ProviderUnavailable("503")]
    summary = await make_runner({"fake": driver}).run_pass()
    assert dict(summary.counts) == {"no_change": 5}
    assert len(driver.batches) == 3


async def test_a_batch_that_keeps_failing_degrades_the_provider(
    shop: Shop, make_runner: RunnerFactory
) -> None:
    ids = seed(shop, 4)
    driver = Batching()
    driver.fail_batches = [ProviderUnavailable("down")] * 9
    summary = await make_runner(
        {"fake": driver}, common=CommonSettings(driver="fake", retry_attempts=3, retry_max_delay=1)
    ).run_pass()
    assert dict(summary.counts) == {"provider_error": 4}
    assert "fake" in summary.degraded
    assert all(shop.status(i) == "pending" for i in ids)
