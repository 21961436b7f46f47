"""`reconciler.testing.check_driver` runs the checks the core runs when it loads a driver (docs/drivers.md §6),
with the very implementation `registry.load` uses (issue 11)."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict
from reconciler_btcpay import BTCPayDriver
from reconciler_fake_driver import LooseDriver
from reconciler_zaprite import ZapriteDriver

from reconciler import driver_api, errors, registry
from reconciler.testing import DriverContractError, FakeDriver, check_driver, driver_problems


class _SyncEverything(FakeDriver):
    post_settle_kinds = ["x"]  # type: ignore[assignment]  # noqa: RUF012 - wrong on purpose

    def fetch(self, provider_invoice_id: str) -> Any:
        return None

    def check(self) -> Any:
        return None


class _AllowsExtra(driver_api.DriverSettings):
    model_config = ConfigDict(extra="ignore")


class _LooseAndSync(FakeDriver):
    Settings: ClassVar[type[BaseModel]] = _AllowsExtra

    def fetch_many(self, ids: Any) -> Any:
        return {}


@pytest.mark.parametrize("driver", [FakeDriver, BTCPayDriver, ZapriteDriver])
def test_a_driver_the_core_loads_passes_and_is_returned_unchanged(driver: type[Any]) -> None:
    assert check_driver(driver) is driver
    assert driver_problems(driver) == []


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(DriverContractError) as caught:
        check_driver(_SyncEverything)

    assert caught.value.problems == (
        "`post_settle_kinds` is not a tuple of strings",
        "`fetch` is not an async method",
        "`check` is not an async method",
    )
    message = str(caught.value)
    assert message.splitlines()[0] == (
        "_SyncEverything is not a driver the core would load (docs/drivers.md §6):"
    )
    assert all(f"- {problem}" in message for problem in caught.value.problems)


def test_settings_and_optional_methods_are_checked_too() -> None:
    assert driver_problems(_LooseAndSync) == [
        "its `Settings` accepts unknown keys (extra='ignore'): keep DriverSettings' extra='forbid'",
        "`fetch_many` is not an async method",
    ]


def test_something_that_is_not_a_class_has_that_one_problem() -> None:
    with pytest.raises(DriverContractError) as caught:
        check_driver(FakeDriver())

    (problem,) = caught.value.problems
    assert problem.endswith("is not a class")


def test_it_fails_a_test_like_an_assertion() -> None:
    assert issubclass(DriverContractError, AssertionError)


def test_registry_load_refuses_a_driver_with_exactly_the_problems_check_driver_reports() -> None:
    """One implementation: the load error of the installed `fake_loose` entry point is check_driver's list."""
    (problem,) = driver_problems(LooseDriver)
    with pytest.raises(errors.DriverLoadError) as caught:
        registry.load("fake_loose")

    assert caught.value.message.endswith(f"): {problem}")
    assert "is broken (entry point reconciler.drivers:fake_loose" in caught.value.message


def test_registry_names_every_problem_of_a_broken_driver() -> None:
    problems = driver_problems(_SyncEverything)
    assert registry._broken_message("x", "entry point somewhere", problems) == (
        "driver 'x' is broken (entry point somewhere): " + "; ".join(problems)
    )
